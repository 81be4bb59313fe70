//! The panes drawn on ratatui's `TestBackend` from a recording of a real agent
//! (`tests/fixtures/top-starvation.rec`, made by `tests/top.rs`'s
//! `record_the_starvation_fixture`: the checkout shop on real PostgreSQL and gunicorn, after
//! a deploy that starves its workers on an `order_lines` scan). The state is built as
//! `top --print --from` builds it; what the panes show is checked against the recorded data.
use std::path::Path;

use herdwatch_proto::v1 as pb;

use super::tests::{keys, line_with, screen, table_rows, text};
use crate::export::top::{
    cli::state_of,
    recording,
    state::{Pane, UiState},
};

const FIXTURE: &str = "tests/fixtures/top-starvation.rec";
const CHECKOUT: &str = "gunicorn checkout.app:app";
const SCAN: &str = "select count ( * ) from order_lines where customer_id = ?";

fn recorded() -> Vec<pb::Snapshot> {
    let bytes = include_bytes!("../../../../tests/fixtures/top-starvation.rec");
    recording::decode(Path::new(FIXTURE), bytes).expect("the fixture reads")
}

fn state(pane: Pane) -> (UiState, pb::Snapshot) {
    let snapshots = recorded();
    let last = snapshots.last().cloned().expect("a snapshot");
    (state_of(FIXTURE.into(), snapshots, pane), last)
}

#[test]
fn the_fixture_holds_normalised_text_only() {
    let snapshots = recorded();
    assert_eq!(snapshots.len(), 2);
    let mut texts = Vec::new();
    for s in &snapshots {
        texts.extend(s.queries.iter().map(|q| q.normalized_text.clone()));
        for f in &s.findings {
            texts.extend(f.subject.as_ref().and_then(|s| s.query_text.clone()));
        }
    }
    assert!(texts.iter().any(|t| t == SCAN), "{texts:?}");
    for t in &texts {
        // No string literal, and no number standing as a value: placeholders only.
        assert!(!t.contains('\''), "a string literal in {t:?}");
        assert!(
            t.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .all(|word| word.is_empty() || !word.chars().all(|c| c.is_ascii_digit())),
            "a numeric literal in {t:?}"
        );
    }
    // The load's own values (product ids 17 and 512) appear in no text of the recording.
    for f in snapshots.iter().flat_map(|s| &s.findings) {
        for t in [&f.root_cause, &f.prevention, &f.remediation] {
            assert!(!t.contains("= 17") && !t.contains("= 512"), "{t}");
        }
    }
}

#[test]
fn pools_pane_shows_the_starved_pool() {
    let (s, snap) = state(Pane::Pools);
    let lines = screen(&s, 160, 20);
    let row = line_with(&lines, CHECKOUT);
    let pool = snap
        .pools
        .iter()
        .find(|p| p.name == CHECKOUT)
        .expect("the checkout pool is recorded");
    let busy = pool
        .workers
        .iter()
        .filter(|w| w.state == pb::WorkerState::Serving as i32)
        .count();
    let workers = format!("{busy}/{}", pool.workers.len());
    assert_eq!(workers, "4/4", "all workers busy: the starvation");
    assert!(row.contains("sync") && row.contains(&workers), "{row}");
    let host = line_with(&lines, "host CPU");
    let cpus = snap.host.as_ref().map_or(0, |h| h.cpus);
    assert!(host.contains(&format!("of {cpus}")), "{host}");
    assert!(host.contains("3 active findings"), "{host}");
}

#[test]
fn routes_pane_shows_each_route_with_its_pool_and_rate() {
    let (s, snap) = state(Pane::Routes);
    let lines = screen(&s, 160, 20);
    let rows = table_rows(&lines);
    assert_eq!(rows.len(), snap.routes.len(), "{}", text(&lines));
    let checkout = line_with(&lines, "/api/checkout");
    let route = snap
        .routes
        .iter()
        .find(|r| r.route == "/api/checkout")
        .expect("checkout is recorded");
    for want in [
        CHECKOUT,
        "POST",
        &route.requests.to_string(),
        // The p99 as the histogram gives it, and the DB wait the scan adds per request.
        "500 ms",
        "20 ms",
    ] {
        assert!(checkout.contains(want), "{want:?} missing in {checkout}");
    }
    // Two recorded snapshots give a rate: a figure, not `…`.
    let product = line_with(&lines, "/api/products/{id}");
    assert!(
        product.contains("GET") && !product.contains('…'),
        "{product}"
    );
}

#[test]
fn queries_pane_shows_normalised_text_call_site_and_calls() {
    let (s, snap) = state(Pane::Queries);
    let lines = screen(&s, 160, 30);
    let scan = snap
        .queries
        .iter()
        .find(|q| q.normalized_text == SCAN)
        .expect("the scan is recorded");
    let site = scan
        .call_sites
        .first()
        .and_then(|c| c.site.as_ref())
        .map(|s| s.display.clone())
        .expect("the scan's call site");
    assert_eq!(site, "checkout/app.py:47 in checkout()");
    let row = line_with(&lines, SCAN);
    for want in [
        site.as_str(),
        &scan.calls.to_string(),
        &format!("/api/checkout ×{}", scan.calls),
    ] {
        assert!(row.contains(want), "{want:?} missing in {row}");
    }
    // Most total time first: the scan leads, and its detail is below the list.
    assert!(table_rows(&lines)[0].contains(SCAN), "{}", text(&lines));
    let all = text(&lines);
    assert!(
        all.contains(&format!("query {}", scan.id))
            && all.contains(&format!("called from: {site} ×{}", scan.calls)),
        "{all}"
    );
    let insert = line_with(
        &lines,
        "insert into orders ( customer_id , items ) values ( ? ) returning id",
    );
    assert!(
        insert.contains("checkout/app.py:52 in checkout()"),
        "{insert}"
    );
}

#[test]
fn findings_pane_shows_the_starvation_and_its_detail() {
    let (mut s, snap) = state(Pane::Findings);
    let list = screen(&s, 160, 40);
    for kind in ["starvation", "saturation", "herd"] {
        let row = line_with(&list, &format!("● {kind}"));
        assert!(row.contains("critical"), "{row}");
    }
    keys(&mut s, "/starvation\n\n");
    // Tall enough for the whole detail: its evidence runs long.
    let lines = screen(&s, 160, 80);
    let all = text(&lines);
    let starved = snap
        .findings
        .iter()
        .find(|f| f.root_cause.contains("workers") && f.id.starts_with("starvation"))
        .expect("the starvation is recorded");
    for want in [
        "Root cause",
        "Prevention",
        "Proposal",
        starved.id.as_str(),
        "POST /api/checkout",
        "checkout/app.py:47 in checkout()",
    ] {
        assert!(all.contains(want), "{want:?} missing in\n{all}");
    }
    // The root cause's opening words, as wrapped on screen.
    let opening: String = starved.root_cause.chars().take(40).collect();
    assert!(all.contains(&opening), "{opening:?} missing in\n{all}");
}

#[test]
fn a_long_finding_detail_scrolls_with_page_keys() {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use crate::export::top::input::handle_key;
    let page = |s: &mut UiState, code| {
        handle_key(s, KeyEvent::new(code, KeyModifiers::NONE));
    };
    let (mut s, _) = state(Pane::Findings);
    keys(&mut s, "/starvation\n\n");
    // At 40 lines the starvation's evidence pushes Prevention and Proposal out of view.
    let top = text(&screen(&s, 160, 40));
    assert!(
        top.contains("Root cause") && top.contains("PgDn more"),
        "{top}"
    );
    assert!(!top.contains("Proposal"), "{top}");
    page(&mut s, KeyCode::PageDown);
    page(&mut s, KeyCode::PageDown);
    let end = text(&screen(&s, 160, 40));
    assert!(
        end.contains("Prevention") && end.contains("Proposal"),
        "{end}"
    );
    assert!(end.contains("PgUp"), "{end}");
    // Past the end stays at the end; one PgUp per page comes back.
    let at_end = s.detail_scroll;
    for _ in 0..5 {
        page(&mut s, KeyCode::PageDown);
    }
    screen(&s, 160, 40);
    assert_eq!(s.detail_scroll, at_end);
    page(&mut s, KeyCode::PageUp);
    page(&mut s, KeyCode::PageUp);
    assert_eq!(s.detail_scroll, 0);
    assert!(text(&screen(&s, 160, 40)).contains("Root cause"));
    // Closing and opening again starts at the top.
    page(&mut s, KeyCode::PageDown);
    keys(&mut s, "\n\n");
    assert_eq!(s.detail_scroll, 0);
}
