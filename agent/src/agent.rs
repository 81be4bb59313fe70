//! The running agent: kernel programs attached, readers spawned, the pipeline task owning the
//! state, and a handle to read snapshots from.
use std::sync::Arc;

use aya::Ebpf;
use tokio::sync::{mpsc, oneshot, watch};

mod analysis;
mod exporters;
use analysis::Analysis;
use exporters::{ExporterCounters, Exporters, OtlpFeeds};

use crate::{
    config::Config,
    error::{Error, Result},
    model::Snapshot,
    pipeline::state::PipelineState,
    probes::{
        LoadOptions, loader,
        maps::KernelMaps,
        reader::{self, RingCounters},
    },
    procs::ProcessTable,
};

enum Command {
    /// Take a snapshot now (after applying every queued event) and send it back.
    Snapshot(oneshot::Sender<Arc<Snapshot>>),
    /// Apply what is queued, write the state that survives a restart, stop the pipeline.
    Stop(oneshot::Sender<()>),
    /// What a config reload changes inside the pipeline: detector thresholds (from the next
    /// evaluation on), route patterns (for requests from now on) and, when OTLP was
    /// restarted, what it feeds on. The reply hands back the feeds replaced.
    Reconfigure(
        Box<Reload>,
        oneshot::Sender<Vec<Box<dyn crate::model::RecordSink>>>,
    ),
}

/// The parts of a config that apply without a restart.
struct Reload {
    detect: crate::detect::DetectConfig,
    routes: herdwatch_protocol::route::RouteGrouper,
    /// Some when OTLP was restarted (None inside: it is off now).
    otlp: Option<Option<OtlpFeeds>>,
}

pub struct Agent {
    // The programs: detached when the agent is dropped (`loader::detach_all`).
    ebpf: Ebpf,
    // Dropping them stops the listeners, removes the API socket file (a stopped agent leaves
    // nothing behind) and flushes OTLP.
    exporters: Exporters,
    commands: mpsc::Sender<Command>,
    latest: watch::Receiver<Arc<Snapshot>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Loads and attaches the kernel programs, seeds the process table from /proc and starts
    /// the pipeline. Must be called inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Self> {
        // The API's TCP listener is checked first (plaintext refused, files read), so a
        // config that would expose findings fails before anything is loaded.
        let tcp_api = crate::export::api::TcpApi::prepare(config)?;
        // So is the socket's path: a live agent there, or a file that is not a socket, turns
        // this start away before seconds of loading and attaching.
        if let Some(path) = &config.api_socket {
            crate::export::api::socket_file::check(path)?;
        }
        let (mut ebpf, inputs, mut tasks) = attach(config)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        // Seed after attaching, so a process born during the scan is seen by one or the other.
        let table = tokio::task::spawn_blocking(ProcessTable::seed_from_proc)
            .await
            .map_err(|_| Error::PipelineStopped)?
            .map_err(|source| Error::Proc {
                what: "/proc (initial process scan)".into(),
                source,
            })?;
        let mut state = PipelineState::new(
            table,
            maps,
            inputs.event_counters,
            inputs.socket_counters,
            config,
        )?;
        let counters = ExporterCounters::default();
        let mut analysis = Analysis::new(config, &counters);
        let mut exporters = Exporters::new(counters);
        // Exporters read snapshots from this channel; the first real one replaces the empty.
        let (snap_tx, latest) = watch::channel(Arc::new(Snapshot::default()));
        if let Some((otlp, feeds)) = exporters.start_otlp(config, &latest)? {
            state.subscribe(feeds.telemetry);
            analysis.log_findings_to(Some(feeds.logs));
            exporters.replace_otlp(Some(otlp));
        }
        let first = analysis.snapshot(&mut state);
        let seeded = state.seed_existing_sockets();
        tracing::info!("tracing {seeded} sockets that were open before the agent started");
        snap_tx.send_replace(Arc::new(first));
        // Subscribers wait for the first periodic snapshot (a full interval of rates), not
        // this one: mark it seen before anyone clones the receiver.
        let mut latest = latest;
        latest.borrow_and_update();
        if let Err(err) = exporters.serve_readers(config, tcp_api, &latest).await {
            // The start fails: nothing it began may keep running behind it.
            for task in &tasks {
                task.abort();
            }
            return Err(err);
        }
        // Statement texts from PostgreSQL itself, when a monitoring DSN is configured.
        let answers = match &config.postgres.monitor_dsn {
            Some(dsn) => {
                let (link, answers, task) = crate::pipeline::statement_monitor::start(dsn.clone());
                state.set_statement_monitor(link);
                tasks.push(task);
                Some(answers)
            }
            None => None,
        };
        let (commands, command_rx) = mpsc::channel::<Command>(16);
        let pipeline = PipelineLoop {
            state,
            analysis,
            events: inputs.events,
            sockets: inputs.sockets,
            answers,
            commands: command_rx,
            snapshots: snap_tx,
        };
        tasks.push(tokio::spawn(pipeline.run(config.interval())));
        Ok(Self {
            ebpf,
            exporters,
            commands,
            latest,
            tasks,
        })
    }

    /// A snapshot taken now, with every event received so far applied.
    pub async fn snapshot_now(&self) -> Result<Arc<Snapshot>> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Snapshot(tx))
            .await
            .map_err(|_| Error::PipelineStopped)?;
        rx.await.map_err(|_| Error::PipelineStopped)
    }

    /// Stops the agent in order: the events received so far are applied and the state that
    /// survives a restart (the statement and finding books) is written before the programs
    /// detach.
    pub async fn stop(self) -> Result<()> {
        let started = std::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stop(tx))
            .await
            .map_err(|_| Error::PipelineStopped)?;
        rx.await.map_err(|_| Error::PipelineStopped)?;
        let drained = started.elapsed();
        // Detaches the programs, flushes OTLP, removes the API socket.
        drop(self);
        tracing::info!(
            "stopped in {} ms (pipeline drained and state written in {} ms)",
            started.elapsed().as_millis(),
            drained.as_millis()
        );
        Ok(())
    }

    /// Applies a reloaded config without touching the kernel programs: detector thresholds
    /// (the detectors keep what they have seen and judge it by the new thresholds from their
    /// next evaluation on), route patterns (for requests from now on), and the exporters
    /// whose keys changed (OTLP, the API listeners, `/metrics`), restarted. `new` must have
    /// been validated; `old` is the config running now. Returns the exporters restarted.
    pub async fn reconfigure(&mut self, old: &Config, new: &Config) -> Result<Vec<&'static str>> {
        // Started before anything changes: a bad OTLP setting leaves all as it was.
        let otlp = if old.otlp != new.otlp {
            Some(self.exporters.start_otlp(new, &self.latest)?)
        } else {
            None
        };
        let (otlp_handle, feeds) = match otlp {
            Some(Some((handle, feeds))) => (Some(Some(handle)), Some(Some(feeds))),
            Some(None) => (Some(None), Some(None)),
            None => (None, None),
        };
        let (tx, rx) = oneshot::channel();
        let reload = Reload {
            detect: new.detect.clone(),
            routes: new.route_grouper(),
            otlp: feeds,
        };
        self.commands
            .send(Command::Reconfigure(Box::new(reload), tx))
            .await
            .map_err(|_| Error::PipelineStopped)?;
        let replaced_feeds = rx.await.map_err(|_| Error::PipelineStopped)?;
        let mut restarted = Vec::new();
        if let Some(handle) = otlp_handle {
            let replaced = self.exporters.replace_otlp(handle);
            // Their flush waits up to the export timeout on a collector that is gone.
            tokio::task::spawn_blocking(move || drop((replaced, replaced_feeds)));
            restarted.push("OTLP");
        }
        restarted.extend(
            self.exporters
                .restart_readers(old, new, &self.latest)
                .await?,
        );
        Ok(restarted)
    }

    /// The most recent periodic snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.latest.borrow().clone()
    }

    /// Resolves when a new periodic snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.latest.clone()
    }
}

/// What the kernel programs feed the pipeline: the process-event channel, the socket ring,
/// and their loss counters.
struct Inputs {
    events: mpsc::Receiver<crate::probes::ProcessEvent>,
    event_counters: Arc<RingCounters>,
    sockets: reader::SocketRing,
    socket_counters: Arc<RingCounters>,
}

/// Loads and attaches the kernel programs and starts reading their ring buffers.
fn attach(config: &Config) -> Result<(Ebpf, Inputs, Vec<tokio::task::JoinHandle<()>>)> {
    let kernel_log_level = if tracing::enabled!(tracing::Level::DEBUG) {
        4
    } else {
        2
    };
    let started = std::time::Instant::now();
    let mut ebpf = loader::load_and_attach(&LoadOptions {
        thread_map_entries: config.thread_map_entries,
        event_ring_bytes: config.event_ring_bytes,
        kernel_log_level,
        capture_bytes: config.capture_bytes,
        socket_ring_bytes: config.socket_ring_bytes,
        socket_tracing: config.socket_tracing,
        raw_syscalls: config.raw_syscall_tracepoints,
        trampolines: config.syscall_trampolines,
        ..LoadOptions::default()
    })?;
    tracing::info!(
        "kernel programs loaded and attached in {} ms",
        started.elapsed().as_millis()
    );
    let event_counters = Arc::new(RingCounters::default());
    let (event_tx, events) = mpsc::channel(config.event_channel_capacity);
    let mut tasks = vec![reader::spawn_event_reader(
        &mut ebpf,
        event_tx,
        event_counters.clone(),
    )?];
    let socket_counters = Arc::new(RingCounters::default());
    let sockets = reader::SocketRing::open(
        &mut ebpf,
        socket_counters.clone(),
        config.record_socket_events.as_deref(),
    )?;
    if config.socket_channel_capacity.is_some() {
        tracing::warn!(
            "socket_channel_capacity has no effect any more: socket records are read in \
             place from the kernel ring buffer, sized by socket_ring_bytes"
        );
    }
    tasks.extend(reader::spawn_kernel_logger(&mut ebpf));
    let inputs = Inputs {
        events,
        event_counters,
        sockets,
        socket_counters,
    };
    Ok((ebpf, inputs, tasks))
}

/// The one task that owns the pipeline state: it applies events as they come, and on each
/// tick (or command) takes the accounting snapshot, completes it with the detectors' view
/// and publishes it.
struct PipelineLoop {
    state: PipelineState,
    analysis: Analysis,
    events: mpsc::Receiver<crate::probes::ProcessEvent>,
    sockets: reader::SocketRing,
    answers: Option<mpsc::Receiver<crate::pipeline::statement_monitor::Answer>>,
    commands: mpsc::Receiver<Command>,
    snapshots: watch::Sender<Arc<Snapshot>>,
}

impl PipelineLoop {
    async fn run(mut self, interval: std::time::Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let Self {
            state,
            analysis,
            events,
            sockets,
            answers,
            commands,
            snapshots,
        } = &mut self;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => apply_process_event(&event, sockets, state, analysis),
                    None => return,
                },
                read = sockets.apply_ready(SOCKET_RECORDS_PER_WAKE, |record| {
                    state.apply_socket_record(record, &mut analysis.detectors)
                }) => if let Err(err) = read {
                    tracing::error!("{err}; socket events stop");
                    return;
                },
                Some(answer) = next_answer(answers) => {
                    state.apply_statement_answer(&answer);
                }
                command = commands.recv() => match command {
                    Some(Command::Snapshot(reply)) => {
                        drain(events, sockets, state, analysis);
                        let snap = Arc::new(analysis.snapshot(state));
                        snapshots.send_replace(snap.clone());
                        let _ = reply.send(snap);
                    }
                    Some(Command::Reconfigure(reload, reply)) => {
                        // Requests already queued were made under the old patterns.
                        drain(events, sockets, state, analysis);
                        let Reload { detect, routes, otlp } = *reload;
                        analysis.detectors.reconfigure(&detect);
                        state.set_route_grouper(routes);
                        let replaced = match otlp {
                            Some(feeds) => {
                                let (sinks, logs) = match feeds {
                                    Some(f) => (vec![f.telemetry], Some(f.logs)),
                                    None => (Vec::new(), None),
                                };
                                analysis.log_findings_to(logs);
                                state.replace_subscribers(sinks)
                            }
                            None => Vec::new(),
                        };
                        let _ = reply.send(replaced);
                    }
                    Some(Command::Stop(reply)) => {
                        drain(events, sockets, state, analysis);
                        state.persist();
                        analysis.detectors.persist();
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
                _ = ticker.tick() => {
                    drain(events, sockets, state, analysis);
                    let snap = analysis.snapshot(state);
                    snapshots.send_replace(Arc::new(snap));
                }
            }
        }
    }
}

/// The statement monitor's next answer; never resolves when there is no monitor.
async fn next_answer(
    answers: &mut Option<mpsc::Receiver<crate::pipeline::statement_monitor::Answer>>,
) -> Option<crate::pipeline::statement_monitor::Answer> {
    match answers {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Socket records applied per ring-buffer wake-up before the pipeline looks at its other
/// inputs again (a ring the kernel refills as fast as it is read would otherwise hold it).
const SOCKET_RECORDS_PER_WAKE: usize = 4096;

/// Socket records applied at most right before a snapshot (what a full default ring holds
/// of small records); the rest wait for the next wake-up.
const SOCKET_RECORDS_BEFORE_SNAPSHOT: usize = 65_536;

fn drain(
    rx: &mut mpsc::Receiver<crate::probes::ProcessEvent>,
    sockets: &mut reader::SocketRing,
    state: &mut PipelineState,
    analysis: &mut Analysis,
) {
    while let Ok(event) = rx.try_recv() {
        apply_process_event(&event, sockets, state, analysis);
    }
    sockets.apply_waiting(SOCKET_RECORDS_BEFORE_SNAPSHOT, |record| {
        state.apply_socket_record(record, &mut analysis.detectors)
    });
}

/// Applies one process event. A process's exit first takes the socket records already
/// written: they came before it (a process reads and writes before it dies), but they travel
/// in the other ring, drained on a short timer, while exits arrive at once. Applied after the
/// exit, a request read just before a SIGKILL found its connection already closed, was never
/// counted as unanswered, and left a connection of a dead process in the table.
fn apply_process_event(
    event: &crate::probes::ProcessEvent,
    sockets: &mut reader::SocketRing,
    state: &mut PipelineState,
    analysis: &mut Analysis,
) {
    if matches!(
        event,
        crate::probes::ProcessEvent::Exit {
            group_dead: true,
            ..
        }
    ) {
        sockets.apply_waiting(SOCKET_RECORDS_BEFORE_SNAPSHOT, |record| {
            state.apply_socket_record(record, &mut analysis.detectors)
        });
    }
    state.apply(event, &mut analysis.detectors);
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        loader::detach_all(&mut self.ebpf);
    }
}
