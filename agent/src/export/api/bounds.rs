//! What one client may cost the agent, and the counts of what those bounds turned away. The
//! API shares the agent's two cores with the pipeline, so every resource a client can make
//! it hold — concurrent calls, streams, buffered messages, message bytes — has a ceiling.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{export::listen::ConnectionCounters, model::ExportDrops};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections open at once; one more is closed at once (and counted). Well below the
    /// agent's default file-descriptor limit (1024), which eBPF maps and /proc reads share.
    pub connections: usize,
    /// A connection with no byte either way for this long is closed. Live clients never
    /// reach it: the server pings every `keepalive` and their answers count.
    pub idle: std::time::Duration,
    /// HTTP/2 ping interval, so a live but quiet client (a Watch with nothing new) shows
    /// activity, and a dead one fails to answer.
    pub keepalive: std::time::Duration,
    /// Calls in progress on one connection; more wait (tower's concurrency limit).
    pub calls_per_connection: usize,
    /// HTTP/2 streams one connection may open at once (advertised to the client).
    pub streams_per_connection: u32,
    /// Watch streams fed at once across all clients; one more is refused (and counted).
    pub watch_streams: usize,
    /// Messages a Watch stream may have waiting for its client. A client that lets this
    /// fill (on top of HTTP/2's own flow-control window) is cut off and counted.
    pub watch_buffer: usize,
    /// Largest request accepted. Requests are a few filters: anything near this is abuse.
    pub max_request_bytes: usize,
    /// Largest answer sent. A snapshot is bounded by the agent's own limits (fingerprints,
    /// routes, findings), far below this; past it the call fails instead of the agent
    /// buffering without end.
    pub max_response_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            connections: 256,
            idle: std::time::Duration::from_secs(60),
            keepalive: std::time::Duration::from_secs(20),
            calls_per_connection: 16,
            streams_per_connection: 32,
            watch_streams: 32,
            watch_buffer: 16,
            max_request_bytes: 64 * 1024,
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Connections, Watch streams and calls refused or cut off, written by the API and read into every
/// snapshot's `agent.export` (so `herdwatch.agent.dropped{reason="api_…"}` carries them).
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// The Unix socket's and the TCP listener's refusals and failed accepts.
    pub connections: Arc<ConnectionCounters>,
    pub watches_refused: AtomicU64,
    pub watchers_too_slow: AtomicU64,
    /// Calls on the TCP listener refused for a missing or wrong bearer token.
    pub unauthenticated: AtomicU64,
    /// Answers larger than `max_response_bytes`, refused instead of sent.
    pub responses_too_large: AtomicU64,
}

impl ApiCounters {
    /// Writes the API's counts into the snapshot's export losses.
    pub fn add_to(&self, drops: &mut ExportDrops) {
        drops.api_connections_refused = self.connections.refused.load(Ordering::Relaxed);
        drops.accept_failed += self.connections.accept_failed.load(Ordering::Relaxed);
        drops.api_watches_refused = self.watches_refused.load(Ordering::Relaxed);
        drops.api_watchers_too_slow = self.watchers_too_slow.load(Ordering::Relaxed);
        drops.api_unauthenticated = self.unauthenticated.load(Ordering::Relaxed);
        drops.api_responses_too_large = self.responses_too_large.load(Ordering::Relaxed);
    }
}

/// `answer` when its encoding fits in `limit` bytes. A larger one would fail in the
/// transport with nothing counted; refusing it here counts it (`api_response_too_large`)
/// and tells the client why, naming the call.
pub fn within_limit<T: prost::Message>(
    answer: T,
    limit: usize,
    counters: &ApiCounters,
    call: &str,
) -> Result<T, tonic::Status> {
    let size = answer.encoded_len();
    if size <= limit {
        return Ok(answer);
    }
    counters.responses_too_large.fetch_add(1, Ordering::Relaxed);
    Err(tonic::Status::resource_exhausted(format!(
        "the answer to {call} is {size} bytes, over the API's limit of {limit}; the agent \
         counted it as dropped (api_response_too_large). Ask for less (a limit or a filter), \
         or lower the agent's max_fingerprints / max_routes"
    )))
}

/// Admission of Watch streams: a permit per stream, held until its feeder stops.
#[derive(Debug, Clone)]
pub struct WatchSlots {
    slots: Arc<Semaphore>,
    limit: usize,
    counters: Arc<ApiCounters>,
}

impl WatchSlots {
    pub fn new(limit: usize, counters: Arc<ApiCounters>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            counters,
        }
    }

    /// A slot for one more stream, or RESOURCE_EXHAUSTED (counted) when all are taken.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, tonic::Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            self.counters
                .watches_refused
                .fetch_add(1, Ordering::Relaxed);
            tonic::Status::resource_exhausted(format!(
                "this agent already feeds {} watch streams, its limit; close one or use the List calls",
                self.limit
            ))
        })
    }

    pub fn counters(&self) -> &Arc<ApiCounters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_past_the_limit_is_refused_and_counted_and_a_freed_slot_is_reused() {
        let counters = Arc::new(ApiCounters::default());
        let slots = WatchSlots::new(2, counters.clone());
        let first = slots.admit().expect("first slot");
        let _second = slots.admit().expect("second slot");
        let refused = slots.admit().expect_err("no third slot");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("2 watch streams"), "{refused}");
        drop(first);
        let _third = slots.admit().expect("the freed slot");
        let mut drops = ExportDrops::default();
        counters.add_to(&mut drops);
        assert_eq!(drops.api_watches_refused, 1);
        assert_eq!(drops.api_watchers_too_slow, 0);
    }

    #[test]
    fn an_answer_over_the_limit_is_refused_and_counted() {
        let counters = ApiCounters::default();
        let small = herdwatch_proto::v1::GetHostResponse::default();
        assert!(within_limit(small, 0, &counters, "GetHost").is_ok());
        let host = herdwatch_proto::v1::GetHostResponse {
            host: Some(herdwatch_proto::v1::Host {
                cpus: 2,
                ..Default::default()
            }),
            taken_at_unix_ms: 1,
        };
        let refused = within_limit(host, 1, &counters, "GetHost").expect_err("too large");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("GetHost") && refused.message().contains("limit of 1"),
            "{refused}"
        );
        let mut drops = ExportDrops::default();
        counters.add_to(&mut drops);
        assert_eq!(drops.api_responses_too_large, 1);
    }
}
