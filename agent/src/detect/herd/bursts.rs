//! Which starts of one fingerprint form a burst: clusters closed by a quiet gap, judged
//! against the fingerprint's own start rate, and told apart from the echo of another
//! statement's burst on the same connections.
use std::collections::HashSet;

use super::{HerdConfig, LATE_MS, LATE_SLACK_MS, RATE_BUCKET_MS, Span, Start, Track};
use crate::model::Label;

use rustc_hash::FxHashMap;

/// Remembers a burst's copies by connection (the latest start on each).
pub(super) fn note_copies(herd_copies: &mut HerdCopies, fp: &Label, copies: &[Start]) {
    for c in copies.iter().filter(|c| !c.running) {
        let end = c.at_ms + c.took_ms as u64;
        let e = herd_copies
            .entry(c.conn)
            .or_insert((c.at_ms, end, fp.clone()));
        if c.at_ms >= e.0 {
            *e = (c.at_ms, end, fp.clone());
        }
    }
}

/// Whether most `copies` of `fp` started on their connections as a copy of another
/// statement's burst had just answered there (within `ECHO_GAP_MS`): the same requests going
/// on (a pool's reset, the handler's next statement), not a herd of their own.
pub(super) fn is_echo(herd_copies: &HerdCopies, fp: &Label, copies: &[Start]) -> bool {
    let following = copies
        .iter()
        .filter(|s| {
            herd_copies.get(&s.conn).is_some_and(|(_, end, other)| {
                other != fp && *end <= s.at_ms + 1 && s.at_ms <= end + ECHO_GAP_MS
            })
        })
        .count();
    2 * following >= copies.len()
}

/// The latest answered copy of any burst on each connection: (start, end, statement).
pub(super) type HerdCopies = FxHashMap<(u32, u32), (u64, u64, Label)>;

/// How soon after a burst copy answers the same request's next statement starts.
const ECHO_GAP_MS: u64 = 100;

/// Whether a copy started at `at_ms` belongs to burst `b`: it started while the burst's
/// copies still ran or within `settle_ms` of the last one, and the burst stays a burst. It
/// lasts as long as its first wave of copies (those within `window_ms` of the first) keeps
/// the database busy — until then the caches are not refilled and every request still
/// misses — and at least `LATE_MS`. Copies started later, while copies of the stragglers
/// still run, do not stretch it: a database slow enough to keep every copy running must not
/// chain the next cache expiry's burst onto this one.
pub(super) fn joins(at_ms: u64, b: Span, busy: Busy, config: &HerdConfig) -> bool {
    let ends_by = (b.first_ms + LATE_MS).max(busy.first_wave_until + config.settle_ms);
    at_ms < b.last_ms.max(busy.until) + config.settle_ms && at_ms < ends_by
}

/// When the database was last busy with a burst's copies, and with its first wave (running
/// copies count so far).
#[derive(Debug, Clone, Copy)]
pub(super) struct Busy {
    pub until: u64,
    pub first_wave_until: u64,
}

pub(super) fn busy_of(starts: &[Start], span: Span, config: &HerdConfig) -> Busy {
    let copies = in_span(starts, span);
    let end = |s: &Start| s.at_ms + s.took_ms as u64;
    Busy {
        until: copies.iter().map(end).max().unwrap_or(span.last_ms),
        first_wave_until: copies
            .iter()
            .take_while(|s| s.at_ms <= span.first_ms + config.window_ms)
            .map(end)
            .max()
            .unwrap_or(span.first_ms),
    }
}

/// The starts within a burst's span.
pub(super) fn in_span(starts: &[Start], span: Span) -> &[Start] {
    let a = starts.partition_point(|s| s.at_ms < span.first_ms);
    let b = starts.partition_point(|s| s.at_ms <= span.last_ms);
    &starts[a..b.max(a)]
}

/// Index ranges `[first, last]` of the clusters of `starts` (sorted by start time) that begin
/// after `decided_until_ms` and have closed by `now_ms`: the next start is `settle_ms` or more
/// later, or none has been reported by the time a copy as slow as the cluster's slowest would
/// have been.
pub(super) fn closed_clusters(
    starts: &[Start],
    decided_until_ms: Option<u64>,
    config: &HerdConfig,
    now_ms: u64,
    reported_late: bool,
) -> Vec<(usize, usize)> {
    let begin = match decided_until_ms {
        Some(t) => starts.partition_point(|s| s.at_ms <= t),
        None => 0,
    };
    let mut out = Vec::new();
    let mut first = begin;
    while first < starts.len() {
        let mut last = first;
        let mut slowest = starts[first].took_ms;
        while last + 1 < starts.len()
            && starts[last + 1].at_ms < starts[last].at_ms + config.settle_ms
        {
            last += 1;
            slowest = slowest.max(starts[last].took_ms);
        }
        let followed = last + 1 < starts.len();
        // Starts seen as they are sent leave nothing to wait for; starts learnt from answers
        // may still be reported as late as the slowest copy takes.
        let late = if reported_late {
            (slowest.ceil() as u64).min(LATE_MS) + LATE_SLACK_MS
        } else {
            LATE_SLACK_MS
        };
        if !followed && now_ms < starts[last].at_ms + config.settle_ms + late {
            // Still open: a straggler may yet be reported. Starts seen as they are sent are
            // all here already, so a burst can be judged while it goes on (its later copies
            // join it); one learnt from answers waits.
            if !reported_late {
                out.push((first, last));
            }
            break;
        }
        out.push((first, last));
        first = last + 1;
    }
    out
}

/// Whether the closed cluster `[first, last]` is a herd, and if so where it begins: at its
/// first window with `min_copies` connections, so a start of the ordinary trickle just before
/// the copies is not its onset.
pub(super) fn herd_begins(
    starts: &[Start],
    (first, last): (usize, usize),
    track: &Track,
    config: &HerdConfig,
    watching_since_ms: u64,
) -> Option<usize> {
    let cluster = &starts[first..=last];
    let slowest = cluster.iter().map(|s| s.took_ms).fold(0.0, f64::max);
    // A burst's stragglers are requests that arrived while the first copies ran; a stream
    // lasting much longer than its queries is load, not a burst.
    let span_ms = cluster[cluster.len() - 1].at_ms - cluster[0].at_ms;
    if span_ms as f64 > config.window_ms as f64 + 2.0 * slowest {
        return None;
    }
    // The densest window: most distinct connections starting within `window_ms`.
    let mut densest = (0usize, 0usize);
    // The burst begins at the first window crowded enough to be one.
    let mut begin = None;
    let mut end = 0;
    for w in 0..cluster.len() {
        end = end.max(w);
        while end + 1 < cluster.len()
            && cluster[end + 1].at_ms <= cluster[w].at_ms + config.window_ms
        {
            end += 1;
        }
        let conns: HashSet<(u32, u32)> = cluster[w..=end].iter().map(|s| s.conn).collect();
        if begin.is_none() && conns.len() >= config.min_copies {
            begin = Some(w);
        }
        densest = densest.max((conns.len(), end + 1 - w));
    }
    let (conns, copies) = densest;
    let begin = begin?;
    if conns < config.min_copies {
        return None;
    }
    // Baseline: the fingerprint's other starts over the preceding `baseline_s`, or over what
    // was watched of it (steady load that began before the agent shows in any stretch of it).
    let t0 = cluster[0].at_ms;
    let baseline_ms = config.baseline_s * 1000;
    let observed_ms = t0
        .saturating_sub(watching_since_ms)
        .clamp(config.window_ms, baseline_ms.max(config.window_ms));
    // Every start counts, fast ones included (a statement that only got slow keeps its rate).
    let in_known = |at: u64| {
        track
            .bursts
            .iter()
            .any(|b| at + RATE_BUCKET_MS > b.first_ms && at <= b.last_ms)
    };
    let before = track
        .rate
        .count(t0.saturating_sub(observed_ms), t0, in_known);
    let per_window = before as f64 * config.window_ms as f64 / observed_ms as f64;
    if (copies as f64) < config.burst_factor * per_window {
        return None;
    }
    let wasted: f64 = cluster[begin + 1..].iter().map(|s| s.took_ms).sum();
    (wasted >= config.min_wasted_ms).then_some(first + begin)
}
