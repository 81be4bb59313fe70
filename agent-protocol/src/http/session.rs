//! One server-side connection: the request and response framers side by side, each request
//! paired with the response that answers it.
use super::*;

#[derive(Debug)]
struct Open {
    request: RequestHead,
    started_ns: u64,
    status: Option<u16>,
    response_started_ns: Option<u64>,
}

/// One server-side HTTP/1.x connection.
#[derive(Debug)]
pub struct HttpSession {
    requests: Framer,
    responses: Framer,
    /// Requests read and not yet fully answered, oldest first (pipelining).
    open: VecDeque<Open>,
    /// Requests dropped because too many were pipelined without answers.
    pub overflow: u64,
}

const MAX_OPEN: usize = 256;

impl HttpSession {
    pub fn new() -> Self {
        Self {
            requests: Framer::new(),
            responses: Framer::new(),
            open: VecDeque::new(),
            overflow: 0,
        }
    }

    /// Makes this session a new one for another connection, keeping its buffers (emptied)
    /// so the new connection allocates nothing for them.
    pub fn reuse(&mut self) {
        let mut fresh = Self::new();
        for (old, new) in [
            (&mut self.requests, &mut fresh.requests),
            (&mut self.responses, &mut fresh.responses),
        ] {
            if old.buf.capacity() <= crate::KEEP_ON_REUSE {
                old.buf.clear();
                new.buf = std::mem::take(&mut old.buf);
            }
        }
        if self.open.capacity() <= 16 {
            self.open.clear();
            fresh.open = std::mem::take(&mut self.open);
        }
        *self = fresh;
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }

    /// Bytes the server read from the client.
    pub fn on_read(&mut self, chunk: Chunk<'_>) -> Vec<HttpEvent> {
        let mut events = Vec::new();
        self.on_read_into(chunk, &mut events);
        events
    }

    /// As [`Self::on_read`], appending to `events`: a caller reusing one vector allocates
    /// nothing per call for the events.
    pub fn on_read_into(&mut self, chunk: Chunk<'_>, events: &mut Vec<HttpEvent>) {
        let mut errors = Vec::new();
        let open = &mut self.open;
        let overflow = &mut self.overflow;
        self.requests.push(
            chunk,
            &mut |p| {
                let (request, body) = parse_request(&p)?;
                if open.len() >= MAX_OPEN {
                    open.pop_front();
                    *overflow += 1;
                }
                events.push(HttpEvent::RequestStarted {
                    request: request.clone(),
                    started_ns: p.started_ns,
                });
                open.push_back(Open {
                    request,
                    started_ns: p.started_ns,
                    status: None,
                    response_started_ns: None,
                });
                Ok(body)
            },
            &mut |_| {},
            &mut errors,
        );
        events.extend(errors.into_iter().map(HttpEvent::Error));
    }

    /// Bytes the server wrote to the client.
    pub fn on_write(&mut self, chunk: Chunk<'_>) -> Vec<HttpEvent> {
        let mut events = Vec::new();
        self.on_write_into(chunk, &mut events);
        events
    }

    /// As [`Self::on_write`], appending to `events`.
    pub fn on_write_into(&mut self, chunk: Chunk<'_>, events: &mut Vec<HttpEvent>) {
        let mut errors = Vec::new();
        // Both callbacks need the open requests: the head sets the front's status, the end
        // of that response pops it.
        let shared = std::cell::RefCell::new((&mut self.open, events));
        self.responses.push(
            chunk,
            &mut |p| {
                let mut guard = shared.borrow_mut();
                let open = &mut guard.0;
                let answers_head = open.front().is_some_and(|o| o.request.method == "HEAD");
                let (status, body, _close) = parse_response(&p, answers_head)?;
                let interim = (100..200).contains(&status) && status != 101;
                if let Some(front) = open.front_mut() {
                    // 1xx interim responses (100 Continue) precede the real one.
                    if !interim {
                        front.status = Some(status);
                    }
                    front.response_started_ns.get_or_insert(p.started_ns);
                }
                Ok(if interim { Body::None } else { body })
            },
            &mut |end| {
                let mut guard = shared.borrow_mut();
                let (open, done) = &mut *guard;
                if open.front().is_some_and(|o| o.status.is_some())
                    && let Some(o) = open.pop_front()
                {
                    done.push(HttpEvent::Exchange(Exchange {
                        request: o.request,
                        status: o.status,
                        started_ns: o.started_ns,
                        response_started_ns: o.response_started_ns,
                        finished_ns: end,
                    }));
                }
            },
            &mut errors,
        );
        let (_, events) = shared.into_inner();
        events.extend(errors.into_iter().map(HttpEvent::Error));
    }

    /// The connection closed: a body that runs until close ends here; requests never answered
    /// are reported without a status.
    pub fn on_close(&mut self, timestamp_ns: u64) -> Vec<HttpEvent> {
        let answered_by_close = self.responses.in_body_until_close();
        self.open
            .drain(..)
            .enumerate()
            .map(|(k, o)| {
                HttpEvent::Exchange(Exchange {
                    request: o.request,
                    // Only the response being written can have been ended by the close.
                    status: o.status.filter(|_| k == 0 && answered_by_close),
                    started_ns: o.started_ns,
                    response_started_ns: o.response_started_ns,
                    finished_ns: timestamp_ns,
                })
            })
            .collect()
    }
}

impl Default for HttpSession {
    fn default() -> Self {
        Self::new()
    }
}
