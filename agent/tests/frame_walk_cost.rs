//! `cargo xtask bench frames`: what walking Python frames costs in the kernel, per socket
//! record, measured side by side in one run. An asyncio app (uvicorn, 4 workers, PostgreSQL)
//! serves the same load in alternating rounds with `python_frames` on and off. Two figures:
//! the walk's own time, timed by the kernel side around each walk (`agent.python.walk_ns`),
//! per walk and per socket record; and the kernel's per-program run time
//! (`kernel.bpf_stats_enabled`) of every socket program per traced record, with and without —
//! that one also carries every other process's syscalls on the host, so it is the noisier.
//! Nothing is asserted: the figures are for people (ignored in the suite; the bench runs it).
mod common;

use std::{
    process::Command,
    time::{Duration, SystemTime},
};

use common::{load::Load, postgres::Postgres, *};

const ROUNDS: usize = 3;
const ROUND_S: u64 = 6;
/// The exit programs of the calls that write (where the stack is walked), and all socket
/// programs (what a socket record costs in all).
const WRITE_EXITS: [&str; 4] = [
    "sys_exit_write",
    "sys_exit_sendto",
    "sys_exit_sendmsg",
    "sys_exit_writev",
];

#[derive(Debug, Default, Clone, Copy)]
struct Round {
    write_ns: u64,
    write_calls: u64,
    socket_ns: u64,
    records: u64,
    requests: u64,
    walks: u64,
    walk_ns: u64,
}

/// Run time and count of this round's programs (loaded after `since`).
fn program_costs(since: SystemTime) -> (u64, u64, u64) {
    let (mut write_ns, mut write_calls, mut all_ns) = (0, 0, 0);
    for info in aya::programs::loaded_programs().flatten() {
        if info.loaded_at().is_none_or(|t| t < since) {
            continue;
        }
        let name = info.name_as_str().unwrap_or_default().to_string();
        let ns = info.run_time().as_nanos() as u64;
        if !name.starts_with("sys_") {
            continue;
        }
        all_ns += ns;
        if WRITE_EXITS
            .iter()
            .any(|w| name.starts_with(&w[..w.len().min(15)]))
        {
            write_ns += ns;
            write_calls += info.run_count();
        }
    }
    (write_ns, write_calls, all_ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[test]
#[ignore = "a benchmark: `cargo xtask bench frames`"]
fn frame_walk_cost() {
    if !kernel_available("frame_walk_cost") {
        return;
    }
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("bpf_stats_enabled");
    let pg = Postgres::start();
    pg.shop_schema();
    let port = free_port();
    let mut cmd = Command::new(venv().join("bin/uvicorn"));
    cmd.args(["api.main:app", "--workers", "4", "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--log-level", "warning"])
        .arg("--app-dir")
        .arg(apps_dir())
        .env("PG_DSN", pg.tcp_url());
    let _server = Proc::spawn(&mut cmd);
    wait_http(port);
    let rt = runtime();
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..2 * ROUNDS {
        let frames = round % 2 == 0;
        let since = SystemTime::now() - Duration::from_millis(10);
        let r = rt.block_on(async {
            let mut config = test_config();
            config.python_frames = frames;
            let agent = start_agent_with(config).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = agent.snapshot_now().await.expect("snapshot");
            let load = Load::start(
                port,
                &["GET /orders/1", "GET /orders/2", "GET /"],
                8,
                Duration::ZERO,
            );
            tokio::time::sleep(Duration::from_secs(ROUND_S)).await;
            let counts = load.stop();
            let after = agent.snapshot_now().await.expect("snapshot");
            let (write_ns, write_calls, socket_ns) = program_costs(since);
            let (py0, py1) = (before.agent.python, after.agent.python);
            Round {
                write_ns,
                write_calls,
                socket_ns,
                records: after.agent.socket_events_received - before.agent.socket_events_received,
                requests: counts.values().flat_map(|s| s.values()).sum(),
                walks: py1.stacks_walked - py0.stacks_walked,
                walk_ns: py1.walk_ns - py0.walk_ns,
            }
        });
        eprintln!("round {round} frames={frames}: {r:?}");
        if frames {
            with.push(r)
        } else {
            without.push(r)
        }
    }
    fn med(rs: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
        median(rs.iter().map(f).collect())
    }
    // Data records only: a walk sends its own record ahead of the data record.
    let data = |r: &Round| r.records.saturating_sub(r.walks).max(1) as f64;
    let per_walk = med(&with, |r| r.walk_ns as f64 / r.walks.max(1) as f64);
    let walk_per_record = med(&with, |r| r.walk_ns as f64 / data(r));
    let walked_share = med(&with, |r| r.walks as f64 / data(r));
    let r_on = med(&with, |r| r.socket_ns as f64 / data(r));
    let r_off = med(&without, |r| r.socket_ns as f64 / data(r));
    let w_on = med(&with, |r| r.write_ns as f64 / r.write_calls.max(1) as f64);
    let w_off = med(&without, |r| {
        r.write_ns as f64 / r.write_calls.max(1) as f64
    });
    let q_on = med(&with, |r| r.requests as f64 / ROUND_S as f64);
    let q_off = med(&without, |r| r.requests as f64 / ROUND_S as f64);
    println!(
        "frame walk (uvicorn asyncio, 4 workers, asyncpg; medians of {ROUNDS} rounds each, alternating):"
    );
    println!(
        "  the walk itself (timed in the kernel): {per_walk:.0} ns per walk; {:.0} % of socket records walked; {walk_per_record:.0} ns per socket record",
        100.0 * walked_share
    );
    println!(
        "  all socket programs per socket record: {r_on:.0} ns with frames, {r_off:.0} without (×{:.2}; host-wide syscalls included)",
        r_on / r_off
    );
    println!(
        "  write-family exit programs per call (every process on the host): {w_on:.0} ns with frames, {w_off:.0} without"
    );
    println!(
        "  app throughput: {q_on:.0} req/s with frames, {q_off:.0} without (ratio {:.3})",
        q_on / q_off
    );
}
