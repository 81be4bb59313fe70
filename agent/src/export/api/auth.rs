//! The bearer token of the API's TCP listener: read from a file only its owner may read,
//! compared in constant time on every call, never logged.
//!
//! The Unix socket needs none (its file mode is the access control); on TCP anybody who
//! reaches the port could otherwise read routes, queries and command lines.
use std::{
    fmt,
    path::Path,
    sync::{Arc, atomic::Ordering},
};

use subtle::ConstantTimeEq as _;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::Interceptor,
};

use super::bounds::ApiCounters;
use crate::error::{Error, Result};

/// Shorter tokens are refused: 16 random characters is the least that a network attacker
/// cannot guess at the rate one agent answers.
pub const MIN_TOKEN_LEN: usize = 16;

/// A shared secret. Its `Debug` never shows it, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its text, checked: long enough, and only visible ASCII (what an HTTP/2
    /// header value carries unchanged). `origin` names where it came from in errors; the
    /// text itself is never repeated.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |message: String| Error::Config {
            origin: origin.to_string(),
            message,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("the token file is empty".into()));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "the token holds spaces, control or non-ASCII characters, which an HTTP header \
                 cannot carry; use e.g. `head -c 32 /dev/urandom | base64`"
                    .into(),
            ));
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(bad(format!(
                "the token is {} characters; use at least {MIN_TOKEN_LEN}, e.g. \
                 `head -c 32 /dev/urandom | base64`",
                text.len()
            )));
        }
        Ok(Self(Arc::from(text)))
    }

    /// True when `presented` is this token. Constant time in the token's content, so the
    /// time to refuse says nothing about how many leading bytes were right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }

    /// `Bearer <token>`, marked sensitive (kept out of HPACK's table and of `Debug`).
    pub fn header_value(&self) -> Result<AsciiMetadataValue> {
        let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", self.0))
            .map_err(|_| Error::Config {
            origin: "token".into(),
            message: "the token cannot be sent as a header".into(),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Byte strings equal, in time that depends on their lengths only. Lengths differing is
/// answered at once: a token's length is not the secret, its bytes are.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Reads the token in `path`, refusing a file that users other than its owner and group may
/// read or write: such a token is already shared with the whole host. `key` names the
/// setting in errors (`api_token_file`, `--token-file`).
pub fn read_token_file(path: &Path, key: &str) -> Result<Token> {
    check_private(path, key)?;
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("{key} {}", path.display()),
        source,
    })?;
    Token::parse(&text, &format!("{key} {}", path.display()))
}

/// Refuses a secret file that others may read or write (mode bits `o+r`, `o+w`), naming the
/// fix. Follows symlinks, as Kubernetes mounts secrets through them.
pub fn check_private(path: &Path, key: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        what: format!("{key} {}", path.display()),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o006 != 0 {
        return Err(Error::Config {
            origin: format!("{key} {}", path.display()),
            message: format!(
                "the file is readable or writable by every user (mode {mode:04o}), so its \
                 secret is not one; `chmod 600` it (Kubernetes: the secret volume's \
                 defaultMode: 0400)"
            ),
        });
    }
    Ok(())
}

/// The server's check, run before every call of the service it wraps (unary calls and
/// Watch streams alike): the call carries `authorization: Bearer <token>` or is refused with
/// UNAUTHENTICATED and counted (`api_unauthenticated`). `None` lets every call through: the
/// listener was configured without a token (`api_insecure = true`).
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Token>,
    counters: Arc<ApiCounters>,
}

impl BearerAuth {
    pub fn new(token: Option<Token>, counters: Arc<ApiCounters>) -> Self {
        Self { token, counters }
    }

    fn refuse(&self, why: &str) -> Status {
        self.counters
            .unauthenticated
            .fetch_add(1, Ordering::Relaxed);
        Status::unauthenticated(format!(
            "{why}; this agent's API over TCP takes `authorization: Bearer <token>` with the \
             token in its api_token_file (herdwatch: --token-file)"
        ))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let Some(header) = request.metadata().get("authorization") else {
            return Err(self.refuse("the call carries no token"));
        };
        match bearer(header.as_bytes()) {
            Some(presented) if token.matches(presented) => Ok(request),
            Some(_) => Err(self.refuse("the bearer token is not this agent's")),
            None => Err(self.refuse("the authorization header is not `Bearer <token>`")),
        }
    }
}

/// The credentials of `Bearer <credentials>` (the scheme is case-insensitive, RFC 7235).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = header.split_at_checked(SCHEME.len())?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| rest.trim_ascii())
}

/// The client's side: puts the token on every call, when there is one.
#[derive(Clone, Debug, Default)]
pub struct AttachToken(Option<AsciiMetadataValue>);

impl AttachToken {
    pub fn new(token: Option<&Token>) -> Result<Self> {
        Ok(Self(token.map(Token::header_value).transpose()?))
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const SECRET: &str = "s3cret-token-0123456789";

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"), "last byte differs");
        assert!(
            !constant_time_eq(b"abcdef", b"bbcdef"),
            "first byte differs"
        );
        assert!(
            !constant_time_eq(b"abcdef", b"abcde"),
            "a prefix is not equal"
        );
        assert!(!constant_time_eq(b"abc", b"abcdef"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let token = Token::parse(&format!("  {SECRET}\n"), "t").expect("valid");
        assert!(
            token.matches(SECRET.as_bytes()),
            "surrounding space trimmed"
        );
        assert!(!token.matches(b"s3cret-token-012345678"));
        assert!(!format!("{token:?}").contains(SECRET));
        let value = token.header_value().expect("a header");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains(SECRET), "{value:?}");
        for bad in [
            "",
            "   \n",
            "short",
            "has a space in it, long enough",
            "tøken-with-non-ascii",
        ] {
            let err = Token::parse(bad, "the file").expect_err(bad).to_string();
            assert!(err.contains("the file"), "{err}");
        }
        let err = Token::parse("short!", "f").expect_err("short").to_string();
        assert!(
            err.contains("at least 16") && !err.contains("short!"),
            "{err}"
        );
    }

    fn token_file(dir: &tempfile::TempDir, mode: u32) -> std::path::PathBuf {
        let path = dir.path().join("token");
        // Written afresh: the previous one may be read-only.
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, format!("{SECRET}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_private_token_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o600, 0o400, 0o640] {
            let path = token_file(&dir, mode);
            let token = read_token_file(&path, "api_token_file").expect("private enough");
            assert!(token.matches(SECRET.as_bytes()));
        }
    }

    #[test]
    fn a_world_readable_or_writable_token_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o644, 0o604, 0o602] {
            let path = token_file(&dir, mode);
            let err = read_token_file(&path, "api_token_file").expect_err("refused");
            let text = err.to_string();
            assert!(
                text.contains("api_token_file")
                    && text.contains(&path.display().to_string())
                    && text.contains(&format!("{mode:04o}"))
                    && text.contains("chmod 600"),
                "{text}"
            );
            assert!(!text.contains(SECRET), "{text}");
        }
    }

    #[test]
    fn a_missing_or_unreadable_token_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let text = read_token_file(&missing, "--token-file")
            .expect_err("missing")
            .to_string();
        assert!(
            text.contains("--token-file") && text.contains("nope") && text.contains("No such file"),
            "{text}"
        );
        // A directory passes the mode check and fails to read: named, not a panic.
        let text = read_token_file(dir.path(), "api_token_file")
            .expect_err("a directory")
            .to_string();
        assert!(text.contains("api_token_file"), "{text}");
    }

    fn call(auth: &mut BearerAuth, header: Option<&str>) -> Result<(), Status> {
        let mut request = Request::new(());
        if let Some(h) = header {
            let value = h.parse().expect("ascii");
            request.metadata_mut().insert("authorization", value);
        }
        auth.call(request).map(drop)
    }

    #[test]
    fn the_interceptor_lets_the_token_through_and_counts_what_it_refuses() {
        let counters = Arc::new(ApiCounters::default());
        let token = Token::parse(SECRET, "t").expect("valid");
        let mut auth = BearerAuth::new(Some(token), counters.clone());
        assert!(call(&mut auth, Some(&format!("Bearer {SECRET}"))).is_ok());
        assert!(call(&mut auth, Some(&format!("bearer {SECRET}"))).is_ok());
        for refused in [
            None,
            Some("Bearer wrong-token-0123456789".to_string()),
            Some(format!("Basic {SECRET}")),
            Some(SECRET.to_string()),
            Some("Bearer".to_string()),
        ] {
            let status = call(&mut auth, refused.as_deref()).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains("api_token_file"), "{status:?}");
            assert!(!status.message().contains(SECRET), "{status:?}");
        }
        assert_eq!(counters.unauthenticated.load(Ordering::Relaxed), 5);
        let mut drops = crate::model::ExportDrops::default();
        counters.add_to(&mut drops);
        assert_eq!(drops.api_unauthenticated, 5);
    }

    #[test]
    fn without_a_token_every_call_passes() {
        let counters = Arc::new(ApiCounters::default());
        let mut auth = BearerAuth::new(None, counters.clone());
        assert!(call(&mut auth, None).is_ok());
        assert!(call(&mut auth, Some("Bearer anything-at-all-here")).is_ok());
        assert_eq!(counters.unauthenticated.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_client_attaches_the_token_it_has() {
        let token = Token::parse(SECRET, "t").expect("valid");
        let mut attach = AttachToken::new(Some(&token)).expect("attach");
        let request = attach.call(Request::new(())).expect("passes");
        let sent = request.metadata().get("authorization").expect("attached");
        assert_eq!(sent.as_bytes(), format!("Bearer {SECRET}").as_bytes());
        let mut none = AttachToken::new(None).expect("attach");
        let request = none.call(Request::new(())).expect("passes");
        assert!(request.metadata().get("authorization").is_none());
    }
}
