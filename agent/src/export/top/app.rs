//! The terminal loop: draws the state, then waits for whichever comes first — a key or a
//! resize, a snapshot or news of a lost link from the feed, or the one-second tick that
//! keeps the status line's "n s ago" honest — and draws again.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossterm::event::{Event, EventStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::{
    feed::{self, FeedEvent},
    input::{Flow, handle_key},
    render,
    state::{Link, UiState},
    terminal::Screen,
};
use crate::{
    error::{Error, Result},
    export::api::client::Target,
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The single-threaded runtime every `top` mode runs on (one connection, one screen).
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "starting the tokio runtime".into(),
            source,
        })
}

/// `herdwatch top` against the agent at `target` (its socket or its address), until `q`.
pub fn run(target: Target) -> Result<()> {
    runtime()?.block_on(async {
        let mut screen = Screen::enter()?;
        let (tx, mut rx) = mpsc::channel(4);
        let state = UiState::new(target.address());
        let feed = tokio::spawn(feed::follow(target, tx));
        let result = event_loop(&mut screen, &mut rx, state).await;
        feed.abort();
        // Restore before the caller prints an error, so it lands on the shell's screen.
        drop(screen);
        result
    })
}

async fn event_loop(
    screen: &mut Screen,
    feed: &mut mpsc::Receiver<FeedEvent>,
    mut state: UiState,
) -> Result<()> {
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        state.now_ms = now_ms();
        screen.draw(|frame| render::draw(frame, &state))?;
        tokio::select! {
            event = input.next() => match event {
                Some(Ok(Event::Key(key))) => {
                    if handle_key(&mut state, key) == Flow::Quit {
                        return Ok(());
                    }
                }
                // Resizes (and anything else) just redraw, at the top of the loop.
                Some(Ok(_)) => {}
                Some(Err(source)) => {
                    return Err(Error::Io { what: "reading keys from the terminal".into(), source });
                }
                // The terminal is gone: nobody is left to show anything to.
                None => return Ok(()),
            },
            Some(news) = feed.recv() => match news {
                FeedEvent::Snapshot(snapshot) => state.ingest(*snapshot, now_ms()),
                FeedEvent::Lost { error, attempt, retry_ms } => {
                    state.link = Link::Lost { error, attempt, retry_ms };
                }
            },
            _ = tick.tick() => {}
        }
    }
}
