//! Arbitrary bytes cut into chunks of arbitrary size, each with an arbitrary uncaptured tail,
//! fed to both directions of a PostgreSQL session: it must never panic or grow without bound.
#![no_main]
use herdwatch_protocol::{Chunk, postgres::PgSession};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut session = if mode & 1 == 0 {
        PgSession::new()
    } else {
        PgSession::mid_stream()
    };
    let mut ts = 0u64;
    while let Some((&ctl, tail)) = rest.split_first() {
        let len = (ctl as usize & 0x3f).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        ts += 1;
        let gap = if ctl & 0x40 != 0 {
            (ctl as usize) * 37
        } else {
            0
        };
        let chunk = Chunk {
            data: bytes,
            total_len: bytes.len() + gap,
            timestamp_ns: ts,
        };
        if ctl & 0x80 == 0 {
            let _ = session.on_frontend(chunk);
        } else {
            let _ = session.on_backend(chunk);
        }
        assert!(session.in_flight() <= herdwatch_protocol::postgres::session::MAX_PENDING);
    }
});
