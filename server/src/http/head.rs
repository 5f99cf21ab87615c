//! The request line and headers: `httparse` finds them, this module checks what HTTP/1.1 asks
//! of them (framing, Host, Connection) and turns a bad one into the status to answer.

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// A head that cannot be served, with the status that says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadError {
    pub status: u16,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> HeadError {
    HeadError { status: 400, reason }
}

/// Headers per request; more is 431.
const MAX_HEADERS: usize = 100;

/// Parses a head at the start of `buf`: `Ok(None)` while incomplete, else the head and its length.
pub(crate) fn parse_head(buf: &[u8], max_header_bytes: usize) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_header_bytes {
                return Err(HeadError { status: 431, reason: "request header fields too large" });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError { status: 431, reason: "too many header fields" });
        }
        Err(httparse::Error::Version) => {
            return Err(HeadError { status: 505, reason: "HTTP version not supported" });
        }
        Err(_) => return Err(bad("malformed request line or header")),
    };
    if len > max_header_bytes {
        return Err(HeadError { status: 431, reason: "request header fields too large" });
    }
    let method = req.method.ok_or(bad("no method"))?.to_string();
    let target = req.path.ok_or(bad("no request target"))?;
    let version_minor = req.version.ok_or(bad("no version"))?;
    let (path, query) = split_target(target, &method)?;

    let mut headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    let mut host = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                let v = parse_content_length(h.value)?;
                if content_length.is_some_and(|prev| prev != v) {
                    return Err(bad("conflicting Content-Length headers"));
                }
                content_length = Some(v);
            }
            "transfer-encoding" => {
                transfer_encoding = true;
                // Only `chunked`, alone and once: other codings are not implemented.
                if chunked || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError { status: 501, reason: "only the chunked transfer coding is implemented" });
                }
                chunked = true;
            }
            "connection" => {
                for tok in h.value.split(|&b| b == b',') {
                    let tok = trim(tok);
                    conn_close |= tok.eq_ignore_ascii_case(b"close");
                    conn_keep_alive |= tok.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            "expect" => {
                if !trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                    return Err(HeadError { status: 417, reason: "only Expect: 100-continue is understood" });
                }
                expect_continue = true;
            }
            "host" => {
                if host {
                    return Err(bad("more than one Host header"));
                }
                host = true;
            }
            _ => {}
        }
        headers.push((name, h.value.to_vec()));
    }
    if transfer_encoding && content_length.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if transfer_encoding && version_minor == 0 {
        return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if version_minor >= 1 && !host {
        return Err(bad("HTTP/1.1 request without Host"));
    }
    let framing = match (chunked, content_length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0) | None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = if version_minor >= 1 { !conn_close } else { conn_keep_alive && !conn_close };
    Ok(Some((RequestHead { method, path, query, headers, version_minor, framing, keep_alive, expect_continue }, len)))
}

fn split_target(target: &str, method: &str) -> Result<(String, Option<String>), HeadError> {
    if target == "*" && method == "OPTIONS" {
        return Ok(("*".into(), None));
    }
    // Origin form; an absolute form (`http://host/path`) is reduced to its path.
    let origin = if let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        }
    } else {
        target
    };
    if !origin.starts_with('/') {
        return Err(bad("request target is not a path"));
    }
    Ok(match origin.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (origin.to_string(), None),
    })
}

fn parse_content_length(v: &[u8]) -> Result<u64, HeadError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad("Content-Length is not a number"));
    }
    Ok(v.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_head(s.as_bytes(), 16 * 1024)
    }

    #[test]
    fn framing_and_keep_alive() {
        let (h, len) = parse("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").unwrap().unwrap();
        assert_eq!(len, 52);
        assert_eq!((h.path.as_str(), h.query.as_deref()), ("/a", Some("b=1")));
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn bad_heads_get_their_status() {
        let status = |s: &str| parse(s).unwrap_err().status;
        assert_eq!(status("GARBAGE\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(status("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
        assert_eq!(status("GET nopath HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(status(&big), 431);
        assert_eq!(status(&big[..18_000]), 431, "a partial head past the bound");
    }
}
