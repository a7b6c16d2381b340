//! Requests whose `:authority` the HTTP/2 library would refuse, passed on with one it takes.
//!
//! gRPC's C core (Python's `grpcio`, and the C++, Ruby and PHP clients built on it) and
//! grpc-java send the socket's path (or its %-encoding) as `:authority` on a `unix:` target.
//! containerd, in Go, ignores the value; the `h2` crate under tonic checks it as a URI
//! authority and resets the stream (PROTOCOL_ERROR) before any service sees the call. On a
//! unix socket the authority names nothing, so this connection wrapper rewrites an invalid
//! one to `localhost` on its way in.
//!
//! Header blocks are HPACK-compressed with a dynamic table shared by the whole connection, so
//! every block the client sends is decoded here (the `hpack` crate: RFC 7541 in full, with
//! Huffman coding) and sent on re-encoded as literals that never touch the server's table;
//! the server's table then stays empty and this decoder alone follows the client's. Every
//! other frame, and everything the server sends, passes through untouched, a DATA frame's
//! payload without being buffered.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload this sends: the default SETTINGS_MAX_FRAME_SIZE, which every
/// server accepts.
const MAX_PAYLOAD: usize = 16_384;

/// A header block whose CONTINUATION frames are still to come.
struct Pending {
    stream: [u8; 4],
    /// END_STREAM and PRIORITY of its HEADERS frame.
    flags: u8,
    /// The 5 priority bytes, when PRIORITY is set.
    priority: Vec<u8>,
    block: Vec<u8>,
}

/// The client-to-server direction's state.
struct Incoming {
    /// Bytes read, not yet understood (at most a frame).
    raw: Vec<u8>,
    /// Bytes to hand to the server, from `ready_from` on.
    ready: Vec<u8>,
    ready_from: usize,
    /// Preface bytes still to pass.
    preface_left: usize,
    /// Payload bytes of the current non-header frame still to pass.
    passing: usize,
    pending: Option<Pending>,
    decoder: hpack::Decoder<'static>,
    /// A header block failed to decode: from then on everything passes as it is (the
    /// server fails the connection on it just the same).
    raw_only: bool,
}

/// A unix-socket connection with the client's header blocks rewritten (see the module doc).
pub struct AuthorityFix {
    io: UnixStream,
    incoming: Incoming,
}

impl AuthorityFix {
    pub fn new(io: UnixStream) -> Self {
        AuthorityFix {
            io,
            incoming: Incoming {
                raw: Vec::new(),
                ready: Vec::new(),
                ready_from: 0,
                preface_left: PREFACE.len(),
                passing: 0,
                pending: None,
                decoder: hpack::Decoder::new(),
                raw_only: false,
            },
        }
    }
}

/// `n` as an HPACK integer with a `prefix`-bit prefix whose other bits are `first` (RFC 7541
/// §5.1).
fn put_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A string literal, not Huffman-coded (§5.2).
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// `headers` as literals without indexing, with a new name each (§6.2.2), an invalid
/// `:authority` replaced by `localhost`.
fn encode(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let value =
            if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                b"localhost".as_slice()
            } else {
                value.as_slice()
            };
        out.push(0);
        put_str(&mut out, name);
        put_str(&mut out, value);
    }
    out
}

/// A frame header.
fn frame_header(len: usize, kind: u8, flags: u8, stream: [u8; 4]) -> [u8; FRAME_HEADER] {
    let l = (len as u32).to_be_bytes();
    [
        l[1], l[2], l[3], kind, flags, stream[0], stream[1], stream[2], stream[3],
    ]
}

impl Incoming {
    /// Understands what `raw` holds as far as it can, moving the result to `ready`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.raw_only {
                self.ready.append(&mut self.raw);
                return Ok(());
            }
            if self.preface_left > 0 {
                let n = self.preface_left.min(self.raw.len());
                self.ready.extend(self.raw.drain(..n));
                self.preface_left -= n;
                if self.preface_left > 0 {
                    return Ok(());
                }
                continue;
            }
            if self.passing > 0 {
                let n = self.passing.min(self.raw.len());
                self.ready.extend(self.raw.drain(..n));
                self.passing -= n;
                if self.passing > 0 {
                    return Ok(());
                }
                continue;
            }
            if self.raw.len() < FRAME_HEADER {
                return Ok(());
            }
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            let (kind, flags) = (self.raw[3], self.raw[4]);
            let stream = [self.raw[5], self.raw[6], self.raw[7], self.raw[8]];
            if kind != HEADERS && kind != CONTINUATION {
                self.ready.extend(self.raw.drain(..FRAME_HEADER));
                self.passing = len;
                continue;
            }
            if self.raw.len() < FRAME_HEADER + len {
                return Ok(());
            }
            let frame: Vec<u8> = self.raw.drain(..FRAME_HEADER + len).collect();
            self.header_frame(frame, kind, flags, stream)?;
        }
    }

    /// A HEADERS or CONTINUATION frame, whole.
    fn header_frame(
        &mut self,
        frame: Vec<u8>,
        kind: u8,
        flags: u8,
        stream: [u8; 4],
    ) -> io::Result<()> {
        let payload = &frame[FRAME_HEADER..];
        if kind == CONTINUATION {
            let Some(pending) = self.pending.as_mut().filter(|p| p.stream == stream) else {
                // Not a continuation of anything: the server will say so.
                self.pass_raw(frame);
                return Ok(());
            };
            pending.block.extend_from_slice(payload);
            if flags & END_HEADERS != 0 {
                let pending = self.pending.take().expect("matched above");
                self.finish(pending);
            }
            return Ok(());
        }
        let mut body = payload;
        let mut pad = 0;
        if flags & PADDED != 0 {
            let Some((&p, rest)) = body.split_first() else {
                self.pass_raw(frame);
                return Ok(());
            };
            pad = p as usize;
            body = rest;
        }
        let mut priority = Vec::new();
        if flags & PRIORITY != 0 {
            if body.len() < 5 {
                self.pass_raw(frame);
                return Ok(());
            }
            priority = body[..5].to_vec();
            body = &body[5..];
        }
        if pad > body.len() {
            self.pass_raw(frame);
            return Ok(());
        }
        let pending = Pending {
            stream,
            flags: flags & (END_STREAM | PRIORITY),
            priority,
            block: body[..body.len() - pad].to_vec(),
        };
        if flags & END_HEADERS != 0 {
            self.finish(pending);
        } else {
            self.pending = Some(pending);
        }
        Ok(())
    }

    /// A whole header block: decoded, re-encoded, sent on in frames the server accepts.
    fn finish(&mut self, pending: Pending) {
        let headers = match self.decoder.decode(&pending.block) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = ?e, "undecodable header block passed on as it was");
                self.raw_only = true;
                let mut payload = pending.priority;
                payload.extend_from_slice(&pending.block);
                let flags = pending.flags | END_HEADERS;
                self.ready.extend_from_slice(&frame_header(
                    payload.len(),
                    HEADERS,
                    flags,
                    pending.stream,
                ));
                self.ready.extend_from_slice(&payload);
                return;
            }
        };
        let mut payload = pending.priority;
        payload.extend_from_slice(&encode(&headers));
        let mut chunks = payload.chunks(MAX_PAYLOAD).peekable();
        let mut kind = HEADERS;
        let mut flags = pending.flags;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let f = if last { flags | END_HEADERS } else { flags };
            self.ready
                .extend_from_slice(&frame_header(chunk.len(), kind, f, pending.stream));
            self.ready.extend_from_slice(chunk);
            kind = CONTINUATION;
            flags = 0;
        }
    }

    fn pass_raw(&mut self, frame: Vec<u8>) {
        self.ready.extend_from_slice(&frame);
    }
}

impl AsyncRead for AuthorityFix {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let inc = &mut this.incoming;
            if inc.ready_from < inc.ready.len() {
                let n = (inc.ready.len() - inc.ready_from).min(buf.remaining());
                buf.put_slice(&inc.ready[inc.ready_from..inc.ready_from + n]);
                inc.ready_from += n;
                if inc.ready_from == inc.ready.len() {
                    inc.ready.clear();
                    inc.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        // The client is done: whatever is left goes as it is.
                        let inc = &mut this.incoming;
                        inc.ready.append(&mut inc.raw);
                        if inc.ready.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    let inc = &mut this.incoming;
                    inc.raw.extend_from_slice(read.filled());
                    inc.process()?;
                }
            }
        }
    }
}

impl AsyncWrite for AuthorityFix {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for AuthorityFix {
    type ConnectInfo = <UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HEADERS frame of `block` on stream 1, END_HEADERS (and the flags given).
    fn headers(block: &[u8], flags: u8) -> Vec<u8> {
        let mut f = frame_header(block.len(), HEADERS, END_HEADERS | flags, [0, 0, 0, 1]).to_vec();
        f.extend_from_slice(block);
        f
    }

    fn run(input: &[u8]) -> Vec<u8> {
        let mut inc = Incoming {
            raw: input.to_vec(),
            ready: Vec::new(),
            ready_from: 0,
            preface_left: PREFACE.len(),
            passing: 0,
            pending: None,
            decoder: hpack::Decoder::new(),
            raw_only: false,
        };
        inc.process().unwrap();
        inc.ready
    }

    /// The headers of every HEADERS block in `out` (after the preface), decoded afresh.
    fn decoded(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut d = hpack::Decoder::new();
        let mut rest = &out[PREFACE.len()..];
        let mut blocks = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            if rest[3] == HEADERS {
                blocks.push(d.decode(&rest[FRAME_HEADER..FRAME_HEADER + len]).unwrap());
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        blocks
    }

    /// A client's request with the socket path as authority, then one that refers to the
    /// dynamic table entry the first added: both arrive whole, the authority rewritten, and
    /// a DATA frame in between passes unchanged.
    #[test]
    fn an_invalid_authority_is_rewritten_and_the_table_followed() {
        let mut enc = hpack::Encoder::new();
        let first: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/containerd.services.version.v1.Version/Version"),
            (b":authority", b"/run/strata/strata.sock"),
            (b"content-type", b"application/grpc"),
        ];
        let block1 = enc.encode(first.iter().copied());
        let block2 = enc.encode(first.iter().copied());
        let mut input = PREFACE.to_vec();
        input.extend(headers(&block1, 0));
        let data = [0u8, 0, 3, 0, 1, 0, 0, 0, 1, 7, 8, 9];
        input.extend_from_slice(&data);
        input.extend(headers(&block2, END_STREAM));
        let out = run(&input);
        let blocks = decoded(&out);
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            let authority = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
            assert_eq!(block.len(), 5);
        }
        assert!(out.windows(data.len()).any(|w| w == data));
    }

    /// A valid authority stays as it is.
    #[test]
    fn a_valid_authority_stays() {
        let mut enc = hpack::Encoder::new();
        let block = enc.encode(vec![(
            b":authority".as_slice(),
            b"localhost:1234".as_slice(),
        )]);
        let mut input = PREFACE.to_vec();
        input.extend(headers(&block, 0));
        let blocks = decoded(&run(&input));
        assert_eq!(blocks[0][0].1, b"localhost:1234");
    }
}
