use super::*;

fn prog(cmdline: &str) -> (String, Vec<String>) {
    let p = program(cmdline).expect("a program");
    (p.script, p.args.iter().map(|s| s.to_string()).collect())
}

fn names(cmdlines: &[&str]) -> Vec<String> {
    short_names(cmdlines)
}

#[test]
fn interpreters_and_wrappers_are_removed() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("python -m app.jobs refresh", "app.jobs", &["refresh"]),
        ("python3 -mapp.jobs refresh", "app.jobs", &["refresh"]),
        (
            "/usr/bin/python3 /srv/jobs/task.py refresh_contexts --since 1h",
            "task.py",
            &["refresh_contexts", "--since", "1h"],
        ),
        (
            "sh -c cd /srv && python manage.py send_invoices",
            "manage.py",
            &["send_invoices"],
        ),
        (
            "/bin/bash -lc source /srv/venv/bin/activate; exec python -u jobs.py sync >> /var/log/sync.log 2>&1",
            "jobs.py",
            &["sync"],
        ),
        ("node dist/cron.js", "cron.js", &[]),
        (
            "node --max-old-space-size=512 -r dotenv/config dist/cron.js nightly",
            "cron.js",
            &["nightly"],
        ),
        (
            "/usr/bin/env python3 -u /srv/report.py --region eu",
            "report.py",
            &["--region", "eu"],
        ),
        (
            "env TZ=UTC LANG=C nice -n 10 python3 -W ignore task.py a",
            "task.py",
            &["a"],
        ),
        (
            "uv run --with requests python jobs/rollup.py",
            "rollup.py",
            &[],
        ),
        ("uv run jobs/rollup.py", "rollup.py", &[]),
        ("timeout -s KILL 300 python3 x.py", "x.py", &[]),
        (
            "flock -n /tmp/x.lock python3 y.py --all",
            "y.py",
            &["--all"],
        ),
        ("flock -n /tmp/x.lock -c cd /srv && ./bin/z", "z", &[]),
        (
            "bash /srv/scripts/backup.sh /var/lib/db1",
            "backup.sh",
            &["/var/lib/db1"],
        ),
        ("/usr/local/bin/reindex --full", "reindex", &["--full"]),
        ("npm run cron:refresh", "cron:refresh", &[]),
        ("bundle exec rake invoices:send", "rake", &["invoices:send"]),
        ("python3 -c import app; app.run()", "python3 -c", &[]),
    ];
    for (cmdline, script, args) in cases {
        let (s, a) = prog(cmdline);
        assert_eq!(s, *script, "{cmdline}");
        assert_eq!(a, *args, "{cmdline}");
    }
}

#[test]
fn tasks_of_one_script_are_named_by_the_words_that_differ() {
    assert_eq!(
        names(&[
            "/usr/bin/python3 /srv/jobs/task.py refresh_contexts --since 1h",
            "/usr/bin/python3 /srv/jobs/task.py send_invoices --since 1h",
        ]),
        ["task.py refresh_contexts", "task.py send_invoices"]
    );
    assert_eq!(
        names(&[
            "python -m app.jobs refresh",
            "python -m app.jobs purge --all"
        ]),
        ["app.jobs refresh", "app.jobs purge --all"]
    );
}

#[test]
fn an_option_value_that_differs_keeps_its_option() {
    assert_eq!(
        names(&[
            "python3 report.py --region eu --format csv",
            "python3 report.py --region us --format csv",
        ]),
        ["report.py --region eu", "report.py --region us"]
    );
    assert_eq!(
        names(&[
            "python3 report.py --region=eu",
            "python3 report.py --region=us"
        ]),
        ["report.py --region=eu", "report.py --region=us"]
    );
}

#[test]
fn different_scripts_are_named_by_script_and_subcommand() {
    assert_eq!(
        names(&[
            "sh -c cd /srv && python manage.py send_invoices --verbose",
            "node dist/cron.js",
            "/usr/bin/python3 /srv/jobs/task.py refresh_contexts --since 1h",
        ]),
        [
            "manage.py send_invoices",
            "cron.js",
            "task.py refresh_contexts"
        ]
    );
}

#[test]
fn names_are_distinct_and_bounded() {
    // Same task started two ways: shortening cannot tell them apart, the lines can.
    let n = names(&["python3 -u task.py a", "python3 task.py a"]);
    assert_eq!(n, ["python3 -u task.py a", "python3 task.py a"]);
    let long = format!("python3 task.py {}", "x".repeat(500));
    let other = format!("python3 task.py {}y", "x".repeat(500));
    let n = names(&[&long, &other]);
    assert_ne!(n[0], n[1], "{n:?}");
    assert!(n.iter().all(|s| s.len() <= MAX_FALLBACK + 8), "{n:?}");
    let many = format!(
        "python3 task.py {}",
        (0..50)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let n = names(&[&many, "python3 task.py other"]);
    assert!(n[0].len() <= MAX_NAME + 3, "{n:?}");
    assert!(n[0].starts_with("task.py w0 w1 w2 w3 …"), "{n:?}");
    // Identical lines cut alike are still numbered apart.
    let n = names(&["", ""]);
    assert_ne!(n[0], n[1]);
}

#[test]
fn odd_lines_do_not_panic() {
    for c in [
        "",
        "   ",
        "sh",
        "sh -c",
        "env",
        "env A=b",
        "python",
        "python -m",
        "python -W",
        "sh -c cd /x &&",
        "timeout",
        "flock",
        "uv run",
        ">",
        "a > ",
        "bash -c bash -c bash -c bash -c bash -c x",
    ] {
        let _ = program(c);
        let _ = short_names(&[c, c, "x"]);
    }
}
