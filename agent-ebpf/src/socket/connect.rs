//! Connections to PostgreSQL: a connect to a PostgreSQL port or Unix socket is traced from
//! its entry; a TCP connect elsewhere is a candidate until its first write shows whether it
//! speaks PostgreSQL, and destinations that did not are remembered for a while.
use super::*;

#[map]
static PENDING_CONNECT: LruHashMap<u32, PendingConnect> = LruHashMap::with_max_entries(16_384, 0);
/// TCP destinations whose candidate connection did not speak PostgreSQL first, with when that
/// was learnt (ns). New connections to them are not candidates: no tracking, no first-write
/// test, and the connecting process is not marked, so its later reads and writes stay behind
/// the byte test. Without this every HTTP or Redis client on the host paid the candidate path
/// on every connection. An entry counts for `NOT_POSTGRES_FOR_NS`, then is learnt again.
#[map]
pub static NOT_POSTGRES: LruHashMap<Destination, u64> =
    LruHashMap::with_max_entries(NOT_POSTGRES_ENTRIES, 0);
const NOT_POSTGRES_ENTRIES: u32 = 4_096;
const NOT_POSTGRES_FOR_NS: u64 = 300_000_000_000;
/// Where each undecided candidate socket (by `socket_key`) connects to.
#[map]
pub(super) static CANDIDATE_DESTINATIONS: LruHashMap<u64, Destination> =
    LruHashMap::with_max_entries(16_384, 0);

const AF_UNIX: u16 = 1;
pub(super) const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = -115;
const PG_SOCKET_MARK: &[u8; 9] = b".s.PGSQL.";
const SUN_PATH: usize = 108;

#[repr(C)]
#[derive(Clone, Copy)]
struct PendingConnect {
    fd: u32,
    family: u32,
    port: u32,
    kind: u32,
    destination: Destination,
}

/// A TCP destination as a map key: the family and port, and the address (IPv4 in the last
/// word). Zeroed for Unix sockets, which are never candidates.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Destination {
    family_port: u32,
    address: [u32; 4],
}

/// Whether a Unix socket path names a PostgreSQL socket (`…/.s.PGSQL.5432`).
#[inline(always)]
fn is_pg_unix_path(path: &[u8; SUN_PATH]) -> bool {
    let mut i = 0;
    while i < SUN_PATH - PG_SOCKET_MARK.len() {
        if path[i] == 0 {
            return false;
        }
        let mut j = 0;
        while j < PG_SOCKET_MARK.len() && path[i + j] == PG_SOCKET_MARK[j] {
            j += 1;
        }
        if j == PG_SOCKET_MARK.len() {
            return true;
        }
        i += 1;
    }
    false
}

/// `connect(fd, addr, …)` began: remember a connection to PostgreSQL (or one that may be) for
/// its exit.
#[inline(always)]
pub fn connect_entered(fd: u64, addr: u64) -> u32 {
    // One read serves every family's first 8 bytes (an IPv4 address whole): this runs for
    // every connect on the host, and each helper call counts. A shorter Unix address ending
    // at a page boundary can fail it; then the family alone is read.
    let head = match unsafe { bpf_probe_read_user(addr as *const [u8; 8]) } {
        Ok(head) => head,
        Err(_) => match unsafe { bpf_probe_read_user(addr as *const [u8; 2]) } {
            Ok([a, b]) if u16::from_ne_bytes([a, b]) == AF_UNIX => [a, b, 0, 0, 0, 0, 0, 0],
            _ => return 0, // an IP address this short is not one connect accepts
        },
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let mut destination = Destination::default();
    let port = match family {
        AF_INET => {
            // struct sockaddr_in: family, port (big-endian), address.
            destination.address[3] = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
            u16::from_be_bytes([head[2], head[3]])
        }
        AF_INET6 => {
            // struct sockaddr_in6: family, port (big-endian), flow info, address.
            let Ok(sin6) = (unsafe { bpf_probe_read_user(addr as *const [u32; 6]) }) else {
                return 0;
            };
            destination.address = [sin6[2], sin6[3], sin6[4], sin6[5]];
            let port = sin6[0].to_ne_bytes();
            u16::from_be_bytes([port[2], port[3]])
        }
        AF_UNIX => {
            let Ok(path) = (unsafe { bpf_probe_read_user((addr + 2) as *const [u8; SUN_PATH]) })
            else {
                return 0;
            };
            if !is_pg_unix_path(&path) {
                return 0;
            }
            0
        }
        _ => return 0,
    };
    let (tid, tgid) = ids();
    destination.family_port = (u32::from(family) << 16) | u32::from(port);
    // A known PostgreSQL port or socket path, or a TCP connection that may turn out to be one
    // (unless this destination already showed it is not).
    let kind = if family == AF_UNIX || unsafe { PG_PORTS.get(&port) }.is_some() {
        sock_kind::POSTGRES
    } else if known_not_postgres(&destination) {
        count(stat::KNOWN_NOT_POSTGRES);
        return 0;
    } else {
        sock_kind::CANDIDATE
    };
    let pending = PendingConnect {
        fd: fd as u32,
        family: family as u32,
        port: port as u32,
        kind,
        destination,
    };
    if PENDING_CONNECT.insert(tid, pending, 0).is_err() {
        count(stat::SOCKET_INSERT_FAILED);
        return 0;
    }
    // Marked already, so the raw exit program (which turns unmarked groups away before it
    // looks at the call) sees this connect's exit.
    mark_traced(tgid, true);
    0
}

/// `connect` returned `result`: a connection remembered at its entry is now traced.
#[inline(always)]
pub fn connect_exited(result: i64) -> u32 {
    let (tid, tgid) = ids();
    let Some(pending) = (unsafe { PENDING_CONNECT.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING_CONNECT.remove(&tid);
    match result {
        0 | EINPROGRESS => {}
        _ => return 0,
    }
    track(
        tgid,
        tid,
        pending.fd,
        pending.kind,
        pending.family,
        pending.port,
    );
    if pending.kind == sock_kind::CANDIDATE {
        let key = socket_key(tgid, pending.fd);
        let _ = CANDIDATE_DESTINATIONS.insert(key, pending.destination, 0);
    }
    0
}

/// Whether `destination` showed it does not speak PostgreSQL, recently enough to believe.
#[inline(always)]
pub(super) fn known_not_postgres(destination: &Destination) -> bool {
    match unsafe { NOT_POSTGRES.get(destination) } {
        Some(learnt) => now().saturating_sub(*learnt) < NOT_POSTGRES_FOR_NS,
        None => false,
    }
}

/// The candidate socket `key` was decided: remember its destination when it is not
/// PostgreSQL, and forget where it connects either way.
#[inline(always)]
pub(super) fn candidate_decided(key: u64, postgres: bool) {
    if !postgres && let Some(destination) = unsafe { CANDIDATE_DESTINATIONS.get(&key) }.copied() {
        let _ = NOT_POSTGRES.insert(destination, now(), 0);
    }
    let _ = CANDIDATE_DESTINATIONS.remove(&key);
}
