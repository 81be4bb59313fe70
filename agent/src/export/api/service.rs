//! `herdwatch.v1.AgentService`: every answer comes from the latest published snapshot, so a
//! call never waits for the pipeline and never holds it.
use std::sync::Arc;

use herdwatch_proto::v1::{self as pb, agent_service_server::AgentService};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{
    bounds::{ApiCounters, ApiLimits, WatchSlots, within_limit},
    convert::finding_kind,
    transitions::{Change, FindingTracker},
    watch_stream::{WatchStream, feed},
};
use crate::model::{FindingKind, Snapshot};

#[derive(Debug, Clone)]
pub struct AgentApi {
    latest: watch::Receiver<Arc<Snapshot>>,
    slots: WatchSlots,
    watch_buffer: usize,
    max_response_bytes: usize,
}

impl AgentApi {
    pub fn new(
        latest: watch::Receiver<Arc<Snapshot>>,
        limits: &ApiLimits,
        counters: Arc<ApiCounters>,
    ) -> Self {
        Self {
            latest,
            slots: WatchSlots::new(limits.watch_streams, counters),
            watch_buffer: limits.watch_buffer,
            max_response_bytes: limits.max_response_bytes,
        }
    }

    /// The answer to `call`, unless it is larger than the API sends (then refused, counted).
    fn answer<T: prost::Message>(&self, call: &str, answer: T) -> Result<Response<T>, Status> {
        within_limit(answer, self.max_response_bytes, self.slots.counters(), call)
            .map(Response::new)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.latest.borrow().clone()
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn get_snapshot(
        &self,
        _: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let snap = self.snapshot();
        self.answer(
            "GetSnapshot",
            pb::GetSnapshotResponse {
                snapshot: Some(pb::Snapshot::from(&*snap)),
            },
        )
    }

    async fn get_host(
        &self,
        _: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::GetHostResponse>, Status> {
        let snap = self.snapshot();
        self.answer(
            "GetHost",
            pb::GetHostResponse {
                host: Some(pb::Host::from(&snap.host)),
                taken_at_unix_ms: snap.taken_at_unix_ms,
            },
        )
    }

    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let snap = self.snapshot();
        self.answer(
            "ListPools",
            pb::ListPoolsResponse {
                pools: snap.pools.iter().map(pb::Pool::from).collect(),
                taken_at_unix_ms: snap.taken_at_unix_ms,
            },
        )
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let pool = request.into_inner().pool;
        let snap = self.snapshot();
        self.answer(
            "ListRoutes",
            pb::ListRoutesResponse {
                routes: snap
                    .routes
                    .iter()
                    .filter(|r| pool.is_empty() || r.pool == pool)
                    .map(pb::Route::from)
                    .collect(),
                taken_at_unix_ms: snap.taken_at_unix_ms,
            },
        )
    }

    async fn list_queries(
        &self,
        request: Request<pb::ListQueriesRequest>,
    ) -> Result<Response<pb::ListQueriesResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let snap = self.snapshot();
        self.answer(
            "ListQueries",
            pb::ListQueriesResponse {
                queries: snap
                    .queries
                    .iter()
                    .take(limit)
                    .map(pb::Query::from)
                    .collect(),
                taken_at_unix_ms: snap.taken_at_unix_ms,
            },
        )
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        let request = request.into_inner();
        let kinds = request
            .kinds
            .iter()
            .map(|k| finding_kind(*k, "ListFindingsRequest.kinds"))
            .collect::<Result<Vec<FindingKind>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snap = self.snapshot();
        self.answer(
            "ListFindings",
            pb::ListFindingsResponse {
                findings: snap
                    .findings
                    .iter()
                    .filter(|f| !request.active_only || f.active)
                    .filter(|f| kinds.is_empty() || kinds.contains(&f.kind))
                    .map(pb::Finding::from)
                    .collect(),
                taken_at_unix_ms: snap.taken_at_unix_ms,
            },
        )
    }

    async fn list_pool_events(
        &self,
        _: Request<pb::ListPoolEventsRequest>,
    ) -> Result<Response<pb::ListPoolEventsResponse>, Status> {
        let snap = self.snapshot();
        self.answer(
            "ListPoolEvents",
            pb::ListPoolEventsResponse {
                events: snap.pool_events.iter().map(pb::PoolEvent::from).collect(),
                taken_at_unix_ms: snap.taken_at_unix_ms,
            },
        )
    }

    async fn get_agent_stats(
        &self,
        _: Request<pb::GetAgentStatsRequest>,
    ) -> Result<Response<pb::GetAgentStatsResponse>, Status> {
        let snap = self.snapshot();
        self.answer(
            "GetAgentStats",
            pb::GetAgentStatsResponse {
                stats: Some(pb::AgentStats::from(&snap.agent)),
                taken_at_unix_ms: snap.taken_at_unix_ms,
            },
        )
    }

    type WatchSnapshotsStream = WatchStream<pb::WatchSnapshotsResponse>;

    async fn watch_snapshots(
        &self,
        _: Request<pb::WatchSnapshotsRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        let slot = self.slots.admit()?;
        let (limit, counters) = (self.max_response_bytes, self.slots.counters().clone());
        let stream = feed(
            self.latest.clone(),
            self.watch_buffer,
            slot,
            self.slots.counters().clone(),
            move |snap| {
                let message = pb::WatchSnapshotsResponse {
                    snapshot: Some(pb::Snapshot::from(snap)),
                };
                Ok(vec![within_limit(
                    message,
                    limit,
                    &counters,
                    "WatchSnapshots",
                )?])
            },
        );
        Ok(Response::new(stream))
    }

    type WatchFindingsStream = WatchStream<pb::WatchFindingsResponse>;

    async fn watch_findings(
        &self,
        _: Request<pb::WatchFindingsRequest>,
    ) -> Result<Response<Self::WatchFindingsStream>, Status> {
        let slot = self.slots.admit()?;
        let mut tracker = FindingTracker::default();
        let (limit, counters) = (self.max_response_bytes, self.slots.counters().clone());
        let stream = feed(
            self.latest.clone(),
            self.watch_buffer,
            slot,
            self.slots.counters().clone(),
            move |snap| {
                tracker
                    .transitions(&snap.findings)
                    .into_iter()
                    .map(|t| pb::WatchFindingsResponse {
                        transition: Some(pb::FindingTransition {
                            kind: transition_kind(t.change).into(),
                            finding: Some(pb::Finding::from(t.finding)),
                            seen_at_unix_ms: snap.taken_at_unix_ms,
                            already_active: t.already_active,
                        }),
                    })
                    .map(|message| within_limit(message, limit, &counters, "WatchFindings"))
                    .collect()
            },
        );
        Ok(Response::new(stream))
    }
}

fn transition_kind(change: Change) -> pb::FindingTransitionKind {
    match change {
        Change::Onset => pb::FindingTransitionKind::Onset,
        Change::Update => pb::FindingTransitionKind::Update,
        Change::Resolution => pb::FindingTransitionKind::Resolution,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Finding, Severity, finding::Subject};

    fn finding(id: &str, kind: FindingKind, active: bool) -> Finding {
        Finding {
            id: id.into(),
            kind,
            severity: Severity::Warning,
            active,
            occurrences: 1,
            first_seen_unix_ms: 1,
            last_seen_unix_ms: 2,
            onset_unix_ms: 1,
            reported_unix_ms: 2,
            subject: Subject::default(),
            evidence: Vec::new(),
            root_cause: String::new(),
            prevention: String::new(),
            remediation: String::new(),
            annotations: Vec::new(),
            recent_onsets_unix_ms: Vec::new(),
        }
    }

    fn api(findings: Vec<Finding>) -> AgentApi {
        let snap = Snapshot {
            findings,
            ..Snapshot::default()
        };
        let (_tx, rx) = watch::channel(Arc::new(snap));
        AgentApi::new(rx, &ApiLimits::default(), Arc::default())
    }

    async fn ids(api: &AgentApi, request: pb::ListFindingsRequest) -> Result<Vec<String>, Status> {
        let answer = api.list_findings(Request::new(request)).await?;
        Ok(answer
            .into_inner()
            .findings
            .into_iter()
            .map(|f| f.id)
            .collect())
    }

    #[tokio::test]
    async fn findings_filter_by_kind_and_activity() {
        let api = api(vec![
            finding("herd", FindingKind::ThunderingHerd, true),
            finding("cron", FindingKind::CronAlignment, false),
        ]);
        let all = ids(&api, pb::ListFindingsRequest::default()).await;
        assert_eq!(all.ok(), Some(vec!["herd".to_string(), "cron".to_string()]));
        let active = ids(
            &api,
            pb::ListFindingsRequest {
                active_only: true,
                kinds: Vec::new(),
            },
        )
        .await;
        assert_eq!(active.ok(), Some(vec!["herd".to_string()]));
        let cron = ids(
            &api,
            pb::ListFindingsRequest {
                active_only: false,
                kinds: vec![pb::FindingKind::CronAlignment.into()],
            },
        )
        .await;
        assert_eq!(cron.ok(), Some(vec!["cron".to_string()]));
    }

    #[tokio::test]
    async fn a_kind_from_a_newer_client_is_refused_by_name() {
        let api = api(vec![finding("herd", FindingKind::ThunderingHerd, true)]);
        let refused = ids(
            &api,
            pb::ListFindingsRequest {
                active_only: false,
                kinds: vec![pb::FindingKind::Starvation.into(), 77],
            },
        )
        .await
        .expect_err("kind 77 is unknown");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("ListFindingsRequest.kinds = 77"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn watches_past_the_limit_are_refused_and_counted() {
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let counters = Arc::new(ApiCounters::default());
        let limits = ApiLimits {
            watch_streams: 1,
            ..ApiLimits::default()
        };
        let api = AgentApi::new(rx, &limits, counters.clone());
        let _open = api
            .watch_findings(Request::new(pb::WatchFindingsRequest {}))
            .await
            .expect("the first watch");
        let refused = api
            .watch_snapshots(Request::new(pb::WatchSnapshotsRequest {}))
            .await
            .map(|_| ())
            .expect_err("one watch is the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let mut drops = crate::model::ExportDrops::default();
        counters.add_to(&mut drops);
        assert_eq!(drops.api_watches_refused, 1);
    }

    #[tokio::test]
    async fn answers_over_the_message_limit_are_refused_and_counted() {
        use tokio_stream::StreamExt as _;
        let mut long = finding("herd", FindingKind::ThunderingHerd, true);
        long.root_cause = "x".repeat(4096);
        let snap = Snapshot {
            findings: vec![long],
            ..Snapshot::default()
        };
        let (_tx, rx) = watch::channel(Arc::new(snap));
        let counters = Arc::new(ApiCounters::default());
        let limits = ApiLimits {
            max_response_bytes: 1024,
            ..ApiLimits::default()
        };
        let api = AgentApi::new(rx, &limits, counters.clone());
        let refused = api
            .get_snapshot(Request::new(pb::GetSnapshotRequest {}))
            .await
            .expect_err("over 1 KiB");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("GetSnapshot"), "{refused:?}");
        // Small answers still go out.
        api.get_host(Request::new(pb::GetHostRequest {}))
            .await
            .expect("the host fits");
        let mut stream = api
            .watch_snapshots(Request::new(pb::WatchSnapshotsRequest {}))
            .await
            .expect("the watch opens")
            .into_inner();
        let cut = stream.next().await.and_then(Result::err).expect("refused");
        assert!(cut.message().contains("WatchSnapshots"), "{cut:?}");
        let mut drops = crate::model::ExportDrops::default();
        counters.add_to(&mut drops);
        assert_eq!(drops.api_responses_too_large, 2);
    }
}
