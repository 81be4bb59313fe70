//! Typed PostgreSQL v3 messages decoded from framed [`Message`]s. Only what herdwatch uses is kept;
//! every read is bounds-checked and a short body is an error, not a panic.
use super::framing::Message;
use crate::ProtocolError;

/// A prepared statement's or portal's name. Names are short ("", "_pg3_0",
/// "__asyncpg_stmt_1__") and used as map keys on every Bind and Execute: kept inline, a
/// lookup compares bytes already in cache instead of chasing a heap pointer per key.
pub type Name = compact_str::CompactString;

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const PROTOCOL_3_0: i32 = 196_608;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    Startup {
        user: Option<String>,
        database: Option<String>,
    },
    SslRequest,
    GssEncRequest,
    CancelRequest,
    Query {
        /// Shared from here on: the session, its statement table and each query event hold
        /// the same text.
        sql: std::sync::Arc<str>,
        truncated: bool,
    },
    Parse {
        statement: Name,
        sql: std::sync::Arc<str>,
        truncated: bool,
    },
    Bind {
        portal: Name,
        statement: Name,
    },
    Describe {
        target: Target,
        name: Name,
    },
    Execute {
        portal: Name,
    },
    Close {
        target: Target,
        name: Name,
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    /// Password, SASL and GSS responses; FunctionCall.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The one-byte answer to SSLRequest/GSSENCRequest.
    EncryptionAnswer {
        accepted: bool,
    },
    Authentication,
    ParameterStatus,
    BackendKeyData,
    ReadyForQuery {
        status: u8,
    },
    RowDescription,
    DataRow,
    /// From the tag (`SELECT 5`, `INSERT 0 1`, `CREATE TABLE`), read where it lies.
    CommandComplete {
        /// The command word: `SELECT`, `INSERT`, `CREATE`.
        command: Name,
        /// Rows affected or returned, when the tag ends with a count.
        rows: Option<u64>,
    },
    Error {
        sqlstate: Option<String>,
        severity: Option<String>,
    },
    Notice,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    ParameterDescription,
    PortalSuspended,
    EmptyQuery,
    CopyInResponse,
    CopyOutResponse,
    CopyBothResponse,
    CopyData,
    CopyDone,
    Other(u8),
}

/// A cursor over a captured body. Reading past the captured bytes of a truncated body yields
/// what there is, marked truncated; of a whole body, an error.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { body, pos: 0 }
    }

    /// The bytes up to the next NUL, and whether the NUL was there (else the capture ended).
    fn until_nul(&mut self) -> (&'a [u8], bool) {
        let rest = self.body.get(self.pos..).unwrap_or_default();
        match memchr::memchr(0, rest) {
            Some(end) => {
                self.pos += end + 1;
                (&rest[..end], true)
            }
            None => {
                self.pos = self.body.len();
                (rest, false)
            }
        }
    }

    /// A NUL-terminated string; `(text, complete)`.
    fn cstr(&mut self) -> (String, bool) {
        let (bytes, complete) = self.until_nul();
        (crate::lossy(bytes).into_owned(), complete)
    }

    /// A NUL-terminated SQL text, allocated once as the shared text it stays.
    fn sql(&mut self) -> (std::sync::Arc<str>, bool) {
        let (bytes, complete) = self.until_nul();
        (std::sync::Arc::from(crate::lossy(bytes)), complete)
    }

    /// A NUL-terminated name, kept inline when short (see [`Name`]).
    fn name(&mut self) -> (Name, bool) {
        let (bytes, complete) = self.until_nul();
        (crate::inline_text(bytes), complete)
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.body.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn i32(&mut self) -> Option<i32> {
        let bytes = self.body.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

fn target(b: Option<u8>) -> Target {
    if b == Some(b'P') {
        Target::Portal
    } else {
        Target::Statement
    }
}

/// A message without a type byte, told apart by its code: an SSL or GSS encryption request,
/// a cancel request, or a protocol-3 StartupMessage with its user and database.
fn decode_untyped(r: &mut Reader<'_>) -> Result<Frontend, ProtocolError> {
    Ok(match r.i32() {
        Some(SSL_REQUEST) => Frontend::SslRequest,
        Some(GSSENC_REQUEST) => Frontend::GssEncRequest,
        Some(CANCEL_REQUEST) => Frontend::CancelRequest,
        Some(v) if v >> 16 == 3 => {
            let (mut user, mut database) = (None, None);
            loop {
                let (key, complete) = r.cstr();
                if key.is_empty() || !complete {
                    break;
                }
                let (value, _) = r.cstr();
                match key.as_str() {
                    "user" => user = Some(value),
                    "database" => database = Some(value),
                    _ => {}
                }
            }
            if database.is_none() {
                database = user.clone(); // the server's default
            }
            Frontend::Startup { user, database }
        }
        _ => return Err(ProtocolError::PgTruncated("startup")),
    })
}

pub fn decode_frontend(m: &Message<'_>) -> Result<Frontend, ProtocolError> {
    let mut r = Reader::new(m.body);
    let need = |ok: bool, what| {
        if ok || m.truncated {
            Ok(())
        } else {
            Err(ProtocolError::PgTruncated(what))
        }
    };
    Ok(match m.kind {
        0 => decode_untyped(&mut r)?,
        b'Q' => {
            let (sql, complete) = r.sql();
            need(complete, "Query")?;
            Frontend::Query {
                sql,
                truncated: !complete || m.truncated,
            }
        }
        b'P' => {
            let (statement, ok) = r.name();
            need(ok, "Parse")?;
            let (sql, complete) = r.sql();
            need(complete, "Parse")?;
            Frontend::Parse {
                statement,
                sql,
                truncated: !complete || m.truncated,
            }
        }
        b'B' => {
            let (portal, ok1) = r.name();
            let (statement, ok2) = r.name();
            if !(ok1 && ok2) {
                return Err(ProtocolError::PgTruncated("Bind"));
            }
            Frontend::Bind { portal, statement }
        }
        b'D' | b'C' => {
            let t = target(r.u8());
            let (name, ok) = r.name();
            need(ok, "Describe/Close")?;
            if m.kind == b'D' {
                Frontend::Describe { target: t, name }
            } else {
                Frontend::Close { target: t, name }
            }
        }
        b'E' => {
            let (portal, ok) = r.name();
            if !ok {
                return Err(ProtocolError::PgTruncated("Execute"));
            }
            Frontend::Execute { portal }
        }
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'X' => Frontend::Terminate,
        b'd' => Frontend::CopyData,
        b'c' => Frontend::CopyDone,
        b'f' => Frontend::CopyFail,
        other => Frontend::Other(other),
    })
}

pub fn decode_backend(m: &Message<'_>) -> Result<Backend, ProtocolError> {
    let mut r = Reader::new(m.body);
    Ok(match m.kind {
        _ if m.lone_byte => Backend::EncryptionAnswer {
            accepted: m.kind == b'S',
        },
        b'R' => Backend::Authentication,
        b'S' => Backend::ParameterStatus,
        b'K' => Backend::BackendKeyData,
        b'Z' => Backend::ReadyForQuery {
            status: r.u8().ok_or(ProtocolError::PgTruncated("ReadyForQuery"))?,
        },
        b'T' => Backend::RowDescription,
        b'D' => Backend::DataRow,
        b'C' => {
            let (tag, complete) = r.until_nul();
            if !complete && !m.truncated {
                return Err(ProtocolError::PgTruncated("CommandComplete"));
            }
            Backend::CommandComplete {
                command: command_name(command_from_tag(tag)),
                rows: rows_from_tag(tag),
            }
        }
        b'E' => {
            let (mut sqlstate, mut severity) = (None, None);
            while let Some(code) = r.u8() {
                if code == 0 {
                    break;
                }
                let (value, _) = r.cstr();
                match code {
                    b'C' => sqlstate = Some(value),
                    b'V' => severity = Some(value),
                    b'S' if severity.is_none() => severity = Some(value),
                    _ => {}
                }
            }
            Backend::Error { sqlstate, severity }
        }
        b'N' => Backend::Notice,
        b'1' => Backend::ParseComplete,
        b'2' => Backend::BindComplete,
        b'3' => Backend::CloseComplete,
        b'n' => Backend::NoData,
        b't' => Backend::ParameterDescription,
        b's' => Backend::PortalSuspended,
        b'I' => Backend::EmptyQuery,
        b'G' => Backend::CopyInResponse,
        b'H' => Backend::CopyOutResponse,
        b'W' => Backend::CopyBothResponse,
        b'd' => Backend::CopyData,
        b'c' => Backend::CopyDone,
        other => Backend::Other(other),
    })
}

/// Rows affected or returned, from a CommandComplete tag: `SELECT 5`, `INSERT 0 1`, `UPDATE 3`.
pub fn rows_from_tag(tag: &[u8]) -> Option<u64> {
    let last_word = tag
        .iter()
        .rposition(|b| *b == b' ')
        .map_or(0, |space| space + 1);
    crate::decimal(&tag[last_word..])
}

/// The command word of a tag (`SELECT`, `INSERT`, `CREATE TABLE` → `CREATE`).
pub fn command_from_tag(tag: &[u8]) -> &[u8] {
    let end = tag.iter().position(|b| *b == b' ').unwrap_or(tag.len());
    &tag[..end]
}

/// The command word as a name: the usual ones without decoding (one per query).
fn command_name(word: &[u8]) -> Name {
    match word {
        b"SELECT" => Name::const_new("SELECT"),
        b"INSERT" => Name::const_new("INSERT"),
        b"UPDATE" => Name::const_new("UPDATE"),
        b"DELETE" => Name::const_new("DELETE"),
        b"BEGIN" => Name::const_new("BEGIN"),
        b"COMMIT" => Name::const_new("COMMIT"),
        b"ROLLBACK" => Name::const_new("ROLLBACK"),
        b"SET" => Name::const_new("SET"),
        other => crate::inline_text(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_complete_tags() {
        for (tag, command, rows) in [
            (&b"SELECT 5"[..], "SELECT", Some(5)),
            (b"INSERT 0 1", "INSERT", Some(1)),
            (b"CREATE TABLE", "CREATE", None),
            (b"COPY 12", "COPY", Some(12)),
            (b"", "", None),
        ] {
            let mut body = tag.to_vec();
            body.push(0);
            let m = Message {
                kind: b'C',
                body: &body,
                declared_len: body.len(),
                truncated: false,
                timestamp_ns: 0,
                lone_byte: false,
            };
            assert_eq!(
                decode_backend(&m),
                Ok(Backend::CommandComplete {
                    command: command.into(),
                    rows
                }),
                "{tag:?}"
            );
        }
    }
}
