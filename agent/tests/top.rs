//! `herdwatch top` for real: the binary runs inside tmux against a real agent (its API on a
//! temp socket) watching gunicorn burn both CPUs — the saturation incident, shortened as in
//! `tests/api.rs`. Keys go in with `tmux send-keys`, the screen comes out with
//! `tmux capture-pane`: the routes pane names the route with its pool, the findings pane
//! shows the saturation and its detail the root cause; stopping the agent shows a lost link
//! (and no panic); `q` quits with status 0.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{load::Load, *};
use herdwatch::{Config, model::FindingKind};

/// A tmux server of this test's own (its socket in a temp dir), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        // -u: the screen holds ●, │ and ▶ whatever the test's locale says.
        let out = Command::new("tmux")
            .arg("-u")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A 160×48 session running `command` (through the shell).
    fn start(dir: &Path, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "48",
            command,
        ]);
        tmux
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "top", keys]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Captures the screen until `done` holds; panics with the last screen after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            assert!(!screen.contains("panicked"), "top panicked:\n{screen}");
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

fn tmux_available(test: &str) -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(test, "tmux is not installed (apt-get install tmux)");
    }
    found
}

/// Waits for the shell in the tmux session to record top's exit status.
fn exit_status(file: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && text.ends_with('\n')
        {
            return text.trim().to_string();
        }
        assert!(Instant::now() < deadline, "top did not exit after q");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_shows_a_real_finding_and_quits_cleanly() {
    let test = "top::top_shows_a_real_finding_and_quits_cleanly";
    if !kernel_available(test) || !tmux_available(test) {
        return;
    }
    let started = Instant::now();
    let port = free_port();
    let _app = gunicorn_shop(4, port, None);
    wait_http(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run/api.sock");
    let mut config = Config {
        interval_ms: 500,
        api_socket: Some(socket.clone()),
        ..test_config()
    };
    config.detect.saturation.for_s = 3;
    config.detect.saturation.cpu = 0.85;
    let runtime = runtime();
    let agent = runtime.block_on(start_agent_with(config));

    let status_file = dir.path().join("top.status");
    let command = format!(
        "{} top --api {}; echo $? > {}",
        env!("CARGO_BIN_EXE_herdwatch"),
        socket.display(),
        status_file.display()
    );
    let tmux = Tmux::start(dir.path(), &command);
    let short = Duration::from_secs(20);
    tmux.wait_for("the pools pane, live, with the shop", short, |s| {
        s.contains("live ") && s.contains("gunicorn shop.app:app")
    });

    // The routes pane: the burning route, named with the pool that serves it.
    let load = Load::start(port, &["GET /cpu"], 8, Duration::ZERO);
    tmux.keys("2");
    let routes = tmux.wait_for("the /cpu route with its pool", short, |s| {
        s.lines()
            .any(|l| l.contains("/cpu") && l.contains("gunicorn shop.app:app") && l.contains("GET"))
    });

    eprintln!("the routes pane as top drew it:\n{routes}");
    tmux.keys("4");
    let list = tmux.wait_for("the saturation finding", Duration::from_secs(60), |s| {
        s.lines()
            .any(|l| l.contains("●") && l.contains("saturation"))
    });
    let counts = load.stop();
    eprintln!(
        "finding shown {:.1} s into the test; load {counts:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        list.contains("critical") || list.contains("warning"),
        "{list}"
    );

    // `/` filters the list to the saturation (a starvation may be active too: all workers
    // busy with a backlog), Enter keeps the filter, Enter again opens the detail: the root
    // cause the agent holds, evidence, prevention, proposal.
    tmux.keys("/");
    tmux.keys("saturation");
    tmux.keys("Enter");
    tmux.wait_for("the filter in force", short, |s| {
        s.contains("filter “saturation”")
    });
    let finding = agent
        .latest()
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::Saturation)
        .cloned()
        .expect("the agent holds the saturation finding");
    // The words before the first figure: the figures move with every snapshot while the
    // finding is active, so the screen may show the previous interval's.
    let opening: Vec<&str> = finding
        .root_cause
        .split_whitespace()
        .take_while(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .take(5)
        .collect();
    assert!(!opening.is_empty(), "{}", finding.root_cause);
    let opening = opening.join(" ");
    tmux.keys("Enter");
    let detail = tmux.wait_for("the finding's detail", short, |s| {
        s.contains("Root cause") && s.contains("Prevention") && s.contains("Proposal")
    });
    eprintln!("the finding's detail as top drew it:\n{detail}");
    assert!(detail.contains(&opening), "{opening:?} not in\n{detail}");
    assert!(detail.contains(&finding.id), "{detail}");

    // The agent goes away: top says so on its status line and keeps what it saw.
    runtime.block_on(agent.stop()).expect("agent stops");
    let lost = tmux.wait_for("the lost link", short, |s| s.contains("agent lost at"));
    assert!(lost.contains(&socket.display().to_string()), "{lost}");
    assert!(lost.contains("Root cause"), "{lost}");

    tmux.keys("q");
    assert_eq!(exit_status(&status_file, Duration::from_secs(10)), "0");
    eprintln!("whole test {:.1} s", started.elapsed().as_secs_f64());
}
