//! The connection table's slots: a slab indexed by socket, serials that tell a reused slot
//! from the connection that held it before, eviction of the least recently active when
//! full, and sessions kept from closed connections for new ones.
use std::collections::VecDeque;

use herdwatch_protocol::{http::HttpSession, postgres::PgSession};

use super::{Conn, ConnKey, ConnRef, Connections, RequestCost, Session};
use crate::probes::socket_events::SocketKind;

/// Sessions (of each kind) and request queues kept for reuse.
const SPARE_SESSIONS: usize = 64;

#[derive(Debug, Default)]
#[expect(
    clippy::vec_box,
    reason = "sessions live boxed in `Session`; spares keep the box to hand it back as is"
)]
pub(super) struct Spares {
    pg: Vec<Box<PgSession>>,
    http: Vec<Box<HttpSession>>,
    requests: Vec<VecDeque<RequestCost>>,
}

impl Connections {
    /// Opens a connection for `key` (replacing one the socket had: its close was not seen)
    /// and returns where it is.
    pub(super) fn insert(
        &mut self,
        key: ConnKey,
        kind: SocketKind,
        from_start: bool,
        now: u64,
        server_port: Option<u16>,
    ) -> ConnRef {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.checked_add(1).unwrap_or(1);
        let conn = Conn {
            key,
            serial,
            session: self.new_session(kind, from_start),
            last_active_ns: now,
            server_port,
            requests: self.spares.requests.pop().unwrap_or_default(),
            sent: VecDeque::new(),
            task: 0,
        };
        if let Some(&slot) = self.index.get(&key)
            && let Some(existing) = self.conns.get_mut(slot as usize)
        {
            let replaced = std::mem::replace(existing, conn);
            self.recycle(replaced);
            return ConnRef { slot, serial };
        }
        self.make_room();
        // Slots are reused below `max`, which fits in u32 (a u32 fd per socket).
        let slot = u32::try_from(self.conns.insert(conn)).unwrap_or(u32::MAX);
        self.index.insert(key, slot);
        ConnRef { slot, serial }
    }

    pub(super) fn get_mut(&mut self, at: ConnRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(at.slot as usize)
            .filter(|c| c.serial == at.serial)
    }

    pub(super) fn get(&self, at: ConnRef) -> Option<&Conn> {
        self.conns
            .get(at.slot as usize)
            .filter(|c| c.serial == at.serial)
    }

    pub(super) fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        let slot = self.index.remove(&key)?;
        self.conns.try_remove(slot as usize)
    }

    /// A session for a new connection: a closed connection's, renewed, when one is spare
    /// (many connections live for one request: this saves their allocations).
    pub(super) fn new_session(&mut self, kind: SocketKind, from_start: bool) -> Session {
        match kind {
            SocketKind::Postgres => match self.spares.pg.pop() {
                Some(mut pg) => {
                    pg.reuse(from_start);
                    Session::Pg(pg)
                }
                None if from_start => Session::Pg(Box::new(PgSession::new())),
                None => Session::Pg(Box::new(PgSession::mid_stream())),
            },
            SocketKind::HttpServer => match self.spares.http.pop() {
                Some(mut http) => {
                    http.reuse();
                    Session::Http(http)
                }
                None => Session::Http(Box::new(HttpSession::new())),
            },
        }
    }

    /// Keeps a finished connection's session and request queue for a later connection.
    pub(super) fn recycle(&mut self, conn: Conn) {
        let Conn {
            session,
            mut requests,
            ..
        } = conn;
        match session {
            Session::Pg(pg) if self.spares.pg.len() < SPARE_SESSIONS => self.spares.pg.push(pg),
            Session::Http(http) if self.spares.http.len() < SPARE_SESSIONS => {
                self.spares.http.push(http)
            }
            _ => {}
        }
        if self.spares.requests.len() < SPARE_SESSIONS && requests.capacity() <= 16 {
            requests.clear();
            self.spares.requests.push(requests);
        }
    }

    pub(super) fn make_room(&mut self) {
        if self.conns.len() < self.max {
            return;
        }
        if let Some(oldest) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_active_ns)
            .map(|(_, c)| c.key)
        {
            if let Some(evicted) = self.remove(oldest) {
                self.recycle(evicted);
            }
            self.stats.evicted += 1;
        }
    }
}
