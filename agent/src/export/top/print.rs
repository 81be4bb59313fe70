//! `herdwatch top --print`: one frame, drawn the way the terminal would show it but into a
//! buffer (ratatui's `TestBackend`), and returned as plain text lines — for scripts, and for
//! tests that check `top` without a terminal.
use ratatui::{Terminal, backend::TestBackend};

use super::{render, state::UiState};
use crate::error::{Error, Result};

/// The smallest and largest frames `--print` draws: below, no pane has room for a row;
/// above, a line is longer than any screen.
pub const MIN_SIZE: (u16, u16) = (40, 8);
pub const MAX_SIZE: (u16, u16) = (1000, 1000);

/// The screen for `state` at `width` × `height`, one line per row, trailing blanks trimmed.
pub fn frame_text(state: &UiState, width: u16, height: u16) -> Result<String> {
    if !(MIN_SIZE.0..=MAX_SIZE.0).contains(&width) || !(MIN_SIZE.1..=MAX_SIZE.1).contains(&height) {
        return Err(Error::Config {
            origin: "--width/--height".into(),
            message: format!(
                "{width}×{height} is outside {}×{} to {}×{}",
                MIN_SIZE.0, MIN_SIZE.1, MAX_SIZE.0, MAX_SIZE.1
            ),
        });
    }
    let io = |e: std::convert::Infallible| match e {};
    let mut terminal = Terminal::new(TestBackend::new(width, height)).map_err(io)?;
    terminal
        .draw(|frame| render::draw(frame, state))
        .map_err(io)?;
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..height {
        let line: String = (0..width)
            .map(|x| buffer.cell((x, y)).map_or(" ", |c| c.symbol()))
            .collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    Ok(text)
}
