//! Abuse on both backends, each bounded in time; the server answers /health after each.

mod http_util;
use http_util::{read_response, read_until_closed, status_of, TestServer, HANG};
use server::http::IoBackend;
use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// Sends `bytes` on a fresh connection and returns everything until the server closes.
fn exchange(srv: &TestServer, bytes: &[u8]) -> Vec<u8> {
    let mut s = srv.connect();
    s.write_all(bytes).unwrap();
    read_until_closed(&mut s)
}

fn garbage_request_lines(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let cases: &[(&[u8], u16)] = &[
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400), // a TLS ClientHello
        (b"\x00\x01\x02\x03\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad\x01Name: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400), // no Host
        (b"GET nopath HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: t\r\nExpect: magic\r\n\r\n", 417),
    ];
    for (bytes, status) in cases {
        let got = exchange(&srv, bytes);
        assert_eq!(
            status_of(&got),
            Some(*status),
            "{:?} -> {:?}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&got)
        );
        assert!(String::from_utf8_lossy(&got).contains("connection: close"));
    }
    // Garbage after a good request on the same connection: the good one is answered first.
    let got = exchange(&srv, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nNONSENSE\r\n\r\n");
    let mut r = BufReader::new(&got[..]);
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    assert_eq!(read_response(&mut r).unwrap().status, 400);
    srv.assert_healthy();
}

fn huge_header(io: IoBackend) {
    let srv = TestServer::start(io, |_| {});
    let mut s = srv.connect();
    let head = format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(200 * 1024));
    let mut w = s.try_clone().unwrap();
    // The server stops reading at 16 KiB: write from another thread, ignoring the reset.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
    });
    let got = read_until_closed(&mut s);
    assert_eq!(status_of(&got), Some(431), "{:?}", String::from_utf8_lossy(&got));
    writer.join().unwrap();
    // Many small headers past the count bound are 431 too.
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let got = exchange(&srv, format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes());
    assert_eq!(status_of(&got), Some(431));
    srv.assert_healthy();
}

fn declared_huge_body(io: IoBackend) {
    let srv = TestServer::start(io, |c| c.max_body_bytes = 1 << 20);
    let mut s = srv.connect();
    let start = Instant::now();
    // Not one byte of the body is sent: the 413 can only come from the headers.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n").unwrap();
    let got = read_until_closed(&mut s);
    let elapsed = start.elapsed();
    assert_eq!(status_of(&got), Some(413), "{:?}", String::from_utf8_lossy(&got));
    eprintln!("413 for a declared 1 GB body after {elapsed:?}");
    assert!(elapsed < HANG);
    // A chunked body that grows past the bound: 413 once it passes.
    let mut s = srv.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..64 {
            if w.write_all(chunk.as_bytes()).is_err() {
                break;
            }
        }
    });
    assert_eq!(status_of(&read_until_closed(&mut s)), Some(413));
    writer.join().unwrap();
    srv.assert_healthy();
}

fn lying_content_length(io: IoBackend) {
    let srv = TestServer::start(io, |c| c.header_timeout = Duration::from_secs(1));
    // Shorter body than declared, then the client half-closes: 400 (or a close), no hang.
    let mut s = srv.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten..").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = read_until_closed(&mut s);
    assert!(got.is_empty() || status_of(&got) == Some(400), "{:?}", String::from_utf8_lossy(&got));
    // Shorter body and the client waits: the read timeout answers 408.
    let got = exchange(&srv, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten..");
    assert_eq!(status_of(&got), Some(408));
    // Longer body than declared: the rest is read as the next request, which is garbage.
    let got = exchange(&srv, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello, and more\r\n\r\n");
    let mut r = BufReader::new(&got[..]);
    assert_eq!(read_response(&mut r).unwrap().body, b"hello");
    assert_eq!(read_response(&mut r).unwrap().status, 400);
    // Conflicting or malformed framing.
    for bad in [
        &b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ] {
        let got = exchange(&srv, bad);
        assert_eq!(status_of(&got), Some(400), "{:?}", String::from_utf8_lossy(bad));
    }
    srv.assert_healthy();
}

fn broken_chunked_bodies(io: IoBackend) {
    let srv = TestServer::start(io, |c| c.header_timeout = Duration::from_secs(1));
    let head = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nbroken-trailer\n\r\n",
        "-5\r\nhello\r\n",
        "fffffffffffffffffff\r\n",
        "5;\x01\nhello",
    ] {
        let got = exchange(&srv, format!("{head}{body}").as_bytes());
        assert_eq!(status_of(&got), Some(400), "{body:?} -> {:?}", String::from_utf8_lossy(&got));
    }
    // Truncated, the client waits: 408; truncated and half-closed: 400.
    assert_eq!(status_of(&exchange(&srv, format!("{head}5\r\nhel").as_bytes())), Some(408));
    let mut s = srv.connect();
    s.write_all(format!("{head}5\r\nhel").as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(status_of(&read_until_closed(&mut s)), Some(400));
    // Other codings are not implemented.
    let got = exchange(&srv, b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(status_of(&got), Some(501));
    srv.assert_healthy();
}

fn slowloris(io: IoBackend) {
    let timeout = Duration::from_millis(800);
    let srv = TestServer::start(io, |c| c.header_timeout = timeout);
    let mut s = srv.connect();
    let start = Instant::now();
    let mut w = s.try_clone().unwrap();
    let dribble = std::thread::spawn(move || {
        for b in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ".iter().chain(b"a".repeat(1000).iter()) {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Others are served while the slow client dribbles.
    srv.assert_healthy();
    let got = read_until_closed(&mut s);
    let elapsed = start.elapsed();
    assert_eq!(status_of(&got), Some(408), "{:?}", String::from_utf8_lossy(&got));
    assert!(elapsed >= timeout && elapsed < HANG, "{elapsed:?}");
    dribble.join().unwrap();
    srv.assert_healthy();
}

fn idle_keep_alive_timeout(io: IoBackend) {
    let srv = TestServer::start(io, |c| c.idle_timeout = Duration::from_millis(500));
    // A connection that never sends is closed, silently.
    let mut s = srv.connect();
    assert!(read_until_closed(&mut s).is_empty());
    // A keep-alive connection that goes idle after a request is closed after its answer.
    let mut s = srv.connect();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let got = read_until_closed(&mut s);
    assert_eq!(status_of(&got), Some(200));
    srv.assert_healthy();
}

both_backends!(
    garbage_request_lines,
    huge_header,
    declared_huge_body,
    lying_content_length,
    broken_chunked_bodies,
    slowloris,
    idle_keep_alive_timeout
);
