use super::*;

fn obs(fp: &str, conn: u32, start: f64, took: f64) -> QueryObs {
    QueryObs {
        fingerprint: fp.into(),
        pid: 100 + conn / 2,
        conn: (100 + conn / 2, conn),
        server_port: Some(5432),
        started_ms: start,
        first_response_ms: Some(start + took),
        finished_ms: start + took,
        route: Some(format!("/api/e{}", conn % 6).into()),
        in_flight_routes: Vec::new(),
        call_site: None,
    }
}

fn run(d: &mut HerdDetector, now: u64) -> Vec<Signal> {
    d.tick(now, &[], "h", |ms| ms)
}

#[test]
fn a_recurring_burst_is_one_finding_with_occurrences_and_steady_load_is_none() {
    let mut d = HerdDetector::new(HerdConfig {
        baseline_s: 10,
        ..HerdConfig::default()
    });
    assert!(run(&mut d, 0).is_empty());
    // Steady: 4 connections each running a 200 ms query back to back, for 90 s.
    for c in 0..4u32 {
        let mut t = 37.0 * f64::from(c);
        while t < 90_000.0 {
            d.on_query(&obs("steady", c, t, 200.0));
            t += 200.0;
        }
    }
    // A deploy makes every worker run a new slow query back to back from 15 s on: a
    // sudden steady stream, not a burst that falls back.
    for c in 0..4u32 {
        let mut t = 15_000.0 + 11.0 * f64::from(c);
        while t < 90_000.0 {
            d.on_query(&obs("new-steady", c, t, 250.0));
            t += 250.0;
        }
    }
    // Herd: 12 copies within 40 ms at 20 s, 40 s and 60 s, quiet in between.
    let mut onsets = 0;
    for (k, at) in [20_000.0, 40_000.0, 60_000.0].into_iter().enumerate() {
        for c in 0..12u32 {
            d.on_query(&obs("herd", c, at + f64::from(c) * 3.0, 400.0));
        }
        // Undecided until the fingerprint has been quiet for `settle_ms` after a copy as
        // slow as the slowest could have been reported (400 ms + slack)...
        assert!(run(&mut d, at as u64 + 600).is_empty());
        // ...and decided right after: well within 2 s of the first copy.
        let signals = run(&mut d, at as u64 + 1_100);
        for s in &signals {
            match s {
                Signal::Onset(r) => {
                    assert_eq!(r.pattern, "herd", "{r:?}");
                    assert_eq!(r.subject.routes.len(), 6);
                    // 12 copies from conns 0..12, route e(conn % 6): two per route.
                    assert_eq!(r.subject.route_copies.len(), 6, "{r:?}");
                    assert!(
                        r.subject.route_copies.iter().all(|c| c.copies == 2),
                        "{r:?}"
                    );
                    assert_eq!(r.onset_unix_ms, at as u64);
                    onsets += 1;
                }
                Signal::Ongoing(r) => assert_eq!(r.pattern, "herd"),
                Signal::Ended { pattern, .. } => assert_eq!(pattern, "herd"),
            }
        }
        assert_eq!(onsets, k + 1);
        // A quiet tick ends the occurrence.
        let quiet = run(&mut d, at as u64 + 14_000);
        assert!(
            quiet
                .iter()
                .all(|s| matches!(s, Signal::Ended { pattern, .. } if pattern == "herd"))
        );
    }
}

fn start(fp: &str, conn: u32, at: f64) -> QueryStart {
    QueryStart {
        fingerprint: fp.into(),
        pid: 100 + conn / 2,
        conn: (100 + conn / 2, conn),
        started_ms: at,
    }
}

#[test]
fn a_herd_is_seen_in_its_starts_while_its_copies_still_run() {
    let mut d = HerdDetector::new(HerdConfig::default());
    run(&mut d, 1_000);
    // A trickle of the statement, fast ones among it (never copies).
    for i in 0..20u32 {
        let at = 2_000.0 + 400.0 * f64::from(i);
        d.on_query_start(&start("agg", 50 + i % 3, at));
        d.on_query(&obs(
            "agg",
            50 + i % 3,
            at,
            if i % 2 == 0 { 2.0 } else { 40.0 },
        ));
    }
    // The burst: 12 connections send it within 60 ms; none has answered yet.
    for c in 0..12u32 {
        d.on_query_start(&start("agg", c, 12_000.0 + 5.0 * f64::from(c)));
    }
    // Just sent: too little database time spent on them yet to tell.
    assert!(
        !run(&mut d, 12_060)
            .iter()
            .any(|s| matches!(s, Signal::Onset(_))),
        "not before the copies have cost min_wasted_ms"
    );
    let quiet = 12_200;
    let signals = run(&mut d, quiet + 10);
    let onset = signals
        .iter()
        .find_map(|s| match s {
            Signal::Onset(r) => Some(r),
            _ => None,
        })
        .expect("a herd from starts alone, 0.2 s after the burst, its copies still running");
    assert_eq!(
        onset
            .evidence
            .iter()
            .find(|e| e.name == "concurrent_copies")
            .map(|e| e.value),
        Some(12.0)
    );
    // The copies answer later: their routes reach the finding as they come.
    for c in 0..12u32 {
        d.on_query(&obs("agg", c, 12_000.0 + 5.0 * f64::from(c), 900.0));
    }
    let later = run(&mut d, quiet + 1_500);
    let ongoing = later
        .iter()
        .find_map(|s| match s {
            Signal::Ongoing(r) => Some(r),
            _ => None,
        })
        .expect("updated once the copies answered");
    assert_eq!(
        ongoing.subject.routes.len(),
        6,
        "{:?}",
        ongoing.subject.routes
    );
}

#[test]
fn waves_started_while_the_copies_still_run_are_one_burst() {
    let mut d = HerdDetector::new(HerdConfig::default());
    run(&mut d, 1_000);
    let mut onsets = 0;
    // Per-worker caches refill as each worker gets its next request: three waves of
    // copies 500 ms apart, each while the 900 ms copies before it still run.
    for wave in 0..3u32 {
        for c in 0..6u32 {
            let at = 5_000.0 + 500.0 * f64::from(wave) + 10.0 * f64::from(c);
            d.on_query_start(&start("agg", wave * 10 + c, at));
        }
        onsets += run(&mut d, 5_450 + 500 * u64::from(wave))
            .iter()
            .filter(|s| matches!(s, Signal::Onset(_)))
            .count();
    }
    for t in (7_000..12_000).step_by(500) {
        onsets += run(&mut d, t)
            .iter()
            .filter(|s| matches!(s, Signal::Onset(_)))
            .count();
    }
    assert_eq!(onsets, 1, "one burst, one occurrence");
}

/// The agent's view of a slow database: every copy seen as it is sent, and answered
/// `took` ms later; `copies` are (connection, sent at, took).
fn replay_live(d: &mut HerdDetector, copies: &[(u32, f64, f64)], until_ms: u64) -> usize {
    let mut onsets = 0;
    let mut answered = vec![false; copies.len()];
    for now in (0..=until_ms).step_by(50) {
        let t = now as f64;
        for &(conn, at, _) in copies
            .iter()
            .filter(|(_, at, _)| *at <= t && *at > t - 50.0)
        {
            d.on_query_start(&start("agg", conn, at));
        }
        for (i, &(conn, at, took)) in copies.iter().enumerate() {
            if !answered[i] && at + took <= t {
                answered[i] = true;
                d.on_query(&obs("agg", conn, at, took));
            }
        }
        onsets += run(d, now)
            .iter()
            .filter(|s| matches!(s, Signal::Onset(_)))
            .count();
    }
    onsets
}

#[test]
fn a_herd_outlasting_late_ms_on_a_slow_database_is_one_occurrence_per_expiry() {
    let mut d = HerdDetector::new(HerdConfig::default());
    // Caches expire every 4 s. At each expiry 8 workers miss at once; their copies take
    // 3.4 s on a database the copies themselves slow down, and until they answer every
    // request still misses: two more copies every 100 ms, for 3.5 s, with no quiet gap —
    // longer than LATE_MS. Then quiet until the next expiry.
    let mut copies = Vec::new();
    for expiry in [5_000.0, 9_000.0, 13_000.0] {
        for c in 0..8u32 {
            copies.push((c, expiry + 5.0 * f64::from(c), 3_400.0));
        }
        for k in 1..35u32 {
            for j in 0..2u32 {
                let conn = 8 + (2 * k + j) % 12;
                copies.push((
                    conn,
                    expiry + 100.0 * f64::from(k) + 7.0 * f64::from(j),
                    3_000.0,
                ));
            }
        }
    }
    assert_eq!(
        replay_live(&mut d, &copies, 20_000),
        3,
        "one occurrence per cache expiry, not one more for each refill storm's tail"
    );
}

#[test]
fn a_statement_slowed_by_someone_elses_herd_is_not_one() {
    let mut d = HerdDetector::new(HerdConfig::default());
    run(&mut d, 1_000);
    // A lookup at a steady 200/s from 6 connections, fast (2 ms) except during a 300 ms
    // database stall (60 ms each): its rate never changes, only its duration.
    let mut onsets = 0;
    for i in 0..2_000u32 {
        let at = 2_000.0 + 5.0 * f64::from(i);
        let took = if (6_000.0..6_300.0).contains(&at) {
            60.0
        } else {
            2.0
        };
        d.on_query_start(&start("lookup", i % 6, at));
        d.on_query(&obs("lookup", i % 6, at, took));
        if i % 50 == 0 {
            onsets += run(&mut d, at as u64)
                .iter()
                .filter(|s| matches!(s, Signal::Onset(_)))
                .count();
        }
    }
    assert_eq!(onsets, 0, "a victim, not a herd");
}

#[test]
fn what_a_herds_requests_run_next_is_its_echo_not_a_herd() {
    let mut d = HerdDetector::new(HerdConfig::default());
    run(&mut d, 1_000);
    let mut herds = BTreeMap::new();
    // 12 requests run the aggregate at once; each then releases its pooled connection,
    // whose reset query (slow: the database is still busy) bursts on the same 12.
    for c in 0..12u32 {
        let at = 5_000.0 + 5.0 * f64::from(c);
        d.on_query_start(&start("aggregate", c, at));
        d.on_query(&obs("aggregate", c, at, 700.0));
        d.on_query_start(&start("reset", c, at + 705.0));
        d.on_query(&obs("reset", c, at + 705.0, 300.0));
    }
    for t in (5_000..9_000).step_by(250) {
        for s in run(&mut d, t) {
            if let Signal::Onset(r) = s {
                *herds.entry(r.pattern.clone()).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(herds, BTreeMap::from([("aggregate".to_string(), 1)]));
}

#[test]
fn copies_from_too_few_connections_or_too_fast_are_not_a_herd() {
    let mut d = HerdDetector::new(HerdConfig {
        baseline_s: 1,
        ..HerdConfig::default()
    });
    run(&mut d, 0);
    for i in 0..10 {
        d.on_query(&obs("two-conns", i % 2, 5_000.0 + f64::from(i), 100.0));
        d.on_query(&obs("fast", i, 5_000.0 + f64::from(i), 1.0));
    }
    assert!(run(&mut d, 12_000).is_empty());
}

/// The incident a user saw: caches expiring together every 10 s, the agent started just
/// before the load. Every burst — the first included, with no baseline behind it — is an
/// occurrence, decided within 2 s of its first copy, while a steady trickle of the same
/// statement (one copy every 700 ms) and stragglers arriving during each refill go on.
#[test]
fn every_burst_from_the_first_counts_and_is_decided_within_two_seconds() {
    let mut d = HerdDetector::new(HerdConfig::default());
    run(&mut d, 1_000);
    let mut reported = Vec::new();
    let mut t = 1_000;
    let bursts: Vec<u64> = (0..5).map(|k| 1_200 + k * 10_000).collect();
    let mut trickle = 1_000.0;
    while t < 52_000 {
        // Feed what finished by `t`.
        for &at in &bursts {
            if (t..t + 100).contains(&(at + 600)) {
                for c in 0..16u32 {
                    // 16 copies over 450 ms: the refill is slow, stragglers keep missing.
                    d.on_query(&obs("herd", c, at as f64 + f64::from(c) * 30.0, 300.0));
                }
            }
        }
        while trickle + 150.0 <= t as f64 {
            d.on_query(&obs("herd", 40, trickle, 150.0));
            trickle += 700.0;
        }
        for s in run(&mut d, t) {
            if let Signal::Onset(r) = s {
                reported.push((r.onset_unix_ms, t));
            }
        }
        t += 100;
    }
    assert_eq!(reported.len(), bursts.len(), "{reported:?}");
    for ((onset, at), burst) in reported.iter().zip(&bursts) {
        // A trickle copy just before the crowd may open the burst: never more than one
        // window early, never late.
        assert!(
            *onset <= *burst && onset + 250 >= *burst,
            "{onset} for {burst}"
        );
        assert!(at - burst <= 2_000, "burst at {burst} reported at {at}");
    }
}
