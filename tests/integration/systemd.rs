//! Running under systemd, without a running systemd: socket activation through
//! `systemd-socket-activate` (Debian's `systemd` package; the daemon takes the listening
//! socket from `LISTEN_FDS`), and `Type=notify` through a notification socket the test
//! listens on (`READY=1` once the socket serves, `STOPPING=1` on SIGTERM).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Snap, TempDir, assert_root, strata_command};

const ACTIVATOR: &str = "/usr/bin/systemd-socket-activate";

/// Waits for `path` to exist.
fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `child` with SIGTERM and returns whether it exited cleanly.
fn terminate(mut child: Child) -> bool {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    child.wait().unwrap().success()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn socket_activation_serves_on_the_passed_socket() {
    assert_root("socket_activation_serves_on_the_passed_socket");
    assert!(
        Path::new(ACTIVATOR).exists(),
        "{ACTIVATOR} is missing: run scripts/e2e/ensure-deps.sh (it installs systemd)"
    );
    let tmp = TempDir::new("socket-activation");
    let socket = tmp.path().join("strata.sock");
    let log = std::fs::File::create(tmp.path().join("daemon.log")).unwrap();
    // The activator binds the socket and starts the daemon at the first connection, with
    // the socket as descriptor 3. The daemon is told a different address on purpose: it
    // must serve on what it was given, and never bind (or remove) an address itself.
    let child = Command::new(ACTIVATOR)
        .arg("--listen")
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--address")
        .arg(tmp.path().join("not-this.sock"))
        .arg("serve")
        .arg("--root")
        .arg(tmp.path().join("root"))
        .env("RUST_LOG", "info")
        .env("STRATA_CONFIG", "/dev/null")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start systemd-socket-activate");
    wait_for(&socket, "the activator's socket");
    let channel = api::channel::connect(&socket).await.expect("connect");
    let mut s = Snap {
        client: strata::cli::snapshots_client(channel),
    };
    s.prepare("activated", "").await.expect("prepare");
    assert_eq!(s.list(&[]).await.unwrap().len(), 1);
    drop(s);
    let log = std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap();
    assert!(log.contains("socket_activated=true"), "{log}");
    assert!(!tmp.path().join("not-this.sock").exists());
    assert!(terminate(child), "{log}");
    assert!(
        socket.exists(),
        "the activated socket is systemd's: it stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn notify_says_ready_once_serving_and_stopping_on_sigterm() {
    assert_root("notify_says_ready_once_serving_and_stopping_on_sigterm");
    let tmp = TempDir::new("notify");
    let notify = tmp.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let socket = tmp.path().join("strata.sock");
    let child = strata_command()
        .arg("--address")
        .arg(&socket)
        .arg("serve")
        .arg("--root")
        .arg(tmp.path().join("root"))
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start strata");
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "READY=1\n");
    // Ready means serving: a call goes through at once.
    let channel = api::channel::connect(&socket)
        .await
        .expect("connect right after READY=1");
    let mut s = Snap {
        client: strata::cli::snapshots_client(channel),
    };
    s.prepare("ready", "").await.expect("prepare");
    drop(s);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let n = listener.recv(&mut buf).expect("STOPPING=1 within 30 s");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "STOPPING=1\n");
    let mut child = child;
    assert!(child.wait().unwrap().success());
    assert!(
        !socket.exists(),
        "a socket the daemon bound is removed at exit"
    );
}
