//! Message heads parsed in place: the first line and the few headers herdwatch needs, and
//! what they say about the body that follows.
use super::{Body, MAX_TARGET, Parsed, RequestHead};
use crate::ProtocolError;

/// Searchers built once: `memmem::find` would build one per call, on every message.
static END_OF_HEAD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
static END_OF_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n"));

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    match needle {
        b"\r\n\r\n" => END_OF_HEAD.find(hay),
        b"\r\n" => END_OF_LINE.find(hay),
        _ => memchr::memmem::find(hay, needle),
    }
}

/// A message head, parsed in place: the first line and the few headers herdwatch needs.
#[derive(Default)]
pub(super) struct Head<'a> {
    pub(super) first_line: &'a [u8],
    pub(super) host: Option<&'a [u8]>,
    pub(super) content_length: Option<u64>,
    pub(super) chunked: bool,
    pub(super) connection_close: bool,
    pub(super) connection_keep_alive: bool,
}

pub(super) fn trim(b: &[u8]) -> &[u8] {
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
pub(super) fn scan_head(bytes: &[u8]) -> (Head<'_>, Option<usize>) {
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

pub(super) fn parse_request(p: &Parsed) -> Result<(RequestHead, Body), ProtocolError> {
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
pub(super) fn parse_response(
    p: &Parsed,
    answers_head: bool,
) -> Result<(u16, Body, bool), ProtocolError> {
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
