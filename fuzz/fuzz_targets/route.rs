//! Any request target groups into a bounded route starting with '/'.
#![no_main]
use herdwatch_protocol::route::RouteGrouper;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let target = String::from_utf8_lossy(data);
    let route = RouteGrouper::default().route(&target);
    assert!(route.starts_with('/'));
    assert!(route.len() <= 256 + '…'.len_utf8());
});
