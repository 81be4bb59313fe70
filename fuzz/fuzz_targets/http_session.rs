//! Arbitrary bytes as reads and writes of one server-side HTTP connection, with uncaptured
//! middles, captured tails and a close at the end.
#![no_main]
use herdwatch_protocol::http::HttpSession;
use libfuzzer_sys::fuzz_target;

#[path = "chunks.rs"]
mod chunks;

fuzz_target!(|input: &[u8]| {
    let mut session = HttpSession::new();
    let last = chunks::for_each_call(input, 53, |write, chunk| {
        let _ = if write {
            session.on_write(chunk)
        } else {
            session.on_read(chunk)
        };
        assert!(session.in_flight() <= 256);
    });
    let _ = session.on_close(last + 1);
});
