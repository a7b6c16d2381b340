//! containerd's own content store test suite (`content/testsuite`: ContentSuite and
//! ContentCrossNSSharedSuite, 14 tests) through containerd's gRPC content client, against
//! Strata's socket, and, as the control that shows the suite itself sound here, against
//! containerd 1.7.24's own socket, in one run. The Go side is `tests/contentsuite/`, built by
//! `scripts/e2e/content-suite.sh --build` (as .ci/run does).

use std::path::Path;
use std::process::Command;

use super::env::{Containerd, Env};
use crate::util;

/// Runs the suite against `socket`: its summary line, and whether every test passed.
fn run_suite(socket: &Path) -> (String, bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e/content-suite.sh");
    let out = Command::new(script)
        .arg(socket)
        .output()
        .expect("run content-suite.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("--- FAIL") || l.contains("_test.go:"))
        .collect();
    if !out.status.success() {
        eprintln!(
            "content suite against {}:\n{}\n{}",
            socket.display(),
            failures.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (summary, out.status.success())
}

#[test]
#[ignore = "needs root"]
fn content_suite_1_7() {
    util::assert_root("containerd::content_suite_1_7");
    let env = Env::start(
        "containerd::content_suite_1_7",
        "overlayfs",
        Containerd::V1_7,
    );
    let (control, control_ok) = run_suite(env.socket());
    assert!(control_ok, "containerd 1.7.24 itself: {control}");
    assert_eq!(control, "content-suite: 14 passed, 0 failed, 0 skipped");
    let (strata, strata_ok) = run_suite(&env.strata.socket);
    assert!(strata_ok, "Strata: {strata}");
    assert_eq!(strata, "content-suite: 14 passed, 0 failed, 0 skipped");
}
