//! The terminal while `top` runs: raw mode, the alternate screen, a hidden cursor — and
//! their undoing on every way out: a normal quit, an error (the guard's `Drop`), and a panic
//! (a panic hook, since a panic message printed in raw mode on the alternate screen would be
//! lost and leave the shell unusable).
use std::{
    io::{Stdout, stdout},
    sync::Once,
};

use crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};

use crate::error::{Error, Result};

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: what.to_string(),
        source,
    }
}

/// Puts the terminal back as the shell had it. Safe to call more than once (the panic hook
/// and the guard may both run).
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, Show);
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The terminal in `top`'s mode; dropping it restores the terminal.
pub struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    pub fn enter() -> Result<Self> {
        install_panic_hook();
        enable_raw_mode().map_err(io(
            "switching the terminal to raw mode (is stdout a terminal?)",
        ))?;
        let entered = execute!(stdout(), EnterAlternateScreen, Hide)
            .map_err(io("entering the terminal's alternate screen"))
            .and_then(|()| {
                Terminal::new(CrosstermBackend::new(stdout()))
                    .map_err(io("reading the terminal's size"))
            });
        match entered {
            Ok(terminal) => Ok(Self { terminal }),
            Err(err) => {
                restore();
                Err(err)
            }
        }
    }

    pub fn draw(&mut self, render: impl FnOnce(&mut ratatui::Frame)) -> Result<()> {
        // `draw` resizes to the terminal first, so a redraw after a resize event is clean.
        self.terminal
            .draw(render)
            .map(|_| ())
            .map_err(io("drawing to the terminal"))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}
