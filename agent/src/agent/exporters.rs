//! What serves or sends what the agent sees: the gRPC API (Unix socket and TCP), Prometheus
//! `/metrics`, and OTLP. Started with the agent, and restarted on a reload whose keys for
//! them changed, without touching the kernel programs.
use std::sync::Arc;

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    config::Config,
    error::{Error, Result},
    export::{
        api::{ApiCounters, ApiLimits, TcpApi, socket_file::SocketFile},
        delivery::ExportCounters,
        listen::ConnectionCounters,
        logs::FindingLogger,
        otlp::Otlp,
    },
    model::{RecordSink, Snapshot},
};

/// The exporters' loss counters: one set for the agent's whole life, so restarting an
/// exporter on a reload never sets a published counter back.
#[derive(Clone, Default)]
pub(super) struct ExporterCounters {
    pub otlp: Arc<ExportCounters>,
    pub api: Arc<ApiCounters>,
    pub metrics: Arc<ConnectionCounters>,
}

/// What a started OTLP exporter feeds on inside the pipeline task: finished exchanges and
/// queries (its telemetry) and finding transitions (its log).
pub(super) struct OtlpFeeds {
    pub telemetry: Box<dyn RecordSink>,
    pub logs: FindingLogger,
}

/// The API listeners: their tasks, and the socket file removed when dropped.
struct ServedApi {
    tasks: Vec<JoinHandle<()>>,
    _socket: Option<SocketFile>,
}

pub(super) struct Exporters {
    counters: ExporterCounters,
    // Dropping it flushes and stops OTLP export.
    otlp: Option<Otlp>,
    api: Option<ServedApi>,
    metrics: Option<JoinHandle<()>>,
}

/// Which exporters a reload restarted, for the log.
pub(super) type Restarted = Vec<&'static str>;

impl Exporters {
    pub fn new(counters: ExporterCounters) -> Self {
        Self {
            counters,
            otlp: None,
            api: None,
            metrics: None,
        }
    }

    /// Starts OTLP export when `config` names an endpoint; the feeds go to the pipeline.
    pub fn start_otlp(
        &self,
        config: &Config,
        latest: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Option<(Otlp, OtlpFeeds)>> {
        let resolved = config
            .otlp
            .resolve(|k| std::env::var(k).ok())
            .map_err(|message| Error::Config {
                origin: "otlp".into(),
                message,
            })?;
        let Some((endpoint, transport)) = resolved else {
            return Ok(None);
        };
        let (otlp, exporters) = crate::export::otlp::start(
            &config.otlp,
            &endpoint,
            transport,
            latest.clone(),
            self.counters.otlp.clone(),
        )?;
        tracing::info!("exporting OTLP metrics, spans and logs to {endpoint} ({transport:?})");
        let feeds = OtlpFeeds {
            telemetry: Box::new(exporters.telemetry),
            logs: exporters.logs,
        };
        Ok(Some((otlp, feeds)))
    }

    /// Keeps `otlp` running from now on; returns the one it replaces, to be dropped (a flush
    /// bounded by the export timeout) off the runtime's threads.
    pub fn replace_otlp(&mut self, otlp: Option<Otlp>) -> Option<Otlp> {
        std::mem::replace(&mut self.otlp, otlp)
    }

    /// Serves the API (socket and TCP listener) and `/metrics` as `config` asks. On an error
    /// nothing this call started keeps serving.
    pub async fn serve_readers(
        &mut self,
        config: &Config,
        tcp_api: Option<TcpApi>,
        latest: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<()> {
        self.api = self.serve_api(config, tcp_api, latest)?;
        match self.serve_metrics(config, latest).await {
            Ok(metrics) => {
                self.metrics = metrics;
                Ok(())
            }
            Err(err) => {
                stop_api(self.api.take()).await;
                Err(err)
            }
        }
    }

    fn serve_api(
        &self,
        config: &Config,
        tcp_api: Option<TcpApi>,
        latest: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Option<ServedApi>> {
        if config.api_socket.is_none() && tcp_api.is_none() {
            return Ok(None);
        }
        let served = crate::export::api::serve(
            config.api_socket.as_deref(),
            tcp_api,
            latest.clone(),
            ApiLimits::default(),
            self.counters.api.clone(),
        )?;
        Ok(Some(ServedApi {
            tasks: served.tasks,
            _socket: served.socket,
        }))
    }

    async fn serve_metrics(
        &self,
        config: &Config,
        latest: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Option<JoinHandle<()>>> {
        let Some(addr) = &config.prometheus_listen else {
            return Ok(None);
        };
        let naming = crate::export::resource::PoolNaming::new(config.otlp.services.clone());
        let task = crate::export::http::serve(
            addr,
            latest.clone(),
            config.interval(),
            self.counters.metrics.clone(),
            Arc::new(naming),
        )
        .await?;
        Ok(Some(task))
    }

    /// Restarts the API listeners when their keys changed, or when a TCP listener is on (so
    /// a reload re-reads a rotated certificate, key or token), and `/metrics` when its
    /// address or the pools' service names changed. Everything that can be checked is checked before anything running
    /// stops; a new listener that cannot bind leaves the old one serving (`/metrics`) or
    /// brings the old one back (the API, whose socket path or port it may share).
    pub async fn restart_readers(
        &mut self,
        old: &Config,
        new: &Config,
        latest: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<Restarted> {
        let mut restarted = Vec::new();
        let api_changed = api_keys(old) != api_keys(new) || new.api_listen.is_some();
        let tcp = if api_changed {
            let tcp = TcpApi::prepare(new)?;
            if new.api_socket != old.api_socket
                && let Some(path) = &new.api_socket
            {
                crate::export::api::socket_file::check(path)?;
            }
            Some(tcp)
        } else {
            None
        };
        if let Some(tcp) = tcp {
            stop_api(self.api.take()).await;
            match self.serve_api(new, tcp, latest) {
                Ok(api) => self.api = api,
                Err(err) => {
                    tracing::error!(
                        "the reloaded API listeners failed ({err}); restoring the old ones"
                    );
                    let old_tcp = TcpApi::prepare(old)?;
                    self.api = self.serve_api(old, old_tcp, latest)?;
                    return Err(err);
                }
            }
            restarted.push("API");
        }
        // The series' job and instance labels come from the OTLP service naming.
        let same_address = old.prometheus_listen == new.prometheus_listen;
        if !same_address || old.otlp.services != new.otlp.services {
            if same_address && let Some(old_task) = self.metrics.take() {
                // The same address: the old listener must close before the new one binds.
                stop(old_task).await;
                self.metrics = self.serve_metrics(new, latest).await?;
            } else {
                // Bound before the old one stops: an address that is taken changes nothing.
                let metrics = self.serve_metrics(new, latest).await?;
                if let Some(old_task) = std::mem::replace(&mut self.metrics, metrics) {
                    stop(old_task).await;
                }
            }
            restarted.push("/metrics");
        }
        Ok(restarted)
    }
}

impl Drop for Exporters {
    fn drop(&mut self) {
        if let Some(api) = &self.api {
            for task in &api.tasks {
                task.abort();
            }
        }
        if let Some(task) = &self.metrics {
            task.abort();
        }
    }
}

/// The keys the API listeners are made from.
fn api_keys(config: &Config) -> impl PartialEq + '_ {
    (
        &config.api_socket,
        &config.api_listen,
        &config.api_tls_cert,
        &config.api_tls_key,
        &config.api_token_file,
        config.api_insecure,
    )
}

/// Aborts `task` and waits until it is gone, so the listener it owned is closed and its
/// address free for the next bind.
async fn stop(task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

async fn stop_api(api: Option<ServedApi>) {
    if let Some(api) = api {
        for task in api.tasks {
            stop(task).await;
        }
        // `_socket` drops here: the file is removed.
    }
}
