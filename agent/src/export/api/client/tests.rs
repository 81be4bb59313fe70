use super::*;

#[tokio::test]
async fn a_missing_agent_is_named_by_its_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let err = findings(&socket).await.expect_err("no agent there");
    let text = err.to_string();
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(text.contains("herdwatch run"), "{text}");
    assert!(text.contains("No such file"), "{text}");
}

#[tokio::test]
async fn an_agent_that_does_not_accept_is_said_not_to_answer() {
    use std::os::fd::FromRawFd as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    // A listener with a backlog of one that never accepts: what an agent out of file
    // descriptors looks like from outside.
    // SAFETY: plain socket calls on a descriptor we own; the address is NUL-terminated
    // within sun_path.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_encoded_bytes();
        for (dst, src) in addr.sun_path.iter_mut().zip(path) {
            *dst = *src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
        assert_eq!(libc::listen(fd, 1), 0);
        std::os::unix::net::UnixListener::from_raw_fd(fd)
    };
    // Fill the queue (a non-blocking connect fails at once when it is full).
    let mut held = Vec::new();
    while let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
        held.push(stream);
        assert!(held.len() < 64, "the backlog never filled");
    }
    let err = findings(&socket)
        .await
        .expect_err("nobody accepts")
        .to_string();
    assert!(err.contains("did not answer within 5 s"), "{err}");
    assert!(!err.contains("os error 11"), "{err}");
    drop(listener);
}

fn flags(api: &str) -> ApiFlags {
    ApiFlags {
        api: Some(api.to_string()),
        ..ApiFlags::default()
    }
}

fn refused(flags: &ApiFlags) -> String {
    Target::from_flags(flags, None)
        .expect_err("refused")
        .to_string()
}

#[test]
fn without_api_the_local_socket_is_the_target() {
    let socket = Path::new("/run/herdwatch/api.sock");
    let target = Target::from_flags(&ApiFlags::default(), Some(socket));
    assert!(matches!(target, Ok(Target::Socket(p)) if p == socket));
    let text = refused(&ApiFlags::default());
    assert!(
        text.contains("api_socket is off") && text.contains("--api"),
        "{text}"
    );
    let stray = ApiFlags {
        insecure: true,
        ..ApiFlags::default()
    };
    let text = Target::from_flags(&stray, Some(socket))
        .expect_err("--insecure without --api")
        .to_string();
    assert!(text.contains("apply to --api only"), "{text}");
}

#[test]
fn api_may_name_a_socket_path() {
    for path in ["/run/herdwatch/api.sock", "./api.sock", "api.sock"] {
        let target = Target::from_flags(&flags(path), None);
        assert!(
            matches!(&target, Ok(Target::Socket(p)) if p == Path::new(path)),
            "{path}: {target:?}"
        );
    }
    let with_token = ApiFlags {
        token_file: Some(PathBuf::from("/token")),
        ..flags("/run/herdwatch/api.sock")
    };
    let text = refused(&with_token);
    assert!(
        text.contains("not to the socket /run/herdwatch/api.sock"),
        "{text}"
    );
    let remote = Target::from_flags(&flags("https://node1:9466"), None).expect("valid");
    assert_eq!(remote.address(), "https://node1:9466/");
}

#[test]
fn remote_urls_are_checked_before_any_connection() {
    assert!(matches!(
        Target::from_flags(&flags("https://node1:9466"), None),
        Ok(Target::Remote(_))
    ));
    let plain = ApiFlags {
        insecure: true,
        ..flags("http://127.0.0.1:9466")
    };
    assert!(matches!(
        Target::from_flags(&plain, None),
        Ok(Target::Remote(r)) if r.tls.is_none()
    ));
    for (url, says) in [
        ("http://node1:9466", "--insecure"),
        ("node1:9466", "https://host:port"),
        ("ftp://node1:9466", "https://host:port"),
        ("https://node1", "names no port"),
        ("https://node1:9466/v1", "root of its address"),
        ("https://", "not a URL"),
    ] {
        let text = refused(&flags(url));
        assert!(text.contains(says), "{url}: {text}");
    }
    let insecure_https = ApiFlags {
        insecure: true,
        ..flags("https://node1:9466")
    };
    assert!(refused(&insecure_https).contains("always verified"));
    let ca_on_http = ApiFlags {
        insecure: true,
        ca: Some(PathBuf::from("/ca.pem")),
        ..flags("http://node1:9466")
    };
    assert!(refused(&ca_on_http).contains("https:// only"));
}

#[test]
fn an_open_token_file_is_refused_by_the_client_too() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "0123456789abcdef0123").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let with_token = ApiFlags {
        token_file: Some(path),
        ..flags("https://node1:9466")
    };
    let text = refused(&with_token);
    assert!(
        text.contains("--token-file") && text.contains("chmod 600"),
        "{text}"
    );
}

#[tokio::test]
async fn nothing_listening_is_named_with_the_address() {
    // A port bound and closed again: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let plain = ApiFlags {
        insecure: true,
        ..flags(&format!("http://127.0.0.1:{port}"))
    };
    let target = Target::from_flags(&plain, None).expect("valid");
    let err = findings_at(&target).await.expect_err("nobody there");
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("nothing listens"),
        "{text}"
    );
}
