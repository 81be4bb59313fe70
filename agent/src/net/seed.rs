//! Sockets that were open before the agent started: TCP connections to PostgreSQL ports, and
//! connections pool workers accepted on their listeners. Traced mid-stream from then on, so a
//! restart of the agent loses only what was in flight.
//!
//! Unix-domain client connections to PostgreSQL cannot be recognised from /proc (the client
//! end has no path); they are traced from their next connect.
use std::collections::{HashMap, HashSet};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

use crate::probes::socket_events::SocketKind;

/// (pid, fd, kind) of each existing socket worth tracing.
pub fn existing_sockets(
    pids: &[u32],
    pg_ports: &[u16],
    http_ports_by_pid: &HashMap<u32, HashSet<u16>>,
) -> Vec<(u32, u32, SocketKind)> {
    let mut tcp_by_netns: HashMap<String, HashMap<u64, TcpNetEntry>> = HashMap::new();
    let mut found = Vec::new();
    for &pid in pids {
        let Ok(proc) = Process::new(pid as i32) else {
            continue;
        };
        let Ok(fds) = proc.fd() else { continue };
        let sockets: Vec<(u32, u64)> = fds
            .filter_map(Result::ok)
            .filter_map(|fd| match fd.target {
                FDTarget::Socket(inode) => Some((fd.fd as u32, inode)),
                _ => None,
            })
            .collect();
        if sockets.is_empty() {
            continue;
        }
        let netns = std::fs::read_link(format!("/proc/{pid}/net/../ns/net"))
            .or_else(|_| std::fs::read_link(format!("/proc/{pid}/ns/net")))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| format!("pid:{pid}"));
        let table = tcp_by_netns.entry(netns).or_insert_with(|| {
            proc.tcp()
                .unwrap_or_default()
                .into_iter()
                .chain(proc.tcp6().unwrap_or_default())
                .filter(|e| e.state == TcpState::Established)
                .map(|e| (e.inode, e))
                .collect()
        });
        for (fd, inode) in sockets {
            let Some(entry) = table.get(&inode) else {
                continue;
            };
            if pg_ports.contains(&entry.remote_address.port()) {
                found.push((pid, fd, SocketKind::Postgres));
            } else if http_ports_by_pid
                .get(&pid)
                .is_some_and(|ports| ports.contains(&entry.local_address.port()))
            {
                found.push((pid, fd, SocketKind::HttpServer));
            }
        }
    }
    found
}

/// TCP ports local PostgreSQL servers (the postmaster) and PgBouncers listen on, so their
/// existing client connections are recognised at start even on a port nobody configured.
/// (New connections to any port are recognised by their first bytes anyway.)
pub fn local_postgres_ports(processes: &[&crate::procs::table::ProcessInfo]) -> Vec<u16> {
    let postgres: HashSet<u32> = processes
        .iter()
        .filter(|p| p.comm == "postgres")
        .map(|p| p.pid)
        .collect();
    let mut ports: Vec<u16> = processes
        .iter()
        .filter(|p| (p.comm == "postgres" && !postgres.contains(&p.ppid)) || p.comm == "pgbouncer")
        .flat_map(|p| super::listen::listeners_of(p.pid, &[]))
        .filter_map(|l| l.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
