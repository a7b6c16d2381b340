//! `containerd.services.content.v1.Content` over the image store's content: blobs by digest
//! per namespace, streamed reads, resumable writes by ref.

use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;

use snapshotter::Filters;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{after_delete, blocking, lease_of, namespace_of};
use crate::collector::Collector;
use crate::status::to_status;
use api::services::content::v1 as pb;
use api::services::content::v1::content_server::Content;
use imagestore::{
    ImageStore, IngestStatus, StoreError, WriteAction, WriteAnswer, WriteRequest, WriteSession,
    timestamp,
};

/// Size of each Read answer, as containerd's (1 MiB).
const READ_CHUNK: usize = 1 << 20;
/// Infos per List answer, as containerd's.
const LIST_BATCH: usize = 100;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Content service.
pub struct ContentService {
    store: Arc<ImageStore>,
    collector: Arc<Collector>,
}

impl ContentService {
    pub fn new(store: Arc<ImageStore>, collector: Arc<Collector>) -> Self {
        ContentService { store, collector }
    }
}

fn status_to_pb(s: &IngestStatus) -> pb::Status {
    pb::Status {
        started_at: Some(timestamp(s.started)),
        updated_at: Some(timestamp(s.updated)),
        r#ref: s.reference.clone(),
        offset: s.offset as i64,
        total: s.total as i64,
        expected: s
            .expected
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let ns = namespace_of(&request)?;
        let digest = request.into_inner().digest;
        let info = blocking(&self.store, move |s| s.content_info(&ns, &digest)).await?;
        Ok(Response::new(pb::InfoResponse { info: Some(info) }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let ns = namespace_of(&request)?;
        let r = request.into_inner();
        let info = r.info.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = blocking(&self.store, move |s| s.content_update(&ns, info, &paths)).await?;
        Ok(Response::new(pb::UpdateResponse { info: Some(info) }))
    }

    type ListStream = BoxStream<pb::ListContentResponse>;

    async fn list(
        &self,
        request: Request<pb::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace_of(&request)?;
        let filters = request.into_inner().filters;
        let infos = blocking(&self.store, move |s| {
            s.content_list(&ns, &Filters::parse(&filters)?)
        })
        .await?;
        let batches: Vec<Result<pb::ListContentResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(pb::ListContentResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace_of(&request)?;
        let digest = request.into_inner().digest;
        blocking(&self.store, move |s| s.content_delete(&ns, &digest)).await?;
        after_delete(&self.collector, false).await?;
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<pb::ReadContentResponse>;

    async fn read(
        &self,
        request: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace_of(&request)?;
        let r = request.into_inner();
        let digest = r.digest.clone();
        let (mut file, size) = blocking(&self.store, move |s| s.content_open(&ns, &digest)).await?;
        let offset = r.offset.max(0) as u64;
        if offset > size {
            return Err(to_status(StoreError::OutOfRange(format!(
                "read of {} at {offset} past its {size} bytes",
                r.digest
            ))));
        }
        let end = if r.size <= 0 {
            size
        } else {
            (offset + r.size as u64).min(size)
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let result = (|| -> std::io::Result<()> {
                file.seek(SeekFrom::Start(offset))?;
                // Offsets in the answers count from the requested offset, as containerd's.
                let mut sent = 0u64;
                let mut left = end - offset;
                while left > 0 {
                    let mut chunk = vec![0u8; (left as usize).min(READ_CHUNK)];
                    file.read_exact(&mut chunk)?;
                    let n = chunk.len() as u64;
                    let msg = pb::ReadContentResponse {
                        offset: sent as i64,
                        data: chunk,
                    };
                    if tx.blocking_send(Ok(msg)).is_err() {
                        return Ok(());
                    }
                    sent += n;
                    left -= n;
                }
                Ok(())
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(Status::internal(format!("read blob: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let ns = namespace_of(&request)?;
        let reference = request.into_inner().r#ref;
        let status = blocking(&self.store, move |s| s.ingest_status(&ns, &reference)).await?;
        Ok(Response::new(pb::StatusResponse {
            status: Some(status_to_pb(&status)),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<pb::ListStatusesRequest>,
    ) -> Result<Response<pb::ListStatusesResponse>, Status> {
        let ns = namespace_of(&request)?;
        let filters = request.into_inner().filters;
        let statuses = blocking(&self.store, move |s| {
            s.ingest_list(&ns, &Filters::parse(&filters)?)
        })
        .await?;
        Ok(Response::new(pb::ListStatusesResponse {
            statuses: statuses.iter().map(status_to_pb).collect(),
        }))
    }

    type WriteStream = BoxStream<pb::WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace_of(&request)?;
        let lease = lease_of(&request);
        let mut incoming = request.into_inner();
        let Some(first) = incoming.message().await? else {
            return Err(Status::invalid_argument("write stream without a request"));
        };
        let first = write_request(first)?;
        let (session, first) = blocking(&self.store, move |s| {
            let session = WriteSession::open(s, &ns, lease.as_deref(), &first)?;
            Ok((session, first))
        })
        .await?;
        let store = Arc::clone(&self.store);
        let (tx, rx) = mpsc::channel(4);
        // Requests are answered one after another, each against the state the one before
        // left; the session (and with it the ref's lock) goes when the stream ends, however
        // it ends.
        tokio::spawn(async move {
            let mut session = Some(session);
            let mut next = Some(first);
            while let Some(req) = next.take() {
                let store = Arc::clone(&store);
                let mut s = session.take().expect("the session between requests");
                let handled = tokio::task::spawn_blocking(move || {
                    let answer = s.handle(&store, req);
                    (s, answer)
                })
                .await;
                let answer = match handled {
                    Ok((s, answer)) => {
                        let done = answer.is_err() || s.committed();
                        session = (!done).then_some(s);
                        answer.map(write_answer).map_err(to_status)
                    }
                    Err(e) => Err(crate::status::join_error(e)),
                };
                if tx.send(answer).await.is_err() || session.is_none() {
                    return;
                }
                next = match incoming.message().await {
                    Ok(Some(m)) => match write_request(m) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, request: Request<pb::AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&request)?;
        let reference = request.into_inner().r#ref;
        blocking(&self.store, move |s| s.ingest_abort(&ns, &reference)).await?;
        Ok(Response::new(()))
    }
}

/// A Write request as the store takes it.
fn write_request(r: pb::WriteContentRequest) -> Result<WriteRequest, Status> {
    let action = match pb::WriteAction::try_from(r.action) {
        Ok(pb::WriteAction::Stat) => WriteAction::Stat,
        Ok(pb::WriteAction::Write) => WriteAction::Write,
        Ok(pb::WriteAction::Commit) => WriteAction::Commit,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown write action {}",
                r.action
            )));
        }
    };
    Ok(WriteRequest {
        action,
        reference: r.r#ref,
        offset: r.offset.max(0) as u64,
        total: r.total.max(0) as u64,
        expected: r.expected,
        data: r.data,
        labels: r.labels,
    })
}

/// A Write answer as the wire has it.
fn write_answer(a: WriteAnswer) -> pb::WriteContentResponse {
    let action = match a.action {
        WriteAction::Stat => pb::WriteAction::Stat,
        WriteAction::Write => pb::WriteAction::Write,
        WriteAction::Commit => pb::WriteAction::Commit,
    };
    pb::WriteContentResponse {
        action: action as i32,
        started_at: Some(timestamp(a.started)),
        updated_at: Some(timestamp(a.updated)),
        offset: a.offset as i64,
        total: a.total as i64,
        digest: a.digest,
    }
}
