//! Arbitrary bytes cut into chunks of arbitrary size, each with an arbitrary uncaptured middle
//! and sometimes a captured tail, fed to both directions of a PostgreSQL session: it must never
//! panic or grow without bound.
#![no_main]
use herdwatch_protocol::{Chunk, postgres::PgSession};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    let mut session = if mode & 1 == 0 {
        PgSession::new()
    } else {
        PgSession::mid_stream()
    };
    let mut ts = 0u64;
    while let Some((&ctl, after_ctl)) = rest.split_first() {
        let len = (ctl as usize & 0x1f).min(after_ctl.len());
        let (bytes, next) = after_ctl.split_at(len);
        rest = next;
        ts += 1;
        let gap = if ctl & 0x40 != 0 {
            (ctl as usize) * 37
        } else {
            0
        };
        // Sometimes the second half of the bytes is the call's captured tail.
        let (data, tail) = if ctl & 0x20 != 0 {
            bytes.split_at(bytes.len() / 2)
        } else {
            (bytes, &[][..])
        };
        let chunk = Chunk {
            data,
            total_len: bytes.len() + gap,
            timestamp_ns: ts,
            tail,
        };
        if ctl & 0x80 == 0 {
            let _ = session.on_frontend(chunk);
        } else {
            let _ = session.on_backend(chunk);
        }
        assert!(session.in_flight() <= herdwatch_protocol::postgres::session::MAX_PENDING);
    }
});
