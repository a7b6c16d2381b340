//! Registry clients built before they are needed. Building one (`oci_client::Client::new`)
//! loads the system's CA certificates through OpenSSL: about 100 ms on this machine, which
//! a pull would otherwise spend before its first request. A couple of fresh clients of each
//! kind (HTTPS, plain HTTP) are kept ready, built on threads of their own; a transfer takes
//! one for itself and never shares it (a client keeps the credentials and tokens it was
//! given), and its place is filled again in the background.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};

/// Fresh clients kept ready per kind.
const SPARES: usize = 2;

/// The ready clients: plain HTTP ones first, HTTPS ones second.
static READY: Mutex<[Vec<Client>; 2]> = Mutex::new([Vec::new(), Vec::new()]);
/// Whether a thread is building clients of each kind.
static FILLING: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

fn kind(plain_http: bool) -> usize {
    if plain_http { 0 } else { 1 }
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

/// Fills the ready clients of that kind, on a thread of its own, unless one is at it.
fn refill(plain_http: bool) {
    let k = kind(plain_http);
    if FILLING[k].swap(true, Ordering::AcqRel) {
        return;
    }
    let started = std::thread::Builder::new()
        .name("registry-clients".into())
        .spawn(move || {
            loop {
                let missing = READY.lock().unwrap_or_else(|e| e.into_inner())[k].len() < SPARES;
                if !missing {
                    break;
                }
                let client = build(plain_http);
                READY.lock().unwrap_or_else(|e| e.into_inner())[k].push(client);
            }
            FILLING[k].store(false, Ordering::Release);
        });
    if started.is_err() {
        FILLING[k].store(false, Ordering::Release);
    }
}

/// Starts building the ready clients of both kinds (at the daemon's start), and parses a
/// reference once (compiling the reference grammar).
pub fn warm() {
    refill(true);
    refill(false);
    let _ = "docker.io/library/busybox:latest".parse::<oci_client::Reference>();
}

/// A fresh client of that kind, ready-made if one is (else built now).
pub fn take(plain_http: bool) -> Client {
    let ready = READY.lock().unwrap_or_else(|e| e.into_inner())[kind(plain_http)].pop();
    refill(plain_http);
    ready.unwrap_or_else(|| build(plain_http))
}
