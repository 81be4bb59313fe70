//! The book against a stand-in /proc tree: the keying rules, persistence across a restart of
//! the agent, bad files and directories, and the bounds.
use std::path::Path;

use herdwatch_protocol::{
    Chunk,
    postgres::{PgSession, SessionEvent},
};

use super::*;

/// A process `pid` started at `start` whose fd `fd` is the socket `inode`.
fn fake_process(proc_root: &Path, pid: u32, start: u64, fd: u32, inode: u64) {
    let dir = proc_root.join(pid.to_string());
    std::fs::create_dir_all(dir.join("fd")).expect("fake /proc dir");
    // 52 fields as the kernel writes them, the command name holding a space and a ')'.
    let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
    fields[19] = start.to_string();
    std::fs::write(
        dir.join("stat"),
        format!("{pid} (python3 a) b) S {}\n", fields[1..].join(" ")),
    )
    .expect("stat");
    let link = dir.join("fd").join(fd.to_string());
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("socket:[{inode}]"), &link).expect("fd link");
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, sql] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

fn bind_execute_sync(statement: &str) -> Vec<u8> {
    let mut bind = vec![0u8]; // unnamed portal
    bind.extend_from_slice(statement.as_bytes());
    bind.push(0);
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no params, no result formats
    let mut out = message(b'B', &bind);
    out.extend(message(b'E', b"\0\0\0\0\0"));
    out.extend(message(b'S', b""));
    out
}

/// A session that parsed `statements` (name, sql).
fn session_that_parsed(statements: &[(&str, &str)]) -> PgSession {
    let mut s = PgSession::mid_stream();
    let bytes: Vec<u8> = statements.iter().flat_map(|(n, q)| parse(n, q)).collect();
    s.on_frontend(Chunk::whole(&bytes, 1));
    s
}

/// The text the session gives an Execute of `statement` (None: not known).
fn executed_text(s: &mut PgSession, statement: &str) -> Option<String> {
    s.on_frontend(Chunk::whole(&bind_execute_sync(statement), 2));
    let mut reply = message(b'2', b"");
    reply.extend(message(b'C', b"SELECT 1\0"));
    reply.extend(message(b'Z', b"I"));
    s.on_backend(Chunk::whole(&reply, 3))
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Query(q) => Some(q.sql.map(|t| t.to_string())),
            _ => None,
        })
        .flatten()
}

const RAW: &str = "SELECT * FROM orders WHERE id = $1 AND status = 'paid'";

#[test]
fn a_restarted_agent_gives_sessions_the_text_the_previous_run_saw() {
    let proc_root = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    fake_process(proc_root.path(), 100, 5_000, 7, 111);
    {
        let mut book = StatementBook::open_with_proc(state.path(), proc_root.path());
        let mut s = session_that_parsed(&[("_pg3_4", RAW), ("", "SELECT 1")]);
        book.learn(100, 7, &mut s);
        assert_eq!(book.len().0, 1, "named statements only");
        assert!(!s.has_prepared(), "taken");
        book.save();
    }
    let file = std::fs::read_to_string(state.path().join(FILE_NAME)).expect("written");
    assert!(
        !file.contains("paid"),
        "no literal reaches the disk: {file}"
    );
    let mut book = StatementBook::open_with_proc(state.path(), proc_root.path());
    let mut s = PgSession::mid_stream();
    book.seed(100, 7, &mut s);
    assert_eq!(book.seeded, 1);
    let text = executed_text(&mut s, "_pg3_4").expect("known after the restart");
    // The normalised text fingerprints as the raw one did: same query identity.
    let fp = herdwatch_protocol::fingerprint::fingerprint;
    assert_eq!(fp(&text).id, fp(RAW).id, "{text}");
    assert!(!text.contains("paid"), "{text}");
}

#[test]
fn a_restarted_process_with_the_same_pid_or_a_new_socket_on_the_same_fd_inherits_nothing() {
    let proc_root = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    fake_process(proc_root.path(), 100, 5_000, 7, 111);
    let mut book = StatementBook::open_with_proc(state.path(), proc_root.path());
    book.learn(100, 7, &mut session_that_parsed(&[("_pg3_4", RAW)]));
    let old = ConnId {
        pid: 100,
        start_time: 5_000,
        inode: 111,
    };
    assert!(book.get(&old, "_pg3_4").is_some());
    // A new connection on the same fd of the same process.
    fake_process(proc_root.path(), 100, 5_000, 7, 222);
    let mut s = PgSession::mid_stream();
    book.seed(100, 7, &mut s);
    assert_eq!(executed_text(&mut s, "_pg3_4"), None);
    // The app restarted and got the same pid (and even the same inode number).
    fake_process(proc_root.path(), 100, 9_000, 7, 111);
    let reborn = ConnId {
        start_time: 9_000,
        ..old
    };
    assert!(
        book.get(&reborn, "_pg3_4").is_none(),
        "same pid, different start time"
    );
    let mut s = PgSession::mid_stream();
    book.seed(100, 7, &mut s);
    assert_eq!(executed_text(&mut s, "_pg3_4"), None);
    assert_eq!(book.seeded, 0);
    // Saving drops the dead process's entries; a reload does not bring them back.
    book.save();
    assert!(book.is_empty());
    drop(book);
    let book = StatementBook::open_with_proc(state.path(), proc_root.path());
    assert!(book.is_empty());
}

#[test]
fn a_process_gone_while_the_agent_was_down_is_dropped_at_load() {
    let proc_root = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    fake_process(proc_root.path(), 100, 5_000, 7, 111);
    fake_process(proc_root.path(), 200, 6_000, 3, 333);
    {
        let mut book = StatementBook::open_with_proc(state.path(), proc_root.path());
        book.learn(100, 7, &mut session_that_parsed(&[("a", "SELECT 1")]));
        book.learn(200, 3, &mut session_that_parsed(&[("b", "SELECT 2")]));
        assert_eq!(book.len().0, 2);
    } // saved at drop
    std::fs::remove_dir_all(proc_root.path().join("100")).expect("exit");
    let book = StatementBook::open_with_proc(state.path(), proc_root.path());
    assert_eq!(book.len().0, 1);
    let id = ConnId {
        pid: 200,
        start_time: 6_000,
        inode: 333,
    };
    assert_eq!(
        book.get(&id, "b").map(|(t, _)| t.to_string()).as_deref(),
        Some("select ?")
    );
}

#[test]
fn corrupt_truncated_or_newer_files_start_a_fresh_book() {
    let proc_root = tempfile::tempdir().expect("tmp");
    fake_process(proc_root.path(), 100, 5_000, 7, 111);
    let good = {
        let state = tempfile::tempdir().expect("tmp");
        let mut book = StatementBook::open_with_proc(state.path(), proc_root.path());
        book.learn(100, 7, &mut session_that_parsed(&[("a", "SELECT 1")]));
        book.save();
        std::fs::read_to_string(state.path().join(FILE_NAME)).expect("written")
    };
    let newer = good.replacen("\"version\":1", "\"version\":99", 1);
    assert_ne!(newer, good);
    for bad in [
        good[..good.len() / 2].to_string(),
        "\u{0}garbage".to_string(),
        String::new(),
        newer,
        "{\"version\":1,\"connections\":[{\"pid\":\"x\"}]}".to_string(),
    ] {
        let state = tempfile::tempdir().expect("tmp");
        std::fs::write(state.path().join(FILE_NAME), &bad).expect("bad file");
        let mut book = StatementBook::open_with_proc(state.path(), proc_root.path());
        assert!(book.is_empty(), "{bad:?}");
        assert!(state.path().join(format!("{FILE_NAME}.bad")).exists());
        // And it works from there on.
        book.learn(100, 7, &mut session_that_parsed(&[("a", "SELECT 1")]));
        book.save();
        drop(book);
        let book = StatementBook::open_with_proc(state.path(), proc_root.path());
        assert_eq!(book.len().0, 1, "{bad:?}");
    }
    // The good file loads as is.
    let state = tempfile::tempdir().expect("tmp");
    std::fs::write(state.path().join(FILE_NAME), &good).expect("file");
    let book = StatementBook::open_with_proc(state.path(), proc_root.path());
    assert_eq!(book.len().0, 1);
}

#[test]
fn an_unusable_state_directory_means_no_persistence_and_no_failure() {
    let proc_root = tempfile::tempdir().expect("tmp");
    fake_process(proc_root.path(), 100, 5_000, 7, 111);
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").expect("file");
    // A "directory" below a regular file can be neither created nor written.
    let dir = file.join("state");
    let mut book = StatementBook::open_with_proc(&dir, proc_root.path());
    book.learn(100, 7, &mut session_that_parsed(&[("a", "SELECT 1")]));
    assert_eq!(book.len().0, 1, "still known for this run");
    book.save();
    assert!(!dir.exists());
    // A missing directory is created.
    let dir = tmp.path().join("new/state");
    let mut book = StatementBook::open_with_proc(&dir, proc_root.path());
    book.learn(100, 7, &mut session_that_parsed(&[("a", "SELECT 1")]));
    book.save();
    assert!(dir.join(FILE_NAME).exists());
}

#[test]
fn the_book_is_bounded_in_entries_and_bytes() {
    let mut book = StatementBook::default();
    for conn in 0..(MAX_ENTRIES / MAX_PER_CONNECTION + 8) as u64 {
        let id = ConnId {
            pid: 1,
            start_time: 1,
            inode: conn,
        };
        for n in 0..MAX_PER_CONNECTION + 10 {
            book.insert(id, &format!("s{n}"), Arc::from("select ?"), false);
        }
    }
    let (entries, bytes) = book.len();
    assert!(entries <= MAX_ENTRIES, "{entries}");
    assert!(entries >= MAX_ENTRIES - MAX_PER_CONNECTION, "{entries}");
    assert_eq!(
        entries,
        book.conns
            .values()
            .map(|c| c.statements.len())
            .sum::<usize>()
    );
    assert!(
        book.conns
            .values()
            .all(|c| c.statements.len() <= MAX_PER_CONNECTION)
    );
    let mut book = StatementBook::default();
    let big: Arc<str> = Arc::from("x".repeat(MAX_BYTES / 32));
    for n in 0..100u64 {
        let id = ConnId {
            pid: 2,
            start_time: 1,
            inode: n,
        };
        book.insert(id, "s", big.clone(), true);
    }
    let (_, bytes2) = book.len();
    assert!(bytes2 <= MAX_BYTES, "{bytes2}");
    assert!(bytes <= MAX_BYTES, "{bytes}");
    // The newest survive, the oldest went.
    let newest = ConnId {
        pid: 2,
        start_time: 1,
        inode: 99,
    };
    assert!(book.get(&newest, "s").is_some());
    // A statement too big for its share is not kept at all.
    book.insert(newest, "huge", Arc::from("y".repeat(MAX_BYTES)), true);
    assert!(book.get(&newest, "huge").is_none());
}

#[test]
fn proc_stat_start_time_and_socket_links_parse() {
    assert_eq!(socket_inode("socket:[4242]"), Some(4242));
    assert_eq!(socket_inode("pipe:[4242]"), None);
    assert_eq!(socket_inode("/dev/null"), None);
    let stat = "77 (a) b (c)) S 1 77 77 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 \
                200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    assert_eq!(start_time_of(stat), Some(123_456));
    assert_eq!(start_time_of("77 (a"), None);
    assert_eq!(start_time_of(""), None);
    // This very process, for real.
    let me = std::fs::read_to_string("/proc/self/stat").expect("own stat");
    assert!(start_time_of(&me).is_some_and(|t| t > 0));
}
