//! Statement texts from PostgreSQL itself (`[postgres] monitor_dsn`, off by default): for a
//! connection executing a statement prepared before the agent watched it, the backend serving
//! that connection (`pg_stat_activity` row whose `client_addr`/`client_port` are the traced
//! socket's local address and port) reports the text of the statement it ran last.
//!
//! "Last" is the catch: by the time the answer arrives the client may have run another
//! statement. The answer is taken only when the backend's `query_start` lies within
//! [`MATCH_NS`] of the moment the traced client sent the unknown statement, and the operation
//! sent before it is at least twice as far from it — so the row can belong to no other
//! operation of the connection. A busy connection whose statements follow each other closer
//! than that is not learned from (never wrongly). It works on the same host's clock: through
//! PgBouncer (the backend's client is PgBouncer) or against a server with another clock it
//! finds nothing to match. Texts are normalised (literals stripped) before they are kept.
use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use tokio::sync::mpsc;

/// How close the backend's `query_start` must be to the client's send of the statement.
pub const MATCH_NS: i128 = 2_000_000;
/// Lookups waiting for the monitor task; more are dropped (and counted).
const QUEUE: usize = 256;
/// Connections whose last lookup is remembered (so each operation is looked up once).
const MAX_REMEMBERED: usize = 4096;
/// `track_activity_query_size` defaults to 1024: a text this long may have been cut.
const ACTIVITY_TEXT_MAX: usize = 1023;

/// One lookup: the connection `fd` of `pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub pid: u32,
    pub fd: u32,
}

/// What the server said about the backend serving a looked-up connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub pid: u32,
    pub fd: u32,
    /// `pg_stat_activity.query` as PostgreSQL reports it (raw: normalised before it is kept).
    pub query: String,
    /// `query_start`, µs since the Unix epoch.
    pub query_start_unix_us: i64,
}

/// The pipeline's end: sends lookups, remembers which operation each connection was last
/// looked up for.
#[derive(Debug)]
pub struct MonitorLink {
    lookups: mpsc::Sender<Lookup>,
    asked: HashMap<(u32, u32), u64>,
    pub stats: MonitorStats,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MonitorStats {
    pub asked: u64,
    /// Lookups dropped because the queue was full.
    pub dropped: u64,
    pub learned: u64,
    /// Answers that could not be matched to one operation (left unlearned).
    pub unmatched: u64,
}

impl MonitorLink {
    /// Asks about the connection unless its latest operation (`sent_ns`) was asked about.
    pub fn ask(&mut self, pid: u32, fd: u32, sent_ns: u64) {
        if self.asked.get(&(pid, fd)) == Some(&sent_ns) {
            return;
        }
        if self.asked.len() >= MAX_REMEMBERED {
            self.asked.clear(); // costs at most one repeated lookup per connection
        }
        self.asked.insert((pid, fd), sent_ns);
        match self.lookups.try_send(Lookup { pid, fd }) {
            Ok(()) => self.stats.asked += 1,
            Err(_) => self.stats.dropped += 1,
        }
    }
}

/// Whether the backend's `query_start` belongs to the latest operation (sent at
/// `latest_ns`, the one before at `previous_ns`, kernel monotonic): within [`MATCH_NS`] of
/// it, and the previous one at least twice as far. `unix_minus_mono_ns` places `query_start`
/// on the monotonic clock.
pub fn belongs_to_latest(
    query_start_unix_us: i64,
    unix_minus_mono_ns: i128,
    latest_ns: u64,
    previous_ns: u64,
) -> bool {
    let q = i128::from(query_start_unix_us) * 1000 - unix_minus_mono_ns;
    let near = |t: u64| (i128::from(t) - q).abs();
    latest_ns != 0
        && near(latest_ns) <= MATCH_NS
        && (previous_ns == 0 || near(previous_ns) > 2 * MATCH_NS)
}

/// The normalised text of an answer and whether PostgreSQL may have cut it.
pub fn normalised(answer: &Answer) -> (String, bool) {
    (
        herdwatch_protocol::fingerprint::fingerprint(&answer.query).normalized,
        answer.query.len() >= ACTIVITY_TEXT_MAX,
    )
}

/// Starts the monitor task: returns the pipeline's link, the answers' receiver and the task.
pub fn start(
    dsn: String,
) -> (
    MonitorLink,
    mpsc::Receiver<Answer>,
    tokio::task::JoinHandle<()>,
) {
    let (lookup_tx, lookup_rx) = mpsc::channel(QUEUE);
    let (answer_tx, answer_rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(run(dsn, lookup_rx, answer_tx));
    (
        MonitorLink {
            lookups: lookup_tx,
            asked: HashMap::new(),
            stats: MonitorStats::default(),
        },
        answer_rx,
        task,
    )
}

const QUERY: &str = "SELECT query, (extract(epoch FROM query_start) * 1000000)::int8 \
                     FROM pg_stat_activity \
                     WHERE client_addr = $1::text::inet AND client_port = $2 \
                     AND query_start IS NOT NULL";

async fn run(dsn: String, mut lookups: mpsc::Receiver<Lookup>, answers: mpsc::Sender<Answer>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut retry_at = tokio::time::Instant::now();
    let mut warned = false;
    while let Some(lookup) = lookups.recv().await {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            if tokio::time::Instant::now() < retry_at {
                continue; // down: lookups are dropped until the next attempt
            }
            match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client = Some(c);
                    warned = false;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(
                            "postgres.monitor_dsn: cannot connect ({e}); statements prepared \
                             before the agent started stay unnamed until it can"
                        );
                        warned = true;
                    }
                    retry_at = tokio::time::Instant::now() + Duration::from_secs(10);
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let Some((addr, port)) = local_endpoint(Path::new("/proc"), lookup.pid, lookup.fd) else {
            continue; // gone, or not TCP (a Unix socket has no client address to match)
        };
        let rows = match c.query(QUERY, &[&addr.to_string(), &i32::from(port)]).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("pg_stat_activity lookup: {e}");
                continue;
            }
        };
        for row in rows {
            let (Ok(query), Ok(start)) = (row.try_get::<_, String>(0), row.try_get::<_, i64>(1))
            else {
                continue;
            };
            let _ = answers.try_send(Answer {
                pid: lookup.pid,
                fd: lookup.fd,
                query,
                query_start_unix_us: start,
            });
        }
    }
}

/// The local address and port of TCP socket `fd` of `pid`, from its network namespace's
/// `/proc/<pid>/net/tcp{,6}`.
pub fn local_endpoint(proc_root: &Path, pid: u32, fd: u32) -> Option<(IpAddr, u16)> {
    let dir = proc_root.join(pid.to_string());
    let link = std::fs::read_link(dir.join("fd").join(fd.to_string())).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_string();
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(dir.join(table)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(9) == Some(&inode.as_str())
                && let Some(endpoint) = fields.get(1).and_then(|f| parse_endpoint(f))
            {
                return Some(endpoint);
            }
        }
    }
    None
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6), each 32-bit word in host (little
/// endian) order as the kernel prints it. An IPv4-mapped IPv6 address comes back as IPv4, as
/// PostgreSQL reports such clients.
fn parse_endpoint(field: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address as a native-endian integer.
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::from(word(addr)?),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = word(addr.get(i * 8..i * 8 + 8)?)?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w);
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::from(v4),
                None => IpAddr::from(v6),
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_socket_tables_parse() {
        assert_eq!(
            parse_endpoint("0100007F:1F90"),
            Some(("127.0.0.1".parse().expect("ip"), 8080))
        );
        assert_eq!(
            parse_endpoint("0000000000000000FFFF00000100007F:D431"),
            Some(("127.0.0.1".parse().expect("ip"), 54321))
        );
        assert_eq!(
            parse_endpoint("00000000000000000000000001000000:0050"),
            Some(("::1".parse().expect("ip"), 80))
        );
        assert_eq!(parse_endpoint("zz:1"), None);
        assert_eq!(parse_endpoint("0100007F"), None);
    }

    #[test]
    fn this_process_finds_its_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let stream =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        use std::os::fd::AsRawFd as _;
        let found = local_endpoint(
            Path::new("/proc"),
            std::process::id(),
            stream.as_raw_fd() as u32,
        );
        let local = stream.local_addr().expect("local");
        assert_eq!(found, Some((local.ip(), local.port())));
    }

    #[test]
    fn an_answer_belongs_to_the_latest_operation_only_when_nothing_else_is_near() {
        let offset: i128 = 1_700_000_000_000_000_000; // unix − monotonic
        let at = |mono_ns: u64| ((i128::from(mono_ns) + offset) / 1000) as i64;
        let latest = 50_000_000_000u64;
        // The backend started it 80 µs after the client's send returned.
        assert!(belongs_to_latest(
            at(latest + 80_000),
            offset,
            latest,
            latest - 20_000_000
        ));
        // Or slightly before (the send returns after the backend woke).
        assert!(belongs_to_latest(at(latest - 30_000), offset, latest, 0));
        // A later operation the pipeline has not applied yet: far from the latest.
        assert!(!belongs_to_latest(
            at(latest + 20_000_000),
            offset,
            latest,
            latest - 20_000_000
        ));
        // The previous operation is too near to tell them apart.
        assert!(!belongs_to_latest(
            at(latest + 80_000),
            offset,
            latest,
            latest - 1_000_000
        ));
        // Nothing sent yet.
        assert!(!belongs_to_latest(at(80_000), offset, 0, 0));
    }
}
