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
            match self.state {
                State::Head => {
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
                        return;
                    }
                    if self.buf.is_empty() {
                        // Tolerate stray CRLFs between messages (RFC 9112 §2.2).
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            continue;
                        }
                        self.message_started_ns = Some(ts);
                        // The whole head in this call (the usual case): parse it in place, in
                        // the same pass that finds its end.
                        let window = &data[..data.len().min(MAX_HEAD)];
                        if let (head, Some(end)) = scan_head(window) {
                            let parsed = Parsed {
                                head,
                                truncated: false,
                                started_ns: self.message_started_ns.take().unwrap_or(ts),
                            };
                            data = &data[end..];
                            match on_head(parsed) {
                                Ok(body) => self.begin_body(body, ts, on_end),
                                Err(e) => {
                                    errors.push(e);
                                    self.state = State::RestOfCall;
                                }
                            }
                            continue;
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
                            data = &data[used..];
                            let parsed = Parsed {
                                head: scan_head(&self.buf[..end]).0,
                                truncated: false,
                                started_ns: self.message_started_ns.take().unwrap_or(ts),
                            };
                            let parsed_body = on_head(parsed);
                            self.buf.clear();
                            match parsed_body {
                                Ok(body) => self.begin_body(body, ts, on_end),
                                Err(e) => {
                                    errors.push(e);
                                    self.state = State::RestOfCall;
                                }
                            }
                        }
                        None if self.buf.len() >= MAX_HEAD => {
                            errors.push(ProtocolError::HttpTooLarge("head"));
                            self.buf.clear();
                            self.message_started_ns = None;
                            self.state = State::RestOfCall;
                        }
                        None => data = &data[take..],
                    }
                }
                State::Fixed { remaining } => {
                    let left = consume_body(remaining, &mut data, &mut gap);
                    if left == 0 {
                        on_end(ts);
                        self.state = State::Head;
                    } else {
                        self.state = State::Fixed { remaining: left };
                        return;
                    }
                }
                State::ChunkSize => {
                    if data.is_empty() {
                        if gap > 0 {
                            // A size line we cannot read: end the message with this call.
                            on_end(ts);
                            self.buf.clear();
                            self.state = State::Head;
                        }
                        return;
                    }
                    // Up to LF, not CRLF: the CR may have ended the previous call.
                    match memchr::memchr(b'\n', data) {
                        Some(pos) => {
                            self.buf.extend_from_slice(&data[..pos]);
                            data = &data[pos + 1..];
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
                        }
                        None => {
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
                            return;
                        }
                    }
                }
                State::ChunkData { remaining } => {
                    let left = consume_body(remaining, &mut data, &mut gap);
                    if left == 0 {
                        self.state = State::ChunkSize;
                    } else {
                        self.state = State::ChunkData { remaining: left };
                        return;
                    }
                }
                State::Trailers => {
                    // Usually just CRLF; otherwise trailer lines until an empty one.
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
                            // Pipelined bytes after the trailers: parse them as the next message.
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
                    return;
                }
                State::UntilClose => return,
                State::RestOfCall => {
                    self.state = State::Head;
                    self.buf.clear();
                    return;
                }
            }
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

/// Takes up to `remaining` body bytes from the captured `data`, then from the uncaptured
/// `gap`; returns how many are still to come.
fn consume_body(remaining: u64, data: &mut &[u8], gap: &mut u64) -> u64 {
    let from_data = remaining.min(data.len() as u64);
    *data = &data[from_data as usize..];
    let from_gap = (remaining - from_data).min(*gap);
    *gap -= from_gap;
    remaining - from_data - from_gap
}

/// Searchers built once: `memmem::find` would build one per call, on every message.
static END_OF_HEAD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
static END_OF_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n"));

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    match needle {
        b"\r\n\r\n" => END_OF_HEAD.find(hay),
        b"\r\n" => END_OF_LINE.find(hay),
        _ => memchr::memmem::find(hay, needle),
    }
}

/// A message head, parsed in place: the first line and the few headers herdwatch needs.
#[derive(Default)]
struct Head<'a> {
    first_line: &'a [u8],
    host: Option<&'a [u8]>,
    content_length: Option<u64>,
    chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// `a` equals `b` ignoring ASCII case, `b` in lower case; text sent exactly so (the usual
/// case) is compared as a whole instead of byte by byte.
fn same_ignoring_case(a: &[u8], lower: &[u8]) -> bool {
    a == lower || a.eq_ignore_ascii_case(lower)
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|c| *c == b',')
        .any(|t| same_ignoring_case(trim(t), token))
}

/// Parses a head line by line without allocating, up to the empty line that ends it (CRLF
/// CRLF, as the framer's buffered path looks for): returns the head and, when that line was
/// found, where the head ends. Heads are parsed once per request and response, on the hot
/// path, so finding the end and reading the headers is one pass.
fn scan_head(bytes: &[u8]) -> (Head<'_>, Option<usize>) {
    let mut head = Head::default();
    let mut start = 0;
    let mut first = true;
    // The previous line ended with CRLF: an empty CRLF line now ends the head.
    let mut after_crlf = false;
    while start < bytes.len() {
        let newline = memchr::memchr(b'\n', &bytes[start..]).map(|i| start + i);
        let end = newline.unwrap_or(bytes.len());
        let raw = &bytes[start..end];
        let (line, crlf) = match raw.strip_suffix(b"\r") {
            Some(line) => (line, newline.is_some()),
            None => (raw, false),
        };
        if first {
            head.first_line = line;
            first = false;
        } else if line.is_empty() && crlf && after_crlf {
            return (head, Some(end + 1));
        } else {
            header_line(&mut head, line);
        }
        after_crlf = crlf;
        match newline {
            Some(i) => start = i + 1,
            None => break,
        }
    }
    (head, None)
}

/// Host, Connection, Content-Length, Transfer-Encoding: every other header is skipped on its
/// first letter, before looking for its colon.
fn header_line<'a>(head: &mut Head<'a>, line: &'a [u8]) {
    if !matches!(line.first().map(|b| b | 0x20), Some(b'h' | b'c' | b't')) {
        return;
    }
    let Some(colon) = memchr::memchr(b':', line) else {
        return;
    };
    let name = trim(&line[..colon]);
    // Dispatch on the length first: most headers are none of the four we read. Names are
    // compared whole as usually written (canonical or lower case) before byte by byte.
    let (canonical, lower): (&[u8], &[u8]) = match name.len() {
        4 => (b"Host", b"host"),
        10 => (b"Connection", b"connection"),
        14 => (b"Content-Length", b"content-length"),
        17 => (b"Transfer-Encoding", b"transfer-encoding"),
        _ => return,
    };
    if name != canonical && !same_ignoring_case(name, lower) {
        return;
    }
    let value = trim(&line[colon + 1..]);
    match name.len() {
        4 => head.host = Some(value),
        14 => {
            head.content_length = crate::decimal(value);
        }
        17 => head.chunked |= has_token(value, b"chunked"),
        _ => {
            head.connection_close |= has_token(value, b"close");
            head.connection_keep_alive |= has_token(value, b"keep-alive");
        }
    }
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// The next space-separated word of `line` and what follows it.
fn word(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', line) {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &[]),
    }
}

fn parse_request(p: &Parsed) -> Result<(RequestHead, Body), ProtocolError> {
    let head = &p.head;
    let malformed = ProtocolError::HttpMalformed("request line");
    if memchr::memchr(b' ', head.first_line).is_none() {
        return Err(malformed);
    }
    let (method, rest) = word(head.first_line);
    let (target, rest) = word(rest);
    let (version, _) = word(rest);
    let version: &[u8] = match version {
        b"" if p.truncated => b"HTTP/1.1",
        v => v,
    };
    let method = match method {
        // The usual methods need no checks.
        b"GET" => "GET",
        b"POST" => "POST",
        b"PUT" => "PUT",
        b"DELETE" => "DELETE",
        b"HEAD" => "HEAD",
        b"PATCH" => "PATCH",
        b"OPTIONS" => "OPTIONS",
        // A token is ASCII, so this cannot fail once `is_token` holds.
        other => match std::str::from_utf8(other) {
            Ok(m) if is_token(m.as_bytes()) => m,
            _ => return Err(malformed),
        },
    };
    let target = crate::lossy(target);
    if !version.starts_with(b"HTTP/1.")
        || !(target.starts_with('/')
            || &*target == "*"
            || target.contains("://")
            || method == "CONNECT")
    {
        return Err(malformed);
    }
    let http10 = version == b"HTTP/1.0";
    let keep_alive = if http10 {
        head.connection_keep_alive
    } else {
        !head.connection_close
    };
    let mut end = target.len().min(MAX_TARGET);
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    let target = compact_str::CompactString::new(&target[..end]);
    let body = if head.chunked {
        Body::Chunked
    } else {
        head.content_length.map_or(Body::None, Body::Length)
    };
    Ok((
        RequestHead {
            method: method.into(),
            target,
            host: head.host.map(crate::inline_text),
            keep_alive,
            head_truncated: p.truncated,
        },
        if p.truncated { Body::None } else { body },
    ))
}

/// `answers_head`: the response is to a HEAD request (no body, whatever it declares).
fn parse_response(p: &Parsed, answers_head: bool) -> Result<(u16, Body, bool), ProtocolError> {
    let head = &p.head;
    let (version, rest) = word(head.first_line);
    let (status, _) = word(rest);
    let status: u16 = crate::decimal(status)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or(ProtocolError::HttpMalformed("status line"))?;
    if !version.starts_with(b"HTTP/1.") || !(100..=999).contains(&status) {
        return Err(ProtocolError::HttpMalformed("status line"));
    }
    let close = head.connection_close || (version == b"HTTP/1.0" && !head.connection_keep_alive);
    let no_body = answers_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body || p.truncated {
        Body::None
    } else if head.chunked {
        Body::Chunked
    } else if let Some(n) = head.content_length {
        Body::Length(n)
    } else {
        Body::UntilClose
    };
    Ok((status, body, close))
}

#[derive(Debug)]
struct Open {
    request: RequestHead,
    started_ns: u64,
    status: Option<u16>,
    response_started_ns: Option<u64>,
}

/// One server-side HTTP/1.x connection.
#[derive(Debug)]
pub struct HttpSession {
    requests: Framer,
    responses: Framer,
    /// Requests read and not yet fully answered, oldest first (pipelining).
    open: VecDeque<Open>,
    /// Requests dropped because too many were pipelined without answers.
    pub overflow: u64,
}

const MAX_OPEN: usize = 256;

impl HttpSession {
    pub fn new() -> Self {
        Self {
            requests: Framer::new(),
            responses: Framer::new(),
            open: VecDeque::new(),
            overflow: 0,
        }
    }

    /// Makes this session a new one for another connection, keeping its buffers (emptied)
    /// so the new connection allocates nothing for them.
    pub fn reuse(&mut self) {
        let mut fresh = Self::new();
        for (old, new) in [
            (&mut self.requests, &mut fresh.requests),
            (&mut self.responses, &mut fresh.responses),
        ] {
            if old.buf.capacity() <= crate::KEEP_ON_REUSE {
                old.buf.clear();
                new.buf = std::mem::take(&mut old.buf);
            }
        }
        if self.open.capacity() <= 16 {
            self.open.clear();
            fresh.open = std::mem::take(&mut self.open);
        }
        *self = fresh;
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }

    /// Bytes the server read from the client.
    pub fn on_read(&mut self, chunk: Chunk<'_>) -> Vec<HttpEvent> {
        let mut events = Vec::new();
        self.on_read_into(chunk, &mut events);
        events
    }

    /// As [`Self::on_read`], appending to `events`: a caller reusing one vector allocates
    /// nothing per call for the events.
    pub fn on_read_into(&mut self, chunk: Chunk<'_>, events: &mut Vec<HttpEvent>) {
        let mut errors = Vec::new();
        let open = &mut self.open;
        let overflow = &mut self.overflow;
        self.requests.push(
            chunk,
            &mut |p| {
                let (request, body) = parse_request(&p)?;
                if open.len() >= MAX_OPEN {
                    open.pop_front();
                    *overflow += 1;
                }
                events.push(HttpEvent::RequestStarted {
                    request: request.clone(),
                    started_ns: p.started_ns,
                });
                open.push_back(Open {
                    request,
                    started_ns: p.started_ns,
                    status: None,
                    response_started_ns: None,
                });
                Ok(body)
            },
            &mut |_| {},
            &mut errors,
        );
        events.extend(errors.into_iter().map(HttpEvent::Error));
    }

    /// Bytes the server wrote to the client.
    pub fn on_write(&mut self, chunk: Chunk<'_>) -> Vec<HttpEvent> {
        let mut events = Vec::new();
        self.on_write_into(chunk, &mut events);
        events
    }

    /// As [`Self::on_write`], appending to `events`.
    pub fn on_write_into(&mut self, chunk: Chunk<'_>, events: &mut Vec<HttpEvent>) {
        let mut errors = Vec::new();
        // Both callbacks need the open requests: the head sets the front's status, the end
        // of that response pops it.
        let shared = std::cell::RefCell::new((&mut self.open, events));
        self.responses.push(
            chunk,
            &mut |p| {
                let mut guard = shared.borrow_mut();
                let open = &mut guard.0;
                let answers_head = open.front().is_some_and(|o| o.request.method == "HEAD");
                let (status, body, _close) = parse_response(&p, answers_head)?;
                let interim = (100..200).contains(&status) && status != 101;
                if let Some(front) = open.front_mut() {
                    // 1xx interim responses (100 Continue) precede the real one.
                    if !interim {
                        front.status = Some(status);
                    }
                    front.response_started_ns.get_or_insert(p.started_ns);
                }
                Ok(if interim { Body::None } else { body })
            },
            &mut |end| {
                let mut guard = shared.borrow_mut();
                let (open, done) = &mut *guard;
                if open.front().is_some_and(|o| o.status.is_some())
                    && let Some(o) = open.pop_front()
                {
                    done.push(HttpEvent::Exchange(Exchange {
                        request: o.request,
                        status: o.status,
                        started_ns: o.started_ns,
                        response_started_ns: o.response_started_ns,
                        finished_ns: end,
                    }));
                }
            },
            &mut errors,
        );
        let (_, events) = shared.into_inner();
        events.extend(errors.into_iter().map(HttpEvent::Error));
    }

    /// The connection closed: a body that runs until close ends here; requests never answered
    /// are reported without a status.
    pub fn on_close(&mut self, timestamp_ns: u64) -> Vec<HttpEvent> {
        let answered_by_close = self.responses.in_body_until_close();
        self.open
            .drain(..)
            .enumerate()
            .map(|(k, o)| {
                HttpEvent::Exchange(Exchange {
                    request: o.request,
                    // Only the response being written can have been ended by the close.
                    status: o.status.filter(|_| k == 0 && answered_by_close),
                    started_ns: o.started_ns,
                    response_started_ns: o.response_started_ns,
                    finished_ns: timestamp_ns,
                })
            })
            .collect()
    }
}

impl Default for HttpSession {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchanges(ev: Vec<HttpEvent>) -> Vec<Exchange> {
        ev.into_iter()
            .filter_map(|e| {
                if let HttpEvent::Exchange(x) = e {
                    Some(x)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn heads_parsed_in_place_equal_heads_collected_across_reads() {
        // Whole in one read (parsed where it lies, its end found in the same pass) or cut
        // anywhere (collected in the framer's buffer): the same requests and exchanges.
        let requests: &[u8] =
            b"POST /orders/7?x=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\nabc\
            GET /a HTTP/1.0\r\nConnection: keep-alive\r\nX-Odd: \n\r\n\r\n\
            GET /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let responses: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok\
            HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
        let run = |cut_req: usize, cut_resp: usize| {
            let mut s = HttpSession::new();
            let mut ev = s.on_read(Chunk::whole(&requests[..cut_req], 1));
            ev.extend(s.on_read(Chunk::whole(&requests[cut_req..], 1)));
            ev.extend(s.on_write(Chunk::whole(&responses[..cut_resp], 2)));
            ev.extend(s.on_write(Chunk::whole(&responses[cut_resp..], 2)));
            ev
        };
        let whole = run(requests.len(), responses.len());
        let got: Vec<_> = exchanges(whole.clone())
            .iter()
            .map(|x| (x.request.target.to_string(), x.status))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/orders/7?x=1".to_string(), Some(201)),
                ("/a".to_string(), Some(200)),
                ("/b".to_string(), Some(500)),
            ]
        );
        for cut in 0..requests.len() {
            assert_eq!(run(cut, responses.len()), whole, "requests cut at {cut}");
        }
        for cut in 0..responses.len() {
            assert_eq!(run(requests.len(), cut), whole, "responses cut at {cut}");
        }
    }

    #[test]
    fn a_reused_session_is_a_new_session() {
        let exchange = |s: &mut HttpSession| {
            let mut ev = s.on_read(Chunk::whole(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 1));
            ev.extend(s.on_write(Chunk::whole(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                2,
            )));
            ev
        };
        let fresh = exchange(&mut HttpSession::new());
        // Left with a request unanswered, a head half read and a chunked body half written.
        let mut used = HttpSession::new();
        used.on_read(Chunk::whole(
            b"GET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nHo",
            1,
        ));
        used.on_write(Chunk::whole(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            2,
        ));
        used.reuse();
        assert_eq!(used.in_flight(), 0);
        assert_eq!(exchange(&mut used), fresh);
    }

    #[test]
    fn keep_alive_exchanges_with_timing() {
        let mut s = HttpSession::new();
        let ev = s.on_read(Chunk::whole(
            b"GET /orders/12?x=1 HTTP/1.1\r\nHost: shop\r\n\r\n",
            10,
        ));
        assert!(
            matches!(&ev[0], HttpEvent::RequestStarted { request, started_ns: 10 } if request.target == "/orders/12?x=1" && request.host.as_deref() == Some("shop"))
        );
        let x = exchanges(s.on_write(Chunk::whole(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            30,
        )));
        assert_eq!(x.len(), 1);
        assert_eq!(
            (x[0].status, x[0].started_ns, x[0].finished_ns),
            (Some(200), 10, 30)
        );
        s.on_read(Chunk::whole(
            b"POST /api/checkout HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            40,
        ));
        // Head and body written in two calls.
        assert!(
            exchanges(s.on_write(Chunk::whole(
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n",
                50
            )))
            .is_empty()
        );
        let x = exchanges(s.on_write(Chunk::whole(b"ok", 60)));
        assert_eq!(
            (
                x[0].request.method.as_str(),
                x[0].status,
                x[0].response_started_ns,
                x[0].finished_ns
            ),
            ("POST", Some(201), Some(50), 60)
        );
    }

    #[test]
    fn pipelined_requests_in_one_read_and_responses_in_one_write() {
        let mut s = HttpSession::new();
        let ev = s.on_read(Chunk::whole(
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n",
            1,
        ));
        assert_eq!(ev.len(), 3);
        assert_eq!(s.in_flight(), 3);
        let x = exchanges(s.on_write(Chunk::whole(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",
            2,
        )));
        let got: Vec<_> = x
            .iter()
            .map(|e| (e.request.target.as_str(), e.status))
            .collect();
        assert_eq!(
            got,
            vec![("/a", Some(200)), ("/b", Some(404)), ("/c", Some(200))],
            "HEAD response has no body"
        );
    }

    #[test]
    fn chunked_response_across_writes_and_uncaptured_body() {
        let mut s = HttpSession::new();
        s.on_read(Chunk::whole(b"GET /stream HTTP/1.1\r\n\r\n", 1));
        assert!(
            exchanges(s.on_write(Chunk::whole(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                2
            )))
            .is_empty()
        );
        let x = exchanges(s.on_write(Chunk::whole(b"0\r\n\r\n", 3)));
        assert_eq!((x[0].status, x[0].finished_ns), (Some(200), 3));
        // A 1 MB body of which only 100 bytes were captured still ends the exchange.
        s.on_read(Chunk::whole(b"GET /big HTTP/1.1\r\n\r\n", 4));
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        let mut data = head.to_vec();
        data.resize(100, b'x');
        let x = exchanges(s.on_write(Chunk {
            data: &data,
            total_len: head.len() + 1_000_000,
            timestamp_ns: 5,
            tail: &[],
        }));
        assert_eq!(x[0].request.target, "/big");
    }

    #[test]
    fn a_chunked_body_ends_in_the_captured_tail() {
        let mut s = HttpSession::new();
        s.on_read(Chunk::whole(b"GET /report HTTP/1.1\r\n\r\n", 1));
        let mut body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 0x1000));
        body.extend(b"\r\n0\r\n\r\n");
        let tail = &body[body.len() - 64..];
        let x = exchanges(s.on_write(Chunk {
            data: &body[..200],
            total_len: body.len(),
            timestamp_ns: 2,
            tail,
        }));
        assert_eq!(
            (x.len(), x[0].status),
            (1, Some(200)),
            "the last chunk was in the tail"
        );
    }

    #[test]
    fn truncated_request_head_ends_with_its_call() {
        let mut s = HttpSession::new();
        let mut data = b"GET /api/cart HTTP/1.1\r\nCookie: ".to_vec();
        data.resize(512, b'a');
        let ev = s.on_read(Chunk {
            data: &data,
            total_len: 3000,
            timestamp_ns: 1,
            tail: &[],
        });
        assert!(
            matches!(&ev[0], HttpEvent::RequestStarted { request, .. } if request.head_truncated && request.target == "/api/cart")
        );
        // The next read is a new request, parsed normally.
        assert_eq!(
            s.on_read(Chunk::whole(b"GET /next HTTP/1.1\r\n\r\n", 2))
                .len(),
            1
        );
    }

    #[test]
    fn response_until_close_and_unanswered_requests() {
        let mut s = HttpSession::new();
        s.on_read(Chunk::whole(b"GET /old HTTP/1.0\r\n\r\n", 1));
        assert!(
            exchanges(s.on_write(Chunk::whole(b"HTTP/1.0 200 OK\r\n\r\nbody...", 2))).is_empty()
        );
        let x = exchanges(s.on_close(9));
        assert_eq!((x[0].status, x[0].finished_ns), (Some(200), 9));
        let mut s = HttpSession::new();
        s.on_read(Chunk::whole(b"GET /hang HTTP/1.1\r\n\r\n", 1));
        let x = exchanges(s.on_close(5));
        assert_eq!(x[0].status, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut s = HttpSession::new();
        let ev = s.on_read(Chunk::whole(
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
            1,
        ));
        assert!(ev.iter().any(|e| matches!(e, HttpEvent::Error(_))));
        let ev = s.on_read(Chunk::whole(&[b'A'; MAX_HEAD + 10], 2));
        assert!(
            ev.iter()
                .any(|e| matches!(e, HttpEvent::Error(ProtocolError::HttpTooLarge(_))))
        );
        assert!(
            s.on_write(Chunk::whole(b"HTTP/1.1 abc\r\n\r\n", 3))
                .iter()
                .any(|e| matches!(e, HttpEvent::Error(_)))
        );
        // And the session still works afterwards.
        assert_eq!(
            s.on_read(Chunk::whole(b"GET / HTTP/1.1\r\n\r\n", 4)).len(),
            1
        );
    }
}
