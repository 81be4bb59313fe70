//! Certificates and tokens for the API over TCP, made in the test with rcgen: a CA, a server
//! certificate it signed for localhost and 127.0.0.1, an unrelated CA, and token files.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use herdwatch::Config;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub const TOKEN: &str = "herdwatch-test-token-0123456789";
pub const WRONG_TOKEN: &str = "not-the-agent-token-9876543210";

/// A CA, a server certificate it signed (for localhost and 127.0.0.1), an unrelated CA, and
/// token files, all in one temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub other_ca: PathBuf,
    pub token: PathBuf,
    pub wrong_token: PathBuf,
}

pub fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params, KeyPair::generate().expect("CA key"))
}

pub fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_params, ca_key) = ca("herdwatch test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let params = CertificateParams::new(names).expect("server params");
    let key = KeyPair::generate().expect("server key");
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let (other_params, other_key) = ca("somebody else's CA");
    let other = other_params.self_signed(&other_key).expect("other CA");
    let at = |name: &str| dir.path().join(name);
    write(&at("ca.pem"), &ca_cert.pem(), 0o644);
    write(&at("cert.pem"), &cert.pem(), 0o644);
    write(&at("key.pem"), &key.serialize_pem(), 0o600);
    write(&at("other-ca.pem"), &other.pem(), 0o644);
    write(&at("token"), &format!("{TOKEN}\n"), 0o600);
    write(&at("wrong-token"), WRONG_TOKEN, 0o600);
    Pki {
        ca: at("ca.pem"),
        cert: at("cert.pem"),
        key: at("key.pem"),
        other_ca: at("other-ca.pem"),
        token: at("token"),
        wrong_token: at("wrong-token"),
        dir,
    }
}

impl Pki {
    /// `config` with the API also on TCP at 127.0.0.1:`port`, with this TLS and token.
    pub fn on_tcp(&self, port: u16, config: Config) -> Config {
        Config {
            api_listen: Some(format!("127.0.0.1:{port}")),
            api_tls_cert: Some(self.cert.clone()),
            api_tls_key: Some(self.key.clone()),
            api_token_file: Some(self.token.clone()),
            ..config
        }
    }
}
