//! The panes drawn on ratatui's `TestBackend` from the fixture snapshot: what each shows,
//! sorting and filtering as the screen shows them, and small terminals.
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{Terminal, backend::TestBackend};

use super::draw;
use crate::export::top::{
    fixture::{self, API, SHOP, STARVATION_CAUSE},
    input::handle_key,
    state::{Link, Pane, UiState},
};

/// The screen as lines of text, as `tmux capture-pane` would show it.
pub(super) fn screen(state: &UiState, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|f| draw(f, state)).expect("draw");
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer.cell((x, y)).map_or(" ", |c| c.symbol()))
                .collect::<String>()
        })
        .collect()
}

pub(super) fn text(lines: &[String]) -> String {
    lines.join("\n")
}

pub(super) fn keys(state: &mut UiState, keys: &str) {
    for c in keys.chars() {
        let code = match c {
            '\n' => KeyCode::Enter,
            '\u{1b}' => KeyCode::Esc,
            c => KeyCode::Char(c),
        };
        handle_key(state, KeyEvent::new(code, KeyModifiers::NONE));
    }
}

/// The line showing `needle`, panicking with the whole screen when none does.
pub(super) fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", text(lines)))
}

/// Row lines of the pane's table (between the header and the bottom border) in order.
pub(super) fn table_rows(lines: &[String]) -> Vec<&str> {
    let start = lines.iter().position(|l| l.contains("┌")).expect("a pane") + 2;
    lines[start..]
        .iter()
        .take_while(|l| !l.contains("└") && !l.contains("┌"))
        .map(String::as_str)
        .filter(|l| !l.trim_matches(|c| c == '│' || c == ' ').is_empty())
        .collect()
}

#[test]
fn pools_pane_shows_workers_queue_and_time_split() {
    let s = fixture::state();
    let lines = screen(&s, 160, 30);
    let shop = line_with(&lines, SHOP);
    for want in ["sync", "4/4", "17", "8%", "87%", "5%"] {
        assert!(shop.contains(want), "{want:?} missing in {shop:?}");
    }
    let api = line_with(&lines, API);
    assert!(
        api.contains("1/4") && api.contains("10%") && api.contains("60%"),
        "{api}"
    );
    assert!(line_with(&lines, "host CPU").contains("93%"));
    assert!(line_with(&lines, "1 Pools").contains("4 Findings"));
    assert!(line_with(&lines, "live /run/herdwatch/api.sock").contains("q quit"));
}

#[test]
fn routes_with_the_same_path_read_differently_per_pool() {
    let mut s = fixture::state();
    keys(&mut s, "2");
    let lines = screen(&s, 160, 30);
    let rows = table_rows(&lines);
    let checkouts: Vec<&&str> = rows
        .iter()
        .filter(|l| l.contains("/api/checkout"))
        .collect();
    assert_eq!(checkouts.len(), 2, "{}", text(&lines));
    let shop = checkouts
        .iter()
        .find(|l| l.contains(SHOP))
        .expect("shop's checkout");
    let api = checkouts
        .iter()
        .find(|l| l.contains(API))
        .expect("api's checkout");
    // Rate from the two snapshots: 100 more requests in 2 s on the shop, 10 on the api.
    assert!(
        shop.contains("50.0") && api.contains("5.0"),
        "{shop}\n{api}"
    );
    // p99 from the histogram, capped by the slowest request; DB wait per request.
    assert!(shop.contains("1.80 s") && shop.contains("900 ms"), "{shop}");
    assert!(api.contains("12 ms") && !api.contains("900 ms"), "{api}");
    // Sorted by rate by default: the shop's orders (150/s) first.
    assert!(
        rows[0].contains("/orders/{id}") && rows[0].contains("150.0"),
        "{rows:?}"
    );
}

#[test]
fn s_sorts_the_routes_by_the_next_column() {
    let mut s = fixture::state();
    keys(&mut s, "2s");
    let lines = screen(&s, 160, 30);
    assert!(line_with(&lines, "Routes (4/4)").contains("by p99"));
    let rows = table_rows(&lines);
    assert!(
        rows[0].contains(SHOP) && rows[0].contains("/api/checkout"),
        "{rows:?}"
    );
    keys(&mut s, "ss");
    let rows_by_db = screen(&s, 160, 30);
    assert!(line_with(&rows_by_db, "Routes (4/4)").contains("by DB/req"));
    let rows = table_rows(&rows_by_db);
    assert!(
        rows[0].contains("900 ms") && rows[1].contains("12 ms"),
        "{rows:?}"
    );
    assert!(rows[3].contains("/health"), "{rows:?}");
}

#[test]
fn a_filter_keeps_matching_rows_and_says_so() {
    let mut s = fixture::state();
    keys(&mut s, "2/uvicorn");
    let typing = screen(&s, 160, 30);
    assert!(line_with(&typing, "filter: uvicorn").contains("Esc clears"));
    keys(&mut s, "\n");
    let lines = screen(&s, 160, 30);
    let rows = table_rows(&lines);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.contains(API)), "{rows:?}");
    assert!(line_with(&lines, "Routes (2/4)").contains("filter “uvicorn”"));
    keys(&mut s, "/zzz\n");
    let none = screen(&s, 160, 30);
    assert!(text(&none).contains("no HTTP routes match the filter"));
    keys(&mut s, "\u{1b}");
    assert_eq!(table_rows(&screen(&s, 160, 30)).len(), 4);
}

#[test]
fn queries_show_normalised_text_call_site_and_routes() {
    let mut s = fixture::state();
    keys(&mut s, "3");
    let lines = screen(&s, 200, 30);
    let row = line_with(&lines, "FROM order_lines WHERE order_id = $1");
    for want in [
        "shop/checkout.py:88 in create_order()",
        "9000",
        "190 ms",
        "POST /api/checkout ×9000",
    ] {
        assert!(row.contains(want), "{want:?} missing in {row:?}");
    }
    // The selected query's detail, below the list.
    assert!(line_with(&lines, "query a1b2c3d4e5f60718").contains("┌"));
    assert!(text(&lines).contains("called from: shop/checkout.py:88 in create_order() ×9000"));
}

#[test]
fn the_finding_detail_shows_cause_evidence_prevention_and_proposal() {
    let mut s = fixture::state();
    keys(&mut s, "4");
    let list = screen(&s, 160, 40);
    let row = line_with(&list, "starvation");
    assert!(
        row.contains("●") && row.contains("critical") && row.contains("×2"),
        "{row}"
    );
    assert!(line_with(&list, "SELECT events").contains("○"));
    assert!(!text(&list).contains("Root cause"), "detail opens on Enter");
    keys(&mut s, "\n");
    let lines = screen(&s, 160, 40);
    let all = text(&lines);
    for want in [
        "Root cause",
        "holds all 4 workers",
        "busy workers: 4 workers",
        "p99 during: 1800 ms",
        "Prevention",
        "index order_id",
        "Proposal",
        "raise workers to 8",
        "subject: gunicorn shop.app:app · POST /api/checkout · SELECT order_lines",
    ] {
        assert!(all.contains(want), "{want:?} missing in\n{all}");
    }
    assert!(STARVATION_CAUSE.starts_with("POST /api/checkout holds all 4 workers"));
    // Down selects the herd; the detail follows the selection.
    keys(&mut s, "j");
    let herd = text(&screen(&s, 160, 40));
    assert!(
        herd.contains("single-flight the dashboard counts"),
        "{herd}"
    );
    assert!(!herd.contains("raise workers to 8"), "{herd}");
}

#[test]
fn a_narrow_terminal_draws_every_pane_without_overlap() {
    let mut s = fixture::state();
    for pane in ["1", "2", "3", "4\n"] {
        keys(&mut s, pane);
        let lines = screen(&s, 60, 15);
        assert_eq!(lines.len(), 15);
        // Tabs on top, the status line at the bottom, the pane's box in between, closed.
        assert!(
            lines[0].starts_with("1 Pools │ 2 Routes │ 3 Queries │ 4 Findings"),
            "{}",
            text(&lines)
        );
        assert!(lines[1].starts_with("host CPU 93%"), "{}", text(&lines));
        assert!(
            lines[2].starts_with('┌') && lines[2].ends_with('┐'),
            "{}",
            text(&lines)
        );
        assert!(lines[14].starts_with("live "), "{}", text(&lines));
        let bottom = lines
            .iter()
            .rposition(|l| l.starts_with('└'))
            .expect("a closed box");
        assert!(lines[bottom].ends_with('┘'), "{}", text(&lines));
        // Every line inside a box starts and ends with its border: nothing spills over it.
        for l in &lines[3..bottom] {
            assert!(
                l.starts_with('│') || l.starts_with('┌') || l.starts_with('└'),
                "{}",
                text(&lines)
            );
            assert!(
                l.ends_with('│') || l.ends_with('┐') || l.ends_with('┘'),
                "{}",
                text(&lines)
            );
        }
    }
    // The selected finding's detail still begins in a short terminal.
    assert!(text(&screen(&s, 60, 15)).contains("finding starvation-3f9a"));
    // Tiny and zero-sized terminals must not panic either.
    for (w, h) in [(1, 1), (10, 3), (0, 0), (300, 5)] {
        screen(&s, w, h);
    }
}

#[test]
fn before_any_snapshot_and_after_losing_the_agent_the_screen_says_so() {
    let mut s = UiState::new("/tmp/x.sock".into());
    let waiting = screen(&s, 100, 12);
    assert!(text(&waiting).contains("waiting for the agent's first snapshot"));
    assert!(line_with(&waiting, "connecting to /tmp/x.sock").len() >= 10);
    s = fixture::state();
    s.link = Link::Lost {
        error: "cannot connect: No such file or directory".into(),
        attempt: 3,
        retry_ms: 2000,
    };
    let lost = screen(&s, 160, 12);
    let status = line_with(&lost, "agent lost at /run/herdwatch/api.sock");
    assert!(
        status.contains("No such file") && status.contains("retry 3 in 2.0 s"),
        "{status}"
    );
    // What it saw last stays on screen.
    assert!(text(&lost).contains(SHOP));
    assert_eq!(s.pane, Pane::Pools);
}
