use super::*;

fn fleet(failures: Vec<Error>) -> FleetAnswer {
    let snap = pb::Snapshot {
        findings: vec![pb::Finding {
            id: "saturation-1".into(),
            kind: pb::FindingKind::Saturation as i32,
            occurrences: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    FleetAnswer {
        asked: 1 + failures.len(),
        answers: vec![("node-a".into(), snap)],
        failures,
    }
}

fn window() -> Window {
    Window {
        from: findings::time(0),
        to: findings::time(60_000),
        interval_ms: 10_000,
    }
}

#[test]
fn a_failed_agent_is_a_warning_notice_beside_the_others_data() {
    let down = Error::Agent {
        address: "https://127.0.0.1:2".into(),
        message: "cannot connect".into(),
    };
    let query = Query::parse(
        "A",
        &serde_json::json!({"queryType": "findings"}),
        "",
        &window(),
    )
    .expect("query");
    let frames = frames_for(&query, &window(), &fleet(vec![down]));
    assert_eq!(frames.len(), 1);
    let notices = frames[0]
        .meta
        .as_ref()
        .and_then(|m| m.notices.clone())
        .expect("notices");
    assert!(
        notices[0].text.contains("https://127.0.0.1:2"),
        "{}",
        notices[0].text
    );
    assert_eq!(notices[0].severity, Some(Severity::Warning));
    // No series at all still answers with a frame that carries the notice.
    let query = Query::parse(
        "A",
        &serde_json::json!({"queryType": "occurrences", "findingId": "none"}),
        "",
        &window(),
    )
    .expect("query");
    let frames = frames_for(&query, &window(), &fleet(vec![Error::Settings("x".into())]));
    assert_eq!(frames.len(), 1);
    assert!(frames[0].meta.is_some());
}

#[test]
fn bad_settings_bad_queries_and_a_dead_fleet_are_per_query_errors() {
    let no_token = Settings::from_json(
        &serde_json::json!({"agents": ["https://a:1"]}),
        &serde_json::json!({}),
    )
    .map(|_| ())
    .map_err(|e| e.to_string());
    let fleet_of = |e: String| -> std::result::Result<FleetAnswer, String> { Err(e) };
    let q = serde_json::json!({"queryType": "findings"});
    let err = query_frames(
        "A",
        &q,
        "",
        &window(),
        &fleet_of(no_token.expect_err("no token")),
    )
    .expect_err("settings");
    assert!(err.contains("secureJsonData.token"), "{err}");
    let err = query_frames(
        "B",
        &serde_json::json!({"queryType": "pools", "hosts": "node-a"}),
        "",
        &window(),
        &Ok(fleet(Vec::new())),
    )
    .expect_err("hosts is a list");
    assert!(err.contains("query B") && err.contains("hosts"), "{err}");
    let dead = FleetAnswer {
        answers: Vec::new(),
        failures: vec![Error::Agent {
            address: "https://127.0.0.1:2".into(),
            message: "no answer within 5000 ms".into(),
        }],
        asked: 1,
    };
    let err = query_frames("C", &q, "", &window(), &Ok(dead)).expect_err("all failed");
    assert!(
        err.starts_with("no agent answered: agent https://127.0.0.1:2"),
        "{err}"
    );
    let frames = query_frames("D", &q, "", &window(), &Ok(fleet(Vec::new()))).expect("frames");
    assert_eq!(frames.len(), 1);
}

#[test]
fn health_counts_the_reachable_and_names_the_rest() {
    let ok = health(&fleet(Vec::new()));
    let ok = grafana_plugin_sdk::pluginv2::CheckHealthResponse::from(ok);
    assert_eq!(ok.message, "1 of 1 agents reachable (node-a)");
    assert_eq!(ok.status, 1);
    let down = Error::Agent {
        address: "https://127.0.0.1:2".into(),
        message: "cannot connect".into(),
    };
    let bad = grafana_plugin_sdk::pluginv2::CheckHealthResponse::from(health(&fleet(vec![down])));
    assert!(
        bad.message
            .starts_with("1 of 2 agents reachable; agent https://127.0.0.1:2: cannot connect"),
        "{}",
        bad.message
    );
    assert_eq!(bad.status, 2);
}
