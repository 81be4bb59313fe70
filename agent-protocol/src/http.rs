//! HTTP/1.1 as a server sees it: requests read, responses written, on one connection.
//! Handles keep-alive (many exchanges per connection), pipelining (several requests per read),
//! Content-Length and chunked bodies, HEAD/1xx/204/304 responses without bodies, and bodies
//! that end at close.
//!
//! The kernel captures a prefix of each call. Bodies are stepped over by their declared
//! length. If a head itself is cut off (huge cookies), the message is taken to end with that
//! call — clients and servers write a head in one call — and marked `head_truncated`.
use std::collections::VecDeque;

use crate::{Chunk, ProtocolError};

mod head;
mod session;

use head::{Head, find, parse_request, parse_response, scan_head, trim};
pub use session::HttpSession;

/// A head larger than this is not HTTP we can use (real servers cap near 8–16 KiB too).
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_TARGET: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Inline (no allocation): methods are short, and a head is cloned into its
    /// `RequestStarted` event.
    pub method: compact_str::CompactString,
    /// Path and query as sent, cut at 2048 bytes. Inline up to 24 bytes (`/orders/123`):
    /// a head is cloned into its `RequestStarted` event.
    pub target: compact_str::CompactString,
    pub host: Option<compact_str::CompactString>,
    pub keep_alive: bool,
    pub head_truncated: bool,
}

/// A finished request/response exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: RequestHead,
    /// None when the connection closed before a response.
    pub status: Option<u16>,
    /// First request byte read.
    pub started_ns: u64,
    /// First response byte written.
    pub response_started_ns: Option<u64>,
    /// Last response byte written (or the close).
    pub finished_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpEvent {
    /// A request head was read: the request is now in flight.
    RequestStarted {
        request: RequestHead,
        started_ns: u64,
    },
    Exchange(Exchange),
    Error(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// After one state's step: go on with the rest of the call, or wait for the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Next,
    Done,
}

#[derive(Debug)]
enum State {
    Head,
    Fixed {
        remaining: u64,
    },
    /// Chunked: reading a size line (buffered) or `remaining` data bytes then CRLF.
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    /// After the 0-size chunk: trailers until an empty line.
    Trailers,
    UntilClose,
    /// Skip the rest of this call (a truncated head, or lost chunk framing).
    RestOfCall,
}

/// One direction's message framing.
#[derive(Debug)]
struct Framer {
    state: State,
    buf: Vec<u8>,
    message_started_ns: Option<u64>,
}

struct Parsed<'a> {
    /// The head's first line and the headers herdwatch reads, borrowed from the call when it
    /// holds the whole head (the common case, no copy), else from the framer's buffer.
    head: Head<'a>,
    truncated: bool,
    started_ns: u64,
}

impl Framer {
    fn new() -> Self {
        Self {
            state: State::Head,
            buf: Vec::new(),
            message_started_ns: None,
        }
    }

    /// Feeds bytes. `on_head` is called with each complete head and returns the body kind;
    /// `on_end` with each message's end timestamp.
    fn push(
        &mut self,
        chunk: Chunk<'_>,
        on_head: &mut dyn FnMut(Parsed<'_>) -> Result<Body, ProtocolError>,
        on_end: &mut dyn FnMut(u64),
        errors: &mut Vec<ProtocolError>,
    ) {
        let prefix = Chunk::prefix(
            chunk.data,
            chunk.total_len.saturating_sub(chunk.tail.len()),
            chunk.timestamp_ns,
        );
        self.push_prefix(prefix, on_head, on_end, errors);
        if chunk.tail.is_empty() {
            return;
        }
        // The tail continues the stream only where the gap ended inside a body at a known place.
        let continues = match self.state {
            State::Fixed { remaining } => remaining == chunk.tail.len() as u64,
            State::ChunkData { .. } => true,
            _ => false,
        };
        if continues {
            self.push_prefix(
                Chunk::whole(chunk.tail, chunk.timestamp_ns),
                on_head,
                on_end,
                errors,
            );
        }
    }

    fn push_prefix(
        &mut self,
        chunk: Chunk<'_>,
        on_head: &mut dyn FnMut(Parsed<'_>) -> Result<Body, ProtocolError>,
        on_end: &mut dyn FnMut(u64),
        errors: &mut Vec<ProtocolError>,
    ) {
        let mut data = chunk.data;
        let mut gap = chunk.gap() as u64;
        let ts = chunk.timestamp_ns;
        loop {
            let step = match self.state {
                State::Head => self.head_step(&mut data, gap, ts, on_head, on_end, errors),
                State::Fixed { remaining } => {
                    let left = consume_body(remaining, &mut data, &mut gap);
                    if left == 0 {
                        on_end(ts);
                        self.state = State::Head;
                        Step::Next
                    } else {
                        self.state = State::Fixed { remaining: left };
                        Step::Done
                    }
                }
                State::ChunkSize => self.chunk_size_step(&mut data, gap, ts, on_end, errors),
                State::ChunkData { remaining } => {
                    let left = consume_body(remaining, &mut data, &mut gap);
                    if left == 0 {
                        self.state = State::ChunkSize;
                        Step::Next
                    } else {
                        self.state = State::ChunkData { remaining: left };
                        Step::Done
                    }
                }
                State::Trailers => {
                    self.trailers_step(data, gap, ts, on_head, on_end, errors);
                    Step::Done
                }
                State::UntilClose => Step::Done,
                State::RestOfCall => {
                    self.state = State::Head;
                    self.buf.clear();
                    Step::Done
                }
            };
            if step == Step::Done {
                return;
            }
        }
    }

    /// Reads a message head: in place when the call holds all of it (the usual case), else
    /// gathered in `buf` across calls, up to `MAX_HEAD`.
    fn head_step(
        &mut self,
        data: &mut &[u8],
        gap: u64,
        ts: u64,
        on_head: &mut dyn FnMut(Parsed<'_>) -> Result<Body, ProtocolError>,
        on_end: &mut dyn FnMut(u64),
        errors: &mut Vec<ProtocolError>,
    ) -> Step {
        if data.is_empty() {
            if gap > 0 && !self.buf.is_empty() {
                // The head continues in bytes we did not capture.
                let parsed = Parsed {
                    head: scan_head(&self.buf).0,
                    truncated: true,
                    started_ns: self.message_started_ns.take().unwrap_or(ts),
                };
                if let Err(e) = on_head(parsed) {
                    errors.push(e);
                }
                self.buf.clear();
                on_end(ts);
                self.state = State::Head;
            }
            return Step::Done;
        }
        if self.buf.is_empty() {
            // Tolerate stray CRLFs between messages (RFC 9112 §2.2).
            *data = &data[leading_line_ends(data)..];
            if data.is_empty() {
                return Step::Next;
            }
            self.message_started_ns = Some(ts);
            // The whole head in this call: parse it in place, in the same pass that finds
            // its end.
            let call = *data;
            let window = &call[..call.len().min(MAX_HEAD)];
            if let (head, Some(end)) = scan_head(window) {
                let parsed = Parsed {
                    head,
                    truncated: false,
                    started_ns: self.message_started_ns.take().unwrap_or(ts),
                };
                *data = &call[end..];
                self.after_head(on_head(parsed), ts, on_end, errors);
                return Step::Next;
            }
        }
        let before = self.buf.len();
        let room = MAX_HEAD.saturating_sub(before);
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        let search_from = before.saturating_sub(3);
        match find(&self.buf[search_from..], b"\r\n\r\n") {
            Some(pos) => {
                let end = search_from + pos + 4;
                let used = end - before;
                *data = &data[used..];
                let parsed = Parsed {
                    head: scan_head(&self.buf[..end]).0,
                    truncated: false,
                    started_ns: self.message_started_ns.take().unwrap_or(ts),
                };
                let parsed_body = on_head(parsed);
                self.buf.clear();
                self.after_head(parsed_body, ts, on_end, errors);
            }
            None if self.buf.len() >= MAX_HEAD => {
                errors.push(ProtocolError::HttpTooLarge("head"));
                self.buf.clear();
                self.message_started_ns = None;
                self.state = State::RestOfCall;
            }
            None => *data = &data[take..],
        }
        Step::Next
    }

    /// A head was parsed: read its body, or skip the rest of the call after a bad head.
    fn after_head(
        &mut self,
        parsed_body: Result<Body, ProtocolError>,
        ts: u64,
        on_end: &mut dyn FnMut(u64),
        errors: &mut Vec<ProtocolError>,
    ) {
        match parsed_body {
            Ok(body) => self.begin_body(body, ts, on_end),
            Err(e) => {
                errors.push(e);
                self.state = State::RestOfCall;
            }
        }
    }

    /// Reads a chunk-size line (up to LF, not CRLF: the CR may have ended the previous call).
    fn chunk_size_step(
        &mut self,
        data: &mut &[u8],
        gap: u64,
        ts: u64,
        on_end: &mut dyn FnMut(u64),
        errors: &mut Vec<ProtocolError>,
    ) -> Step {
        if data.is_empty() {
            if gap > 0 {
                // A size line we cannot read: end the message with this call.
                on_end(ts);
                self.buf.clear();
                self.state = State::Head;
            }
            return Step::Done;
        }
        let Some(pos) = memchr::memchr(b'\n', data) else {
            self.buf.extend_from_slice(data);
            if self.buf.len() > 1024 {
                errors.push(ProtocolError::HttpTooLarge("chunk size line"));
                self.buf.clear();
                on_end(ts);
                self.state = State::Head;
            } else if gap > 0 {
                // The rest of the size line was not captured.
                self.buf.clear();
                on_end(ts);
                self.state = State::Head;
            }
            return Step::Done;
        };
        self.buf.extend_from_slice(&data[..pos]);
        *data = &data[pos + 1..];
        let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        let size = line.split(|b| *b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(trim(size))
            .ok()
            .and_then(|text| u64::from_str_radix(text, 16).ok());
        self.buf.clear();
        match size {
            Some(0) => self.state = State::Trailers,
            Some(n) => {
                self.state = State::ChunkData {
                    remaining: n.saturating_add(2),
                }
            }
            None => {
                errors.push(ProtocolError::HttpMalformed("chunk size"));
                on_end(ts);
                self.state = State::RestOfCall;
            }
        }
        Step::Next
    }

    /// Reads a chunked body's trailers: usually just CRLF, otherwise lines until an empty
    /// one. Pipelined bytes after them are the next message. Always the call's last step.
    fn trailers_step(
        &mut self,
        data: &[u8],
        gap: u64,
        ts: u64,
        on_head: &mut dyn FnMut(Parsed<'_>) -> Result<Body, ProtocolError>,
        on_end: &mut dyn FnMut(u64),
        errors: &mut Vec<ProtocolError>,
    ) {
        self.buf.extend_from_slice(data);
        if self.buf.starts_with(b"\r\n") || find(&self.buf, b"\r\n\r\n").is_some() {
            let end = if self.buf.starts_with(b"\r\n") {
                2
            } else {
                find(&self.buf, b"\r\n\r\n").map_or(0, |p| p + 4)
            };
            let rest = self.buf.split_off(end.min(self.buf.len()));
            self.buf.clear();
            on_end(ts);
            self.state = State::Head;
            if !rest.is_empty() {
                self.push_prefix(
                    Chunk {
                        data: &rest,
                        total_len: rest.len() + gap as usize,
                        timestamp_ns: ts,
                        tail: &[],
                    },
                    on_head,
                    on_end,
                    errors,
                );
            }
            return;
        }
        if gap > 0 || self.buf.len() > MAX_HEAD {
            self.buf.clear();
            on_end(ts);
            self.state = State::Head;
        }
    }

    fn begin_body(&mut self, body: Body, ts: u64, on_end: &mut dyn FnMut(u64)) {
        self.state = match body {
            Body::None | Body::Length(0) => {
                on_end(ts);
                State::Head
            }
            Body::Length(n) => State::Fixed { remaining: n },
            Body::Chunked => State::ChunkSize,
            Body::UntilClose => State::UntilClose,
        };
    }

    fn in_body_until_close(&self) -> bool {
        matches!(self.state, State::UntilClose)
    }
}

/// How many CR and LF bytes `data` starts with.
fn leading_line_ends(data: &[u8]) -> usize {
    data.iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

/// Takes up to `remaining` body bytes from the captured `data`, then from the uncaptured
/// `gap`; returns how many are still to come.
fn consume_body(remaining: u64, data: &mut &[u8], gap: &mut u64) -> u64 {
    let from_data = remaining.min(data.len() as u64);
    *data = &data[from_data as usize..];
    let from_gap = (remaining - from_data).min(*gap);
    *gap -= from_gap;
    remaining - from_data - from_gap
}

#[cfg(test)]
mod tests;
