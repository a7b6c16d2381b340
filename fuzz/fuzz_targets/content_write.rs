//! containerd's Write protocol (the image store's `WriteSession`, what the Content service
//! runs for each Write stream) under random sequences: STAT/WRITE/COMMIT with any offsets,
//! sizes and expected digests, two streams on one ref, streams cut off (dropped), aborts, in
//! two namespaces sharing blobs. Invariants, checked after every step:
//! - no panic;
//! - every answer's offset and digest are those of the bytes the ref holds, as a model of
//!   each ref's bytes says;
//! - every file under a digest's name hashes to that digest (nothing reaches its name
//!   unchecked), and a committed blob reads back as the bytes written;
//! - once every stream is gone, no ref is left locked.
#![no_main]

use std::collections::HashMap;

use imagestore::{ImageStore, StoreError, WriteAction, WriteRequest, WriteSession};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Opens stream `slot` on ref `reference` in namespace `ns` with a first request.
    Open { slot: u8, ns: bool, reference: u8, first: Req },
    /// Sends a request on stream `slot`.
    Send { slot: u8, req: Req },
    /// The client of stream `slot` goes away.
    Cut { slot: u8 },
    /// Aborts ref `reference` in namespace `ns`.
    Abort { ns: bool, reference: u8 },
}

#[derive(Arbitrary, Debug)]
struct Req {
    action: u8,
    offset: Offset,
    /// A length of pseudo-random data (at most 300 bytes).
    len: u16,
    seed: u8,
    total: Total,
    expected: Expected,
}

#[derive(Arbitrary, Debug)]
enum Offset {
    Current,
    Zero,
    Other(u16),
}

#[derive(Arbitrary, Debug)]
enum Total {
    None,
    Right,
    Other(u16),
}

#[derive(Arbitrary, Debug)]
enum Expected {
    None,
    /// The digest of what the ref holds once this request's data is in.
    Right,
    /// One of a few fixed blobs' digests.
    Known(u8),
    Wrong,
}

const KNOWN: [&[u8]; 3] = [b"", b"a small blob", b"another small blob, a bit longer"];

fn sha256(data: &[u8]) -> String {
    let mut h = differ::digest::Hasher::default();
    h.update(data);
    h.finish().0.to_string()
}

fn data_of(len: u16, seed: u8) -> Vec<u8> {
    (0..(len % 301) as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A request as the session takes it, given what the ref holds now (`held`).
fn request(req: &Req, reference: &str, held: &[u8]) -> WriteRequest {
    let action = match req.action % 3 {
        0 => WriteAction::Stat,
        1 => WriteAction::Write,
        _ => WriteAction::Commit,
    };
    let data = if action == WriteAction::Stat {
        Vec::new()
    } else {
        data_of(req.len, req.seed)
    };
    let offset = match req.offset {
        Offset::Current => held.len() as u64,
        Offset::Zero => 0,
        Offset::Other(n) => u64::from(n % 400),
    };
    let mut after: Vec<u8> = if offset == 0 { Vec::new() } else { held.to_vec() };
    after.extend_from_slice(&data);
    let total = match req.total {
        Total::None => 0,
        Total::Right => after.len() as u64,
        Total::Other(n) => u64::from(n % 400) + 1,
    };
    let expected = match req.expected {
        Expected::None => String::new(),
        Expected::Right => sha256(&after),
        Expected::Known(i) => sha256(KNOWN[usize::from(i) % KNOWN.len()]),
        Expected::Wrong => sha256(b"never written"),
    };
    WriteRequest {
        action,
        reference: reference.to_string(),
        offset,
        total,
        expected,
        data,
        labels: HashMap::new(),
    }
}

/// Every blob file hashes to its name; `committed` blobs read back whole.
fn check_blobs(store: &ImageStore, committed: &HashMap<String, Vec<u8>>) {
    for digest in store.blobs().digests().expect("list blobs") {
        let bytes = std::fs::read(store.blobs().path(&digest)).expect("read blob");
        assert_eq!(sha256(&bytes), digest.to_string(), "a blob under a name not its own");
    }
    for (digest, bytes) in committed {
        if let Ok(d) = differ::Digest::parse(digest)
            && let Ok(on_disk) = std::fs::read(store.blobs().path(&d))
        {
            assert_eq!(&on_disk, bytes);
        }
    }
}

/// A Stat request (nothing else said).
fn stat() -> WriteRequest {
    WriteRequest {
        action: WriteAction::Stat,
        reference: String::new(),
        offset: 0,
        total: 0,
        expected: String::new(),
        data: Vec::new(),
        labels: HashMap::new(),
    }
}

/// One open stream and the bytes its ref holds, when the model knows them.
struct Stream {
    ns: String,
    reference: String,
    session: WriteSession,
    bytes: Option<Vec<u8>>,
    /// Its ref was aborted while it was open (its files are gone from under it).
    aborted: bool,
}

/// The bytes whose digest is `digest`, among those the model has seen.
fn recall(digest: &str, seen: &[Vec<u8>]) -> Option<Vec<u8>> {
    KNOWN
        .iter()
        .map(|b| b.to_vec())
        .chain(seen.iter().cloned())
        .find(|b| sha256(b) == digest)
}

fuzz_target!(|ops: Vec<Op>| {
    // tmpfs where there is one: the target is about the protocol, not the disk's flushes.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temporary directory");
    let store = ImageStore::open(dir.path()).expect("open the store");
    let mut streams: Vec<Option<Stream>> = (0..3).map(|_| None).collect();
    // Every byte string a ref held at some point, to recognise a resumed ref by its digest.
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut committed: HashMap<String, Vec<u8>> = HashMap::new();
    for op in ops.iter().take(64) {
        match op {
            Op::Open { slot, ns, reference, first } => {
                let slot = usize::from(*slot) % streams.len();
                let ns = if *ns { "a" } else { "b" }.to_string();
                let reference = format!("ref-{}", reference % 3);
                let mut req = request(first, &reference, &[]);
                req.action = WriteAction::Stat;
                req.data.clear();
                match WriteSession::try_open(&store, &ns, None, &req) {
                    Ok(mut session) => {
                        let answer = session.handle(&store, stat()).expect("a stat of an open write");
                        let bytes = recall(&answer.digest, &seen);
                        if let Some(b) = &bytes {
                            assert_eq!(answer.offset, b.len() as u64, "offset on opening");
                        }
                        streams[slot] = Some(Stream {
                            ns,
                            reference,
                            session,
                            bytes,
                            aborted: false,
                        });
                    }
                    Err(StoreError::Unavailable(_) | StoreError::AlreadyExists(_)) => {}
                    Err(StoreError::InvalidArgument(_) | StoreError::FailedPrecondition(_)) => {}
                    Err(e) => panic!("open: {e}"),
                }
            }
            Op::Send { slot, req } => {
                let slot = usize::from(*slot) % streams.len();
                let Some(mut stream) = streams[slot].take() else {
                    continue;
                };
                let now = stream.bytes.clone().unwrap_or_default();
                let r = request(req, &stream.reference, &now);
                match stream.session.handle(&store, r.clone()) {
                    Ok(answer) => {
                        let after = stream.bytes.as_ref().map(|b| {
                            let mut after = if r.action != WriteAction::Stat && r.offset == 0 {
                                Vec::new()
                            } else {
                                b.clone()
                            };
                            if r.action != WriteAction::Stat {
                                after.extend_from_slice(&r.data);
                            }
                            after
                        });
                        if let Some(after) = &after {
                            assert_eq!(answer.offset, after.len() as u64, "offset of {r:?}");
                            assert_eq!(answer.digest, sha256(after), "digest of {r:?}");
                            seen.push(after.clone());
                            if r.action == WriteAction::Commit {
                                committed.insert(answer.digest.clone(), after.clone());
                            }
                        }
                        stream.bytes = after;
                        if !stream.session.committed() {
                            streams[slot] = Some(stream);
                        }
                    }
                    Err(e @ StoreError::Io { .. }) if !stream.aborted => {
                        panic!("an I/O error from a well-formed store: {e}")
                    }
                    // The stream ends (its write stays, but for AlreadyExists).
                    Err(_) => {}
                }
            }
            Op::Cut { slot } => {
                let slot = usize::from(*slot) % streams.len();
                streams[slot] = None;
            }
            Op::Abort { ns, reference } => {
                let ns = if *ns { "a" } else { "b" };
                let reference = format!("ref-{}", reference % 3);
                match store.ingest_abort(ns, &reference) {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => panic!("abort: {e}"),
                }
                // A stream still open on it writes into nothing the model knows.
                for s in streams.iter_mut().flatten() {
                    if s.ns == ns && s.reference == reference {
                        s.bytes = None;
                        s.aborted = true;
                    }
                }
            }
        }
        check_blobs(&store, &committed);
    }
    drop(streams);
    for ns in ["a", "b"] {
        for r in 0..3 {
            let first = WriteRequest {
                reference: format!("ref-{r}"),
                ..stat()
            };
            if let Err(StoreError::Unavailable(m)) = WriteSession::try_open(&store, ns, None, &first) {
                panic!("{ns}/ref-{r} left locked: {m}");
            }
        }
    }
});
