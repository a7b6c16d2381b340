//! Registry clients. Building one (`oci_client::Client::new`) loads the system's CA
//! certificates through OpenSSL twice: 110-130 ms of a core on this machine, and two built at
//! once take as long in all (they contend on OpenSSL's locks) for twice the CPU. So few are
//! built:
//! - Transfers without credentials share one client of each kind (HTTPS, plain HTTP) for the
//!   daemon's life. Such a client only ever holds anonymous tokens, which are the same for
//!   every caller, and sharing it keeps its connections and tokens from one transfer to the
//!   next. The daemon builds both when it starts, one after the other on a thread of their
//!   own; a transfer that needs one sooner builds it, or waits for the build under way.
//! - A transfer given credentials gets a client of its own, built then: a client keeps the
//!   credentials it first saw for a registry, and the tokens they bought.

use std::sync::{Arc, OnceLock};

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};

/// The shared anonymous clients (index: `plain_http as usize`).
static SHARED: [OnceLock<Arc<Client>>; 2] = [OnceLock::new(), OnceLock::new()];

/// A new client: plain HTTP to the registry, or HTTPS.
fn build(plain_http: bool) -> Client {
    let protocol = if plain_http {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        ..Default::default()
    })
}

/// The shared client of that kind, built now if need be (or waited for).
fn shared_now(plain_http: bool) -> Arc<Client> {
    let client = SHARED[usize::from(plain_http)].get_or_init(|| Arc::new(build(plain_http)));
    Arc::clone(client)
}

/// The client of that kind shared by transfers without credentials.
pub async fn shared(plain_http: bool) -> Arc<Client> {
    match SHARED[usize::from(plain_http)].get() {
        Some(client) => Arc::clone(client),
        None => off_runtime(move || shared_now(plain_http)).await,
    }
}

/// A client of that kind for one transfer's credentials alone.
pub async fn dedicated(plain_http: bool) -> Client {
    off_runtime(move || build(plain_http)).await
}

/// Runs a build (or the wait for one) on a blocking thread, not on the runtime's.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Starts building the shared clients (at the daemon's start) on a thread of their own, and
/// parses a reference once (compiling the reference grammar).
pub fn warm() {
    let _ = std::thread::Builder::new()
        .name("registry-client".into())
        .spawn(|| {
            for plain_http in [false, true] {
                shared_now(plain_http);
            }
        });
    let _ = "docker.io/library/busybox:latest".parse::<oci_client::Reference>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transfers_without_credentials_share_a_client_of_each_kind() {
        let (plain, https) = (shared(true).await, shared(false).await);
        assert!(Arc::ptr_eq(&plain, &shared(true).await));
        assert!(Arc::ptr_eq(&https, &shared(false).await));
        assert!(!Arc::ptr_eq(&plain, &https));
        assert!(!Arc::ptr_eq(&Arc::new(dedicated(true).await), &plain));
    }
}
