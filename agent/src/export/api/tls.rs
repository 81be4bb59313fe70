//! TLS (rustls, through tonic's `tls-ring`) for the API's TCP listener and for clients that
//! dial it. PEM files are read and parsed here, so a wrong path, an empty file or a key
//! that is not a key is an error naming the file and the setting at start, not a handshake
//! that fails later for every client.
use std::{path::Path, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::auth::check_private;
use crate::error::{Error, Result};

/// A connection that has not finished its handshake by then is closed: until it does it
/// holds one of the listener's connection slots.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's identity from `api_tls_cert` (the certificate chain, leaf first) and
/// `api_tls_key` (its private key: PKCS#8, PKCS#1 or SEC1; refused when others may read it).
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig> {
    let cert_pem = read(cert, "api_tls_cert")?;
    certificates(&cert_pem, &origin("api_tls_cert", cert))?;
    check_private(key, "api_tls_key")?;
    let key_pem = read(key, "api_tls_key")?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::Config {
        origin: origin("api_tls_key", key),
        message: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file: {e}"),
    })?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    // rustls checks the pair (key type supported, key matching the certificate) only when
    // the acceptor is built: build one now so a mismatch fails the start.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| Error::Config {
            origin: format!(
                "api_tls_cert {} / api_tls_key {}",
                cert.display(),
                key.display()
            ),
            message: format!("rustls refuses the pair: {}", super::client::causes(&e)),
        })?;
    Ok(config)
}

/// The client's TLS: the server's certificate must chain to `ca` (a PEM bundle) when given,
/// else to the system's roots (rustls-native-certs: /etc/ssl/certs and `SSL_CERT_FILE`, so
/// a private CA installed with update-ca-certificates works without `--ca`).
pub fn client_config(ca: Option<&Path>) -> Result<ClientTlsConfig> {
    let config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
    match ca {
        Some(path) => {
            let pem = read(path, "--ca")?;
            certificates(&pem, &origin("--ca", path))?;
            Ok(config.ca_certificate(Certificate::from_pem(pem)))
        }
        None => Ok(config.with_native_roots()),
    }
}

fn origin(key: &str, path: &Path) -> String {
    format!("{key} {}", path.display())
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        what: origin(key, path),
        source,
    })
}

/// The certificates in a PEM file: at least one, every one well-formed.
fn certificates(pem: &[u8], origin: &str) -> Result<usize> {
    let bad = |message: String| Error::Config {
        origin: origin.to_string(),
        message,
    };
    let parsed: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if parsed.is_empty() {
        return Err(bad(
            "no certificate in the file (want PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(parsed.len())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_missing_certificate_or_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(&dir, "key.pem", "x", 0o600);
        let missing = dir.path().join("missing.pem");
        let text = server_config(&missing, &key)
            .expect_err("no cert")
            .to_string();
        assert!(
            text.contains("api_tls_cert") && text.contains("missing.pem"),
            "{text}"
        );
        let text = client_config(Some(&missing))
            .expect_err("no ca")
            .to_string();
        assert!(
            text.contains("--ca") && text.contains("missing.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = write(&dir, "empty.pem", "just some text\n", 0o644);
        let key = write(&dir, "key.pem", "x", 0o600);
        let text = server_config(&empty, &key)
            .expect_err("no cert")
            .to_string();
        assert!(
            text.contains("api_tls_cert") && text.contains("no certificate"),
            "{text}"
        );
        let text = client_config(Some(&empty)).expect_err("no ca").to_string();
        assert!(
            text.contains("--ca") && text.contains("no certificate"),
            "{text}"
        );
    }

    /// A self-signed certificate for localhost and its key, as PEM.
    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_make_a_server_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed();
        let cert = write(&dir, "cert.pem", &cert, 0o644);
        let key = write(&dir, "key.pem", &key, 0o600);
        server_config(&cert, &key).expect("a valid pair");
        client_config(Some(&cert)).expect("a CA file");
    }

    #[test]
    fn a_key_others_may_read_or_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed();
        let cert = write(&dir, "cert.pem", &cert, 0o644);
        let open = write(&dir, "open.pem", &key, 0o644);
        let text = server_config(&cert, &open)
            .expect_err("open key")
            .to_string();
        assert!(
            text.contains("api_tls_key") && text.contains("0644") && text.contains("chmod 600"),
            "{text}"
        );
        let not_a_key = write(&dir, "nokey.pem", "-----BEGIN NOTHING-----\n", 0o600);
        let text = server_config(&cert, &not_a_key)
            .expect_err("no key")
            .to_string();
        assert!(
            text.contains("api_tls_key") && text.contains("no PEM private key"),
            "{text}"
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let cert = write(&dir, "cert.pem", &cert, 0o644);
        let key = write(&dir, "key.pem", &other_key, 0o600);
        let text = server_config(&cert, &key)
            .expect_err("mismatch")
            .to_string();
        assert!(
            text.contains("api_tls_cert") && text.contains("api_tls_key"),
            "{text}"
        );
    }
}
