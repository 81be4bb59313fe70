//! Pool discovery on real gunicorn and uvicorn servers: masters, workers, app module, listen
//! ports, the accept queue against `ss`, and worker replacement seen from kernel events.
mod common;

use std::{io::Write as _, net::TcpStream, process::Command, time::Duration};

use common::*;
use herdwatch::{model::PoolView, procs::PoolKind};

/// Children of `pid` per the kernel (/proc/<pid>/task/<pid>/children).
fn kernel_children(pid: u32) -> Vec<u32> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut kids: Vec<u32> = text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    kids.sort_unstable();
    kids
}

/// Recv-Q of the LISTEN socket on `port` as `ss -ltn` prints it.
fn ss_accept_queue(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // State Recv-Q Send-Q Local:Port Peer:Port
    text.lines()
        .find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn pool_with_workers(pool: &PoolView, n: usize) -> bool {
    pool.pool.workers.len() == n && pool.worker_states.len() == n
}

#[test]
fn gunicorn_pool_is_discovered_with_a_growing_accept_queue() {
    if !kernel_available("gunicorn_pool_is_discovered_with_a_growing_accept_queue") {
        return;
    }
    let port = free_port();
    let server = gunicorn_shop(4, port, None);
    wait_http(port);
    let master = server.pid();
    runtime().block_on(async {
        let agent = start_agent().await;
        let pool = pool_ready(&agent, master, 4).await;
        assert_eq!(pool.pool.kind, PoolKind::Gunicorn);
        assert_eq!(pool.pool.app.as_deref(), Some("shop.app:app"));
        assert_eq!(pool.pool.worker_class, "sync");
        assert_eq!(
            pool.pool.workers,
            kernel_children(master),
            "workers = the master's children"
        );
        assert!(
            pool.listeners
                .iter()
                .any(|l| l.port == Some(port) && l.address == format!("127.0.0.1:{port}")),
            "listen socket found: {:?}",
            pool.listeners
        );

        // Fill all 4 workers with a request that blocks, then queue 4 more connections.
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            conn.write_all(b"GET /sleep?s=6 HTTP/1.0\r\nHost: t\r\n\r\n")
                .expect("send");
            held.push(conn);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Read ss, the agent, ss again; accept the agent's figure when ss agrees on both sides
        // (the queue did not move while we looked).
        let mut seen = Vec::new();
        let matched = loop {
            let before = ss_accept_queue(port);
            let snap = agent.snapshot_now().await.expect("snapshot");
            let ours = snap.pool_of_master(master).and_then(|p| p.accept_queue());
            let after = ss_accept_queue(port);
            seen.push((before, ours, after));
            if before == after && before.is_some() {
                break (ours, before);
            }
            assert!(seen.len() < 10, "accept queue never held still: {seen:?}");
        };
        eprintln!("accept queue: agent {:?}, ss {:?}", matched.0, matched.1);
        assert_eq!(matched.0, matched.1, "agent and ss disagree");
        assert!(
            matched.0.unwrap_or(0) > 0,
            "nothing queued with 8 connections for 4 blocked workers"
        );
        let busy = agent
            .snapshot_now()
            .await
            .expect("snapshot")
            .pool_of_master(master)
            .map(|p| p.busy_workers);
        assert_eq!(
            busy,
            Some(4),
            "all four workers blocked in the slow request"
        );
        drop(held);
    });
}

#[test]
fn killed_worker_is_replaced_from_events_without_a_rescan() {
    if !kernel_available("killed_worker_is_replaced_from_events_without_a_rescan") {
        return;
    }
    let port = free_port();
    let server = gunicorn_shop(4, port, None);
    wait_http(port);
    let master = server.pid();
    runtime().block_on(async {
        let agent = start_agent().await;
        let before = pool_ready(&agent, master, 4).await;
        let victim = before.pool.workers[0];
        // SAFETY: signalling a worker of the server this test started.
        assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
        let after = wait_for(
            &agent,
            Duration::from_secs(30),
            "the replacement worker",
            |s| {
                s.pool_of_master(master)
                    .filter(|p| pool_with_workers(p, 4) && !p.pool.workers.contains(&victim))
                    .cloned()
            },
        )
        .await;
        let replacement: Vec<u32> = after
            .pool
            .workers
            .iter()
            .copied()
            .filter(|w| !before.pool.workers.contains(w))
            .collect();
        assert_eq!(
            replacement.len(),
            1,
            "exactly one new worker: before {:?} after {:?}",
            before.pool.workers,
            after.pool.workers
        );
        assert_eq!(after.pool.workers, kernel_children(master));
        let snap = agent.snapshot_now().await.expect("snapshot");
        assert_eq!(
            snap.agent.process_scans, 1,
            "the pool changed through events, not a /proc rescan"
        );
        let new = snap
            .process(replacement[0])
            .expect("replacement in the process table");
        assert_eq!(new.ppid, master);
    });
}

#[test]
fn uvicorn_pool_with_two_spawned_workers() {
    if !kernel_available("uvicorn_pool_with_two_spawned_workers") {
        return;
    }
    let port = free_port();
    let server = uvicorn_api(2, port, None);
    wait_http(port);
    let master = server.pid();
    runtime().block_on(async {
        let agent = start_agent().await;
        let pool = pool_ready(&agent, master, 2).await;
        assert_eq!(pool.pool.kind, PoolKind::Uvicorn);
        assert_eq!(pool.pool.app.as_deref(), Some("api.main:app"));
        assert_eq!(pool.pool.configured_workers, Some(2));
        for w in &pool.pool.workers {
            assert!(
                kernel_children(master).contains(w),
                "worker {w} is a child of the master"
            );
        }
        assert!(
            pool.listeners.iter().any(|l| l.port == Some(port)),
            "listeners {:?}",
            pool.listeners
        );
    });
}

/// Two services on one host both run `gunicorn shop.app:app` (the common case of every
/// service's `app:app`): they are two pools with two names, and each one's requests are
/// counted on its own routes — not merged into one pool that neither is.
#[test]
fn two_services_serving_the_same_app_stay_two_pools() {
    if !kernel_available("two_services_serving_the_same_app_stay_two_pools") {
        return;
    }
    let (port_a, port_b) = (free_port(), free_port());
    let a = gunicorn_shop(2, port_a, None);
    let b = gunicorn_shop(2, port_b, None);
    wait_http(port_a);
    wait_http(port_b);
    runtime().block_on(async {
        let agent = start_agent().await;
        let pool_a = pool_ready(&agent, a.pid(), 2).await;
        let pool_b = pool_ready(&agent, b.pid(), 2).await;
        assert_eq!(
            pool_a.name,
            format!("gunicorn shop.app:app on 127.0.0.1:{port_a}")
        );
        assert_eq!(
            pool_b.name,
            format!("gunicorn shop.app:app on 127.0.0.1:{port_b}")
        );
        // Different amounts of the same route on each: each pool's count is its own.
        let (sent_a, sent_b) = (7u64, 3u64);
        for _ in 0..sent_a {
            http_get(port_a, "/");
        }
        for _ in 0..sent_b {
            http_get(port_b, "/");
        }
        let counted = |snap: &herdwatch::model::Snapshot, pool: &str| -> u64 {
            snap.routes
                .iter()
                .filter(|r| r.pool == pool && r.route == "/")
                .map(|r| r.requests)
                .sum()
        };
        let snap = wait_for(
            &agent,
            Duration::from_secs(20),
            "both pools' requests",
            |s| {
                (counted(s, &pool_a.name) >= sent_a && counted(s, &pool_b.name) >= sent_b)
                    .then(|| s.clone())
            },
        )
        .await;
        assert_eq!(counted(&snap, &pool_a.name), sent_a);
        assert_eq!(counted(&snap, &pool_b.name), sent_b);
    });
}
