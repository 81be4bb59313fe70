//! `cargo xtask bench pipeline`: decode + parse + stitch throughput on one core, replaying a
//! socket-event stream recorded from the test apps (benches/data/socket-events.bin, made by the
//! ignored test `record_pipeline_trace`). Prints events/s for the whole path and for decoding
//! alone, side by side in one run; asserts nothing.
use std::{
    alloc::{GlobalAlloc, Layout},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use herdwatch::{
    pipeline::{aggregates::Aggregates, connections::Connections},
    probes::{reader::read_recording, socket_events::decode},
    protocol::route::RouteGrouper,
};

/// The agent binary's allocator (see src/main.rs), so the figure is the agent's; wrapped to
/// count allocations during one extra pass, outside the timed runs.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: forwards every call unchanged to mimalloc; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on as is.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// How long each measurement runs (HERDWATCH_BENCH_SECONDS overrides, e.g. under a profiler).
fn run_for() -> Duration {
    let secs = std::env::var("HERDWATCH_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.5);
    Duration::from_secs_f64(secs)
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Rounds a measurement is split into: a neighbour on a shared machine slows some rounds,
/// and the median of several is steadier than one long run.
const ROUNDS: usize = 7;

/// Events per second: the median of `ROUNDS` rounds and the slowest and fastest round.
#[derive(Clone, Copy)]
struct Rate {
    median: f64,
    min: f64,
    max: f64,
}

/// Runs `pass` (all records once) repeatedly for about `run_for()` in total, in rounds.
fn rate(records: &[&[u8]], mut pass: impl FnMut(&[&[u8]])) -> Rate {
    pass(records); // warm-up
    let round = run_for() / ROUNDS as u32;
    let mut rates: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut events = 0u64;
            while start.elapsed() < round {
                pass(records);
                events += records.len() as u64;
            }
            events as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    Rate {
        median: rates[ROUNDS / 2],
        min: rates[0],
        max: rates[ROUNDS - 1],
    }
}

/// What the agent does with the records: the pipeline reads each in place from the ring
/// buffer, decodes and applies it, then hands started and finished queries to the detectors
/// (here they are dropped, so the outboxes cost what they cost in the agent).
fn full_pass(records: &[&[u8]], connections: &mut Connections, aggregates: &mut Aggregates) {
    for record in records {
        if let Ok(ev) = decode(record) {
            connections.apply(ev, aggregates);
            aggregates.starts.clear();
            aggregates.ends.clear();
            aggregates.outbox.clear();
        }
    }
}

fn main() {
    // cargo bench passes `--bench`; a path argument overrides the recorded file.
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/data/socket-events.bin"
            )
            .to_string()
        });
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench pipeline: cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let records = read_recording(&bytes);
    pin_to_cpu0();
    let decoded = records.iter().filter(|r| decode(r).is_ok()).count();
    let mut connections = Connections::new(65_536);
    let mut aggregates = Aggregates::new(500, 200, RouteGrouper::default());
    let full = rate(&records, |pass| {
        full_pass(pass, &mut connections, &mut aggregates)
    });
    // Under a profiler, HERDWATCH_BENCH_FULL_ONLY=1 leaves out the decode-only run so the
    // samples are all of the full path.
    let decode_only = if std::env::var_os("HERDWATCH_BENCH_FULL_ONLY").is_some() {
        Rate {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        }
    } else {
        rate(&records, |pass| {
            for r in pass {
                std::hint::black_box(decode(r).ok());
            }
        })
    };
    // One more pass, counted: allocations (and reallocations) per event on the full path,
    // and what one replay of the recording yields.
    let before = connections.stats;
    COUNTING.store(true, Ordering::Relaxed);
    full_pass(&records, &mut connections, &mut aggregates);
    COUNTING.store(false, Ordering::Relaxed);
    let allocations_per_event = ALLOCATIONS.load(Ordering::Relaxed) as f64 / records.len() as f64;
    let after = connections.stats;
    println!(
        "bench pipeline: {} recorded socket events ({} bytes, {decoded} decodable) from {path}",
        records.len(),
        bytes.len()
    );
    let show = |r: Rate| {
        format!(
            "{:>10.0} events/s on one core (median of {ROUNDS} rounds; {:.0}–{:.0})",
            r.median, r.min, r.max
        )
    };
    println!("  decode + parse + stitch : {}", show(full));
    println!("  decode only             : {}", show(decode_only));
    println!(
        "  stitch share of the time: {:.0}%",
        (1.0 - full.median / decode_only.median) * 100.0
    );
    println!("  allocations per event   : {allocations_per_event:>10.2}");
    println!(
        "  goal ≥ 5 000 000 events/s: {}",
        if full.median >= 5e6 { "met" } else { "NOT met" }
    );
    println!(
        "  per replay: {} queries, {} HTTP exchanges, {} protocol errors",
        after.postgres_queries - before.postgres_queries,
        after.http_exchanges - before.http_exchanges,
        after.protocol_errors - before.protocol_errors
    );
}
