//! The connection table: one protocol session per traced socket, created on open (or on first
//! data for a socket that was open before we started), freed on close, and bounded — the
//! least recently active connection is dropped when the table is full (a close we never saw).
use std::collections::HashMap;

use herdwatch_protocol::{
    Chunk,
    http::{HttpEvent, HttpSession},
    postgres::{PgSession, SessionEvent},
};
use serde::Serialize;

use super::aggregates::Aggregates;
use crate::probes::socket_events::{SocketEvent, SocketKind};

#[derive(Debug)]
enum Session {
    Pg(Box<PgSession>),
    Http(Box<HttpSession>),
}

#[derive(Debug)]
struct Conn {
    session: Session,
    last_active_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ConnectionStats {
    pub open: usize,
    pub opened: u64,
    pub closed: u64,
    /// Dropped to stay within the bound (their close was never seen).
    pub evicted: u64,
    pub data_events: u64,
    pub bytes_seen: u64,
    pub bytes_captured: u64,
    pub protocol_errors: u64,
    pub postgres_queries: u64,
    pub http_exchanges: u64,
}

#[derive(Debug)]
pub struct Connections {
    conns: HashMap<(u32, u32), Conn>,
    max: usize,
    pub stats: ConnectionStats,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        Self {
            conns: HashMap::new(),
            max,
            stats: ConnectionStats::default(),
        }
    }

    fn new_session(kind: SocketKind, from_start: bool) -> Session {
        match kind {
            SocketKind::Postgres if from_start => Session::Pg(Box::new(PgSession::new())),
            SocketKind::Postgres => Session::Pg(Box::new(PgSession::mid_stream())),
            SocketKind::HttpServer => Session::Http(Box::new(HttpSession::new())),
        }
    }

    fn make_room(&mut self) {
        if self.conns.len() < self.max {
            return;
        }
        if let Some(oldest) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_active_ns)
            .map(|(k, _)| *k)
        {
            self.conns.remove(&oldest);
            self.stats.evicted += 1;
        }
    }

    pub fn apply(&mut self, event: SocketEvent, aggregates: &mut Aggregates) {
        match event {
            SocketEvent::Open {
                tgid,
                fd,
                kind,
                timestamp_ns,
                ..
            } => {
                self.make_room();
                self.conns.insert(
                    (tgid, fd),
                    Conn {
                        session: Self::new_session(kind, true),
                        last_active_ns: timestamp_ns,
                    },
                );
                self.stats.opened += 1;
            }
            SocketEvent::Close {
                tgid,
                fd,
                timestamp_ns,
                ..
            } => {
                if let Some(conn) = self.conns.remove(&(tgid, fd)) {
                    self.stats.closed += 1;
                    if let Session::Http(mut http) = conn.session {
                        for ev in http.on_close(timestamp_ns) {
                            self.http_event(ev, aggregates);
                        }
                    }
                }
            }
            SocketEvent::Data {
                tgid,
                fd,
                kind,
                ingress,
                exit_ns,
                total_len,
                payload,
                tail,
                ..
            } => {
                self.stats.data_events += 1;
                self.stats.bytes_seen += total_len;
                self.stats.bytes_captured += payload.len() as u64;
                if !self.conns.contains_key(&(tgid, fd)) {
                    self.make_room();
                    self.conns.insert(
                        (tgid, fd),
                        Conn {
                            session: Self::new_session(kind, false),
                            last_active_ns: exit_ns,
                        },
                    );
                }
                let Some(conn) = self.conns.get_mut(&(tgid, fd)) else {
                    return;
                };
                conn.last_active_ns = exit_ns;
                let total = usize::try_from(total_len)
                    .unwrap_or(usize::MAX)
                    .max(payload.len() + tail.len());
                let chunk = Chunk {
                    data: &payload,
                    total_len: total,
                    timestamp_ns: exit_ns,
                    tail: &tail,
                };
                match &mut conn.session {
                    Session::Pg(pg) => {
                        let events = if ingress {
                            pg.on_backend(chunk)
                        } else {
                            pg.on_frontend(chunk)
                        };
                        for ev in events {
                            match ev {
                                SessionEvent::Query(q) => {
                                    self.stats.postgres_queries += 1;
                                    aggregates.record_query(tgid, &q);
                                }
                                SessionEvent::Error(_) => self.stats.protocol_errors += 1,
                                SessionEvent::Startup { .. } | SessionEvent::Encrypted => {}
                            }
                        }
                    }
                    Session::Http(http) => {
                        let events = if ingress {
                            http.on_read(chunk)
                        } else {
                            http.on_write(chunk)
                        };
                        for ev in events {
                            self.http_event(ev, aggregates);
                        }
                    }
                }
            }
        }
        self.stats.open = self.conns.len();
    }

    fn http_event(&mut self, ev: HttpEvent, aggregates: &mut Aggregates) {
        match ev {
            HttpEvent::Exchange(x) => {
                self.stats.http_exchanges += 1;
                aggregates.record_exchange(&x);
            }
            HttpEvent::Error(_) => self.stats.protocol_errors += 1,
            HttpEvent::RequestStarted { .. } => {}
        }
    }
}
