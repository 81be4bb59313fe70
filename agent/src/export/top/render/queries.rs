//! The queries pane: each statement fingerprint by its normalised text (literals were
//! stripped in the agent; raw text never reaches the wire), the call site issuing it, calls,
//! mean latency and the routes it serves; below, the selected one's full text.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table, Wrap},
};

use super::{draw_table, empty, header_style, ms, pane_block};
use crate::export::top::{
    rows::{self, QueryRow, Row as _},
    state::{Pane, UiState},
};

/// Below this many rows the pane is all list: the detail would leave no room to choose.
const DETAIL_MIN_HEIGHT: u16 = 14;
const DETAIL_HEIGHT: u16 = 6;

pub fn draw(frame: &mut Frame, state: &UiState, area: Rect) {
    let shown = state.queries();
    let total = rows::queries(&state.model).len();
    let block = pane_block(state, Pane::Queries, shown.len(), total);
    if shown.is_empty() {
        return empty(frame, block, area, state, "PostgreSQL queries");
    }
    let keys: Vec<String> = shown.iter().map(|r| r.key()).collect();
    let selected = state.selected_in(Pane::Queries, &keys);
    let (list, detail) = if area.height >= DETAIL_MIN_HEIGHT {
        let [list, detail] =
            Layout::vertical([Constraint::Min(0), Constraint::Length(DETAIL_HEIGHT)]).areas(area);
        (list, Some(detail))
    } else {
        (area, None)
    };
    let header = Row::new(["query", "call site", "calls", "mean", "routes"]).style(header_style());
    let lines = shown.iter().map(|q| {
        Row::new([
            Cell::from(q.text.clone()),
            Cell::from(q.call_site()),
            Cell::from(q.calls.to_string()),
            Cell::from(ms(q.mean_ms)),
            Cell::from(q.routes_text()),
        ])
    });
    let widths = [
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    draw_table(
        frame,
        list,
        Table::new(lines, widths).header(header).block(block),
        selected,
    );
    if let (Some(area), Some(q)) = (detail, selected.and_then(|i| shown.get(i))) {
        draw_detail(frame, q, area);
    }
}

fn draw_detail(frame: &mut Frame, q: &QueryRow, area: Rect) {
    let sites: Vec<String> = q
        .call_sites
        .iter()
        .map(|(site, calls)| format!("{site} ×{calls}"))
        .collect();
    let lines = vec![
        Line::from(q.text.clone()),
        Line::from(format!(
            "called from: {}",
            if sites.is_empty() {
                "-".into()
            } else {
                sites.join(", ")
            }
        )),
        Line::from(format!(
            "routes: {} · {} errors · {} total",
            q.routes_text(),
            q.errors,
            ms(Some(q.total_ms))
        )),
    ];
    let block = Block::bordered().title(format!(" query {} ", q.id));
    frame.render_widget(
        Paragraph::new(lines).block(block).wrap(Wrap { trim: true }),
        area,
    );
}
