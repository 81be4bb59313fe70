//! The one error type of the protocol crate: what was wrong with the bytes, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("postgres: message type {kind:?} with impossible length {len}")]
    PgBadLength { kind: u8, len: i64 },
    #[error("postgres: unknown message type byte {0:#04x}")]
    PgUnknownType(u8),
    #[error("postgres: truncated {0} message")]
    PgTruncated(&'static str),
    #[error("postgres: stream lost sync after {0} uncaptured bytes inside a header")]
    PgLostSync(usize),
    #[error("http: malformed {0}")]
    HttpMalformed(&'static str),
    #[error("http: {0} exceeds the parser's limit")]
    HttpTooLarge(&'static str),
}
