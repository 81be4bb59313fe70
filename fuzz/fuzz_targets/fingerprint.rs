//! Any text has a fingerprint; the same text always the same one; the summary stays bounded.
#![no_main]
use herdwatch_protocol::fingerprint::fingerprint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let a = fingerprint(&sql);
    assert!(a.summary.len() <= 255);
    assert_eq!(a, fingerprint(&sql));
});
