//! What stands between the socket and the services: the connections, with any
//! `:authority` accepted (`authority`), and every request's namespace checked before a
//! service sees it (`namespaces_checked`).

mod authority;
mod namespaces_checked;

use tokio::net::UnixListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;

pub use namespaces_checked::NamespaceCheckLayer;

/// The connections `listener` accepts, each read through `authority::AuthorityFix`.
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = std::io::Result<authority::AuthorityFix>> {
    tokio_stream::StreamExt::map(UnixListenerStream::new(listener), |accepted| {
        accepted.map(authority::AuthorityFix::new)
    })
}
