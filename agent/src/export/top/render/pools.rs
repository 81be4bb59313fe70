//! The pools pane: each gunicorn/uvicorn pool's workers busy and idle, its accept queue, its
//! CPU, and how its workers' time went (on CPU, waiting on PostgreSQL, other).
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    widgets::{Cell, Row, Table},
};

use super::{draw_table, empty, header_style, pane_block, percent};
use crate::export::top::{
    rows::{self, Row as _},
    state::{Pane, UiState},
};

pub fn draw(frame: &mut Frame, state: &UiState, area: Rect) {
    let shown = state.pools();
    let total = rows::pools(&state.model).len();
    let block = pane_block(state, Pane::Pools, shown.len(), total);
    if shown.is_empty() {
        return empty(frame, block, area, state, "gunicorn or uvicorn pools");
    }
    let keys: Vec<String> = shown.iter().map(|r| r.key()).collect();
    let header = Row::new([
        "pool", "class", "busy", "idle", "accept q", "CPU %", "on CPU", "DB wait", "other",
    ])
    .style(header_style());
    let lines = shown.iter().map(|p| {
        let share = |f: fn(&(f64, f64, f64)) -> f64| {
            p.share.as_ref().map_or("…".into(), |s| percent(f(s)))
        };
        Row::new([
            Cell::from(p.name.clone()),
            Cell::from(p.class.clone()),
            Cell::from(format!("{}/{}", p.busy, p.workers)),
            Cell::from(p.idle.to_string()),
            Cell::from(p.accept_queue.map_or("-".into(), |q| q.to_string())),
            Cell::from(format!("{:.0}", p.cpu_percent)),
            Cell::from(share(|s| s.0)),
            Cell::from(share(|s| s.1)),
            Cell::from(share(|s| s.2)),
        ])
    });
    let widths = [
        Constraint::Fill(2),
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(5),
    ];
    draw_table(
        frame,
        area,
        Table::new(lines, widths).header(header).block(block),
        state.selected_in(Pane::Pools, &keys),
    );
}
