//! What herdwatch understands of the bytes it sees on sockets. Pure functions and state
//! machines: bytes and timestamps in, typed events out; no I/O, no clocks, no panics on any
//! input (each parser has a fuzz target in `fuzz/`).
//!
//! The kernel captures only a prefix of each read or write, so every stream parser takes
//! [`Chunk`]s: the captured bytes plus the call's real length. Bytes that were not captured are
//! a gap the parsers step over using the protocol's own length fields.
pub mod error;
pub mod fingerprint;
pub mod http;
pub mod postgres;
pub mod route;

/// Short strings (names, methods) kept inline; re-exported so callers name the same type.
pub use compact_str::CompactString;
pub use error::ProtocolError;

/// Buffer bytes a session reused for another connection keeps; larger buffers are freed.
pub(crate) const KEEP_ON_REUSE: usize = 4096;

/// Bytes as text, invalid UTF-8 replaced. `str::from_utf8` first: its ASCII fast path is much
/// quicker than `from_utf8_lossy`'s chunk walk on the valid text that nearly all of it is.
pub(crate) fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A decimal number written in ASCII digits (a Content-Length, a status code): None when
/// empty, not all digits, or past u64.
pub(crate) fn decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Bytes as an inline string; invalid UTF-8 is replaced (lossy), valid text takes the fast path.
pub(crate) fn inline_text(bytes: &[u8]) -> CompactString {
    if bytes.is_empty() {
        // The unnamed statement and portal: the most common name of all.
        return CompactString::default();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => CompactString::new(text),
        Err(_) => CompactString::from_utf8_lossy(bytes),
    }
}

/// One read or write on a socket as the kernel saw it: a captured prefix, bytes not captured,
/// and possibly the captured last bytes (`tail`).
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// The captured prefix of the payload.
    pub data: &'a [u8],
    /// How many bytes the call really moved (≥ `data.len() + tail.len()`).
    pub total_len: usize,
    /// When the call completed, ns (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// The payload's last bytes, when the prefix did not reach them (may be empty).
    pub tail: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// A fully captured chunk.
    pub fn whole(data: &'a [u8], timestamp_ns: u64) -> Self {
        Self {
            data,
            total_len: data.len(),
            timestamp_ns,
            tail: &[],
        }
    }

    /// A prefix of `total_len` bytes with nothing else captured.
    pub fn prefix(data: &'a [u8], total_len: usize, timestamp_ns: u64) -> Self {
        Self {
            data,
            total_len,
            timestamp_ns,
            tail: &[],
        }
    }

    /// Bytes moved but not captured (between the prefix and the tail).
    pub fn gap(&self) -> usize {
        self.total_len
            .saturating_sub(self.data.len() + self.tail.len())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_are_digits_only_and_bounded() {
        assert_eq!(super::decimal(b"0"), Some(0));
        assert_eq!(super::decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"1 2",
            b"0x10",
            b"18446744073709551616",
        ] {
            assert_eq!(super::decimal(bad), None, "{bad:?}");
        }
    }
}
