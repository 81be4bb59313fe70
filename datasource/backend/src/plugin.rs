//! The Grafana side: QueryData, CheckHealth, CallResource and RunStream, each asking the
//! fleet and answering with what the agents that answered said, naming those that did not.
use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::StreamExt as _;
use grafana_plugin_sdk::{
    backend,
    data::{Frame, Metadata, Notice, Severity},
    prelude::*,
};
use herdwatch_proto::v1 as pb;

use crate::{
    error::{Error, Result},
    findings,
    fleet::{self, Agent},
    query::{Query, QueryType, Window},
    settings::Settings,
    tables,
};

#[derive(Clone, Debug, Default, GrafanaPlugin)]
#[grafana_plugin(plugin_type = "datasource")]
pub struct Plugin;

type Context = backend::PluginContext<
    backend::DataSourceInstanceSettings<serde_json::Value, serde_json::Value>,
    serde_json::Value,
    serde_json::Value,
>;

fn settings_of(context: &Context) -> Result<Settings> {
    let instance = context
        .instance_settings
        .as_ref()
        .ok_or_else(|| Error::Settings("the request carries no datasource settings".into()))?;
    Settings::from_json(&instance.json_data, &instance.decrypted_secure_json_data)
}

/// What the fleet answered: each answering agent's host name and snapshot, and a failure per
/// agent (or DNS name) that did not.
pub struct FleetAnswer {
    pub answers: Vec<(String, pb::Snapshot)>,
    pub failures: Vec<Error>,
    pub asked: usize,
}

impl FleetAnswer {
    fn pairs(&self) -> impl Iterator<Item = (&str, &pb::Snapshot)> {
        self.answers.iter().map(|(h, s)| (h.as_str(), s))
    }

    fn notices(&self) -> Vec<Notice> {
        self.failures
            .iter()
            .map(|e| {
                let mut n = Notice::new(e.to_string());
                n.severity = Some(Severity::Warning);
                n
            })
            .collect()
    }
}

/// The host name an agent gives (its node), or its address from an agent too old to say.
fn host_name(agent: &Agent, snap: &pb::Snapshot) -> String {
    snap.host
        .as_ref()
        .map(|h| h.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| agent.address.clone())
}

pub async fn ask_fleet(settings: &Settings) -> FleetAnswer {
    let (agents, mut failures) = fleet::agents(settings).await;
    let asked = agents.len() + failures.len();
    let mut answers = Vec::new();
    for (agent, answer) in fleet::snapshots(&agents, settings).await {
        match answer {
            Ok(snap) => answers.push((host_name(&agent, &snap), snap)),
            Err(e) => failures.push(e),
        }
    }
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    FleetAnswer {
        answers,
        failures,
        asked,
    }
}

/// The frames of one query over what the fleet answered.
pub fn frames_for(query: &Query, window: &Window, fleet: &FleetAnswer) -> Vec<Frame> {
    let mut frames = match query.query_type {
        Some(QueryType::Findings) => {
            let found = fleet
                .answers
                .iter()
                .map(|(h, s)| (h.as_str(), s.findings.as_slice()));
            vec![findings::table(&findings::merge(found, query))]
        }
        Some(QueryType::Occurrences) => {
            let found = fleet
                .answers
                .iter()
                .map(|(h, s)| (h.as_str(), s.findings.as_slice()));
            findings::occurrence_frames(&findings::merge(found, query), window)
        }
        Some(QueryType::Pools) => vec![tables::pools_frame(fleet.pairs(), query)],
        Some(QueryType::Routes) => vec![tables::routes_frame(
            fleet.pairs(),
            query,
            &crate::rates::ROUTE_RATES,
        )],
        Some(QueryType::Queries) => vec![tables::queries_frame(fleet.pairs(), query)],
        None => Vec::new(),
    };
    // A series-less answer still carries its notices (and a panel still gets a frame).
    if frames.is_empty() {
        frames.push(Frame::new("occurrences"));
    }
    let notices = fleet.notices();
    if !notices.is_empty()
        && let Some(first) = frames.first_mut()
    {
        let mut meta = first.meta.take().unwrap_or_default();
        meta.notices = Some(notices);
        first.meta = Some(meta);
    }
    frames
}

/// A query's failure, shown on its panel.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    ref_id: String,
    message: String,
}

impl backend::DataQueryError for QueryError {
    fn ref_id(self) -> String {
        self.ref_id
    }
}

fn one_query(
    q: &backend::DataQuery<serde_json::Value>,
    fleet: &std::result::Result<FleetAnswer, String>,
) -> std::result::Result<backend::DataResponse, QueryError> {
    let window = Window {
        from: q.time_range.from,
        to: q.time_range.to,
        interval_ms: u64::try_from(q.interval.as_millis()).unwrap_or(u64::MAX),
    };
    let frames =
        query_frames(&q.ref_id, &q.query, &q.query_type, &window, fleet).map_err(|message| {
            QueryError {
                ref_id: q.ref_id.clone(),
                message,
            }
        })?;
    let checked = frames
        .iter()
        .map(|f| {
            f.check().map_err(|e| QueryError {
                ref_id: q.ref_id.clone(),
                message: Error::Frame(e.to_string()).to_string(),
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(backend::DataResponse::new(q.ref_id.clone(), checked))
}

/// One query's frames, or the one-line error its panel shows: the settings' fault, the
/// query's, or every agent's.
pub fn query_frames(
    ref_id: &str,
    json: &serde_json::Value,
    query_type: &str,
    window: &Window,
    fleet: &std::result::Result<FleetAnswer, String>,
) -> std::result::Result<Vec<Frame>, String> {
    let fleet = fleet.as_ref().map_err(Clone::clone)?;
    let query = Query::parse(ref_id, json, query_type, window).map_err(|e| e.to_string())?;
    if fleet.answers.is_empty() {
        let all: Vec<String> = fleet.failures.iter().map(ToString::to_string).collect();
        return Err(Error::AllFailed(all.join("; ")).to_string());
    }
    Ok(frames_for(&query, window, fleet))
}

#[backend::async_trait]
impl backend::DataService for Plugin {
    type Query = serde_json::Value;
    type QueryError = QueryError;
    type Stream = backend::BoxDataResponseStream<Self::QueryError>;

    async fn query_data(
        &self,
        request: backend::QueryDataRequest<Self::Query, Self>,
    ) -> Self::Stream {
        // The fleet is asked once for all the request's queries, so they agree.
        let fleet = match settings_of(&request.plugin_context) {
            Ok(settings) => Ok(ask_fleet(&settings).await),
            Err(e) => Err(e.to_string()),
        };
        let responses: Vec<_> = request
            .queries
            .iter()
            .map(|q| one_query(q, &fleet))
            .collect();
        Box::pin(futures_util::stream::iter(responses))
    }
}

/// "k of n agents reachable", each failure named; healthy only when every agent answered.
pub fn health(fleet: &FleetAnswer) -> backend::CheckHealthResponse {
    let mut message = format!(
        "{} of {} agents reachable",
        fleet.answers.len(),
        fleet.asked
    );
    if fleet.failures.is_empty() {
        let hosts: Vec<&str> = fleet.answers.iter().map(|(h, _)| h.as_str()).collect();
        message.push_str(&format!(" ({})", hosts.join(", ")));
        return backend::CheckHealthResponse::ok(message);
    }
    for failure in &fleet.failures {
        message.push_str("; ");
        message.push_str(&failure.to_string());
    }
    backend::CheckHealthResponse::error(message)
}

#[backend::async_trait]
impl backend::DiagnosticsService for Plugin {
    type CheckHealthError = std::convert::Infallible;

    async fn check_health(
        &self,
        request: backend::CheckHealthRequest<Self>,
    ) -> std::result::Result<backend::CheckHealthResponse, Self::CheckHealthError> {
        Ok(match settings_of(&request.plugin_context) {
            Ok(settings) => health(&ask_fleet(&settings).await),
            Err(e) => backend::CheckHealthResponse::error(e.to_string()),
        })
    }

    type CollectMetricsError = std::convert::Infallible;

    async fn collect_metrics(
        &self,
        _request: backend::CollectMetricsRequest<Self>,
    ) -> std::result::Result<backend::CollectMetricsResponse, Self::CollectMetricsError> {
        Ok(backend::CollectMetricsResponse::new(None))
    }
}

/// A failed resource call: a JSON `{error}` with a status that says whose fault it was.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResourceError(Error);

impl backend::ErrIntoHttpResponse for ResourceError {
    fn into_http_response(
        self,
    ) -> std::result::Result<http::Response<Bytes>, Box<dyn std::error::Error>> {
        let status = match self.0 {
            Error::NoResource(_) => http::StatusCode::NOT_FOUND,
            Error::Settings(_) => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::BAD_GATEWAY,
        };
        Ok(http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Bytes::from(serde_json::to_vec(
                &serde_json::json!({"error": self.0.to_string()}),
            )?))?)
    }
}

#[backend::async_trait]
impl backend::ResourceService for Plugin {
    type Error = ResourceError;
    type InitialResponse = http::Response<Bytes>;
    type Stream = backend::BoxResourceStream<Self::Error>;

    async fn call_resource(
        &self,
        request: backend::CallResourceRequest<Self>,
    ) -> std::result::Result<(Self::InitialResponse, Self::Stream), Self::Error> {
        let uri = request.request.uri();
        let what = uri.path().trim_matches('/').to_string();
        if !matches!(what.as_str(), "hosts" | "pools" | "routes" | "queries") {
            return Err(ResourceError(Error::NoResource(uri.path().to_string())));
        }
        let params: BTreeMap<String, String> =
            form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let pool = params.get("pool").map(String::as_str).unwrap_or_default();
        let settings = settings_of(&request.plugin_context).map_err(ResourceError)?;
        let fleet = ask_fleet(&settings).await;
        if fleet.answers.is_empty() {
            let all = fleet
                .failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            return Err(ResourceError(Error::AllFailed(all.join("; "))));
        }
        let choices = tables::choices(&what, pool, fleet.pairs())
            .ok_or_else(|| ResourceError(Error::NoResource(what.clone())))?;
        let body =
            serde_json::to_vec(&choices).map_err(|e| ResourceError(Error::Frame(e.to_string())))?;
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .header("content-type", "application/json")
            .body(Bytes::from(body))
            .map_err(|e| ResourceError(Error::Frame(e.to_string())))?;
        Ok((response, Box::pin(futures_util::stream::empty())))
    }
}

/// The live findings stream's path.
pub const FINDINGS_STREAM: &str = "findings";

/// One transition as a one-row frame; or, with `notice`, an empty frame that carries it.
fn transition_frame(
    host: &str,
    t: Option<&pb::FindingTransition>,
    notice: Option<String>,
) -> Frame {
    let rows: Vec<(&pb::FindingTransition, pb::Finding)> = t
        .map(|t| (t, t.finding.clone().unwrap_or_default()))
        .into_iter()
        .collect();
    let transition = |k: i32| match pb::FindingTransitionKind::try_from(k) {
        Ok(pb::FindingTransitionKind::Onset) => "onset".to_string(),
        Ok(pb::FindingTransitionKind::Update) => "update".to_string(),
        Ok(pb::FindingTransitionKind::Resolution) => "resolution".to_string(),
        _ => format!("transition {k}"),
    };
    let mut frame = Frame::new(FINDINGS_STREAM).with_fields([
        rows.iter()
            .map(|(t, _)| findings::time(t.seen_at_unix_ms))
            .collect::<Vec<_>>()
            .into_field("time"),
        rows.iter()
            .map(|_| host.to_string())
            .collect::<Vec<_>>()
            .into_field("host"),
        rows.iter()
            .map(|(t, _)| transition(t.kind))
            .collect::<Vec<_>>()
            .into_field("transition"),
        rows.iter()
            .map(|(_, f)| f.id.clone())
            .collect::<Vec<_>>()
            .into_field("id"),
        rows.iter()
            .map(|(_, f)| findings::kind_name(f.kind))
            .collect::<Vec<_>>()
            .into_field("kind"),
        rows.iter()
            .map(|(_, f)| findings::severity_name(f.severity))
            .collect::<Vec<_>>()
            .into_field("severity"),
        rows.iter()
            .map(|(_, f)| f.active)
            .collect::<Vec<_>>()
            .into_field("active"),
        rows.iter()
            .map(|(_, f)| f.occurrences)
            .collect::<Vec<_>>()
            .into_field("occurrences"),
        rows.iter()
            .map(|(_, f)| f.root_cause.clone())
            .collect::<Vec<_>>()
            .into_field("root_cause"),
    ]);
    if let Some(text) = notice {
        let mut n = Notice::new(text);
        n.severity = Some(Severity::Warning);
        let mut meta = Metadata::default();
        meta.notices = Some(vec![n]);
        frame.meta = Some(meta);
    }
    frame
}

fn packet(frame: &Frame) -> Result<backend::StreamPacket<()>> {
    let checked = frame.check().map_err(|e| Error::Frame(e.to_string()))?;
    backend::StreamPacket::from_frame(checked).map_err(|e| Error::Frame(e.to_string()))
}

type Packets = futures_util::stream::BoxStream<'static, Result<backend::StreamPacket<()>>>;

/// One agent's findings as packets: its WatchFindings stream, then a notice when it ends or
/// fails (the others go on).
async fn agent_packets(agent: Agent, settings: Settings) -> Packets {
    let opened = async {
        let mut client = fleet::connect(&agent, &settings).await?;
        let fail = |s: tonic::Status| Error::Agent {
            address: agent.address.clone(),
            message: fleet::status_text(&s),
        };
        let host = client
            .get_host(pb::GetHostRequest {})
            .await
            .map_err(fail)?
            .into_inner()
            .host
            .map(|h| h.name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| agent.address.clone());
        let stream = client
            .watch_findings(pb::WatchFindingsRequest {})
            .await
            .map_err(fail)?
            .into_inner();
        Ok::<_, Error>((host, stream))
    };
    let opened = tokio::time::timeout(settings.timeout, opened).await;
    let (host, stream) = match opened {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            let frame = transition_frame("", None, Some(e.to_string()));
            return futures_util::stream::once(async move { packet(&frame) }).boxed();
        }
        Err(_) => {
            let text = format!(
                "agent {}: no answer within {} ms",
                agent.address,
                settings.timeout.as_millis()
            );
            let frame = transition_frame("", None, Some(text));
            return futures_util::stream::once(async move { packet(&frame) }).boxed();
        }
    };
    let address = agent.address.clone();
    let ended_host = host.clone();
    let items = stream
        .map(move |item| match item {
            Ok(answer) => packet(&transition_frame(&host, answer.transition.as_ref(), None)),
            Err(s) => packet(&transition_frame(
                &host,
                None,
                Some(format!("agent {address}: {}", fleet::status_text(&s))),
            )),
        })
        .chain(futures_util::stream::once(async move {
            packet(&transition_frame(
                &ended_host,
                None,
                Some(format!("agent {ended_host}: its findings stream ended")),
            ))
        }));
    items.boxed()
}

/// Every agent's findings, merged as they come.
pub async fn findings_stream(settings: Settings) -> Packets {
    let (agents, failures) = fleet::agents(&settings).await;
    let mut streams: Vec<Packets> = failures
        .into_iter()
        .map(|e| {
            let frame = transition_frame("", None, Some(e.to_string()));
            futures_util::stream::once(async move { packet(&frame) }).boxed()
        })
        .collect();
    let opened = futures_util::future::join_all(
        agents
            .into_iter()
            .map(|a| agent_packets(a, settings.clone())),
    )
    .await;
    streams.extend(opened);
    futures_util::stream::select_all(streams).boxed()
}

#[backend::async_trait]
impl backend::StreamService for Plugin {
    type JsonValue = ();
    type Error = Error;
    type Stream = backend::BoxRunStream<Self::Error>;

    async fn subscribe_stream(
        &self,
        request: backend::SubscribeStreamRequest<Self>,
    ) -> Result<backend::SubscribeStreamResponse> {
        Ok(if request.path.as_str() == FINDINGS_STREAM {
            backend::SubscribeStreamResponse::ok(None)
        } else {
            backend::SubscribeStreamResponse::not_found()
        })
    }

    async fn run_stream(&self, request: backend::RunStreamRequest<Self>) -> Result<Self::Stream> {
        if request.path.as_str() != FINDINGS_STREAM {
            return Err(Error::NoStream(request.path.as_str().to_string()));
        }
        let settings = settings_of(&request.plugin_context)?;
        Ok(Box::pin(findings_stream(settings).await))
    }

    async fn publish_stream(
        &self,
        _request: backend::PublishStreamRequest<Self>,
    ) -> Result<backend::PublishStreamResponse> {
        Ok(backend::PublishStreamResponse::permission_denied(
            serde_json::Value::Null,
        ))
    }
}

#[cfg(test)]
mod tests;
