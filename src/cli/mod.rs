//! The command-line client: talks to a running daemon over its socket.

pub mod container;
pub mod content;
mod credentials;
pub mod gc;
pub mod image;
pub mod layer;
pub mod progress;
pub mod rootfs;
pub mod snapshot;
pub mod transfer;

use tonic::transport::Channel;

use clap::Args;
use tonic::Request;

use api::admin::v1 as admin;
use api::headers::MAX_MESSAGE_SIZE;

/// A connected snapshots client.
pub type SnapshotsClient = api::services::snapshots::v1::snapshots_client::SnapshotsClient<Channel>;

/// A snapshots client on `channel` with containerd's message size limits.
pub fn snapshots_client(channel: Channel) -> SnapshotsClient {
    SnapshotsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// What a command may fail with.
type Error = Box<dyn std::error::Error>;

/// Where the commands work.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// containerd namespace.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Snapshotter instance for unpacking and root filesystems.
    #[arg(long, global = true, default_value = "strata")]
    pub snapshotter: String,
}

/// `message` in namespace `ns`.
fn request<T>(ns: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert(api::headers::NAMESPACE, ns.parse().expect("namespace"));
    r
}

/// Has the daemon unpack image `name` (nothing to do if every layer is there); its result.
async fn unpack(channel: Channel, args: &StoreArgs, name: &str) -> Result<admin::Unpacked, Error> {
    let r = admin::UnpackRequest {
        name: name.to_string(),
        snapshotter: args.snapshotter.clone(),
    };
    let answer = admin::admin_client::AdminClient::new(channel)
        .unpack(request(&args.namespace, r))
        .await?
        .into_inner();
    answer
        .image
        .ok_or_else(|| "the daemon answered no image".into())
}
