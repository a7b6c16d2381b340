//! The decompression half of the apply pipeline: a thread reads the blob, hashes it and
//! decompresses it into fixed-size chunks, which go over bounded channels both to the thread
//! writing files and to a thread hashing the uncompressed stream (the diffID), so inflate,
//! hashing and file creation overlap. Chunk buffers are recycled, keeping memory bounded and
//! allocation off the hot path.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::digest::{Hasher, HashingReader};
use crate::{Compression, Digest, Error, Result};

const CHUNK: usize = 256 << 10;

/// A piece of the uncompressed stream, shared by the writer and the hasher.
type Chunk = Arc<Vec<u8>>;
const CHUNKS_IN_FLIGHT: usize = 8;

/// Digests and sizes of both sides of the decompression.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub compressed: (Digest, u64),
    pub uncompressed: (Digest, u64),
}

/// The reading end: the uncompressed stream, as `Read`.
pub(crate) struct DecodedStream {
    chunks: Receiver<io::Result<Arc<Vec<u8>>>>,
    spare: SyncSender<Vec<u8>>,
    current: Arc<Vec<u8>>,
    pos: usize,
    decoder: JoinHandle<Result<Decoded>>,
}

/// Remembers whether the error came from the blob source rather than the decoder.
struct SourceReader {
    inner: Box<dyn Read + Send>,
    failed: Arc<AtomicBool>,
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))
    }
}

/// Starts decoding `source` on its own thread.
pub(crate) fn decode(
    source: Box<dyn Read + Send>,
    compression: Option<Compression>,
) -> DecodedStream {
    let (chunk_tx, chunks) = sync_channel(CHUNKS_IN_FLIGHT);
    let (spare, spare_rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT + 2);
    let decoder = std::thread::Builder::new()
        .name("layer-decode".into())
        .spawn(move || {
            let failed = Arc::new(AtomicBool::new(false));
            let source = SourceReader {
                inner: source,
                failed: Arc::clone(&failed),
            };
            let result = decode_all(source, compression, &chunk_tx, &spare_rx);
            if let Err(e) = &result {
                let msg = match e {
                    DecodeError::Io(e) => e.to_string(),
                    DecodeError::Layer(e) => e.to_string(),
                };
                let _ = chunk_tx.send(Err(io::Error::other(msg)));
            }
            result.map_err(|e| match e {
                DecodeError::Io(e) if failed.load(Ordering::Relaxed) => {
                    Error::io("read blob", "", e)
                }
                DecodeError::Io(e) => {
                    Error::InvalidLayer(format!("corrupt or truncated stream: {e}"))
                }
                DecodeError::Layer(e) => e,
            })
        })
        .expect("spawn decoder thread");
    DecodedStream {
        chunks,
        spare,
        current: Arc::new(Vec::new()),
        pos: 0,
        decoder,
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
    source: SourceReader,
    compression: Option<Compression>,
    chunks: &SyncSender<io::Result<Arc<Vec<u8>>>>,
    spare: &Receiver<Vec<u8>>,
) -> std::result::Result<Decoded, DecodeError> {
    let mut hashed = HashingReader::new(source);
    let mut input = BufReader::with_capacity(CHUNK, &mut hashed);
    let compression = match compression {
        Some(c) => c,
        None => Compression::sniff(input.fill_buf()?),
    };
    let (to_hasher, hasher) = spawn_hasher();
    {
        let mut decoder = compression
            .decoder(&mut input)
            .map_err(DecodeError::Layer)?;
        loop {
            let mut buf = spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            buf.resize(CHUNK, 0);
            let mut filled = 0;
            while filled < CHUNK {
                match decoder.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            let chunk = Arc::new(buf);
            let _ = to_hasher.send(Arc::clone(&chunk));
            if chunks.send(Ok(chunk)).is_err() {
                // The writer gave up; it reports its own error.
                return Err(io::Error::other("layer writer stopped").into());
            }
        }
    }
    // Anything after the compressed stream still counts towards the blob's digest.
    io::copy(&mut input, &mut io::sink())?;
    drop(input);
    drop(to_hasher);
    let uncompressed = hasher.join().expect("hasher thread does not panic");
    Ok(Decoded {
        compressed: hashed.finish(),
        uncompressed,
    })
}

/// A thread hashing the uncompressed chunks it is sent, until the sender is dropped.
fn spawn_hasher() -> (SyncSender<Chunk>, JoinHandle<(Digest, u64)>) {
    let (tx, rx) = sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let handle = std::thread::Builder::new()
        .name("layer-hash".into())
        .spawn(move || {
            let mut h = Hasher::default();
            for chunk in rx {
                h.update(&chunk);
            }
            h.finish()
        })
        .expect("spawn hasher thread");
    (tx, handle)
}

impl Read for DecodedStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                let n = out.len().min(self.current.len() - self.pos);
                out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let used = std::mem::take(&mut self.current);
            // Recycled when the hasher is done with it too.
            if let Ok(buf) = Arc::try_unwrap(used)
                && buf.capacity() > 0
            {
                let _ = self.spare.try_send(buf);
            }
            self.pos = 0;
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
    }
}

impl DecodedStream {
    /// Reads the rest of the stream (the tar's padding and anything after it, which the
    /// diffID covers) and returns the decoder's digests.
    pub(crate) fn finish(self) -> Result<Decoded> {
        let DecodedStream {
            chunks, decoder, ..
        } = self;
        while let Ok(Ok(_)) = chunks.recv() {}
        drop(chunks);
        decoder
            .join()
            .map_err(|_| Error::InvalidLayer("decoder thread panicked".into()))?
    }

    /// Stops early (the writer failed): returns the decoder's own error if it had one, which
    /// explains the writer's failure better than a short read.
    pub(crate) fn abort(self) -> Option<Error> {
        let DecodedStream {
            chunks, decoder, ..
        } = self;
        drop(chunks);
        decoder
            .join()
            .ok()
            .and_then(|r| r.err())
            .filter(|e| !matches!(e, Error::InvalidLayer(m) if m.contains("layer writer stopped")))
    }
}
