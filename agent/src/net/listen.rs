//! Listen sockets of a set of processes, from their fds matched against their network
//! namespace's listeners (sock_diag for TCP, /proc/<pid>/net/unix), with the accept-queue
//! length of each.
use std::collections::{BTreeMap, HashSet};

use procfs::{
    net::{TcpState, UnixState},
    process::{FDTarget, Process},
};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Unix,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub inode: u64,
    pub transport: Transport,
    /// `127.0.0.1:8000`, `[::]:8000` or `unix:/run/app.sock`.
    pub address: String,
    pub port: Option<u16>,
    /// Connections completed by the kernel but not yet accept()ed — `ss -ltn` Recv-Q.
    /// None for Unix sockets: /proc/net/unix does not expose it.
    pub accept_queue: Option<u32>,
}

/// Socket inodes among the open fds of `pid`. A process that exited or an fd that closed
/// mid-read yields fewer inodes, not an error.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(proc) = Process::new(pid as i32) else {
        return HashSet::new();
    };
    let Ok(fds) = proc.fd() else {
        return HashSet::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect()
}

/// (inode, local address, accept queue) of every TCP listener in `proc`'s network namespace:
/// from sock_diag, or — when netlink is refused (no CAP_NET_ADMIN over another namespace, a
/// kernel without `inet_diag`) — from /proc/<pid>/net/tcp{,6}, which costs far more.
fn tcp_listeners(proc: &Process) -> Vec<(u64, std::net::SocketAddr, u32)> {
    match super::sock_diag::tcp_listeners(proc.pid as u32) {
        Ok(found) => {
            return found
                .into_iter()
                .map(|l| (l.inode, l.local, l.accept_queue))
                .collect();
        }
        Err(err) => tracing::debug!("sock_diag for pid {}: {err}; reading /proc", proc.pid),
    }
    proc.tcp()
        .unwrap_or_default()
        .into_iter()
        .chain(proc.tcp6().unwrap_or_default())
        .filter(|entry| entry.state == TcpState::Listen)
        // For a LISTEN socket the kernel prints sk_ack_backlog as rx_queue.
        .map(|entry| (entry.inode, entry.local_address, entry.rx_queue))
        .collect()
}

/// Listen sockets a pool serves on, read in the network namespace of the first pid still
/// alive. When the pool has workers besides the master, only sockets a worker shares count:
/// workers inherit the app's listeners, while a master-only socket (gunicorn's control socket,
/// a metrics port) is not where requests queue. Deduplicated by inode.
pub fn listeners_of(master: u32, workers: &[u32]) -> Vec<Listener> {
    let separate_workers: Vec<u32> = workers.iter().copied().filter(|w| *w != master).collect();
    let mut inodes = HashSet::new();
    if separate_workers.is_empty() {
        inodes.extend(socket_inodes(master));
    } else {
        for pid in &separate_workers {
            inodes.extend(socket_inodes(*pid));
        }
    }
    let mut pids = vec![master];
    pids.extend(separate_workers);
    if inodes.is_empty() {
        return Vec::new();
    }
    let Some(proc) = pids.iter().find_map(|pid| Process::new(*pid as i32).ok()) else {
        return Vec::new();
    };
    let mut found: BTreeMap<u64, Listener> = BTreeMap::new();
    for (inode, local, accept_queue) in tcp_listeners(&proc) {
        if inodes.contains(&inode) {
            found.insert(
                inode,
                Listener {
                    inode,
                    transport: Transport::Tcp,
                    address: local.to_string(),
                    port: Some(local.port()),
                    accept_queue: Some(accept_queue),
                },
            );
        }
    }
    for entry in proc.unix().unwrap_or_default() {
        // SOCK_STREAM (1) with a path, not connected: a listening socket.
        if entry.socket_type == libc::SOCK_STREAM as u16
            && entry.state == UnixState::UNCONNECTED
            && inodes.contains(&entry.inode)
            && let Some(path) = &entry.path
        {
            found.insert(
                entry.inode,
                Listener {
                    inode: entry.inode,
                    transport: Transport::Unix,
                    address: format!("unix:{}", path.display()),
                    port: None,
                    accept_queue: None,
                },
            );
        }
    }
    found.into_values().collect()
}
