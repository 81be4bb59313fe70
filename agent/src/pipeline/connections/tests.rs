use super::*;
use herdwatch_protocol::route::RouteGrouper;

fn data(tgid: u32, fd: u32, ingress: bool, payload: &[u8], cpu: u64, ts: u64) -> SocketEvent<'_> {
    SocketEvent::Data {
        tgid,
        tid: tgid,
        fd,
        kind: SocketKind::HttpServer,
        ingress,
        enter_ns: ts,
        exit_ns: ts,
        total_len: payload.len() as u64,
        thread_on_cpu_ns: cpu,
        payload,
        tail: &[],
    }
}

#[test]
fn cpu_between_calls_is_charged_to_the_request() {
    let mut c = Connections::new(16);
    let mut a = Aggregates::new(10, 10, RouteGrouper::default());
    c.apply(
        data(1, 5, true, b"GET /orders/3 HTTP/1.1\r\n\r\n", 1_000, 10),
        &mut a,
    );
    c.apply(
        data(
            1,
            5,
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            51_000,
            20,
        ),
        &mut a,
    );
    let r = a.routes();
    assert_eq!(
        (r[0].route.as_str(), r[0].requests, r[0].cpu_ns),
        ("/orders/{id}", 1, 50_000)
    );
}

#[test]
fn a_process_exit_ends_its_connections_and_open_requests() {
    let mut c = Connections::new(16);
    let mut a = Aggregates::new(10, 10, RouteGrouper::default());
    c.apply(
        data(7, 5, true, b"GET /slow HTTP/1.1\r\n\r\n", 1, 10),
        &mut a,
    );
    c.apply(
        data(8, 5, true, b"GET /other HTTP/1.1\r\n\r\n", 1, 10),
        &mut a,
    );
    assert_eq!(c.drop_process(7, 99, &mut a), 1);
    assert_eq!(c.stats.open, 1, "the other process's connection stays");
    let slow = a
        .routes()
        .into_iter()
        .find(|r| r.route == "/slow")
        .expect("recorded");
    assert_eq!((slow.requests, slow.unanswered), (1, 1));
}

#[test]
fn the_table_is_bounded() {
    let mut c = Connections::new(4);
    let mut a = Aggregates::new(10, 10, RouteGrouper::default());
    for fd in 0..10 {
        c.apply(
            data(1, fd, true, b"GET / HTTP/1.1\r\n\r\n", 1, u64::from(fd)),
            &mut a,
        );
    }
    assert_eq!(c.stats.open, 4);
    assert_eq!(c.stats.evicted, 6);
}
