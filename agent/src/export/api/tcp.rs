//! The API's TCP listener (`api_listen`), for clients off the host: TLS and a bearer token
//! unless `api_insecure = true` says otherwise, which is logged as a warning at every start.
//!
//! Everything that can be wrong with its configuration — the rules across keys, unreadable
//! or too-open files, a certificate rustls refuses — is found by `prepare`, which the agent
//! calls before it loads anything into the kernel.
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;

use super::{
    auth::{self, Token},
    tls,
};
use crate::{
    config::Config,
    error::{Error, Result},
};

/// A TCP listener's settings, checked and with its files read.
#[derive(Debug)]
pub struct TcpApi {
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<ServerTlsConfig>,
    pub(super) token: Option<Token>,
}

impl TcpApi {
    /// The TCP listener `config` asks for, or None when `api_listen` is off. Logs the
    /// `api_insecure` warning.
    pub fn prepare(config: &Config) -> Result<Option<Self>> {
        config.check_api_listen()?;
        let Some(listen) = &config.api_listen else {
            let unused = [
                config.api_tls_cert.is_some(),
                config.api_tls_key.is_some(),
                config.api_token_file.is_some(),
                config.api_insecure,
            ];
            if unused.contains(&true) {
                tracing::warn!(
                    "api_tls_cert, api_tls_key, api_token_file and api_insecure apply to the \
                     TCP listener only, and api_listen is not set: they are ignored"
                );
            }
            return Ok(None);
        };
        let addr: SocketAddr = listen.parse().map_err(|e| Error::Config {
            origin: "api_listen".into(),
            message: format!("{listen:?}: {e} (want host:port, e.g. 0.0.0.0:9466)"),
        })?;
        let tls = match (&config.api_tls_cert, &config.api_tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let token = config
            .api_token_file
            .as_deref()
            .map(|path| auth::read_token_file(path, "api_token_file"))
            .transpose()?;
        let api = Self { addr, tls, token };
        if config.api_insecure {
            tracing::warn!("{}", api.insecure_warning());
        }
        Ok(Some(api))
    }

    /// What `api_insecure = true` gives away on this listener, and how to stop it.
    fn insecure_warning(&self) -> String {
        let addr = self.addr;
        match (self.tls.is_some(), self.token.is_some()) {
            (false, false) => format!(
                "api_insecure = true: the API on {addr} is served in plaintext and without a \
                 token: anybody who reaches the port reads routes, queries and findings, and \
                 anybody on the path sees them; set api_tls_cert, api_tls_key and \
                 api_token_file and remove api_insecure"
            ),
            (false, true) => format!(
                "api_insecure = true: the API on {addr} is served in plaintext: the token and \
                 every answer cross the network readable; set api_tls_cert and api_tls_key \
                 and remove api_insecure"
            ),
            (true, false) => format!(
                "api_insecure = true: the API on {addr} takes calls without a token: anybody \
                 who reaches the port reads routes, queries and findings; set api_token_file \
                 and remove api_insecure"
            ),
            (true, true) => format!(
                "api_insecure = true is set but has no effect: the API on {addr} has TLS and a \
                 token; remove api_insecure"
            ),
        }
    }

    /// Binds the address (an error naming it when taken or not allowed).
    pub(super) fn bind(&self) -> Result<TcpListener> {
        let io = |source| Error::Io {
            what: format!("binding api_listen {}", self.addr),
            source,
        };
        let std_listener = std::net::TcpListener::bind(self.addr).map_err(io)?;
        std_listener.set_nonblocking(true).map_err(io)?;
        TcpListener::from_std(std_listener).map_err(io)
    }

    /// The address actually bound (port 0 resolved), for the log.
    pub(super) fn shown(&self, listener: &TcpListener) -> String {
        let addr = listener.local_addr().unwrap_or(self.addr);
        let tls = if self.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        };
        let token = if self.token.is_some() {
            "a bearer token"
        } else {
            "no token"
        };
        format!("{addr} ({tls}, {token})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_listen_address_no_listener() {
        let config = Config {
            api_insecure: true,
            ..Config::default()
        };
        assert!(
            TcpApi::prepare(&config)
                .expect("nothing to check")
                .is_none()
        );
    }

    #[test]
    fn plaintext_without_insecure_is_refused_before_any_file_is_read() {
        let config = Config {
            api_listen: Some("127.0.0.1:0".into()),
            ..Config::default()
        };
        let err = TcpApi::prepare(&config).expect_err("plaintext").to_string();
        assert!(
            err.contains("plaintext") && err.contains("api_insecure = true"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_token_file_fails_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            api_listen: Some("127.0.0.1:0".into()),
            api_token_file: Some(dir.path().join("token")),
            api_insecure: true,
            ..Config::default()
        };
        let err = TcpApi::prepare(&config).expect_err("no file").to_string();
        assert!(
            err.contains("api_token_file") && err.contains("token"),
            "{err}"
        );
    }

    #[test]
    fn insecure_warnings_say_what_is_given_away() {
        let token = Token::parse("0123456789abcdef", "t").expect("token");
        let api = |tls: bool, token: Option<Token>| TcpApi {
            addr: "127.0.0.1:9466".parse().expect("addr"),
            tls: tls.then(ServerTlsConfig::new),
            token,
        };
        let none = api(false, None).insecure_warning();
        assert!(none.contains("plaintext") && none.contains("without a token"));
        let plain = api(false, Some(token.clone())).insecure_warning();
        assert!(plain.contains("plaintext") && !plain.contains("0123456789abcdef"));
        assert!(
            api(true, None)
                .insecure_warning()
                .contains("without a token")
        );
        assert!(
            api(true, Some(token))
                .insecure_warning()
                .contains("no effect")
        );
    }
}
