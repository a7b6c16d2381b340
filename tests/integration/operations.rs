//! Operating the daemon: configuration precedence (the file, `--config`, flags over both,
//! unknown keys named), `strata config default`, and the Prometheus endpoint, scraped over
//! HTTP before and after calls that must move its values.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::util::{Daemon, Snap, TempDir, assert_root, free_port, strata_command};

#[test]
fn config_default_prints_a_config_that_starts_the_default_daemon() {
    let out = strata_command()
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: strata::config::Config = toml::from_str(&text).unwrap();
    assert_eq!(parsed, strata::config::Config::default());
    assert_eq!(text, strata::config::DEFAULT_TOML);
}

#[test]
#[ignore = "needs root"]
fn flags_override_the_config_file_and_unknown_keys_are_named() {
    assert_root("flags_override_the_config_file_and_unknown_keys_are_named");
    let tmp = TempDir::new("config-precedence");
    let (from_file, from_flag) = (tmp.path().join("from-file"), tmp.path().join("from-flag"));
    let socket = tmp.path().join("file.sock");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "root = {:?}\naddress = {:?}\n[differ]\nlease_expiry_secs = 5\n",
            from_file.display().to_string(),
            socket.display().to_string()
        ),
    )
    .unwrap();
    // The file sets the root and the address; --root overrides the root only.
    let mut child = strata_command()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(&from_flag)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket at the file's address");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        from_flag.join("metadata").is_dir(),
        "the flag's root is used"
    );
    assert!(!from_file.exists(), "the file's root is overridden");
    child.kill().unwrap();
    child.wait().unwrap();

    std::fs::write(&config, "root = \"/x\"\n[differ]\nlease_expiry = 5\n").unwrap();
    let out = strata_command()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `lease_expiry`"), "{err}");
}

/// GET `path` from `address` over HTTP/1.0; the status code and body.
fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of the sample `name{labels}` (labels as printed), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn metrics_are_scraped_over_http_and_move() {
    assert_root("metrics_are_scraped_over_http_and_move");
    let tmp = TempDir::new("metrics");
    let address = format!("127.0.0.1:{}", free_port());
    let content = tmp.path().join("content");
    let daemon = Daemon::start_with(
        tmp.path(),
        &[
            "--metrics-address",
            &address,
            "--content-dir",
            content.to_str().unwrap(),
        ],
    );
    let (status, before) = http_get(&address, "/metrics");
    assert_eq!(status, 200, "{before}");
    assert_eq!(http_get(&address, "/other").0, 404);
    let snapshots = "containerd.services.snapshots.v1.Snapshots";
    let prepared_ok = format!(
        "strata_grpc_requests_total{{service=\"{snapshots}\",method=\"Prepare\",code=\"Ok\"}}"
    );
    let stat_not_found = format!(
        "strata_grpc_requests_total{{service=\"{snapshots}\",method=\"Stat\",code=\"NotFound\"}}"
    );
    assert_eq!(sample(&before, &prepared_ok), None, "{before}");
    assert_eq!(
        sample(
            &before,
            "strata_snapshots{instance=\"strata\",kind=\"active\"}"
        ),
        Some(0.0),
        "{before}"
    );

    let mut s = Snap::new(&daemon).await;
    s.prepare("a", "").await.unwrap();
    s.prepare("b", "").await.unwrap();
    assert_eq!(s.stat("missing").await.unwrap_err().code(), Code::NotFound);
    let layer = write_layer(&content, tmp.path());
    let mounts = s.mounts("a").await.unwrap();
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let mut d = api::services::diff::v1::diff_client::DiffClient::new(channel);
    d.apply(api::services::diff::v1::ApplyRequest {
        diff: Some(layer),
        mounts,
        ..Default::default()
    })
    .await
    .unwrap();

    let (_, after) = http_get(&address, "/metrics");
    assert_eq!(sample(&after, &prepared_ok), Some(2.0), "{after}");
    assert_eq!(sample(&after, &stat_not_found), Some(1.0), "{after}");
    assert_eq!(
        sample(
            &after,
            "strata_snapshots{instance=\"strata\",kind=\"active\"}"
        ),
        Some(2.0)
    );
    assert_eq!(sample(&after, "strata_layers_applied_total"), Some(1.0));
    assert!(sample(&after, "strata_layer_written_bytes_total").unwrap() > 100_000.0);
    assert!(sample(&after, "strata_layer_read_bytes_total").unwrap() > 0.0);
    assert_eq!(
        sample(
            &after,
            "strata_layer_apply_throughput_bytes_per_second_count"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &after,
            &format!(
                "strata_grpc_request_duration_seconds_count{{service=\"{snapshots}\",method=\"Prepare\"}}"
            )
        ) == Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            &format!("strata_grpc_requests_in_flight{{service=\"{snapshots}\"}}")
        ),
        Some(0.0)
    );
    let filesystem = |body: &str| {
        ["size", "available"].map(|what| {
            sample(
                body,
                &format!("strata_filesystem_{what}_bytes{{instance=\"strata\"}}"),
            )
        })
    };
    assert!(
        filesystem(&after)
            .iter()
            .all(|v| v.is_some_and(|v| v > 0.0)),
        "{after}"
    );

    // Scrapes at once (two Prometheus servers) each see every gauge of state: one scrape
    // clearing them while another prints them once left series out.
    std::thread::scope(|threads| {
        for _ in 0..4 {
            threads.spawn(|| {
                for _ in 0..25 {
                    let (_, body) = http_get(&address, "/metrics");
                    assert!(filesystem(&body).iter().all(Option::is_some), "{body}");
                    assert_eq!(
                        sample(
                            &body,
                            "strata_snapshots{instance=\"strata\",kind=\"active\"}"
                        ),
                        Some(2.0),
                        "{body}"
                    );
                }
            });
        }
    });
}

/// A 200 KB layer in the OCI-layout directory `content`.
fn write_layer(content: &Path, scratch: &Path) -> api::types::Descriptor {
    let (lower, upper) = (scratch.join("lower"), scratch.join("upper"));
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::write(upper.join("file"), "x".repeat(200_000)).unwrap();
    let store = differ::content::LocalStore::new(content.to_path_buf());
    crate::util::store_layer(&store, &lower, &upper, differ::Compression::Gzip).0
}
