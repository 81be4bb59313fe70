//! A real PostgreSQL for the tests: initdb in a temp dir, run as the `postgres` user (it
//! refuses root), listening on a free loopback port and a private Unix socket directory, with
//! pg_stat_statements loaded.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server installed (cargo xtask test installs it)")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL bin dir")
}

pub fn as_postgres(program: &Path) -> Command {
    // setpriv execs in place (no forked helper), so signals reach postgres itself.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

pub struct Postgres {
    pub port: u16,
    pub socket_dir: PathBuf,
    server: Child,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).expect("socket dir");
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let out = as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = super::free_port();
        let server = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&socket_dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_preload_libraries=pg_stat_statements",
            ])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "pg_stat_statements.track=top",
                "-c",
                "logging_collector=off",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("postgres starts");
        let pg = Postgres {
            port,
            socket_dir,
            server,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg.try_sql("SELECT 1").as_deref() != Some("1") {
            assert!(Instant::now() < deadline, "PostgreSQL did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        pg.sql("CREATE EXTENSION pg_stat_statements");
        pg
    }

    /// libpq DSN over TCP.
    pub fn tcp_dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// URL form over TCP (asyncpg takes only URLs; psycopg takes both).
    pub fn tcp_url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// libpq DSN over the Unix socket.
    pub fn unix_dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    fn try_sql(&self, sql: &str) -> Option<String> {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs SQL with psql over the Unix socket; panics on error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|| panic!("psql failed: {sql}"))
    }

    /// pg_stat_statements rows as (query text, calls).
    /// Creates the `orders` table the test apps query and clears pg_stat_statements.
    pub fn shop_schema(&self) {
        self.sql("CREATE TABLE orders (id int PRIMARY KEY, customer int, total numeric)");
        self.sql("INSERT INTO orders SELECT g, g % 10, g * 1.5 FROM generate_series(0, 999) g");
        self.sql("SELECT pg_stat_statements_reset()");
    }

    pub fn statements(&self) -> Vec<(String, u64)> {
        self.sql("SELECT calls || E'\\t' || regexp_replace(query, E'[\\n\\t]+', ' ', 'g') FROM pg_stat_statements")
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter_map(|(calls, q)| Some((q.to_string(), calls.parse().ok()?)))
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT = fast shutdown.
        // SAFETY: signalling the server this harness started.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGINT) };
        let _ = self.server.wait();
    }
}

/// PgBouncer (Debian's) in front of `Postgres`, run as the postgres user (it refuses root),
/// transaction pooling with a small pool, trust auth, listening on 127.0.0.1 only.
pub struct PgBouncer {
    pub port: u16,
    pub pool_size: u32,
    server: Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    pub fn start(pg: &Postgres, pool_size: u32) -> PgBouncer {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let port = super::free_port();
        let d = dir.path().display();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").expect("users");
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 200\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
                 ignore_startup_parameters = extra_float_digits\n",
                pg.port
            ),
        )
        .expect("pgbouncer.ini");
        let program = PathBuf::from("/usr/sbin/pgbouncer");
        assert!(
            program.exists(),
            "PgBouncer not installed (cargo xtask test installs the pgbouncer package)"
        );
        let server = as_postgres(&program)
            .arg(&ini)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        let bouncer = PgBouncer {
            port,
            pool_size,
            server,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "PgBouncer did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        bouncer
    }

    /// libpq DSN of the pooled database.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SAFETY: signalling the process this harness started.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGINT) };
        let _ = self.server.wait();
    }
}
