//! The routes pane: each route with the pool that served it (the same path in two pools is
//! two rows), its request rate over the last interval, p99, and CPU and DB wait per request.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    widgets::{Cell, Row, Table},
};

use super::{draw_table, empty, header_style, ms, pane_block, rate};
use crate::export::top::{
    rows::{self, Row as _},
    state::{Pane, UiState},
};

pub fn draw(frame: &mut Frame, state: &UiState, area: Rect) {
    let shown = state.routes();
    let total = rows::routes(&state.model).len();
    let block = pane_block(state, Pane::Routes, shown.len(), total);
    if shown.is_empty() {
        return empty(frame, block, area, state, "HTTP routes");
    }
    let keys: Vec<String> = shown.iter().map(|r| r.key()).collect();
    let header = Row::new([
        "pool", "method", "route", "req/s", "requests", "p99", "CPU/req", "DB/req", "5xx",
    ])
    .style(header_style());
    let lines = shown.iter().map(|r| {
        Row::new([
            Cell::from(r.pool().to_string()),
            Cell::from(r.key.method.clone()),
            Cell::from(r.key.route.clone()),
            Cell::from(rate(r.rate)),
            Cell::from(r.requests.to_string()),
            Cell::from(ms(r.p99_ms)),
            Cell::from(ms(r.cpu_ms_per_request)),
            Cell::from(ms(r.db_ms_per_request)),
            Cell::from(r.server_errors.to_string()),
        ])
    });
    let widths = [
        Constraint::Fill(2),
        Constraint::Length(6),
        Constraint::Fill(2),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(4),
    ];
    draw_table(
        frame,
        area,
        Table::new(lines, widths).header(header).block(block),
        state.selected_in(Pane::Routes, &keys),
    );
}
