//! Response heads, whole responses and chunks as bytes on the wire.

use super::date::append_http_date;
use super::types::Response;

/// What the request asked of its response's framing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplyMeta {
    /// HTTP/1.0: no chunked encoding; `connection: keep-alive` spelled out when kept.
    pub http10: bool,
    /// The connection stays open after this response.
    pub keep_alive: bool,
    /// HEAD: headers only.
    pub head_only: bool,
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Headers the server writes itself; the application's copies are dropped.
fn reserved(name: &str) -> bool {
    ["content-length", "transfer-encoding", "connection", "date"].iter().any(|r| name.eq_ignore_ascii_case(r))
}

/// A header that would split the response (CR, LF or NUL) or has no name is dropped.
fn valid(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn bodiless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// The status line, the server's headers and the application's.
/// `body_len: None` means a streamed body (chunked on HTTP/1.1, until close on HTTP/1.0).
fn head(out: &mut Vec<u8>, status: u16, headers: &[(String, String)], body_len: Option<usize>, meta: ReplyMeta) {
    out.extend_from_slice(if meta.http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    push_num(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    append_http_date(out);
    out.extend_from_slice(b"\r\n");
    if !bodiless(status) {
        match body_len {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                push_num(out, n as u64);
                out.extend_from_slice(b"\r\n");
            }
            None if !meta.http10 => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {}
        }
    }
    if !meta.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if meta.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    for (name, value) in headers {
        if reserved(name) || !valid(name, value) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A whole response.
pub(crate) fn response(out: &mut Vec<u8>, resp: &Response, meta: ReplyMeta) {
    let body: &[u8] = if bodiless(resp.status) { &[] } else { &resp.body };
    out.reserve(128 + resp.headers.len() * 48 + body.len());
    head(out, resp.status, &resp.headers, Some(body.len()), meta);
    if !meta.head_only {
        out.extend_from_slice(body);
    }
}

/// The head of a streamed response. HTTP/1.0 has no chunks: the stream ends with the connection.
pub(crate) fn stream_head(out: &mut Vec<u8>, status: u16, headers: &[(String, String)], meta: ReplyMeta) {
    head(out, status, headers, None, meta);
}

/// One chunk (nothing for an empty `data`: an empty chunk would end the stream).
pub(crate) fn chunk(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A short plain-text answer from the server itself (errors found while reading a request).
pub(crate) fn error_response(out: &mut Vec<u8>, status: u16, message: &str, meta: ReplyMeta) {
    let resp = Response::text(status, format!("{} {}: {message}\n", status, reason(status)));
    response(out, &resp, meta);
}

fn push_num(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}
