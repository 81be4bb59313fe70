//! Arbitrary bytes as both directions of a PostgreSQL session, in calls of arbitrary size with
//! uncaptured middles and captured tails: it must never panic or grow without bound.
#![no_main]
use herdwatch_protocol::postgres::{PgSession, session::MAX_PENDING};
use libfuzzer_sys::fuzz_target;

#[path = "chunks.rs"]
mod chunks;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut session = if mode & 1 == 0 {
        PgSession::new()
    } else {
        PgSession::mid_stream()
    };
    chunks::for_each_call(rest, 37, |backend, chunk| {
        let _ = if backend {
            session.on_backend(chunk)
        } else {
            session.on_frontend(chunk)
        };
        assert!(session.in_flight() <= MAX_PENDING);
    });
});
