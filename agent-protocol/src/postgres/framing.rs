//! Splitting one direction of a PostgreSQL v3 stream into messages.
//!
//! Messages may arrive several per read (pipelining), split across reads, or only partly
//! captured (the kernel copies a prefix of each call). The framer keeps the partial header and
//! a capped body between chunks, steps over uncaptured bytes with the message's own length,
//! and, if a gap swallows a header, re-synchronises at the start of a later chunk.
use crate::{Chunk, ProtocolError};

/// Which side sent the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server.
    Frontend,
    /// Server → client.
    Backend,
}

/// A whole message, its body borrowed: from the chunk itself when the message lies whole in
/// it (the usual case: no copy), else from the framer's buffer. `kind` is 0 for the untyped
/// startup-phase messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u8,
    /// The captured part of the body (at most the framer's cap; empty for kinds the session
    /// only counts).
    pub body: &'a [u8],
    /// The body length the header declared.
    pub declared_len: usize,
    /// Some of the body was not captured or exceeded the cap.
    pub truncated: bool,
    /// Timestamp of the chunk that completed the message.
    pub timestamp_ns: u64,
    /// The backend's one-byte answer to an encryption request, not a typed message.
    pub lone_byte: bool,
}

impl Message<'_> {
    pub fn to_raw(&self) -> RawMessage {
        RawMessage {
            kind: self.kind,
            body: self.body.to_vec(),
            declared_len: self.declared_len,
            truncated: self.truncated,
            timestamp_ns: self.timestamp_ns,
            lone_byte: self.lone_byte,
        }
    }
}

/// A whole message with its own copy of the body ([`Framer::push`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub kind: u8,
    /// The captured part of the body (at most the framer's cap).
    pub body: Vec<u8>,
    /// The body length the header declared.
    pub declared_len: usize,
    /// Some of the body was not captured or exceeded the cap.
    pub truncated: bool,
    /// Timestamp of the chunk that completed the message.
    pub timestamp_ns: u64,
    /// The backend's one-byte answer to an encryption request, not a typed message.
    pub lone_byte: bool,
}

const FRONTEND_TYPES: &[u8] = b"QPBDESHCXdcfpF";
const BACKEND_TYPES: &[u8] = b"RSKZTDCEN123ntsIGHWdcAVv";
/// The same as tables indexed by the type byte: checked for every message, where a search
/// of the list costs a memchr call.
static FRONTEND_TYPE: [bool; 256] = type_table(FRONTEND_TYPES);
static BACKEND_TYPE: [bool; 256] = type_table(BACKEND_TYPES);

const fn type_table(types: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < types.len() {
        table[types[i] as usize] = true;
        i += 1;
    }
    table
}
/// The protocol allows up to 1 GiB; a larger length means we are not looking at a header.
const MAX_MESSAGE: usize = 1 << 30;
/// When guessing where a message starts after lost sync, be stricter.
const MAX_RESYNC_MESSAGE: usize = 16 << 20;
/// Default cap on the body bytes kept per message.
pub const DEFAULT_BODY_CAP: usize = 16 * 1024;

#[derive(Debug)]
enum State {
    /// Collecting a header: `need` bytes total (5 typed, 4 for an untyped length).
    Header,
    /// In a body with `remaining` bytes to go.
    Body { remaining: usize },
    /// A gap hit a header: wait for the next chunk to find a message start.
    LostSync,
}

#[derive(Debug)]
pub struct Framer {
    direction: Direction,
    /// The next frontend message is untyped (startup phase: StartupMessage, SSLRequest, …).
    untyped_next: bool,
    /// The backend's next byte is a lone SSL/GSS answer ('S' or 'N').
    single_byte_next: bool,
    state: State,
    header: Vec<u8>,
    kind: u8,
    declared_len: usize,
    /// The body of a message that spans chunks, collected until it is whole (reused).
    body: Vec<u8>,
    truncated: bool,
    body_cap: usize,
    /// Chunks dropped while looking for a message start after lost sync.
    pub skipped_chunks: u64,
    last_ts: u64,
}

impl Framer {
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            untyped_next: direction == Direction::Frontend,
            single_byte_next: false,
            state: State::Header,
            header: Vec::new(),
            kind: 0,
            declared_len: 0,
            body: Vec::new(),
            truncated: false,
            body_cap: DEFAULT_BODY_CAP,
            skipped_chunks: 0,
            last_ts: 0,
        }
    }

    /// A framer that joins a stream mid-way (the agent started after the connection opened):
    /// no startup phase, and the first chunk must start at a message boundary.
    pub fn mid_stream(direction: Direction) -> Self {
        let mut f = Self::new(direction);
        f.untyped_next = false;
        f.state = State::LostSync;
        f
    }

    /// `fresh` in place of this framer, keeping this one's buffers (emptied): a framer for
    /// a new connection that allocates nothing for them.
    /// A body buffer grown past `crate::KEEP_ON_REUSE` is let go rather than kept.
    pub fn renew(&mut self, mut fresh: Self) {
        self.header.clear();
        self.body.clear();
        fresh.header = std::mem::take(&mut self.header);
        if self.body.capacity() <= crate::KEEP_ON_REUSE {
            fresh.body = std::mem::take(&mut self.body);
        }
        *self = fresh;
    }

    pub fn with_body_cap(mut self, cap: usize) -> Self {
        self.body_cap = cap;
        self
    }

    /// The frontend sent SSLRequest/GSSENCRequest: the backend answers with one byte.
    pub fn expect_single_byte(&mut self) {
        self.single_byte_next = true;
    }

    /// After a refused SSLRequest the client sends another untyped StartupMessage.
    pub fn expect_untyped(&mut self) {
        self.untyped_next = true;
    }

    fn header_len(&self) -> usize {
        if self.untyped_next { 4 } else { 5 }
    }

    /// Whether the session reads this message's body. DataRows, row and parameter
    /// descriptions, notices and acknowledgements are only counted: not buffering them keeps a
    /// result set of thousands of rows from costing an allocation each.
    fn wants_body(&self, kind: u8) -> bool {
        match self.direction {
            Direction::Frontend => matches!(kind, 0 | b'Q' | b'P' | b'B' | b'D' | b'C' | b'E'),
            Direction::Backend => matches!(kind, b'C' | b'E' | b'Z'),
        }
    }

    fn valid_type(&self, kind: u8) -> bool {
        match self.direction {
            Direction::Frontend => FRONTEND_TYPE[kind as usize],
            Direction::Backend => BACKEND_TYPE[kind as usize],
        }
    }

    /// Feeds one chunk; returns the messages it completed and any framing errors, in order.
    pub fn push(&mut self, chunk: Chunk<'_>) -> Vec<Result<RawMessage, ProtocolError>> {
        let mut out = Vec::new();
        self.push_with(chunk, |m| out.push(m.map(|m| m.to_raw())));
        out
    }

    /// As [`Self::push`], handing each message to `on` as it completes, its body borrowed
    /// (nothing copied for a message that lies whole in the chunk).
    pub fn push_with<F>(&mut self, chunk: Chunk<'_>, mut on: F)
    where
        F: FnMut(Result<Message<'_>, ProtocolError>),
    {
        let ts = chunk.timestamp_ns;
        self.last_ts = ts;
        if matches!(self.state, State::LostSync) {
            if self.looks_like_message_start(chunk.data) {
                self.state = State::Header;
                self.header.clear();
            } else if !chunk.tail.is_empty() && self.resync_in_tail(chunk.tail, ts, &mut on) {
                return;
            } else {
                self.skipped_chunks += 1;
                return;
            }
        }
        self.feed(chunk.data, ts, &mut on);
        let lost_in_gap = self.skip(chunk.gap(), &mut on);
        if !chunk.tail.is_empty() {
            if lost_in_gap {
                self.resync_in_tail(chunk.tail, ts, &mut on);
            } else {
                self.feed(chunk.tail, ts, &mut on);
            }
        }
    }

    /// A header whole in `data` (the usual case): read in place, and if the body is whole
    /// too, the message handed out without copying it. The bytes after those used; None after
    /// a bad header (sync is lost).
    fn header_in_place<'d, F>(
        &mut self,
        data: &'d [u8],
        header_len: usize,
        ts: u64,
        on: &mut F,
    ) -> Option<&'d [u8]>
    where
        F: FnMut(Result<Message<'_>, ProtocolError>),
    {
        let (kind, len) = Self::read_header(self.untyped_next, data);
        let body_len = match self.check_header(kind, len) {
            Ok(n) => n,
            Err(e) => {
                on(Err(e));
                self.lose_sync(0, &mut |_| {});
                return None;
            }
        };
        let rest = &data[header_len..];
        let Some(whole) = rest.get(..body_len) else {
            self.start_body(kind, body_len);
            return Some(rest);
        };
        let wants = self.wants_body(kind);
        self.untyped_next = false;
        on(Ok(Message {
            kind,
            body: if wants {
                &whole[..body_len.min(self.body_cap)]
            } else {
                &[]
            },
            declared_len: body_len,
            truncated: wants && body_len > self.body_cap,
            timestamp_ns: ts,
            lone_byte: false,
        }));
        Some(&rest[body_len..])
    }

    /// Consumes captured bytes.
    fn feed<F>(&mut self, mut data: &[u8], ts: u64, on: &mut F)
    where
        F: FnMut(Result<Message<'_>, ProtocolError>),
    {
        while !data.is_empty() {
            match self.state {
                State::LostSync => return,
                State::Header => {
                    if self.single_byte_next && self.header.is_empty() {
                        let (&b, rest) = data.split_first().unwrap_or((&0, &[]));
                        data = rest;
                        self.single_byte_next = false;
                        on(Ok(Message {
                            kind: b,
                            body: &[],
                            declared_len: 0,
                            truncated: false,
                            timestamp_ns: ts,
                            lone_byte: true,
                        }));
                        continue;
                    }
                    let header_len = self.header_len();
                    if self.header.is_empty() && data.len() >= header_len {
                        match self.header_in_place(data, header_len, ts, on) {
                            Some(rest) => {
                                data = rest;
                                continue;
                            }
                            None => return,
                        }
                    }
                    let need = header_len - self.header.len();
                    let take = need.min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() < header_len {
                        continue;
                    }
                    let (kind, len) = Self::read_header(self.untyped_next, &self.header);
                    match self.check_header(kind, len) {
                        Ok(body_len) => self.start_body(kind, body_len),
                        Err(e) => {
                            on(Err(e));
                            self.lose_sync(0, &mut |_| {});
                            return;
                        }
                    }
                    self.finish_if_done(ts, on);
                }
                State::Body { remaining } => {
                    let take = remaining.min(data.len());
                    let room = if self.wants_body(self.kind) {
                        self.body_cap.saturating_sub(self.body.len())
                    } else {
                        0
                    };
                    let keep = take.min(room);
                    self.body.extend_from_slice(&data[..keep]);
                    if keep < take && self.wants_body(self.kind) {
                        self.truncated = true;
                    }
                    data = &data[take..];
                    self.state = State::Body {
                        remaining: remaining - take,
                    };
                    self.finish_if_done(ts, on);
                }
            }
        }
    }

    /// Steps over `gap` uncaptured bytes. Returns true if they hid a header (sync lost).
    fn skip<F>(&mut self, mut gap: usize, on: &mut F) -> bool
    where
        F: FnMut(Result<Message<'_>, ProtocolError>),
    {
        while gap > 0 {
            match self.state {
                State::LostSync => return true,
                State::Body { remaining } => {
                    let take = remaining.min(gap);
                    gap -= take;
                    self.truncated |= self.wants_body(self.kind);
                    self.state = State::Body {
                        remaining: remaining - take,
                    };
                    // The timestamp is the chunk's; finish_if_done needs one: use the last known.
                    self.finish_if_done(self.last_ts, on);
                }
                State::Header => {
                    self.lose_sync(gap, on);
                    return true;
                }
            }
        }
        false
    }

    /// After lost sync, finds where in `tail` (the payload's last bytes) a run of whole
    /// messages starts that ends exactly at the payload's end, and parses from there.
    fn resync_in_tail<F>(&mut self, tail: &[u8], ts: u64, on: &mut F) -> bool
    where
        F: FnMut(Result<Message<'_>, ProtocolError>),
    {
        let Some(start) = (0..tail.len()).find(|&p| self.chains_to_end(&tail[p..])) else {
            return false;
        };
        self.state = State::Header;
        self.header.clear();
        self.untyped_next = false;
        self.single_byte_next = false;
        self.feed(&tail[start..], ts, on);
        true
    }

    fn chains_to_end(&self, mut bytes: &[u8]) -> bool {
        let mut messages = 0;
        while !bytes.is_empty() {
            let [kind, a, b, c, d, ..] = *bytes else {
                return false;
            };
            let len = i32::from_be_bytes([a, b, c, d]);
            if !self.valid_type(kind) || !(4..=MAX_RESYNC_MESSAGE as i32).contains(&len) {
                return false;
            }
            let whole = 1 + len as usize;
            if whole > bytes.len() {
                return false;
            }
            bytes = &bytes[whole..];
            messages += 1;
        }
        messages > 0
    }

    fn lose_sync<F>(&mut self, gap: usize, on: &mut F)
    where
        F: FnMut(Result<Message<'_>, ProtocolError>),
    {
        if gap > 0 {
            on(Err(ProtocolError::PgLostSync(gap)));
        }
        self.state = State::LostSync;
        self.header.clear();
        self.body.clear();
        self.truncated = false;
        self.untyped_next = false;
    }

    /// The type (0 when untyped) and declared length of the header at the start of `bytes`
    /// (which holds at least `header_len()` bytes).
    fn read_header(untyped: bool, bytes: &[u8]) -> (u8, i64) {
        let (kind, at) = if untyped { (0, 0) } else { (bytes[0], 1) };
        let len = i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        (kind, i64::from(len))
    }

    /// The body length of a valid header, or why it is not one.
    fn check_header(&self, kind: u8, len: i64) -> Result<usize, ProtocolError> {
        if !self.untyped_next && !self.valid_type(kind) {
            return Err(ProtocolError::PgUnknownType(kind));
        }
        if !(4..=MAX_MESSAGE as i64).contains(&len) {
            return Err(ProtocolError::PgBadLength { kind, len });
        }
        // The length counts itself but not the type byte.
        Ok(len as usize - 4)
    }

    /// A message whose body continues past this chunk: collect it.
    fn start_body(&mut self, kind: u8, body_len: usize) {
        self.kind = kind;
        self.declared_len = body_len;
        self.body.clear();
        self.truncated = false;
        self.header.clear();
        self.untyped_next = false;
        self.state = State::Body {
            remaining: body_len,
        };
    }

    fn finish_if_done<F>(&mut self, timestamp_ns: u64, on: &mut F)
    where
        F: FnMut(Result<Message<'_>, ProtocolError>),
    {
        if let State::Body { remaining: 0 } = self.state {
            on(Ok(Message {
                kind: self.kind,
                body: &self.body,
                declared_len: self.declared_len,
                truncated: self.truncated,
                timestamp_ns,
                lone_byte: false,
            }));
            self.body.clear();
            self.truncated = false;
            self.state = State::Header;
        }
    }

    fn looks_like_message_start(&self, data: &[u8]) -> bool {
        let [kind, a, b, c, d, ..] = *data else {
            return false;
        };
        let len = i32::from_be_bytes([a, b, c, d]);
        self.valid_type(kind) && (4..=MAX_RESYNC_MESSAGE as i32).contains(&len)
    }
}

#[cfg(test)]
mod tests;
