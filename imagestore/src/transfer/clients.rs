//! Registry clients built before they are needed. Building one (`oci_client::Client::new`)
//! loads the system's CA certificates through OpenSSL twice: about 100 ms of a core on this
//! machine, which a pull would otherwise spend before its first request. One fresh client of
//! each kind (HTTPS, plain HTTP) is kept ready, each built on a thread of its own when the daemon
//! starts and again when a transfer has ended (not when it takes its client, where the build
//! would take a core from its download). A transfer takes a client for itself and
//! never shares it: a client keeps the credentials and tokens it was given.

use std::sync::{Condvar, Mutex, MutexGuard};

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};

/// The ready clients and the builds under way, per kind (index: `plain_http as usize`).
struct Pool {
    ready: [Option<Client>; 2],
    /// A build of that kind is under way (on a thread of [`fill`], or by a taker).
    building: [bool; 2],
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    ready: [None, None],
    building: [false, false],
});
/// Signalled when a build ends.
static BUILT: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// Builds each missing ready client on a thread of its own, but no kind that is being built
/// already (by such a thread or a taker).
pub fn fill() {
    for plain_http in [false, true] {
        let k = usize::from(plain_http);
        {
            let mut pool = lock();
            if pool.ready[k].is_some() || pool.building[k] {
                continue;
            }
            pool.building[k] = true;
        }
        let started = std::thread::Builder::new()
            .name("registry-client".into())
            .spawn(move || {
                let client = build(plain_http);
                let mut pool = lock();
                pool.ready[k] = Some(client);
                pool.building[k] = false;
                BUILT.notify_all();
            });
        if started.is_err() {
            lock().building[k] = false;
        }
    }
}

/// Starts building the ready clients (at the daemon's start), and parses a reference once
/// (compiling the reference grammar).
pub fn warm() {
    fill();
    let _ = "docker.io/library/busybox:latest".parse::<oci_client::Reference>();
}

/// A fresh client of that kind: the ready one, or the one being built (waited for), or one
/// built now. The taker calls [`fill`] when its transfer has ended.
pub fn take(plain_http: bool) -> Client {
    let k = usize::from(plain_http);
    let mut pool = lock();
    loop {
        if let Some(client) = pool.ready[k].take() {
            return client;
        }
        if !pool.building[k] {
            break;
        }
        pool = BUILT.wait(pool).unwrap_or_else(|e| e.into_inner());
    }
    pool.building[k] = true;
    drop(pool);
    let client = build(plain_http);
    lock().building[k] = false;
    BUILT.notify_all();
    client
}
