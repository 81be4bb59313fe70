//! The findings pane: the list (active first by default), and with Enter the selected
//! finding's detail: what it is about, its root cause, the evidence with units, what stops
//! it recurring and the proposed remediation.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
};

use super::{draw_table, empty, header_style, pane_block};
use crate::{
    export::top::{
        rows::{self, FindingRow, Row as _},
        state::{Pane, UiState},
    },
    model::pool_event::clock_text,
};

pub fn draw(frame: &mut Frame, state: &UiState, area: Rect) {
    let shown = state.findings();
    let total = rows::findings(&state.model).len();
    let block = pane_block(state, Pane::Findings, shown.len(), total);
    if shown.is_empty() {
        return empty(
            frame,
            block,
            area,
            state,
            "findings (no repeating pattern seen)",
        );
    }
    let keys: Vec<String> = shown.iter().map(|r| r.key()).collect();
    let selected = state.selected_in(Pane::Findings, &keys);
    let detail = selected
        .and_then(|i| shown.get(i))
        .filter(|_| state.detail_open);
    let (list, detail_area) = match detail {
        // The list keeps a third, at least its header and one row, so the selection shows.
        Some(_) => {
            let [list, detail] =
                Layout::vertical([Constraint::Percentage(34), Constraint::Min(0)]).areas(area);
            (list, Some(detail))
        }
        None => (area, None),
    };
    let header = Row::new([
        "",
        "kind",
        "severity",
        "seen",
        "last",
        "subject",
        "root cause",
    ])
    .style(header_style());
    let lines = shown.iter().map(|f| {
        Row::new([
            Cell::from(if f.finding.active { "●" } else { "○" }),
            Cell::from(f.kind.clone()),
            Cell::from(f.severity.clone()),
            Cell::from(format!("×{}", f.finding.occurrences)),
            Cell::from(clock_text(f.finding.last_seen_unix_ms)),
            Cell::from(f.subject.clone()),
            Cell::from(f.finding.root_cause.clone()),
        ])
    });
    let widths = [
        Constraint::Length(1),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Fill(1),
        Constraint::Fill(2),
    ];
    draw_table(
        frame,
        list,
        Table::new(lines, widths).header(header).block(block),
        selected,
    );
    if let (Some(area), Some(f)) = (detail_area, detail) {
        draw_detail(frame, state, f, area);
    }
}

fn heading(text: &'static str) -> Line<'static> {
    Line::from(Span::styled(
        text,
        Style::new().add_modifier(Modifier::BOLD).fg(Color::Cyan),
    ))
}

/// The detail lines of a finding, in the order a person acts on them.
fn detail_lines(f: &FindingRow) -> Vec<Line<'static>> {
    let x = &f.finding;
    let mut lines = vec![Line::from(format!(
        "{} {} · {} · {} · ×{} since {} · last {}",
        if x.active {
            "● active"
        } else {
            "○ resolved"
        },
        f.kind,
        f.severity,
        x.id,
        x.occurrences,
        clock_text(x.first_seen_unix_ms),
        clock_text(x.last_seen_unix_ms)
    ))];
    lines.push(Line::from(format!("subject: {}", f.subject)));
    if let Some(text) = x.subject.as_ref().and_then(|s| s.query_text.as_ref()) {
        lines.push(Line::from(format!("query: {text}")));
    }
    lines.push(heading("Root cause"));
    lines.push(Line::from(x.root_cause.clone()));
    if !x.evidence.is_empty() {
        lines.push(heading("Evidence"));
        for e in &x.evidence {
            lines.push(Line::from(format!(
                "  {}: {} {}",
                e.name,
                number(e.value),
                e.unit
            )));
        }
    }
    lines.push(heading("Prevention"));
    lines.push(Line::from(x.prevention.clone()));
    lines.push(heading("Proposal (herdwatch never acts on a process)"));
    lines.push(Line::from(x.remediation.clone()));
    if !x.annotations.is_empty() {
        lines.push(heading("Linked"));
        for a in &x.annotations {
            lines.push(Line::from(format!("  {a}")));
        }
    }
    lines
}

/// Evidence values: whole numbers without decimals, the rest with what they need.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Rows `lines` take wrapped at `width`, never fewer than they do: a wrapped line is counted
/// one row longer, as word wrapping may need, so the end of the detail is always reachable
/// (at worst a blank row or two past it).
fn wrapped_rows(lines: &[Line<'_>], width: u16) -> usize {
    let width = usize::from(width.max(1));
    lines
        .iter()
        .map(|l| match l.width() {
            0 => 1,
            w if w <= width => 1,
            w => w.div_ceil(width) + 1,
        })
        .sum()
}

fn draw_detail(frame: &mut Frame, state: &UiState, f: &FindingRow, area: Rect) {
    let lines = detail_lines(f);
    let inner = Block::bordered().inner(area);
    let overflow = wrapped_rows(&lines, inner.width).saturating_sub(usize::from(inner.height));
    let max = u16::try_from(overflow).unwrap_or(u16::MAX);
    state.detail_scroll_max.set(max);
    let scroll = state.detail_scroll.min(max);
    let hint = match (scroll > 0, scroll < max) {
        (false, false) => "",
        (false, true) => " · PgDn more",
        (true, true) => " · PgUp/PgDn scroll",
        (true, false) => " · PgUp back",
    };
    let block = Block::bordered().title(format!(" finding {} (Esc closes{hint}) ", f.finding.id));
    frame.render_widget(
        // Untrimmed, so the evidence keeps its indent under its heading.
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0)),
        area,
    );
}
