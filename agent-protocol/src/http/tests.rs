use super::*;

fn exchanges(ev: Vec<HttpEvent>) -> Vec<Exchange> {
    ev.into_iter()
        .filter_map(|e| {
            if let HttpEvent::Exchange(x) = e {
                Some(x)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn heads_parsed_in_place_equal_heads_collected_across_reads() {
    // Whole in one read (parsed where it lies, its end found in the same pass) or cut
    // anywhere (collected in the framer's buffer): the same requests and exchanges.
    let requests: &[u8] =
        b"POST /orders/7?x=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\nabc\
            GET /a HTTP/1.0\r\nConnection: keep-alive\r\nX-Odd: \n\r\n\r\n\
            GET /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let responses: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok\
            HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
    let run = |cut_req: usize, cut_resp: usize| {
        let mut s = HttpSession::new();
        let mut ev = s.on_read(Chunk::whole(&requests[..cut_req], 1));
        ev.extend(s.on_read(Chunk::whole(&requests[cut_req..], 1)));
        ev.extend(s.on_write(Chunk::whole(&responses[..cut_resp], 2)));
        ev.extend(s.on_write(Chunk::whole(&responses[cut_resp..], 2)));
        ev
    };
    let whole = run(requests.len(), responses.len());
    let got: Vec<_> = exchanges(whole.clone())
        .iter()
        .map(|x| (x.request.target.to_string(), x.status))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/orders/7?x=1".to_string(), Some(201)),
            ("/a".to_string(), Some(200)),
            ("/b".to_string(), Some(500)),
        ]
    );
    for cut in 0..requests.len() {
        assert_eq!(run(cut, responses.len()), whole, "requests cut at {cut}");
    }
    for cut in 0..responses.len() {
        assert_eq!(run(requests.len(), cut), whole, "responses cut at {cut}");
    }
}

#[test]
fn a_reused_session_is_a_new_session() {
    let exchange = |s: &mut HttpSession| {
        let mut ev = s.on_read(Chunk::whole(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 1));
        ev.extend(s.on_write(Chunk::whole(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            2,
        )));
        ev
    };
    let fresh = exchange(&mut HttpSession::new());
    // Left with a request unanswered, a head half read and a chunked body half written.
    let mut used = HttpSession::new();
    used.on_read(Chunk::whole(
        b"GET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nHo",
        1,
    ));
    used.on_write(Chunk::whole(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        2,
    ));
    used.reuse();
    assert_eq!(used.in_flight(), 0);
    assert_eq!(exchange(&mut used), fresh);
}

#[test]
fn keep_alive_exchanges_with_timing() {
    let mut s = HttpSession::new();
    let ev = s.on_read(Chunk::whole(
        b"GET /orders/12?x=1 HTTP/1.1\r\nHost: shop\r\n\r\n",
        10,
    ));
    assert!(
        matches!(&ev[0], HttpEvent::RequestStarted { request, started_ns: 10 } if request.target == "/orders/12?x=1" && request.host.as_deref() == Some("shop"))
    );
    let x = exchanges(s.on_write(Chunk::whole(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        30,
    )));
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].status, x[0].started_ns, x[0].finished_ns),
        (Some(200), 10, 30)
    );
    s.on_read(Chunk::whole(
        b"POST /api/checkout HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        40,
    ));
    // Head and body written in two calls.
    assert!(
        exchanges(s.on_write(Chunk::whole(
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n",
            50
        )))
        .is_empty()
    );
    let x = exchanges(s.on_write(Chunk::whole(b"ok", 60)));
    assert_eq!(
        (
            x[0].request.method.as_str(),
            x[0].status,
            x[0].response_started_ns,
            x[0].finished_ns
        ),
        ("POST", Some(201), Some(50), 60)
    );
}

#[test]
fn pipelined_requests_in_one_read_and_responses_in_one_write() {
    let mut s = HttpSession::new();
    let ev = s.on_read(Chunk::whole(
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n",
        1,
    ));
    assert_eq!(ev.len(), 3);
    assert_eq!(s.in_flight(), 3);
    let x = exchanges(s.on_write(Chunk::whole(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",
            2,
        )));
    let got: Vec<_> = x
        .iter()
        .map(|e| (e.request.target.as_str(), e.status))
        .collect();
    assert_eq!(
        got,
        vec![("/a", Some(200)), ("/b", Some(404)), ("/c", Some(200))],
        "HEAD response has no body"
    );
}

#[test]
fn chunked_response_across_writes_and_uncaptured_body() {
    let mut s = HttpSession::new();
    s.on_read(Chunk::whole(b"GET /stream HTTP/1.1\r\n\r\n", 1));
    assert!(
        exchanges(s.on_write(Chunk::whole(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            2
        )))
        .is_empty()
    );
    let x = exchanges(s.on_write(Chunk::whole(b"0\r\n\r\n", 3)));
    assert_eq!((x[0].status, x[0].finished_ns), (Some(200), 3));
    // A 1 MB body of which only 100 bytes were captured still ends the exchange.
    s.on_read(Chunk::whole(b"GET /big HTTP/1.1\r\n\r\n", 4));
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
    let mut data = head.to_vec();
    data.resize(100, b'x');
    let x = exchanges(s.on_write(Chunk {
        data: &data,
        total_len: head.len() + 1_000_000,
        timestamp_ns: 5,
        tail: &[],
    }));
    assert_eq!(x[0].request.target, "/big");
}

#[test]
fn a_chunked_body_ends_in_the_captured_tail() {
    let mut s = HttpSession::new();
    s.on_read(Chunk::whole(b"GET /report HTTP/1.1\r\n\r\n", 1));
    let mut body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 0x1000));
    body.extend(b"\r\n0\r\n\r\n");
    let tail = &body[body.len() - 64..];
    let x = exchanges(s.on_write(Chunk {
        data: &body[..200],
        total_len: body.len(),
        timestamp_ns: 2,
        tail,
    }));
    assert_eq!(
        (x.len(), x[0].status),
        (1, Some(200)),
        "the last chunk was in the tail"
    );
}

#[test]
fn truncated_request_head_ends_with_its_call() {
    let mut s = HttpSession::new();
    let mut data = b"GET /api/cart HTTP/1.1\r\nCookie: ".to_vec();
    data.resize(512, b'a');
    let ev = s.on_read(Chunk {
        data: &data,
        total_len: 3000,
        timestamp_ns: 1,
        tail: &[],
    });
    assert!(
        matches!(&ev[0], HttpEvent::RequestStarted { request, .. } if request.head_truncated && request.target == "/api/cart")
    );
    // The next read is a new request, parsed normally.
    assert_eq!(
        s.on_read(Chunk::whole(b"GET /next HTTP/1.1\r\n\r\n", 2))
            .len(),
        1
    );
}

#[test]
fn response_until_close_and_unanswered_requests() {
    let mut s = HttpSession::new();
    s.on_read(Chunk::whole(b"GET /old HTTP/1.0\r\n\r\n", 1));
    assert!(exchanges(s.on_write(Chunk::whole(b"HTTP/1.0 200 OK\r\n\r\nbody...", 2))).is_empty());
    let x = exchanges(s.on_close(9));
    assert_eq!((x[0].status, x[0].finished_ns), (Some(200), 9));
    let mut s = HttpSession::new();
    s.on_read(Chunk::whole(b"GET /hang HTTP/1.1\r\n\r\n", 1));
    let x = exchanges(s.on_close(5));
    assert_eq!(x[0].status, None);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let mut s = HttpSession::new();
    let ev = s.on_read(Chunk::whole(
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        1,
    ));
    assert!(ev.iter().any(|e| matches!(e, HttpEvent::Error(_))));
    let ev = s.on_read(Chunk::whole(&[b'A'; MAX_HEAD + 10], 2));
    assert!(
        ev.iter()
            .any(|e| matches!(e, HttpEvent::Error(ProtocolError::HttpTooLarge(_))))
    );
    assert!(
        s.on_write(Chunk::whole(b"HTTP/1.1 abc\r\n\r\n", 3))
            .iter()
            .any(|e| matches!(e, HttpEvent::Error(_)))
    );
    // And the session still works afterwards.
    assert_eq!(
        s.on_read(Chunk::whole(b"GET / HTTP/1.1\r\n\r\n", 4)).len(),
        1
    );
}
