//! Connection bounds, vanishing clients and graceful shutdown on both backends.

mod http_util;
use http_util::{read_response, read_until_closed, status_of, StreamEvent, TestServer, HANG};
use server::http::{raise_fd_limit, IoBackend};
use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

fn thousand_idle_connections(io: IoBackend) {
    // 1,000 client sockets and 1,000 server sockets in this one process.
    raise_fd_limit(2 * 1000 + 256).expect("raise the open-file limit");
    let srv = TestServer::start(io, |c| c.max_connections = 1100);
    let mut held = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut s = srv.connect();
        if i % 100 == 0 {
            // Some of them were used once and are idle keep-alive connections now.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            assert_eq!(read_response(&mut r).unwrap().status, 200);
        }
        held.push(s);
    }
    srv.assert_healthy();
    // All of them are still served.
    for s in held.iter_mut().step_by(97) {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_response(&mut r).unwrap().body, b"ok");
    }
}

fn max_connections_answers_503(io: IoBackend) {
    let srv = TestServer::start(io, |c| c.max_connections = 4);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = srv.connect();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_response(&mut r).unwrap().status, 200);
        held.push(s);
    }
    // The fifth is accepted, answered 503 and closed.
    let mut s = srv.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let got = read_until_closed(&mut s);
    assert_eq!(status_of(&got), Some(503), "{:?}", String::from_utf8_lossy(&got));
    // One closes: a new connection is served again (once the server has seen the close).
    drop(held.pop());
    let deadline = Instant::now() + HANG;
    loop {
        let mut s = srv.connect();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        match status_of(&read_until_closed(&mut s)) {
            Some(200) => break,
            Some(503) => assert!(Instant::now() < deadline, "still 503 after a connection closed"),
            other => panic!("unexpected {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the response head and `n` chunks of a streamed response.
fn read_head_and_chunks(s: &mut std::net::TcpStream, n: usize) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.windows(4).position(|w| w == b"\r\n\r\n").is_none()
        || String::from_utf8_lossy(&got).matches("data: ").count() < n
    {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "stream ended early");
        got.extend_from_slice(&buf[..k]);
    }
    assert_eq!(status_of(&got), Some(200));
}

fn client_vanishes_mid_stream(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    for _ in 0..3 {
        let mut s = srv.connect();
        s.write_all(b"GET /stream?n=100000&ms=1 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        read_head_and_chunks(&mut s, 3);
        drop(s);
        match srv.events.recv_timeout(HANG).expect("the producer learns the client left") {
            StreamEvent::Closed { sent } => assert!(sent < 100_000),
            other => panic!("{other:?}"),
        }
    }
    srv.assert_healthy();
}

fn slow_reader_overflows_the_stream_buffer(io: IoBackend) {
    let srv = TestServer::start(io, |c| {
        c.max_stream_buffer_bytes = 64 * 1024;
        c.idle_timeout = Duration::from_secs(30);
    });
    let mut s = srv.connect();
    // Never read: the socket buffers fill, then the stream buffer, then the writer sees Closed.
    s.write_all(b"GET /stream?n=100000000&ms=0 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    match srv.events.recv_timeout(HANG).expect("the producer is stopped") {
        StreamEvent::Closed { .. } => {}
        other => panic!("{other:?}"),
    }
    srv.assert_healthy();
}

fn shutdown_drains_a_stream(io: IoBackend) {
    let mut srv = TestServer::start(io, |_| {});
    let mut s = srv.connect();
    s.write_all(b"GET /stream?n=20&ms=40 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut idle = srv.connect(); // an idle keep-alive connection: closed at once by shutdown
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut r = BufReader::new(idle.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    let reader = std::thread::spawn(move || read_response(&mut BufReader::new(s)).expect("the whole stream"));
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    srv.stop(Duration::from_secs(30)).expect("run returns Ok");
    let resp = reader.join().unwrap();
    let expected: String = (0..20).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(String::from_utf8(resp.body).unwrap(), expected, "the stream finished during the drain");
    assert_eq!(srv.events.recv_timeout(HANG).unwrap(), StreamEvent::Finished { sent: 20 });
    assert!(start.elapsed() < HANG);
    assert!(read_until_closed(&mut idle).is_empty(), "the idle connection was closed");
    assert!(std::net::TcpStream::connect(srv.addr).is_err(), "no longer accepting");
}

fn shutdown_drain_timeout_cuts_a_stream(io: IoBackend) {
    let mut srv = TestServer::start(io, |_| {});
    let mut s = srv.connect();
    s.write_all(b"GET /stream?n=100000&ms=5 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_head_and_chunks(&mut s, 2);
    let start = Instant::now();
    srv.stop(Duration::from_millis(300)).expect("run returns Ok");
    assert!(start.elapsed() >= Duration::from_millis(300) && start.elapsed() < HANG);
    match srv.events.recv_timeout(HANG).expect("the producer is stopped") {
        StreamEvent::Closed { sent } => assert!(sent < 100_000),
        other => panic!("{other:?}"),
    }
    read_until_closed(&mut s);
}

both_backends!(
    thousand_idle_connections,
    max_connections_answers_503,
    client_vanishes_mid_stream,
    slow_reader_overflows_the_stream_buffer,
    shutdown_drains_a_stream,
    shutdown_drain_timeout_cuts_a_stream
);
