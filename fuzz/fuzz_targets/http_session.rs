//! Arbitrary bytes as reads and writes of one server-side HTTP connection, with uncaptured
//! middles, sometimes a captured tail, and a close at the end.
#![no_main]
use herdwatch_protocol::{Chunk, http::HttpSession};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut session = HttpSession::new();
    let mut rest = input;
    let mut ts = 0u64;
    while let Some((&ctl, after_ctl)) = rest.split_first() {
        let len = (ctl as usize & 0x1f).min(after_ctl.len());
        let (bytes, next) = after_ctl.split_at(len);
        rest = next;
        ts += 1;
        let gap = if ctl & 0x40 != 0 {
            (ctl as usize) * 53
        } else {
            0
        };
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
            let _ = session.on_read(chunk);
        } else {
            let _ = session.on_write(chunk);
        }
        assert!(session.in_flight() <= 256);
    }
    let _ = session.on_close(ts + 1);
});
