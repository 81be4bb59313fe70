use super::*;

pub(crate) fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn kinds(r: &[Result<RawMessage, ProtocolError>]) -> Vec<u8> {
    r.iter()
        .filter_map(|m| m.as_ref().ok().map(|m| m.kind))
        .collect()
}

#[test]
fn pipelined_messages_in_one_chunk() {
    let mut f = Framer::mid_stream(Direction::Backend);
    let mut bytes = typed(b'1', b"");
    bytes.extend(typed(b'2', b""));
    bytes.extend(typed(b'C', b"SELECT 1\0"));
    bytes.extend(typed(b'Z', b"I"));
    let out = f.push(Chunk::whole(&bytes, 1));
    assert_eq!(kinds(&out), b"12CZ");
}

#[test]
fn a_message_split_at_every_byte_boundary() {
    let msg = typed(b'Q', b"SELECT 1\0");
    for split in 0..=msg.len() {
        let mut f = Framer::new(Direction::Frontend);
        f.untyped_next = false;
        let mut out = f.push(Chunk::whole(&msg[..split], 1));
        out.extend(f.push(Chunk::whole(&msg[split..], 2)));
        assert_eq!(kinds(&out), b"Q", "split at {split}");
        let m = out.into_iter().find_map(Result::ok).expect("message");
        assert_eq!(m.body, b"SELECT 1\0");
        assert!(!m.truncated);
    }
}

#[test]
fn messages_read_in_place_equal_messages_collected_across_chunks() {
    // Whole in one chunk (bodies borrowed from it) or cut anywhere (bodies collected in
    // the framer): the same messages, bodies, caps and truncation.
    let mut stream = typed(b'T', b"row description");
    stream.extend(typed(b'D', &[1u8; 40]));
    stream.extend(typed(b'C', b"SELECT 1\0"));
    stream.extend(typed(b'E', &[b'x'; 64]));
    stream.extend(typed(b'Z', b"I"));
    let framer = || Framer::new(Direction::Backend).with_body_cap(32);
    let whole = framer().push(Chunk::whole(&stream, 1));
    assert_eq!(kinds(&whole), b"TDCEZ");
    let e = whole[3].as_ref().expect("error response");
    assert!(e.truncated && e.body.len() == 32 && e.declared_len == 64);
    for cut in 1..stream.len() {
        let mut f = framer();
        let mut parts = f.push(Chunk::whole(&stream[..cut], 1));
        parts.extend(f.push(Chunk::whole(&stream[cut..], 1)));
        assert_eq!(parts, whole, "cut at {cut}");
    }
}

#[test]
fn uncaptured_body_is_stepped_over() {
    let mut f = Framer::mid_stream(Direction::Backend);
    // A long ErrorResponse (a body the session reads) followed by CommandComplete.
    let mut bytes = typed(b'E', &[7u8; 1000]);
    bytes.extend(typed(b'C', b"SELECT 1\0"));
    // Only 20 bytes captured of the first call; the second call is whole.
    let out1 = f.push(Chunk {
        data: &bytes[..20],
        total_len: 1005,
        timestamp_ns: 1,
        tail: &[],
    });
    let out2 = f.push(Chunk::whole(&bytes[1005..], 2));
    let d = out1
        .into_iter()
        .find_map(Result::ok)
        .expect("DataRow completed by the gap");
    assert!(d.truncated && d.body.len() == 15 && d.declared_len == 1000);
    assert_eq!(kinds(&out2), b"C");
}

#[test]
fn a_gap_inside_a_header_resyncs_on_a_later_chunk() {
    let mut f = Framer::mid_stream(Direction::Frontend);
    let q = typed(b'Q', b"SELECT 1\0");
    // First chunk: whole message + 3 uncaptured bytes that start a new header.
    let out = f.push(Chunk {
        data: &q,
        total_len: q.len() + 3,
        timestamp_ns: 1,
        tail: &[],
    });
    assert_eq!(kinds(&out), b"Q");
    assert!(
        out.iter()
            .any(|r| matches!(r, Err(ProtocolError::PgLostSync(_))))
    );
    // Garbage does not resync; a real message start does.
    assert!(
        f.push(Chunk::whole(b"\xff\xff\xff\xff\xff\xff", 2))
            .is_empty()
    );
    assert_eq!(kinds(&f.push(Chunk::whole(&q, 3))), b"Q");
}

#[test]
fn bodies_the_session_never_reads_are_not_kept() {
    let mut f = Framer::mid_stream(Direction::Backend);
    let out = f.push(Chunk::whole(&typed(b'D', &[1u8; 300]), 1));
    let m = out
        .into_iter()
        .find_map(Result::ok)
        .expect("DataRow framed");
    assert_eq!(
        (m.kind, m.body.len(), m.declared_len, m.truncated),
        (b'D', 0, 300, false)
    );
}

#[test]
fn a_large_response_resyncs_on_its_captured_tail() {
    let mut f = Framer::mid_stream(Direction::Backend);
    let mut bytes = Vec::new();
    for _ in 0..100 {
        bytes.extend(typed(b'D', &[9u8; 25]));
    }
    let end = [typed(b'C', b"SELECT 100\0"), typed(b'Z', b"I")].concat();
    bytes.extend(&end);
    // 512-byte prefix, 128-byte tail, the middle not captured: DataRow headers are lost.
    let tail = &bytes[bytes.len() - 128..];
    let out = f.push(Chunk {
        data: &bytes[..512],
        total_len: bytes.len(),
        timestamp_ns: 7,
        tail,
    });
    let got = kinds(&out);
    assert!(
        got.ends_with(b"CZ"),
        "CommandComplete and ReadyForQuery recovered: {got:?}"
    );
    assert!(
        out.iter()
            .any(|r| matches!(r, Err(ProtocolError::PgLostSync(_))))
    );
    // In sync again for the next response.
    assert_eq!(kinds(&f.push(Chunk::whole(&end, 8))), b"CZ");
}

#[test]
fn a_tail_after_a_gap_inside_one_body_continues_that_body() {
    let mut f = Framer::mid_stream(Direction::Backend);
    let bytes = [typed(b'D', &[1u8; 2000]), typed(b'C', b"SELECT 1\0")].concat();
    let tail = &bytes[bytes.len() - 20..];
    let out = f.push(Chunk {
        data: &bytes[..100],
        total_len: bytes.len(),
        timestamp_ns: 1,
        tail,
    });
    assert_eq!(kinds(&out), b"DC");
}

#[test]
fn startup_ssl_and_bad_lengths() {
    let mut f = Framer::new(Direction::Frontend);
    let mut ssl = 8i32.to_be_bytes().to_vec();
    ssl.extend(80877103i32.to_be_bytes());
    let out = f.push(Chunk::whole(&ssl, 1));
    let m = out
        .into_iter()
        .find_map(Result::ok)
        .expect("untyped message");
    assert_eq!((m.kind, m.body), (0, 80877103i32.to_be_bytes().to_vec()));
    let mut b = Framer::mid_stream(Direction::Backend);
    b.state = State::Header;
    b.expect_single_byte();
    assert_eq!(kinds(&b.push(Chunk::whole(b"N", 1))), b"N");
    let mut bad = Framer::mid_stream(Direction::Backend);
    bad.state = State::Header;
    let out = bad.push(Chunk::whole(&[b'Z', 0, 0, 0, 1, b'I'], 1));
    assert!(matches!(out[0], Err(ProtocolError::PgBadLength { .. })));
}
