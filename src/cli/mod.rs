//! The command-line client: talks to a running daemon over its socket.

pub mod gc;
pub mod layer;
pub mod progress;
pub mod snapshot;
pub mod store;

use tonic::transport::Channel;

use api::headers::MAX_MESSAGE_SIZE;

/// A connected snapshots client.
pub type SnapshotsClient = api::services::snapshots::v1::snapshots_client::SnapshotsClient<Channel>;

/// A snapshots client on `channel` with containerd's message size limits.
pub fn snapshots_client(channel: Channel) -> SnapshotsClient {
    SnapshotsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}
