//! Reading a blob while it is still being written: a pull applies a layer as it downloads.
//!
//! A write that names its expected digest is *live* until it ends: readers of that digest
//! get the bytes written so far and wait for more; when the write is committed they read to
//! its end, and if it fails, restarts or is dropped they get an error. Nothing here trusts
//! the bytes: whoever reads them checks the digest (the Diff service's Apply does, and its
//! snapshot is discarded on a mismatch).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use differ::Digest;

/// How a live write stands.
#[derive(Default)]
struct State {
    /// Bytes of the data file that are written.
    written: u64,
    /// `Some(Ok)`: committed, the file is complete; `Some(Err)`: it will never be.
    end: Option<Result<(), String>>,
}

/// One live write.
pub struct Live {
    path: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Live {
    /// `written` bytes of the data file are there.
    pub fn wrote(&self, written: u64) {
        lock(&self.state).written = written;
        self.changed.notify_all();
    }

    /// The write ended: committed (`Ok`) or not.
    pub fn end(&self, how: Result<(), String>) {
        let mut state = lock(&self.state);
        if state.end.is_none() {
            state.end = Some(how);
        }
        drop(state);
        self.changed.notify_all();
    }
}

/// The live writes, by expected digest.
#[derive(Default, Clone)]
pub struct LiveWrites {
    by_digest: Arc<Mutex<HashMap<String, Arc<Live>>>>,
}

impl LiveWrites {
    /// Registers the write of `digest` into the data file `path` (already holding
    /// `written` bytes); a reader may follow it until it ends.
    pub fn start(&self, digest: &Digest, path: PathBuf, written: u64) -> Arc<Live> {
        let live = Arc::new(Live {
            path,
            state: Mutex::new(State { written, end: None }),
            changed: Condvar::new(),
        });
        self.map().insert(digest.to_string(), Arc::clone(&live));
        live
    }

    /// Forgets the write of `digest` if `live` is still the one registered.
    pub fn finish(&self, digest: &Digest, live: &Arc<Live>) {
        let mut map = self.map();
        if map
            .get(digest.as_str())
            .is_some_and(|l| Arc::ptr_eq(l, live))
        {
            map.remove(digest.as_str());
        }
    }

    /// Whether a write of `digest` is live.
    #[cfg(test)]
    pub fn is_live(&self, digest: &Digest) -> bool {
        self.map().contains_key(digest.as_str())
    }

    /// A reader of the write of `digest`, if one is live. `None` too if the write ended
    /// between the lookup and the open (its data renamed to the blob's name, or dropped).
    pub fn reader(&self, digest: &Digest) -> io::Result<Option<LiveReader>> {
        let Some(live) = self.map().get(digest.as_str()).cloned() else {
            return Ok(None);
        };
        let file = match File::open(&live.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(LiveReader {
            live,
            file,
            position: 0,
        }))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads a live write's bytes as they come (see the module doc).
pub struct LiveReader {
    live: Arc<Live>,
    file: File,
    position: u64,
}

impl Read for LiveReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut state = lock(&self.live.state);
        loop {
            if state.written > self.position {
                let ready = (state.written - self.position).min(buf.len() as u64) as usize;
                drop(state);
                let n = self.file.read(&mut buf[..ready])?;
                if n > 0 {
                    self.position += n as u64;
                    return Ok(n);
                }
                // The file is shorter than the write said: it restarted (truncated) since.
                // The end it gives the write (an error) is this reader's answer, not an
                // early end of file.
                state = lock(&self.live.state);
                if state.end.is_none() {
                    state = self
                        .live
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if let Some(Err(why)) = &state.end {
                    return Err(io::Error::other(why.clone()));
                }
                continue;
            }
            match &state.end {
                // Committed: the file (renamed, the same inode) has nothing more.
                Some(Ok(())) => return self.file.read(buf),
                Some(Err(why)) => return Err(io::Error::other(why.clone())),
                None => {
                    state = self
                        .live
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap()
    }

    /// A reader follows a write chunk by chunk and sees exactly its bytes once committed;
    /// a write that ends without its commit gives the reader an error.
    #[test]
    fn readers_follow_writes_and_see_their_end() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let writes = LiveWrites::default();
        for commit in [true, false] {
            let mut file = File::create(&path).unwrap();
            let live = writes.start(&digest(), path.clone(), 0);
            let mut reader = writes.reader(&digest()).unwrap().unwrap();
            let read = std::thread::spawn(move || {
                let mut all = Vec::new();
                reader.read_to_end(&mut all).map(|_| all)
            });
            let mut written = 0u64;
            for i in 0..50u8 {
                let chunk = vec![i; 1000 + i as usize];
                file.write_all(&chunk).unwrap();
                written += chunk.len() as u64;
                live.wrote(written);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            live.end(if commit {
                Ok(())
            } else {
                Err("dropped".into())
            });
            writes.finish(&digest(), &live);
            let got = read.join().unwrap();
            if commit {
                let expected: Vec<u8> =
                    (0..50u8).flat_map(|i| vec![i; 1000 + i as usize]).collect();
                assert_eq!(got.unwrap(), expected);
            } else {
                assert!(got.is_err());
            }
            assert!(!writes.is_live(&digest()));
        }
    }

    /// A write that restarts truncates its file before its readers hear of it: a reader
    /// that finds fewer bytes than the write had announced gets the restart's error, never
    /// an early end of file.
    #[test]
    fn a_truncated_write_is_no_end_of_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let writes = LiveWrites::default();
        let mut file = File::create(&path).unwrap();
        file.write_all(&[7u8; 1000]).unwrap();
        let live = writes.start(&digest(), path.clone(), 0);
        live.wrote(1000);
        let mut reader = writes.reader(&digest()).unwrap().unwrap();
        let mut half = [0u8; 500];
        reader.read_exact(&mut half).unwrap();
        // The restart's truncation, seen before its end.
        file.set_len(0).unwrap();
        let read = std::thread::spawn(move || {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).map(|_| rest)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        live.end(Err("the write restarted".into()));
        let got = read.join().unwrap();
        assert!(got.is_err(), "a restarted write read as {got:?}");
    }
}
