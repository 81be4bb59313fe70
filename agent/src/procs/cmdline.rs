//! Recognising gunicorn and uvicorn from a process's argv. Pure functions: argv in, facts out.
//!
//! Handles `gunicorn …`, `/venv/bin/gunicorn …`, `python /venv/bin/gunicorn …`,
//! `python -m gunicorn …` (likewise uvicorn) and setproctitle's `gunicorn: master [app]`.

/// What a command line says about the server it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCmd {
    Gunicorn {
        /// `master` / `worker` when setproctitle renamed the process, else None.
        title_role: Option<String>,
        app: Option<String>,
        worker_class: String,
        workers: Option<u32>,
        binds: Vec<String>,
    },
    Uvicorn {
        app: Option<String>,
        workers: Option<u32>,
        binds: Vec<String>,
    },
}

impl ServerCmd {
    pub fn app(&self) -> Option<&str> {
        match self {
            Self::Gunicorn { app, .. } | Self::Uvicorn { app, .. } => app.as_deref(),
        }
    }
}

const GUNICORN_VALUE_OPTS: &[&str] = &[
    "-b",
    "--bind",
    "-w",
    "--workers",
    "-k",
    "--worker-class",
    "--threads",
    "-c",
    "--config",
    "-t",
    "--timeout",
    "--graceful-timeout",
    "--keep-alive",
    "--max-requests",
    "--max-requests-jitter",
    "-u",
    "--user",
    "-g",
    "--group",
    "-n",
    "--name",
    "-e",
    "--env",
    "--chdir",
    "--pythonpath",
    "-p",
    "--pid",
    "--log-level",
    "--access-logfile",
    "--error-logfile",
    "--log-file",
    "--access-logformat",
    "--log-config",
    "--log-syslog-to",
    "--forwarded-allow-ips",
    "--worker-connections",
    "--worker-tmp-dir",
    "--backlog",
    "--limit-request-line",
    "--limit-request-fields",
    "--limit-request-field_size",
    "--statsd-host",
    "--statsd-prefix",
    "-m",
    "--umask",
    "--paste",
    "--logger-class",
    "--certfile",
    "--keyfile",
    "--ca-certs",
    "--ssl-version",
    "--ciphers",
    "--proxy-protocol",
    "--proxy-allow-from",
    "--worker-tmp-dir",
    "--initgroups",
    "--dogstatsd-tags",
];

const UVICORN_VALUE_OPTS: &[&str] = &[
    "--host",
    "--port",
    "--uds",
    "--fd",
    "--workers",
    "--loop",
    "--http",
    "--ws",
    "--ws-max-size",
    "--ws-max-queue",
    "--ws-ping-interval",
    "--ws-ping-timeout",
    "--ws-per-message-deflate",
    "--lifespan",
    "--interface",
    "--env-file",
    "--log-config",
    "--log-level",
    "--root-path",
    "--limit-concurrency",
    "--backlog",
    "--limit-max-requests",
    "--timeout-keep-alive",
    "--timeout-graceful-shutdown",
    "--ssl-keyfile",
    "--ssl-certfile",
    "--ssl-keyfile-password",
    "--ssl-version",
    "--ssl-cert-reqs",
    "--ssl-ca-certs",
    "--ssl-ciphers",
    "--header",
    "--app-dir",
    "--reload-dir",
    "--reload-include",
    "--reload-exclude",
    "--reload-delay",
    "--forwarded-allow-ips",
    "--h11-max-incomplete-event-size",
];

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_python(arg0: &str) -> bool {
    let name = basename(arg0);
    name.starts_with("python") || name == "pypy" || name.starts_with("pypy3")
}

/// The server program and its own arguments, with any interpreter prefix removed.
fn server_args(argv: &[String]) -> Option<(&'static str, &[String])> {
    let first = argv.first()?;
    let which = |name: &str| match name {
        "gunicorn" => Some("gunicorn"),
        "uvicorn" => Some("uvicorn"),
        _ => None,
    };
    if let Some(name) = which(basename(first)) {
        return Some((name, &argv[1..]));
    }
    if !is_python(first) {
        return None;
    }
    // Skip interpreter flags (-u, -O, -X dev …) up to `-m module` or the script path.
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].as_str();
        match arg {
            "-m" => {
                let module = argv.get(i + 1)?;
                return which(module.as_str()).map(|n| (n, &argv[i + 2..]));
            }
            "-c" => return None,
            "-X" | "-W" => i += 2,
            a if a.starts_with('-') => i += 1,
            script => return which(basename(script)).map(|n| (n, &argv[i + 1..])),
        }
    }
    None
}

/// `--opt=value` or `--opt value`: returns (option, value, how many args consumed).
fn split_option<'a>(
    args: &'a [String],
    i: usize,
    takes_value: &[&str],
) -> (&'a str, Option<&'a str>, usize) {
    let arg = args[i].as_str();
    if let Some((opt, value)) = arg.split_once('=')
        && opt.starts_with("--")
    {
        return (opt, Some(value), 1);
    }
    // Short options may carry their value glued on: -w4, -b127.0.0.1:8000.
    if arg.len() > 2 && arg.starts_with('-') && !arg.starts_with("--") {
        let (opt, value) = arg.split_at(2);
        if takes_value.contains(&opt) {
            return (opt, Some(value), 1);
        }
    }
    if takes_value.contains(&arg) {
        return (arg, args.get(i + 1).map(String::as_str), 2);
    }
    (arg, None, 1)
}

/// Looks like `package.module:attribute` or `package.module` (an app to serve).
fn looks_like_app(arg: &str) -> bool {
    let module = arg.split(':').next().unwrap_or("");
    !module.is_empty()
        && module
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'))
}

pub fn classify(argv: &[String]) -> Option<ServerCmd> {
    if let [title] = argv
        && let Some(rest) = title.strip_prefix("gunicorn: ")
    {
        // setproctitle: "gunicorn: master [shop.app:app]" or "gunicorn: worker [shop.app:app]"
        let (role, app) = rest.split_once(' ').unwrap_or((rest, ""));
        let app = app.trim().trim_start_matches('[').trim_end_matches(']');
        return Some(ServerCmd::Gunicorn {
            title_role: Some(role.to_string()),
            app: (!app.is_empty()).then(|| app.to_string()),
            worker_class: "sync".into(),
            workers: None,
            binds: Vec::new(),
        });
    }
    let (program, args) = server_args(argv)?;
    let value_opts = if program == "gunicorn" {
        GUNICORN_VALUE_OPTS
    } else {
        UVICORN_VALUE_OPTS
    };
    let mut app = None;
    let mut workers = None;
    let mut threads = None;
    let mut worker_class = None;
    let mut binds = Vec::new();
    let mut host = None;
    let mut port = None;
    let mut i = 0;
    while i < args.len() {
        let (opt, value, used) = split_option(args, i, value_opts);
        i += used;
        match (opt, value) {
            ("-w" | "--workers", Some(v)) => workers = v.parse().ok(),
            ("--threads", Some(v)) => threads = v.parse::<u32>().ok(),
            ("-k" | "--worker-class", Some(v)) => worker_class = Some(v.to_string()),
            ("-b" | "--bind", Some(v)) => binds.push(v.to_string()),
            ("--uds", Some(v)) => binds.push(format!("unix:{v}")),
            ("--host", Some(v)) => host = Some(v.to_string()),
            ("--port", Some(v)) => port = Some(v.to_string()),
            (o, _) if o.starts_with('-') => {}
            (positional, _) if looks_like_app(positional) => app = Some(positional.to_string()),
            _ => {}
        }
    }
    Some(if program == "gunicorn" {
        // gunicorn turns the sync worker into gthread when --threads > 1.
        let class = match (worker_class, threads) {
            (None, Some(t)) if t > 1 => "gthread".to_string(),
            (None, _) => "sync".to_string(),
            (Some(c), _) => c,
        };
        ServerCmd::Gunicorn {
            title_role: None,
            app,
            worker_class: class,
            workers,
            binds,
        }
    } else {
        if host.is_some() || port.is_some() {
            binds.push(format!(
                "{}:{}",
                host.unwrap_or_else(|| "127.0.0.1".into()),
                port.unwrap_or_else(|| "8000".into())
            ));
        }
        ServerCmd::Uvicorn {
            app,
            workers,
            binds,
        }
    })
}

/// A helper process that is a child of a server but not a worker (multiprocessing's
/// resource tracker, started beside spawned uvicorn workers).
pub fn is_helper_process(argv: &[String]) -> bool {
    argv.iter().any(|a| {
        a.contains("multiprocessing.resource_tracker") || a.contains("multiprocessing.forkserver")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn gunicorn_forms() {
        for cmd in [
            "/srv/venv/bin/gunicorn -w 4 -b 127.0.0.1:8000 shop.app:app",
            "/usr/bin/python3.11 /srv/venv/bin/gunicorn --workers=4 --bind 127.0.0.1:8000 shop.app:app",
            "python3 -u -m gunicorn -w4 -b127.0.0.1:8000 shop.app:app",
        ] {
            let got = classify(&argv(cmd)).expect(cmd);
            assert_eq!(
                got,
                ServerCmd::Gunicorn {
                    title_role: None,
                    app: Some("shop.app:app".into()),
                    worker_class: "sync".into(),
                    workers: Some(4),
                    binds: vec!["127.0.0.1:8000".into()],
                },
                "{cmd}"
            );
        }
    }

    #[test]
    fn gunicorn_worker_classes() {
        let k = |cmd: &str| match classify(&argv(cmd)) {
            Some(ServerCmd::Gunicorn { worker_class, .. }) => worker_class,
            other => panic!("{other:?}"),
        };
        assert_eq!(k("gunicorn --threads 8 app:app"), "gthread");
        assert_eq!(k("gunicorn -k gthread app:app"), "gthread");
        assert_eq!(
            k("gunicorn -k uvicorn.workers.UvicornWorker -w 8 api.main:app"),
            "uvicorn.workers.UvicornWorker"
        );
        assert_eq!(
            k("gunicorn --worker-class=uvicorn.workers.UvicornWorker api:app"),
            "uvicorn.workers.UvicornWorker"
        );
    }

    #[test]
    fn setproctitle_names() {
        assert_eq!(
            classify(&["gunicorn: worker [shop.app:app]".to_string()])
                .and_then(|c| c.app().map(String::from)),
            Some("shop.app:app".into())
        );
    }

    #[test]
    fn uvicorn_forms() {
        let got = classify(&argv(
            "/venv/bin/python -m uvicorn api.main:app --workers 2 --port 9000",
        ))
        .expect("uvicorn");
        assert_eq!(
            got,
            ServerCmd::Uvicorn {
                app: Some("api.main:app".into()),
                workers: Some(2),
                binds: vec!["127.0.0.1:9000".into()],
            }
        );
        let uds = classify(&argv("uvicorn --uds /run/app.sock app:app")).expect("uvicorn");
        assert!(
            matches!(uds, ServerCmd::Uvicorn { ref binds, .. } if binds == &vec!["unix:/run/app.sock".to_string()])
        );
    }

    #[test]
    fn not_servers() {
        for cmd in [
            "python3 -c import gunicorn",
            "python3 manage.py runserver",
            "/bin/bash",
            "",
            "python3",
            "python3 -m",
        ] {
            assert_eq!(classify(&argv(cmd)), None, "{cmd:?}");
        }
        assert!(is_helper_process(&argv(
            "python3 -c from multiprocessing.resource_tracker import main;main(5)"
        )));
    }
}
