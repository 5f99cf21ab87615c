//! HTTP/1.1 basics on both backends: keep-alive, pipelining in order, bodies, streams, 1.0.

mod http_util;
use http_util::{read_response, read_until_closed, StreamEvent, TestServer, HANG};
use server::http::IoBackend;
use std::io::{BufReader, Write};
use std::time::Duration;

fn keep_alive(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let s = srv.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for i in 0..50 {
        let body = format!("hello {i}");
        write!(w, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let resp = read_response(&mut r).expect("response on the same connection");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, body.as_bytes());
        assert!(resp.header("date").is_some());
        assert_eq!(resp.header("connection"), None, "kept alive");
    }
    // Connection: close is honoured: answered, then closed.
    w.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!((resp.status, resp.header("connection")), (200, Some("close")));
    assert!(read_response(&mut r).is_none(), "closed after Connection: close");
    srv.assert_healthy();
}

fn pipelined_in_order(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let mut s = srv.connect();
    // The first answers last (another thread, after a delay); the order on the wire must hold.
    let mut batch = String::new();
    for (i, ms) in [300, 0, 150, 0, 50, 0].iter().enumerate() {
        batch += &format!("GET /delay?ms={ms}&tag={i} HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    batch += "GET /health HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nlast";
    s.write_all(batch.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..6 {
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.body, format!("delayed {i}").as_bytes());
    }
    assert_eq!(read_response(&mut r).unwrap().body, b"ok");
    assert_eq!(read_response(&mut r).unwrap().body, b"last");
    srv.assert_healthy();
}

fn pipeline_past_the_queue_bound(io: IoBackend) {
    // More pipelined requests than max_pipelined_requests: reading pauses, then resumes.
    let srv = TestServer::start(io, |c| c.max_pipelined_requests = 4);
    let mut s = srv.connect();
    let mut batch = String::new();
    for i in 0..40 {
        batch += &format!("GET /delay?ms={}&tag={i} HTTP/1.1\r\nHost: t\r\n\r\n", (i % 3) * 5);
    }
    s.write_all(batch.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..40 {
        assert_eq!(read_response(&mut r).unwrap().body, format!("delayed {i}").as_bytes());
    }
}

fn chunked_request_body(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let mut s = srv.connect();
    // Sent in pieces that split sizes, data and CRLFs.
    let body = b"4\r\nWiki\r\n7;ext=x\r\npedia i\r\nB\r\nn \r\nchunks.\r\n0\r\nTrailer: yes\r\n\r\n";
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    for piece in body.chunks(5) {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"Wikipedia in \r\nchunks."[..]));
    // The connection is still usable after a chunked body.
    r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"ok");
}

fn expect_continue(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let mut s = srv.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    s.write_all(b"abc").unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"abc");
}

fn streamed_response(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let mut s = srv.connect();
    s.write_all(b"GET /stream?n=20&ms=2 HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let expected: String = (0..20).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(String::from_utf8(resp.body).unwrap(), expected);
    assert!(resp.chunks >= 1);
    assert_eq!(srv.events.recv_timeout(HANG).unwrap(), StreamEvent::Finished { sent: 20 });
    // The pipelined request behind the stream is answered after it.
    assert_eq!(read_response(&mut r).unwrap().body, b"ok");
}

fn http10_basics(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    // 1.0 without keep-alive: answered in 1.0, then closed.
    let mut s = srv.connect();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let all = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    // 1.0 with keep-alive: kept.
    let s = srv.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for _ in 0..3 {
        w.write_all(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        let resp = read_response(&mut r).unwrap();
        assert_eq!((resp.status, resp.header("connection")), (200, Some("keep-alive")));
    }
    // A 1.0 stream has no chunks: the body ends with the connection.
    let mut s = srv.connect();
    s.write_all(b"GET /stream?n=3 HTTP/1.0\r\n\r\n").unwrap();
    let text = String::from_utf8(read_until_closed(&mut s)).unwrap();
    assert!(text.ends_with("\r\n\r\ndata: 0\n\ndata: 1\n\ndata: 2\n\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
}

fn head_and_errors_from_the_handler(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let s = srv.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    w.write_all(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\nGET /drop HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    w.write_all(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    // HEAD: the length of the body that GET would have, and no body.
    let mut head = String::new();
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        head += &line;
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("content-length: 2\r\n"), "{head}");
    assert_eq!(read_response(&mut r).unwrap().status, 500, "a dropped Reply answers 500");
    assert_eq!(read_response(&mut r).unwrap().status, 500, "a panicking handler answers 500");
    assert_eq!(read_response(&mut r).unwrap().body, b"ok");
}

both_backends!(
    keep_alive,
    pipelined_in_order,
    pipeline_past_the_queue_bound,
    chunked_request_body,
    expect_continue,
    streamed_response,
    http10_basics,
    head_and_errors_from_the_handler
);
