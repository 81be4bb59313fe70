use super::*;

fn q(pid: u32) -> QueryObs {
    QueryObs {
        fingerprint: "f".into(),
        pid,
        conn: (pid, 3),
        server_port: Some(6432),
        started_ms: 0.0,
        first_response_ms: None,
        finished_ms: 1.0,
        route: None,
        in_flight_routes: Vec::new(),
        call_site: None,
    }
}

#[test]
fn aligned_tasks_are_one_finding_and_staggered_ones_none() {
    let mut d = CronDetector::new(CronConfig {
        periods_s: vec![20, 60],
        quiet_s: 5,
        ..CronConfig::default()
    });
    let none = HashSet::new();
    let summaries = HashMap::new();
    let mut pid = 1000;
    let mut onsets = 0;
    // Three tasks at +0 s of every 20 s (a new process per firing), for 4 firings, then
    // restaggered to +0, +5, +10 for 3 more.
    for firing in 0..7u64 {
        for task in 0..3u64 {
            let offset = if firing < 4 { task * 300 } else { task * 5_000 };
            let at = 1_000_000 + firing * 20_000 + offset;
            pid += 1;
            d.on_query(&q(pid), at, |_| {
                Some(("python3".into(), format!("python3 task.py job{task}")))
            });
            // Later queries of the same run are not onsets.
            d.on_query(&q(pid), at + 500, |_| None);
        }
        let now = 1_000_000 + firing * 20_000 + 12_000;
        for s in d.tick(now, &none, &summaries, "h", |_, _| None) {
            if let Signal::Onset(r) = s {
                // Named by the words that differ, the whole command lines beside.
                let mut named: Vec<(&str, &str)> = r
                    .subject
                    .tasks
                    .iter()
                    .zip(&r.subject.commands)
                    .map(|(t, c)| (t.as_str(), c.as_str()))
                    .collect();
                named.sort();
                assert_eq!(
                    named,
                    [
                        ("task.py job0", "python3 task.py job0"),
                        ("task.py job1", "python3 task.py job1"),
                        ("task.py job2", "python3 task.py job2"),
                    ],
                    "{r:?}"
                );
                assert!(
                    r.root_cause.contains("task.py job1 (f ×"),
                    "{}",
                    r.root_cause
                );
                assert!(
                    r.root_cause.contains("+0.0 s into every 20 s"),
                    "{}",
                    r.root_cause
                );
                onsets += 1;
            }
        }
    }
    // Firings 2, 3 and 4 (the first needs a previous onset to know the period).
    assert_eq!(onsets, 3);
}

#[test]
fn cpu_bursts_of_new_processes_are_task_runs() {
    let mut d = CronDetector::new(CronConfig {
        periods_s: vec![60],
        ..CronConfig::default()
    });
    let mut onsets = 0;
    for firing in 0..3u64 {
        let at = 6_000_000 + firing * 60_000;
        let pid = firing as u32;
        // Two report jobs that never query: a CPU burst each, known at exit.
        d.on_cpu_burst(
            10 + pid,
            "python3",
            "python3 render.py",
            at + 100,
            900_000_000,
        );
        d.on_cpu_burst(
            20 + pid,
            "python3",
            "python3 export.py",
            at + 700,
            400_000_000,
        );
        // A short-lived shell is not a task run.
        d.on_cpu_burst(30 + pid, "sh", "sh -c true", at, 1_000_000);
        for s in d.tick(at + 5_000, &HashSet::new(), &HashMap::new(), "h", |_, _| {
            None
        }) {
            if let Signal::Onset(r) = s {
                let mut tasks = r.subject.tasks.clone();
                tasks.sort();
                assert_eq!(tasks, ["export.py", "render.py"], "{r:?}");
                onsets += 1;
            }
        }
    }
    assert_eq!(onsets, 2);
    assert!(!d.tasks.contains_key("sh -c true"));
}

#[test]
fn pool_workers_and_proxies_are_not_tasks() {
    let mut d = CronDetector::new(CronConfig {
        periods_s: vec![20],
        quiet_s: 5,
        ..CronConfig::default()
    });
    d.on_query(&q(1), 0, |_| {
        Some(("pgbouncer".into(), "pgbouncer x.ini".into()))
    });
    d.on_query(&q(2), 0, |_| {
        Some(("gunicorn".into(), "gunicorn app".into()))
    });
    let workers: HashSet<u32> = [2].into_iter().collect();
    d.tick(1, &workers, &HashMap::new(), "h", |_, _| None);
    assert!(
        d.tasks.is_empty(),
        "{:?}",
        d.tasks.keys().collect::<Vec<_>>()
    );
}
