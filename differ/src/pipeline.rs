//! The decompression half of the apply pipeline. A thread reads the blob in fixed-size chunks
//! and decompresses it into more chunks; every chunk, compressed and uncompressed, also goes to
//! a second thread that computes both digests (the blob's and the diffID), and the
//! uncompressed ones go to the caller, which writes files. Reading, inflate, hashing and file
//! creation overlap, and the thread on the critical path only reads and inflates. Chunk
//! buffers return to a pool when their last holder drops them, keeping memory bounded and
//! allocation off the hot path.

use std::io::{self, BufRead, Read};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::digest::Hasher;
use crate::{Compression, Digest, Error, Result};

const CHUNK: usize = 256 << 10;
const CHUNKS_IN_FLIGHT: usize = 8;

/// A chunk buffer that goes back to its pool when its last holder drops it.
struct Pooled {
    /// Always `CHUNK` bytes long, so reuse never re-initializes it.
    buf: Vec<u8>,
    len: usize,
    home: SyncSender<Vec<u8>>,
}

impl Deref for Pooled {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A full pool means the buffer is surplus: let it go.
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

/// A piece of a stream, shared by the threads that need it.
type Chunk = Arc<Pooled>;

/// Buffers for one kind of chunk.
struct Pool {
    home: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
}

impl Pool {
    fn new() -> Self {
        let (home, spare) = sync_channel(CHUNKS_IN_FLIGHT * 2 + 2);
        Pool { home, spare }
    }

    /// Fills a buffer with `fill` (which returns how much it wrote) and shares it.
    fn fill(&self, fill: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<Chunk> {
        let mut buf = self.spare.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let len = fill(&mut buf)?;
        Ok(Arc::new(Pooled {
            buf,
            len,
            home: self.home.clone(),
        }))
    }
}

/// What the hashing thread is sent.
enum ToHash {
    Blob(Chunk),
    Layer(Chunk),
}

/// A layer blob to read.
pub struct LayerSource {
    /// The blob's bytes.
    pub reader: Box<dyn Read + Send>,
    /// Set when the reader verifies the blob itself: reading it to the end succeeds only if
    /// its bytes have this digest (a content store write checked as it arrives). The blob
    /// is then not hashed again; the uncompressed stream always is.
    pub verified: Option<Digest>,
}

/// Any reader, hashed while applied.
impl<R: Read + Send + 'static> From<R> for LayerSource {
    fn from(reader: R) -> Self {
        LayerSource {
            reader: Box::new(reader),
            verified: None,
        }
    }
}

/// A digest and the number of bytes it covers.
type Hashed = (Digest, u64);

/// Digests and sizes of both sides of the decompression.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub compressed: Hashed,
    pub uncompressed: Hashed,
}

/// Where an [`InPlace`] reader gets its chunks.
trait NextChunk {
    /// The next chunk; `None` (or an empty chunk) at the end.
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>>;
}

/// `BufRead` over a sequence of chunks, handed out in place.
struct InPlace<S> {
    source: S,
    current: Option<Chunk>,
    pos: usize,
}

impl<S> InPlace<S> {
    fn new(source: S) -> Self {
        InPlace {
            source,
            current: None,
            pos: 0,
        }
    }
}

impl<S: NextChunk> BufRead for InPlace<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.current.as_ref().is_none_or(|c| self.pos == c.len()) {
            // Let go of the used chunk before waiting, so its buffer can be reused.
            self.current = None;
            self.pos = 0;
            self.current = self.source.next_chunk()?;
        }
        Ok(self.current.as_deref().map_or(&[], |c| &c[self.pos..]))
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

impl<S: NextChunk> Read for InPlace<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = out.len().min(available.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The reading end: the uncompressed stream, as `BufRead` (read in place) through
/// [`DecodedStream::reader`].
pub(crate) struct DecodedStream {
    chunks: InPlace<Receiver<io::Result<Chunk>>>,
    decoder: JoinHandle<Result<Decoded>>,
}

impl NextChunk for Receiver<io::Result<Chunk>> {
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        match self.recv() {
            Ok(Ok(chunk)) => Ok(Some(chunk)),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }
}

/// The blob, read in pooled chunks that also go to the hasher.
struct BlobChunks {
    source: Box<dyn Read + Send>,
    /// Set when reading the source failed (as opposed to decoding what it gave).
    failed: Arc<AtomicBool>,
    pool: Pool,
    /// Where chunks go to be hashed; `None` when the source verifies the blob itself.
    hasher: Option<SyncSender<ToHash>>,
    /// Bytes read.
    read: u64,
}

impl NextChunk for BlobChunks {
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        // Whole chunks, also from a stream that delivers a few bytes at a time: the
        // compression is sniffed from the first one.
        let source = &mut self.source;
        let chunk = self
            .pool
            .fill(|buf| fill_from(source, buf))
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))?;
        self.read += chunk.len() as u64;
        if let Some(hasher) = &self.hasher
            && !chunk.is_empty()
        {
            let _ = hasher.send(ToHash::Blob(Arc::clone(&chunk)));
        }
        Ok(Some(chunk))
    }
}

/// Reads until `buf` is full or the reader ends; how much it read.
fn fill_from(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Starts decoding `source` on its own thread (an error if the thread cannot be started).
pub(crate) fn decode(
    source: LayerSource,
    compression: Option<Compression>,
) -> Result<DecodedStream> {
    let (chunk_tx, chunks) = sync_channel(CHUNKS_IN_FLIGHT);
    let decoder = std::thread::Builder::new()
        .name("layer-decode".into())
        .spawn(move || {
            let failed = Arc::new(AtomicBool::new(false));
            let result = decode_all(source, Arc::clone(&failed), compression, &chunk_tx);
            if let Err(e) = &result {
                let msg = match e {
                    DecodeError::Io(e) => e.to_string(),
                    DecodeError::Layer(e) => e.to_string(),
                };
                let _ = chunk_tx.send(Err(io::Error::other(msg)));
            }
            result.map_err(|e| match e {
                DecodeError::Io(e) if failed.load(Ordering::Relaxed) => source_error(e),
                DecodeError::Io(e) => {
                    Error::InvalidLayer(format!("corrupt or truncated stream: {e}"))
                }
                DecodeError::Layer(e) => e,
            })
        })
        .map_err(|e| Error::io("start thread", "layer-decode", e))?;
    Ok(DecodedStream {
        chunks: InPlace::new(chunks),
        decoder,
    })
}

/// Why reading the blob failed: the source's own classified error when it passed one
/// (a content store that went away stays Unavailable), else an I/O error.
fn source_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            _ => unreachable!("checked to hold a differ error"),
        }
    } else {
        Error::io("read blob", "", e)
    }
}

enum DecodeError {
    Io(io::Error),
    Layer(Error),
}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        DecodeError::Io(e)
    }
}

fn decode_all(
    source: LayerSource,
    failed: Arc<AtomicBool>,
    compression: Option<Compression>,
    chunks: &SyncSender<io::Result<Chunk>>,
) -> std::result::Result<Decoded, DecodeError> {
    let (to_hasher, hasher) = spawn_hasher()?;
    let mut input = InPlace::new(BlobChunks {
        source: source.reader,
        failed,
        pool: Pool::new(),
        hasher: source.verified.is_none().then(|| to_hasher.clone()),
        read: 0,
    });
    let decoded = decode_into(&mut input, compression, &to_hasher, chunks);
    let read = input.source.read;
    // Every sender gone, the hasher ends: joined on failure too, so no thread outlives the
    // apply.
    drop(input);
    drop(to_hasher);
    let (hashed, uncompressed) = hasher.join().expect("hasher thread does not panic");
    let compressed = match source.verified {
        Some(digest) => (digest, read),
        None => hashed,
    };
    decoded.map(|()| Decoded {
        compressed,
        uncompressed,
    })
}

/// Decompresses `input` into chunks for the writer and the hasher; the rest of the blob
/// after the compressed stream is read too (it counts towards the blob's digest).
fn decode_into(
    input: &mut InPlace<BlobChunks>,
    compression: Option<Compression>,
    to_hasher: &SyncSender<ToHash>,
    chunks: &SyncSender<io::Result<Chunk>>,
) -> std::result::Result<(), DecodeError> {
    let compression = match compression {
        Some(c) => c,
        None => Compression::sniff(input.fill_buf()?),
    };
    let pool = Pool::new();
    {
        let mut decoder = compression
            .decoder(&mut *input)
            .map_err(DecodeError::Layer)?;
        loop {
            let chunk = pool.fill(|buf| fill_from(&mut decoder, buf))?;
            if chunk.is_empty() {
                break;
            }
            let _ = to_hasher.send(ToHash::Layer(Arc::clone(&chunk)));
            if chunks.send(Ok(chunk)).is_err() {
                // The writer gave up; it reports its own error.
                return Err(io::Error::other("layer writer stopped").into());
            }
        }
    }
    io::copy(input, &mut io::sink())?;
    Ok(())
}

/// The hashing thread: its result is (blob, uncompressed tar).
type HashThread = JoinHandle<(Hashed, Hashed)>;

/// A thread hashing the blob and the uncompressed stream from the chunks it is sent, until
/// every sender is dropped.
fn spawn_hasher() -> io::Result<(SyncSender<ToHash>, HashThread)> {
    let (tx, rx) = sync_channel::<ToHash>(CHUNKS_IN_FLIGHT * 2);
    let handle = std::thread::Builder::new()
        .name("layer-hash".into())
        .spawn(move || {
            let (mut blob, mut layer) = (Hasher::default(), Hasher::default());
            for piece in rx {
                match piece {
                    ToHash::Blob(chunk) => blob.update(&chunk),
                    ToHash::Layer(chunk) => layer.update(&chunk),
                }
            }
            (blob.finish(), layer.finish())
        })?;
    Ok((tx, handle))
}

impl DecodedStream {
    /// The uncompressed stream.
    pub(crate) fn reader(&mut self) -> &mut impl BufRead {
        &mut self.chunks
    }

    /// Reads the rest of the stream (the tar's padding and anything after it, which the
    /// diffID covers) and returns the decoder's digests.
    pub(crate) fn finish(self) -> Result<Decoded> {
        let DecodedStream { chunks, decoder } = self;
        while let Ok(Ok(_)) = chunks.source.recv() {}
        drop(chunks);
        decoder
            .join()
            .map_err(|_| Error::InvalidLayer("decoder thread panicked".into()))?
    }

    /// Stops early (the writer failed): returns the decoder's own error if it had one, which
    /// explains the writer's failure better than a short read.
    pub(crate) fn abort(self) -> Option<Error> {
        let DecodedStream { chunks, decoder } = self;
        drop(chunks);
        decoder
            .join()
            .ok()
            .and_then(|r| r.err())
            .filter(|e| !matches!(e, Error::InvalidLayer(m) if m.contains("layer writer stopped")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_source_keeps_its_error_class() {
        struct Gone;
        impl Read for Gone {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other(Error::Unavailable("content store".into())))
            }
        }
        let stream = decode(Gone.into(), Some(Compression::None)).unwrap();
        assert!(matches!(stream.abort(), Some(Error::Unavailable(_))));
        assert!(matches!(
            source_error(io::Error::other("disk")),
            Error::Io(_)
        ));
    }

    fn decoded(source: LayerSource) -> (Decoded, Vec<u8>) {
        let mut stream = decode(source, None).unwrap();
        let mut out = Vec::new();
        stream.reader().read_to_end(&mut out).unwrap();
        (stream.finish().unwrap(), out)
    }

    #[test]
    fn a_verified_source_is_not_hashed_again() {
        let tar = vec![7u8; 3 * CHUNK + 5];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = gz.finish().unwrap();
        let (hashed, out) = decoded(std::io::Cursor::new(blob.clone()).into());
        assert_eq!(out, tar);
        // What the source vouches for is taken as the blob's digest (a made-up one here,
        // to show it is not computed), with the bytes read; the diffID is still computed.
        let vouched = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let (trusted, out) = decoded(LayerSource {
            reader: Box::new(std::io::Cursor::new(blob.clone())),
            verified: Some(vouched.clone()),
        });
        assert_eq!(out, tar);
        assert_eq!(trusted.compressed, (vouched, blob.len() as u64));
        assert_ne!(hashed.compressed.0, trusted.compressed.0);
        assert_eq!(hashed.compressed.1, blob.len() as u64);
        assert_eq!(trusted.uncompressed, hashed.uncompressed);
    }
}
