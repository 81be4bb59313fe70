//! A load generator for the replays: client threads sending requests round-robin over a list
//! of endpoints on keep-alive connections until stopped, counting responses by status.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

pub type Counts = BTreeMap<String, BTreeMap<u16, u64>>;

pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `endpoints` are "METHOD /path"; each client pauses `pause` between requests.
    pub fn start(port: u16, endpoints: &[&str], clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::new()));
        let endpoints: Arc<Vec<String>> =
            Arc::new(endpoints.iter().map(|s| s.to_string()).collect());
        let threads = (0..clients)
            .map(|i| {
                let (stop, counts, endpoints) = (stop.clone(), counts.clone(), endpoints.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        let endpoint = &endpoints[n % endpoints.len()];
                        n += 1;
                        let status = request(&mut conn, port, endpoint);
                        *counts
                            .lock()
                            .expect("lock")
                            .entry(endpoint.clone())
                            .or_default()
                            .entry(status)
                            .or_default() += 1;
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            threads,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().expect("lock").clone()
    }

    /// Stops the clients (each finishes its request in flight) and returns the counts.
    pub fn stop(mut self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.counts()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request on the client's keep-alive connection (reconnecting when needed); returns the
/// status, 0 when the server failed to answer.
fn request(conn: &mut Option<BufReader<TcpStream>>, port: u16, endpoint: &str) -> u16 {
    let (method, path) = endpoint.split_once(' ').unwrap_or(("GET", endpoint));
    for _ in 0..2 {
        if conn.is_none() {
            let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            *conn = Some(BufReader::new(s));
        }
        let Some(c) = conn.as_mut() else { continue };
        let body = if method == "POST" {
            "{\"items\": 3}"
        } else {
            ""
        };
        let sent = write!(
            c.get_mut(),
            "{method} {path} HTTP/1.1\r\nHost: replay\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if sent.is_ok()
            && let Some((status, close)) = read_response(c)
        {
            if close {
                *conn = None;
            }
            return status;
        }
        *conn = None;
    }
    0
}

/// Status and whether the server closes the connection after this response.
fn read_response(c: &mut BufReader<TcpStream>) -> Option<(u16, bool)> {
    read_response_with(c, |_, _| {})
}

/// Reads one response (its body skipped): status and whether the server closes the
/// connection after it; `header` sees each header as (lower-case name, trimmed value).
pub fn read_response_with(
    c: &mut BufReader<TcpStream>,
    mut header: impl FnMut(&str, &str),
) -> Option<(u16, bool)> {
    let mut line = String::new();
    c.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        line.clear();
        c.read_line(&mut line).ok().filter(|n| *n > 0)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        } else if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
        if let Some((name, value)) = l.split_once(':') {
            header(&name.to_ascii_lowercase(), value.trim());
        }
    }
    let mut body = vec![0; length];
    c.read_exact(&mut body).ok()?;
    Some((status, close))
}
