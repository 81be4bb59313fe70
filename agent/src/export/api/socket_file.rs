//! The API socket's path on disk: claimed at start, given back at exit.
//!
//! The agent runs as root and `api_socket` comes from a config file or the environment, so
//! the path may name anything. Only a socket that no live agent answers on (one left by a
//! `kill -9`) is ever removed; a regular file, directory or symlink there is refused, never
//! deleted. The check runs before the kernel programs are loaded, so a second agent is
//! turned away in milliseconds rather than after seconds of attaching.
use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

use crate::error::{Error, Result};

/// What is at the socket's path before the agent binds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Occupant {
    Nothing,
    /// A socket nobody answers on: removed when the agent binds.
    StaleSocket,
}

/// Checks `path` without changing anything: Ok when the agent may bind there (nothing, or a
/// stale socket), a clear error when another agent serves it or something else lives there.
pub fn check(path: &Path) -> Result<Occupant> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Occupant::Nothing),
        Err(source) => {
            return Err(Error::Io {
                what: format!("api_socket {}", path.display()),
                source,
            });
        }
    };
    let file_type = metadata.file_type();
    if !file_type.is_socket() {
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_symlink() {
            "a symbolic link"
        } else if file_type.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(refusal(format!(
            "{} exists and is {kind}, not a socket; herdwatch never deletes it: move it \
                 away or point api_socket elsewhere",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(refusal(format!(
            "another herdwatch agent already serves {}; stop it or set api_socket",
            path.display()
        ))),
        // Nobody listens: the socket outlived its agent.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Occupant::StaleSocket),
        Err(e) => Err(refusal(format!(
            "{} is a socket that cannot be tested ({e}); herdwatch leaves it alone: \
                 remove it if no agent uses it, or set api_socket",
            path.display()
        ))),
    }
}

fn refusal(message: String) -> Error {
    Error::Config {
        origin: "api_socket".into(),
        message,
    }
}

/// The socket file this agent created: removed when dropped, unless something else has
/// replaced it since (another agent's socket is never ours to delete).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: Identity,
}

/// Device, inode and change time: inode numbers are reused at once on some file systems
/// (tmpfs), the change time to the nanosecond tells two sockets apart.
type Identity = (u64, u64, i64, i64);

fn identity(m: &std::fs::Metadata) -> Identity {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| identity(&m) == self.identity)
            .unwrap_or(false);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("removing the API socket {}: {e}", self.path.display());
        }
    }
}

/// Binds the socket at `path` (creating its directory, replacing only a stale socket), mode
/// 0600, and returns it with the guard that removes it again.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    let io = |what: &str, source| Error::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    if check(path)? == Occupant::StaleSocket {
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
        tracing::info!("removed the stale API socket {}", path.display());
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    match restrict(path) {
        Ok(identity) => Ok((
            listener,
            SocketFile {
                path: path.to_path_buf(),
                identity,
            },
        )),
        Err(err) => {
            // Ours, just made: not left behind.
            let _ = std::fs::remove_file(path);
            Err(err)
        }
    }
}

/// Mode 0600 on the fresh socket (only root reads findings); its identity taken after the
/// chmod, which changes the change time.
fn restrict(path: &Path) -> Result<Identity> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |what: &str, source| Error::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("restricting", e))?;
    let metadata = std::fs::symlink_metadata(path).map_err(|e| io("reading", e))?;
    Ok(identity(&metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_refused_and_left_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        std::fs::write(&path, "precious").expect("write");
        let err = check(&path).expect_err("a file").to_string();
        assert!(
            err.contains("regular file") && err.contains("never deletes"),
            "{err}"
        );
        let err = bind(&path).expect_err("a file").to_string();
        assert!(err.contains("regular file"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("still there"),
            "precious"
        );
    }

    #[test]
    fn a_directory_or_symlink_is_refused_and_left_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("api.sock");
        std::fs::create_dir(&sub).expect("mkdir");
        let err = check(&sub).expect_err("a directory").to_string();
        assert!(err.contains("a directory"), "{err}");
        assert!(sub.is_dir());
        let target = dir.path().join("target");
        std::fs::write(&target, "x").expect("write");
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = check(&link).expect_err("a symlink").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(link.is_symlink() && target.is_file());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_refused_and_ours_removed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        // A socket whose listener is gone: what `kill -9` leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert_eq!(check(&path).expect("stale"), Occupant::StaleSocket);
        let (listener, guard) = bind(&path).expect("replaces the stale socket");
        let err = check(&path).expect_err("live").to_string();
        assert!(err.contains("already serves"), "{err}");
        drop(listener);
        drop(guard);
        assert!(!path.exists(), "the agent's own socket is removed");
    }

    #[tokio::test]
    async fn a_socket_replaced_by_someone_else_is_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let (listener, guard) = bind(&path).expect("bind");
        drop(listener);
        std::fs::remove_file(&path).expect("remove");
        let _other = std::os::unix::net::UnixListener::bind(&path).expect("another agent");
        drop(guard);
        assert!(path.exists(), "the other agent's socket stays");
    }
}
