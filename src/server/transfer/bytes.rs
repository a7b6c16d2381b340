//! The transfer service's binary streams, as containerd's `core/transfer/streaming` has
//! them: the sender sends `Data` of at most 32 KiB, never more bytes than the receiver
//! granted with `WindowUpdate`s; the receiver grants 64 KiB first, and 64 KiB more whenever
//! less than that is outstanding. The end of the data is the client's half-close (it sends
//! an import), or the end of the stream RPC (the server sends an export).
//!
//! The import and export run on the blocking pool, so each side is a blocking
//! [`Read`]/[`Write`] fed by (or feeding) a task that speaks the protocol.

use std::io::{self, Read, Write};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::server::streaming::Stream;
use api::any;
use api::types::transfer::{Data, WindowUpdate};

/// The largest `Data` sent.
const MAX_CHUNK: usize = 32 * 1024;
/// A receiver's grant.
const WINDOW: i32 = 64 * 1024;
/// Chunks between the protocol task and the blocking side.
const QUEUE: usize = 8;
/// How long an export waits for the client to confirm the end of the data (its half-close)
/// before the transfer answers.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The bytes a client sends on `stream` (an archive to import), as a blocking reader. A
/// stream that breaks (the client went away) is a read error, never an early end.
pub fn receive(stream: Stream) -> ByteReader {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let id = stream.id.clone();
        let (mut inbound, sender) = stream.split();
        let mut window: i64 = 0;
        loop {
            if window < i64::from(WINDOW) {
                if !sender.send(&WindowUpdate { update: WINDOW }) {
                    let _ = tx.send(Err(gone(&id))).await;
                    return;
                }
                window += i64::from(WINDOW);
            }
            match inbound.message().await {
                Ok(Some(message)) => {
                    let Some(Data { data }) = any::unpack::<Data>(&message) else {
                        tracing::warn!(stream = id, type_url = message.type_url, "ignored");
                        continue;
                    };
                    let n = data.len() as i64;
                    if tx.send(Ok(data)).await.is_err() {
                        return; // The import stopped reading.
                    }
                    window -= n;
                }
                Ok(None) => return, // The end of the data.
                Err(status) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!("stream {id}: {status}"))))
                        .await;
                    return;
                }
            }
        }
    });
    ByteReader {
        rx,
        chunk: Vec::new(),
        at: 0,
    }
}

fn gone(id: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("stream {id}: the client went away"),
    )
}

/// See [`receive`].
pub struct ByteReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ByteReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk?;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A blocking writer whose bytes go to the client on `stream` (an exported archive), and
/// the task sending them: it ends when the writer is dropped and everything written was
/// sent, after ending the stream and waiting (a while) for the client to see the end.
pub fn send(stream: Stream) -> (ByteWriter, JoinHandle<Result<(), Status>>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let task = tokio::spawn(async move {
        let id = stream.id.clone();
        let (mut inbound, sender) = stream.split();
        let mut credit: i64 = 0;
        let client_gone = || Status::cancelled(format!("stream {id}: the client went away"));
        while let Some(chunk) = rx.recv().await {
            let mut at = 0;
            while at < chunk.len() {
                while credit <= 0 {
                    match inbound.message().await {
                        Ok(Some(message)) => match any::unpack::<WindowUpdate>(&message) {
                            Some(w) => credit += i64::from(w.update),
                            None => tracing::warn!(stream = id, "ignored a message"),
                        },
                        Ok(None) | Err(_) => return Err(client_gone()),
                    }
                }
                let n = (chunk.len() - at).min(MAX_CHUNK).min(credit as usize);
                let data = Data {
                    data: chunk[at..at + n].to_vec(),
                };
                if !sender.send(&data) {
                    return Err(client_gone());
                }
                at += n;
                credit -= n as i64;
            }
        }
        // The end of the data: the stream RPC ends (the client reads EOF and half-closes
        // once it has taken everything).
        drop(sender);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        Ok(())
    });
    (ByteWriter { tx }, task)
}

/// See [`send`].
pub struct ByteWriter {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Write for ByteWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK * 4);
        self.tx
            .blocking_send(buf[..n].to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
