//! Drawing: pure functions of the UI state onto a ratatui frame, so tests draw on a
//! `TestBackend` exactly what the terminal shows. One module per pane; this one lays out the
//! screen (pane tabs, the host line, the pane, the status line) and holds the number formats.
mod findings;
mod pools;
mod queries;
#[cfg(test)]
mod recorded_tests;
mod routes;
#[cfg(test)]
mod tests;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph, Table, TableState, Tabs, Wrap},
};

use super::state::{Link, Pane, UiState};
use crate::model::pool_event::clock_text;

/// The whole screen.
pub fn draw(frame: &mut Frame, state: &UiState) {
    let [tabs, host, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, state, tabs);
    frame.render_widget(Paragraph::new(host_line(state)), host);
    match state.pane {
        Pane::Pools => pools::draw(frame, state, body),
        Pane::Routes => routes::draw(frame, state, body),
        Pane::Queries => queries::draw(frame, state, body),
        Pane::Findings => findings::draw(frame, state, body),
    }
    frame.render_widget(Paragraph::new(status_line(state)), status);
}

fn draw_tabs(frame: &mut Frame, state: &UiState, area: Rect) {
    let titles = Pane::ALL
        .iter()
        .map(|p| format!("{} {}", p.index() + 1, p.title()));
    let tabs = Tabs::new(titles)
        .select(state.pane.index())
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD))
        .padding("", "")
        .divider(" │ ");
    frame.render_widget(tabs, area);
}

fn host_line(state: &UiState) -> Line<'static> {
    let Some(snap) = state.model.snapshot() else {
        return Line::from("herdwatch top — no snapshot yet");
    };
    let (utilization, cpus) = snap
        .host
        .as_ref()
        .map_or((None, 0), |h| (h.cpu_utilization, h.cpus));
    let cpu = utilization.map_or_else(|| "…".to_string(), |u| format!("{:.0}%", u * 100.0));
    let active = snap.findings.iter().filter(|f| f.active).count();
    let mut spans = vec![Span::raw(format!(
        "host CPU {cpu} of {} · {} pools · {} routes · {} queries · ",
        cpus,
        snap.pools.len(),
        snap.routes.len(),
        snap.queries.len()
    ))];
    let findings = format!("{active} active findings");
    spans.push(if active > 0 {
        Span::styled(
            findings,
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    } else {
        Span::raw(findings)
    });
    Line::from(spans)
}

/// The bottom line: the filter being typed, or the link to the agent and the keys.
fn status_line(state: &UiState) -> Line<'static> {
    if state.editing_filter {
        return Line::from(vec![
            Span::styled("filter: ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{}▏", state.current().filter)),
            Span::raw("  (Enter keeps · Esc clears)"),
        ]);
    }
    let since = state
        .model
        .snapshot()
        .map(|s| clock_text(s.taken_at_unix_ms));
    let link = match &state.link {
        Link::Connecting => Span::raw(format!("connecting to {}…", state.agent)),
        Link::Live => {
            let age = state
                .received_ms
                .map_or(0, |r| state.now_ms.saturating_sub(r) / 1000);
            Span::styled(
                format!(
                    "live {} · snapshot {} ({age} s ago)",
                    state.agent,
                    since.unwrap_or_default()
                ),
                Style::new().fg(Color::Green),
            )
        }
        Link::Lost {
            error,
            attempt,
            retry_ms,
        } => Span::styled(
            // The retry first: the error (tonic's chain of causes) may run past the width.
            format!(
                "agent lost at {} — retry {attempt} in {:.1} s{}: {error}",
                state.agent,
                *retry_ms as f64 / 1000.0,
                since.map_or_else(String::new, |t| format!(" (showing {t})"))
            ),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    };
    Line::from(vec![
        link,
        Span::raw("  Tab/1-4 pane ↑↓ select s sort / filter Enter detail q quit"),
    ])
}

/// The pane's frame: its title with the sort column and the filter in force.
fn pane_block(state: &UiState, pane: Pane, shown: usize, total: usize) -> Block<'static> {
    let p = &state.panes[pane.index()];
    let sort = pane.sorts().get(p.sort).copied().unwrap_or_default();
    let mut title = format!(" {} ({shown}/{total}) · by {sort} ", pane.title());
    if !p.filter.is_empty() {
        title.push_str(&format!("· filter “{}” ", p.filter));
    }
    Block::bordered().title(title)
}

/// A pane with nothing to list: why, in a sentence.
fn empty(frame: &mut Frame, block: Block<'static>, area: Rect, state: &UiState, what: &str) {
    let text = if state.model.snapshot().is_none() {
        "(waiting for the agent's first snapshot)".to_string()
    } else if state.current().filter.is_empty() {
        format!("(no {what} yet)")
    } else {
        format!("(no {what} match the filter; Esc clears it)")
    };
    frame.render_widget(
        Paragraph::new(text).block(block).wrap(Wrap { trim: true }),
        area,
    );
}

/// Draws a pane's table with the selected row highlighted, the same way in every pane.
fn draw_table(frame: &mut Frame, area: Rect, table: Table<'_>, selected: Option<usize>) {
    let table = table
        .row_highlight_style(selected_style())
        .highlight_symbol("▶");
    let mut at = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut at);
}

fn header_style() -> Style {
    Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
}

fn selected_style() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

/// Milliseconds as people read them: `…` when unknown, seconds from 1 s on.
fn ms(value: Option<f64>) -> String {
    match value {
        None => "…".into(),
        Some(v) if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Some(v) if v >= 10.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
    }
}

fn rate(value: Option<f64>) -> String {
    value.map_or_else(|| "…".into(), |v| format!("{v:.1}"))
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}
