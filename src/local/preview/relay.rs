//! HTTP/1.1 framing for the preview proxy: request and response heads, how long a body is
//! (RFC 9112 §6), and relaying bodies between two sockets.
//!
//! A body of known length, or one that lasts until its sender closes, is moved from socket to
//! socket with `splice(2)` through a pipe: its bytes never enter this process, so the proxy
//! costs little more than the kernel's own forwarding. A chunked body is parsed as it passes
//! (to know where it ends) and copied, chunk by chunk, as it arrives.

use std::io;
use std::os::fd::AsFd;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use bytes::{Buf, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::sys::{self, Pipe};

/// Longest request or response head (and longest trailer section).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Room made for each read into a buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Bodies at least this long are spliced; shorter ones are copied.
const SPLICE_MIN: u64 = 64 * 1024;

/// How the end of a body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

impl Framing {
    /// Whether a body follows the head.
    pub(crate) fn has_body(self) -> bool {
        !matches!(self, Framing::Empty | Framing::Length(0))
    }
}

/// Why a head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The peer closed the connection before sending anything.
    Closed,
    /// The peer closed the connection or failed in the middle of a head.
    Io(io::Error),
    /// The head is longer than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] fields.
    TooLarge,
    /// Not a valid HTTP/1.x head (the reason, for an error page).
    Malformed(&'static str),
}

/// A request head, read in full.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// The request (its body is not part of it).
    pub(crate) req: Request,
    /// How its body ends.
    pub(crate) framing: Framing,
    /// Whether the client keeps the connection for another request.
    pub(crate) keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending its body.
    pub(crate) expect_continue: bool,
}

/// A response head, read in full.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    /// Its status.
    pub(crate) status: StatusCode,
    /// Its reason phrase when it is printable, else the status's canonical one.
    pub(crate) reason: String,
    /// Its header fields.
    pub(crate) headers: HeaderMap,
    /// How its body ends.
    pub(crate) framing: Framing,
    /// Whether the app keeps the connection for another request.
    pub(crate) keep_alive: bool,
}

/// Reads more bytes into `buf` (`Ok(0)`: the peer closed its side).
pub(crate) async fn read_some(s: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    loop {
        s.readable().await?;
        match s.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Writes all of `data`.
pub(crate) async fn write_all(s: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        s.writable().await?;
        match s.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a `Connection` field of `headers` lists `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a connection stays open after this message (HTTP/1.1 unless `close`, HTTP/1.0
/// only with `keep-alive`).
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_10 {
        connection_has(headers, "keep-alive")
    } else {
        !connection_has(headers, "close")
    }
}

/// The `Content-Length` of a message: `Ok(None)` without one; `Err` for a malformed one or
/// several that disagree.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut len = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().map_err(|_| ())?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: u64 = part.parse().map_err(|_| ())?;
            if len.is_some_and(|l| l != n) {
                return Err(());
            }
            len = Some(n);
        }
    }
    Ok(len)
}

/// Whether the last transfer coding of a message is `chunked` (`None`: no
/// `Transfer-Encoding`).
fn chunked_last(headers: &HeaderMap) -> Option<bool> {
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect();
    if codings.is_empty() {
        return None;
    }
    let last = codings
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|c| !c.is_empty());
    Some(last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")))
}

fn to_headers(raw: &[httparse::Header<'_>]) -> Result<HeaderMap, &'static str> {
    let mut headers = HeaderMap::with_capacity(raw.len());
    for h in raw {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "bad header name")?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| "bad header value")?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn version_of(v: Option<u8>) -> Version {
    if v == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// Reads a head from `s` into `buf` until `parse` completes it; `on_bytes` is told whenever
/// bytes arrive. The head's bytes are removed from `buf`; what follows stays.
async fn read_head<T>(
    s: &TcpStream,
    buf: &mut BytesMut,
    mut on_bytes: impl FnMut(),
    parse: impl Fn(&[u8]) -> Result<Option<(usize, T)>, HeadError>,
) -> Result<T, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some((len, head)) = parse(buf)? {
                buf.advance(len);
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
        }
        let empty = buf.is_empty();
        match read_some(s, buf).await {
            Ok(0) if empty => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a head",
                )))
            }
            Ok(_) => on_bytes(),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

fn parse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        _ => HeadError::Malformed("not a valid HTTP/1.1 head"),
    }
}

/// Reads a client's request head (leading empty lines are skipped, as RFC 9112 allows).
pub(crate) async fn read_request(
    s: &TcpStream,
    buf: &mut BytesMut,
    on_bytes: impl FnMut(),
) -> Result<RequestHead, HeadError> {
    read_head(s, buf, on_bytes, |bytes| {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut raw);
        let len = match req.parse(bytes).map_err(parse_error)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(None),
        };
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| HeadError::Malformed("bad method"))?;
        let version = version_of(req.version);
        let headers = to_headers(req.headers).map_err(HeadError::Malformed)?;
        let framing = match (chunked_last(&headers), content_length(&headers)) {
            (Some(_), Ok(Some(_))) | (Some(_), Err(())) => {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding and Content-Length together",
                ))
            }
            (Some(true), Ok(None)) if version == Version::HTTP_11 => Framing::Chunked,
            (Some(_), _) => return Err(HeadError::Malformed("unsupported Transfer-Encoding")),
            (None, Ok(Some(n))) => Framing::Length(n),
            (None, Ok(None)) => Framing::Empty,
            (None, Err(())) => return Err(HeadError::Malformed("bad Content-Length")),
        };
        let keep_alive = keeps_alive(version, &headers);
        let expect_continue = version == Version::HTTP_11
            && headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut r = Request::new(Body::empty());
        *r.method_mut() = method;
        *r.uri_mut() = req
            .path
            .unwrap_or("")
            .parse()
            .map_err(|_| HeadError::Malformed("bad request target"))?;
        *r.version_mut() = version;
        *r.headers_mut() = headers;
        Ok(Some((
            len,
            RequestHead {
                req: r,
                framing,
                keep_alive,
                expect_continue,
            },
        )))
    })
    .await
}

/// Reads an app's response head to a request with `method`.
pub(crate) async fn read_response(
    s: &TcpStream,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<ResponseHead, HeadError> {
    read_head(
        s,
        buf,
        || {},
        |bytes| {
            let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut raw);
            let len = match resp.parse(bytes).map_err(parse_error)? {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return Ok(None),
            };
            let status = StatusCode::from_u16(resp.code.unwrap_or(0))
                .map_err(|_| HeadError::Malformed("bad status"))?;
            let version = version_of(resp.version);
            let reason = resp
                .reason
                .filter(|r| !r.is_empty() && r.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
                .map(str::to_owned)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
            let headers = to_headers(resp.headers).map_err(HeadError::Malformed)?;
            let framing = if *method == Method::HEAD
                || status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                Framing::Empty
            } else {
                match (chunked_last(&headers), content_length(&headers)) {
                    (Some(true), _) => Framing::Chunked,
                    (Some(false), _) => Framing::UntilClose,
                    (None, Ok(Some(n))) => Framing::Length(n),
                    (None, Ok(None)) => Framing::UntilClose,
                    (None, Err(())) => return Err(HeadError::Malformed("bad Content-Length")),
                }
            };
            let keep_alive = keeps_alive(version, &headers) && framing != Framing::UntilClose;
            Ok(Some((
                len,
                ResponseHead {
                    status,
                    reason,
                    headers,
                    framing,
                    keep_alive,
                },
            )))
        },
    )
    .await
}

/// The bytes of a head: `start` (the request or status line, without its CRLF) and the
/// header fields.
pub(crate) fn head_bytes(start: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + headers.len() * 48);
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Relays a body of `framing` from `from` to `to`; bytes of it already read are at the start
/// of `buf`, and bytes read past its end stay there. With `dechunk`, a chunked body is
/// written without its framing (for an HTTP/1.0 client, whose connection then closes).
pub(crate) async fn relay_body(
    from: &TcpStream,
    buf: &mut BytesMut,
    to: &TcpStream,
    framing: Framing,
    pipe: &mut Option<Pipe>,
    dechunk: bool,
) -> io::Result<()> {
    match framing {
        Framing::Empty => Ok(()),
        Framing::Length(mut left) => {
            let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            write_all(to, &buf[..k]).await?;
            buf.advance(k);
            left -= k as u64;
            if left >= SPLICE_MIN {
                return splice_between(from, to, Some(left), pipe).await;
            }
            while left > 0 {
                if read_some(from, buf).await? == 0 {
                    return Err(truncated());
                }
                let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                write_all(to, &buf[..k]).await?;
                buf.advance(k);
                left -= k as u64;
            }
            Ok(())
        }
        Framing::UntilClose => {
            write_all(to, buf).await?;
            buf.clear();
            splice_between(from, to, None, pipe).await
        }
        Framing::Chunked => relay_chunked(from, buf, to, dechunk).await,
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection closed in the middle of a body",
    )
}

fn bad_chunk(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad chunked body: {why}"),
    )
}

/// Where a chunked body's parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section (after the last chunk), this many bytes of it read.
    Trailer(usize),
    /// After the body.
    Done,
}

/// Advances the parser over `buf`: returns how many bytes it consumed and, with `payload`,
/// appends the chunks' data to it.
fn parse_chunked(
    state: &mut Chunk,
    buf: &[u8],
    mut payload: Option<&mut Vec<u8>>,
) -> io::Result<usize> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        match *state {
            Chunk::Done => return Ok(at),
            Chunk::Size => {
                let Some(i) = find_crlf(rest) else {
                    if rest.len() > MAX_CHUNK_LINE {
                        return Err(bad_chunk("chunk-size line too long"));
                    }
                    return Ok(at);
                };
                let line = &rest[..i];
                let digits = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii();
                if digits.is_empty() || digits.len() > 15 {
                    return Err(bad_chunk("bad chunk size"));
                }
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .ok_or_else(|| bad_chunk("bad chunk size"))?;
                at += i + 2;
                *state = if size == 0 {
                    Chunk::Trailer(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if rest.is_empty() {
                    return Ok(at);
                }
                let k = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if let Some(p) = payload.as_deref_mut() {
                    p.extend_from_slice(&rest[..k]);
                }
                at += k;
                *state = if left == k as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - k as u64)
                };
            }
            Chunk::DataEnd => {
                if rest.len() < 2 {
                    return Ok(at);
                }
                if &rest[..2] != b"\r\n" {
                    return Err(bad_chunk("no CRLF after a chunk"));
                }
                at += 2;
                *state = Chunk::Size;
            }
            Chunk::Trailer(seen) => {
                let Some(i) = find_crlf(rest) else {
                    if seen + rest.len() > MAX_HEAD {
                        return Err(bad_chunk("trailer section too long"));
                    }
                    return Ok(at);
                };
                at += i + 2;
                *state = if i == 0 {
                    Chunk::Done
                } else {
                    Chunk::Trailer(seen + i + 2)
                };
            }
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Relays a chunked body as it arrives (each chunk is passed on as soon as it is read).
async fn relay_chunked(
    from: &TcpStream,
    buf: &mut BytesMut,
    to: &TcpStream,
    dechunk: bool,
) -> io::Result<()> {
    let mut state = Chunk::Size;
    let mut payload = Vec::new();
    loop {
        let used = parse_chunked(&mut state, buf, dechunk.then_some(&mut payload))?;
        if dechunk {
            write_all(to, &payload).await?;
            payload.clear();
        } else {
            write_all(to, &buf[..used]).await?;
        }
        buf.advance(used);
        if state == Chunk::Done {
            return Ok(());
        }
        if read_some(from, buf).await? == 0 {
            return Err(truncated());
        }
    }
}

/// Moves bytes from `from` to `to` through a pipe with `splice(2)`: `left` bytes, or until
/// `from` closes. After an error the pipe may hold bytes: it is dropped.
async fn splice_between(
    from: &TcpStream,
    to: &TcpStream,
    left: Option<u64>,
    pipe: &mut Option<Pipe>,
) -> io::Result<()> {
    let p = match pipe.take() {
        Some(p) => p,
        None => Pipe::new()?,
    };
    splice_through(from, to, left, &p).await?;
    *pipe = Some(p);
    Ok(())
}

/// Both sides move at once: the pipe is filled while the client is slow and drained while
/// the app is, so neither socket waits for the other's turn.
///
/// Readiness: an `EAGAIN` while filling an empty pipe can only come from the socket, so that
/// attempt goes through tokio (which then waits for the socket's next readiness). With bytes
/// in the pipe, an `EAGAIN` may instead mean the pipe's slots are used up: that attempt is
/// made directly (tokio's readiness is left alone) and the loop waits for the client side,
/// then tries again once it has drained some of the pipe.
async fn splice_through(
    from: &TcpStream,
    to: &TcpStream,
    mut left: Option<u64>,
    pipe: &Pipe,
) -> io::Result<()> {
    let mut held = 0usize;
    let mut ended = false;
    loop {
        let want = match left {
            Some(l) => usize::try_from(l).unwrap_or(usize::MAX),
            None => usize::MAX,
        }
        .min(pipe.capacity.saturating_sub(held));
        let mut moved = false;
        let mut wait_for_app = false;
        if !ended && want > 0 {
            let fill = || sys::splice(from.as_fd(), pipe.write.as_fd(), want);
            let r = if held == 0 {
                from.try_io(Interest::READABLE, fill)
            } else {
                fill()
            };
            match r {
                Ok(0) => match left {
                    Some(_) => return Err(truncated()),
                    None => ended = true,
                },
                Ok(n) => {
                    held += n;
                    if let Some(l) = &mut left {
                        *l -= n as u64;
                        ended = *l == 0;
                    }
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_for_app = held == 0,
                Err(e) => return Err(e),
            }
        } else if left == Some(0) {
            ended = true;
        }
        if held > 0 {
            match to.try_io(Interest::WRITABLE, || {
                sys::splice(pipe.read.as_fd(), to.as_fd(), held)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    held -= n;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if ended && held == 0 {
            return Ok(());
        }
        if moved {
            continue;
        }
        tokio::select! {
            r = from.readable(), if wait_for_app => r?,
            r = to.writable(), if held > 0 => r?,
            // not reached: with nothing held, the pipe was empty and the app's side blocked
            else => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(input: &[u8], split: usize) -> io::Result<(Vec<u8>, usize, Chunk)> {
        let mut state = Chunk::Size;
        let mut payload = Vec::new();
        let mut used = 0;
        let mut pending: Vec<u8> = Vec::new();
        for piece in input.chunks(split) {
            pending.extend_from_slice(piece);
            let n = parse_chunked(&mut state, &pending, Some(&mut payload))?;
            pending.drain(..n);
            used += n;
        }
        Ok((payload, used, state))
    }

    #[test]
    fn chunked_bodies_are_parsed_in_any_pieces() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in [1, 2, 3, 7, 64, body.len()] {
            let (payload, used, state) = chunked(body, split).unwrap();
            assert_eq!(payload, b"helloabcdefghijklmnopqrstuvwxyz", "split {split}");
            assert_eq!(used, body.len() - 4, "split {split}");
            assert_eq!(state, Chunk::Done);
        }
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(chunked(bad, 3).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(chunked(&long, 1000).is_err());
    }

    #[test]
    fn lengths_and_codings() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), Ok(None));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12, 12"));
        assert_eq!(content_length(&h), Ok(Some(12)));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert_eq!(content_length(&h), Err(()));
        for bad in ["-1", "+5", "", "1 2", "0x10"] {
            let mut h = HeaderMap::new();
            h.append(header::CONTENT_LENGTH, HeaderValue::from_str(bad).unwrap());
            assert_eq!(content_length(&h), Err(()), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        assert_eq!(chunked_last(&h), None);
        h.append(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(chunked_last(&h), Some(false));
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("Chunked"),
        );
        assert_eq!(chunked_last(&h), Some(true));
    }
}
