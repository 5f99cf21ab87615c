//! Request bodies: a `Content-Length` count, or a chunked-encoding decoder that takes its input
//! in whatever pieces the socket delivers.

/// Why a chunked body cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// The decoded body passed `max_body_bytes` (413).
    TooLarge,
    /// Not valid chunked encoding (400).
    Malformed(&'static str),
}

/// Bytes of a chunk-size line (size and extensions) or of one trailer line.
const MAX_LINE_BYTES: usize = 4096;
/// Bytes of all trailer lines together.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug)]
enum State {
    /// Reading the hex size; `digits` seen so far.
    Size {
        value: u64,
        digits: u32,
    },
    /// After the size: extensions up to CR.
    Ext,
    /// Expecting the LF of the size line.
    SizeLf,
    Data {
        remaining: u64,
    },
    /// Expecting the CR, then the LF, that end a chunk's data.
    DataCr,
    DataLf,
    /// Trailer lines after the last chunk; `line` bytes in the current one.
    Trailer {
        line: usize,
        cr: bool,
    },
    Done,
}

#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// The size read on the current size line.
    pending_size: u64,
    line_bytes: usize,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder { state: State::Size { value: 0, digits: 0 }, pending_size: 0, line_bytes: 0, trailer_bytes: 0 }
    }

    /// Decodes from `input` into `body`. Returns the bytes of `input` consumed and whether the
    /// body is complete (the bytes after it belong to the next request).
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body_bytes: usize,
    ) -> Result<(usize, bool), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match &mut self.state {
                State::Done => return Ok((i, true)),
                State::Size { value, digits } => {
                    if let Some(d) = (b as char).to_digit(16) {
                        if *digits >= 15 {
                            return Err(ChunkError::Malformed("chunk size too long"));
                        }
                        *value = *value * 16 + u64::from(d);
                        *digits += 1;
                        self.line_bytes += 1;
                    } else if *digits == 0 {
                        return Err(ChunkError::Malformed("chunk size is not hex"));
                    } else {
                        let size = *value;
                        if body.len() as u64 + size > max_body_bytes as u64 {
                            return Err(ChunkError::TooLarge);
                        }
                        self.pending_size = size;
                        self.state = match b {
                            b'\r' => State::SizeLf,
                            b';' | b' ' | b'\t' => State::Ext,
                            _ => return Err(ChunkError::Malformed("bad byte after chunk size")),
                        };
                    }
                    i += 1;
                }
                State::Ext => {
                    self.line_bytes += 1;
                    if self.line_bytes > MAX_LINE_BYTES {
                        return Err(ChunkError::Malformed("chunk extension too long"));
                    }
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::Malformed("bare LF in chunk size line"));
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("chunk size line not ended by CRLF"));
                    }
                    i += 1;
                    self.line_bytes = 0;
                    let size = self.pending_size;
                    self.state =
                        if size == 0 { State::Trailer { line: 0, cr: false } } else { State::Data { remaining: size } };
                }
                State::Data { remaining } => {
                    let take = (*remaining).min((input.len() - i) as u64) as usize;
                    body.extend_from_slice(&input[i..i + take]);
                    i += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::Malformed("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("chunk data not ended by CRLF"));
                    }
                    self.state = State::Size { value: 0, digits: 0 };
                    i += 1;
                }
                State::Trailer { line, cr } => {
                    i += 1;
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(ChunkError::Malformed("trailers too long"));
                    }
                    if *cr {
                        if b != b'\n' {
                            return Err(ChunkError::Malformed("trailer line not ended by CRLF"));
                        }
                        if *line == 0 {
                            self.state = State::Done;
                            return Ok((i, true));
                        }
                        *line = 0;
                        *cr = false;
                    } else if b == b'\r' {
                        *cr = true;
                    } else if b == b'\n' {
                        return Err(ChunkError::Malformed("bare LF in trailers"));
                    } else {
                        *line += 1;
                    }
                }
            }
        }
        Ok((i, matches!(self.state, State::Done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let end = (at + piece).min(input.len());
            let (n, done) = d.feed(&input[at..end], &mut body, 1 << 20)?;
            at += n;
            if done {
                return Ok((body, at));
            }
        }
        Err(ChunkError::Malformed("incomplete"))
    }

    #[test]
    fn decodes_in_any_pieces() {
        let input = b"5;ext=1\r\nhello\r\na\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..input.len() {
            let (body, used) = decode_in_pieces(input, piece).unwrap();
            assert_eq!(body, b"hello0123456789");
            assert_eq!(&input[used..], b"NEXT");
        }
    }

    #[test]
    fn rejects_broken_encoding() {
        for bad in
            [&b"zz\r\n"[..], b"5\r\nhelloXX", b"5\nhello\r\n", b"5\r\nhello\r\n0\r\nX\n", b"ffffffffffffffff1\r\n"]
        {
            assert!(
                matches!(decode_in_pieces(bad, 3), Err(ChunkError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"100\r\n", &mut Vec::new(), 10), Err(ChunkError::TooLarge));
    }
}
