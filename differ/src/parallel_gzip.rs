//! gzip compression on every core, as one ordinary gzip member.
//!
//! The input is cut into fixed blocks of [`BLOCK_SIZE`] bytes. Worker threads compress each
//! block into raw deflate data with a fresh compressor whose dictionary is the last 32 KiB of
//! the block before it (so matches reach across block edges, as in a single stream), ending
//! it with a sync flush (byte-aligned, not final) — or with the final block for the last one.
//! Concatenated in order behind a gzip header and followed by the combined CRC-32 and length,
//! the blocks form one valid deflate stream that any gzip reader (Go's, containerd's, GNU
//! gzip) reads. Block edges depend only on the input, so the output is the same whatever the
//! number of threads. The writing thread keeps a bounded queue of blocks in flight and
//! writes finished ones in order, so memory stays at a few blocks per worker.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Crc, FlushCompress, Status};

/// Bytes of input per independently compressed block.
pub const BLOCK_SIZE: usize = 1 << 20;
/// deflate's window: the dictionary carried from one block to the next.
const WINDOW: usize = 32 << 10;
/// The fixed gzip header: magic, deflate, no flags, no mtime, no extra flags, OS unknown
/// (as Go's gzip writer and flate2 write it).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Blocks in flight per worker.
const QUEUE_PER_WORKER: usize = 2;

/// A block to compress.
struct Job {
    input: Vec<u8>,
    dictionary: Vec<u8>,
    last: bool,
    reply: SyncSender<io::Result<Compressed>>,
}

/// A compressed block and the CRC of its input.
struct Compressed {
    deflate: Vec<u8>,
    crc: Crc,
}

/// A writer compressing to gzip on `threads` workers; call [`ParallelGzip::finish`].
pub struct ParallelGzip<W: Write> {
    out: W,
    block: Vec<u8>,
    dictionary: Vec<u8>,
    in_flight: VecDeque<Receiver<io::Result<Compressed>>>,
    max_in_flight: usize,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    crc: Crc,
}

impl<W: Write> ParallelGzip<W> {
    /// A compressor at `level` writing to `out` with `threads` workers (at least one).
    pub fn new(mut out: W, level: flate2::Compression, threads: usize) -> io::Result<Self> {
        out.write_all(&GZIP_HEADER)?;
        let threads = threads.max(1);
        let (jobs, queue) = sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let queue = Arc::clone(&queue);
            let worker = std::thread::Builder::new()
                .name(format!("layer-gzip-{n}"))
                .spawn(move || work(&queue, level))?;
            workers.push(worker);
        }
        Ok(ParallelGzip {
            out,
            block: Vec::with_capacity(BLOCK_SIZE),
            dictionary: Vec::new(),
            in_flight: VecDeque::new(),
            max_in_flight: threads * QUEUE_PER_WORKER,
            jobs: Some(jobs),
            workers,
            crc: Crc::new(),
        })
    }

    /// Hands the current block to the workers, first writing out the oldest one if the
    /// queue is full.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let input = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
        let dictionary = std::mem::replace(
            &mut self.dictionary,
            input[input.len().saturating_sub(WINDOW)..].to_vec(),
        );
        let (reply, result) = sync_channel(1);
        let job = Job {
            input,
            dictionary,
            last,
            reply,
        };
        let jobs = self.jobs.as_ref().expect("not finished");
        jobs.send(job).map_err(|_| worker_gone())?;
        self.in_flight.push_back(result);
        Ok(())
    }

    /// Waits for the oldest block in flight and writes it.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(result) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let block = result.recv().map_err(|_| worker_gone())??;
        self.crc.combine(&block.crc);
        self.out.write_all(&block.deflate)
    }

    /// Compresses what is left, writes the gzip trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.jobs = None;
        for worker in self.workers.drain(..) {
            worker.join().map_err(|_| worker_gone())?;
        }
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK_SIZE - self.block.len());
        self.block.extend_from_slice(&data[..n]);
        if self.block.len() == BLOCK_SIZE {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn worker_gone() -> io::Error {
    io::Error::other("gzip worker thread failed")
}

/// A worker: compresses jobs until the queue closes.
fn work(queue: &Mutex<Receiver<Job>>, level: flate2::Compression) {
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = compress_block(&job.input, &job.dictionary, job.last, level);
        // The writer may have gone away after an error; nothing left to do then.
        let _ = job.reply.send(result);
    }
}

/// One block as raw deflate data: primed with `dictionary`, ended with a sync flush, or with
/// the final block when `last`.
fn compress_block(
    input: &[u8],
    dictionary: &[u8],
    last: bool,
    level: flate2::Compression,
) -> io::Result<Compressed> {
    let mut c = Compress::new(level, false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut deflate = Vec::with_capacity(input.len() / 2 + 4096);
    loop {
        if deflate.capacity() - deflate.len() < 4096 {
            deflate.reserve(input.len() / 4 + 4096);
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut deflate, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        // A flush is complete once a call returns with output space to spare.
        let done = match status {
            Status::StreamEnd => true,
            Status::Ok | Status::BufError => !last && all_in && deflate.len() < deflate.capacity(),
        };
        if done {
            break;
        }
    }
    let mut crc = Crc::new();
    crc.update(input);
    Ok(Compressed { deflate, crc })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Compressible but not trivial data: a pseudo-random walk over a small alphabet.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefgh\n "[(x >> 16) as usize % 10]
            })
            .collect()
    }

    fn compress(data: &[u8], threads: usize, piece: usize) -> Vec<u8> {
        let mut gz =
            ParallelGzip::new(Vec::new(), flate2::Compression::default(), threads).unwrap();
        for chunk in data.chunks(piece.max(1)) {
            gz.write_all(chunk).unwrap();
        }
        gz.finish().unwrap()
    }

    #[test]
    fn round_trips_any_size() {
        for len in [
            0,
            1,
            WINDOW,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            3 * BLOCK_SIZE + 77,
        ] {
            let data = sample(len);
            let gz = compress(&data, 2, 100_000);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "length {len}");
        }
    }

    #[test]
    fn output_does_not_depend_on_threads_or_write_sizes() {
        let data = sample(5 * BLOCK_SIZE + 1234);
        let one = compress(&data, 1, 4096);
        assert_eq!(one, compress(&data, 2, 1 << 20));
        assert_eq!(one, compress(&data, 7, 333));
    }

    #[test]
    fn ratio_stays_close_to_a_single_stream() {
        let data = sample(4 * BLOCK_SIZE);
        let ours = compress(&data, 2, 1 << 16).len();
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        assert!(ours <= single + single / 100, "{ours} vs {single}");
    }
}
