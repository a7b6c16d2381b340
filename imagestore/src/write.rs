//! containerd's Write protocol for one stream (`containerd.services.content.v1.Content/Write`),
//! without gRPC: the stream's first request opens (or resumes) the write of its ref, each
//! request is answered with where the write stands, and the ref stays locked until the
//! session is dropped (however the stream ended).
//!
//! As containerd's content service answers it: every answer carries the offset, the total,
//! the digest of the bytes so far and the write's start and update times; a request naming
//! an `expected` blob the namespace has ends the stream with AlreadyExists and drops the
//! write; a WRITE or COMMIT at an offset above zero must be at the current offset
//! (OutOfRange), one at zero starts the write over; a COMMIT checks size and digest. Each
//! request is checked against the state the previous one left, in order: one session is
//! one thread of control.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::{ContentWriter, ImageStore, Result, StoreError};

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAction {
    /// Where the write stands; nothing written.
    Stat,
    /// Write `data` at `offset`.
    Write,
    /// Write `data` at `offset`, then commit.
    Commit,
}

/// One request of a Write stream.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub action: WriteAction,
    /// The ref (only the first request's counts; a later one must be empty or the same).
    pub reference: String,
    pub offset: u64,
    /// Expected size; 0 if not said.
    pub total: u64,
    /// Expected digest; empty if not said.
    pub expected: String,
    pub data: Vec<u8>,
    /// Labels of the committed blob.
    pub labels: HashMap<String, String>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteAnswer {
    pub action: WriteAction,
    pub started: SystemTime,
    pub updated: SystemTime,
    pub offset: u64,
    pub total: u64,
    /// Of the bytes written so far (after a commit: the blob's).
    pub digest: String,
}

/// One Write stream's state.
pub struct WriteSession {
    namespace: String,
    reference: String,
    total: u64,
    expected: String,
    /// `None` once committed.
    writer: Option<ContentWriter>,
    /// The digest committed, once committed.
    committed: Option<String>,
}

impl WriteSession {
    /// Opens the write the stream's `first` request names, in `namespace` under `lease`.
    /// Waits a little for a ref another stream has just let go of (its client closed it
    /// and opens it again at once), as containerd's store does, then says Unavailable.
    pub fn open(
        store: &ImageStore,
        namespace: &str,
        lease: Option<&str>,
        first: &WriteRequest,
    ) -> Result<Self> {
        Self::opened(store, namespace, lease, first, true)
    }

    /// [`open`](Self::open), refusing at once (Unavailable) while another writer holds the
    /// ref.
    pub fn try_open(
        store: &ImageStore,
        namespace: &str,
        lease: Option<&str>,
        first: &WriteRequest,
    ) -> Result<Self> {
        Self::opened(store, namespace, lease, first, false)
    }

    fn opened(
        store: &ImageStore,
        namespace: &str,
        lease: Option<&str>,
        first: &WriteRequest,
        wait: bool,
    ) -> Result<Self> {
        if first.reference.is_empty() {
            return Err(StoreError::InvalidArgument(
                "first message must have a reference".into(),
            ));
        }
        let expected = Some(first.expected.as_str()).filter(|e| !e.is_empty());
        let writer = if wait {
            store.content_writer_waiting(
                namespace,
                &first.reference,
                first.total,
                expected,
                lease,
            )?
        } else {
            store.content_writer(namespace, &first.reference, first.total, expected, lease)?
        };
        Ok(WriteSession {
            namespace: namespace.to_string(),
            reference: first.reference.clone(),
            total: first.total,
            expected: first.expected.clone(),
            writer: Some(writer),
            committed: None,
        })
    }

    /// Whether the write was committed (the stream has nothing more to do).
    pub fn committed(&self) -> bool {
        self.committed.is_some()
    }

    /// Answers `req`. An error ends the stream; the write stays (but for an AlreadyExists,
    /// which drops it), for a later stream to resume or abort.
    pub fn handle(&mut self, store: &ImageStore, req: WriteRequest) -> Result<WriteAnswer> {
        if !req.reference.is_empty() && req.reference != self.reference {
            return Err(StoreError::InvalidArgument(format!(
                "requested ref {:?} changed from {:?}",
                req.reference, self.reference
            )));
        }
        if !req.expected.is_empty() {
            self.expected = req.expected.clone();
            if self.committed.is_none()
                && store.content_info(&self.namespace, &req.expected).is_ok()
            {
                self.writer = None;
                match store.ingest_abort(&self.namespace, &self.reference) {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                return Err(StoreError::AlreadyExists(format!(
                    "blob with expected digest {} exists",
                    req.expected
                )));
            }
        }
        if req.total > 0 {
            self.total = req.total;
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(StoreError::FailedPrecondition(format!(
                "ref {} was committed as {}",
                self.reference,
                self.committed.as_deref().unwrap_or_default()
            )));
        };
        if req.action != WriteAction::Stat {
            let current = writer.status().offset;
            if req.offset > 0 && req.offset != current {
                return Err(StoreError::OutOfRange(format!(
                    "write @{} must occur at current offset {current}",
                    req.offset
                )));
            }
            if req.offset == 0 && current > 0 {
                writer.truncate()?;
            }
            if !req.data.is_empty() {
                let at = writer.status().offset;
                writer.write_at(at, &req.data)?;
            }
        }
        let status = writer.status();
        let mut answer = WriteAnswer {
            action: req.action,
            started: status.started,
            updated: status.updated,
            offset: status.offset,
            total: if self.total > 0 {
                self.total
            } else {
                status.total
            },
            digest: writer.digest().to_string(),
        };
        if req.action == WriteAction::Commit {
            let writer = self.writer.take().expect("checked above");
            let expected = Some(self.expected.as_str()).filter(|e| !e.is_empty());
            let digest =
                store.content_commit(writer, &self.reference, self.total, expected, req.labels)?;
            answer.digest = digest.to_string();
            self.committed = Some(answer.digest.clone());
        }
        Ok(answer)
    }
}
