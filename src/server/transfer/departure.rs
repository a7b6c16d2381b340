//! What a transfer leaves when its client goes away before the answer. Its own lease goes
//! with the [`imagestore::transfer::Transfer`] (dropped, cancelled). The lease the client
//! made for it (ctr makes one per command, expiring a day later, and deletes it after the
//! answer: a killed ctr never does) goes too, but only when it is that: an expiring lease
//! that holds nothing, and the client is gone (every stream it opened for the transfer is
//! over). Nothing such a lease could protect is lost; containerd would keep it for its day.

use std::sync::Arc;
use std::time::Duration;

use crate::server::streaming::StreamSender;
use imagestore::{ImageStore, StoreError};

/// How long after the cancellation the client's streams are looked at (they end with its
/// connection, a moment apart).
const SETTLE: Duration = Duration::from_millis(500);

/// Armed while a transfer runs; see the module doc.
pub struct Departure {
    store: Arc<ImageStore>,
    namespace: String,
    lease: Option<String>,
    streams: Vec<StreamSender>,
}

impl Departure {
    pub fn new(store: Arc<ImageStore>, namespace: &str, lease: Option<String>) -> Self {
        Departure {
            store,
            namespace: namespace.to_string(),
            lease,
            streams: Vec::new(),
        }
    }

    /// Notes a stream the client opened for the transfer.
    pub fn watch(&mut self, stream: StreamSender) {
        self.streams.push(stream);
    }

    /// The transfer answered: its client is there; nothing to do.
    pub fn answered(mut self) {
        self.lease = None;
    }
}

impl Drop for Departure {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let streams = std::mem::take(&mut self.streams);
        let (store, ns) = (Arc::clone(&self.store), self.namespace.clone());
        runtime.spawn(async move {
            tokio::time::sleep(SETTLE).await;
            if streams.is_empty() || !streams.iter().all(StreamSender::is_closed) {
                return;
            }
            drop(streams);
            let dropped = tokio::task::spawn_blocking(move || drop_if_empty(&store, &ns, &lease));
            if let Ok(Err(e)) = dropped.await {
                tracing::warn!(error = %e, "a departed client's lease stays");
            }
        });
    }
}

/// Deletes lease `id` if it expires and holds nothing.
fn drop_if_empty(store: &ImageStore, namespace: &str, id: &str) -> imagestore::Result<()> {
    let filters = snapshotter::Filters::parse(&[format!("id=={id}")])?;
    let Some(lease) = store.lease_list(namespace, &filters)?.into_iter().next() else {
        return Ok(());
    };
    if !lease.labels.contains_key(api::labels::GC_EXPIRE)
        || !store.lease_resources(namespace, id)?.is_empty()
    {
        return Ok(());
    }
    match store.lease_delete(namespace, id) {
        Ok(()) => {
            tracing::info!(
                lease = id,
                "deleted the empty lease of a client that went away"
            );
            Ok(())
        }
        Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
