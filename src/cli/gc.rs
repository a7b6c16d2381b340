//! `strata gc [--force]`: the image store's garbage collection through the daemon.

use std::io::Write;

use tonic::transport::Channel;

use api::admin::v1 as pb;
use api::admin::v1::admin_client::AdminClient;

/// Asks the daemon to collect (or, without `force`, to say what it would collect) and
/// prints one line per item: `<kind> <namespace> <id>`, then a total.
pub async fn run(
    channel: Channel,
    force: bool,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let removed = AdminClient::new(channel)
        .collect_garbage(pb::CollectGarbageRequest { dry_run: !force })
        .await?
        .into_inner()
        .removed;
    for r in &removed {
        let ns = if r.namespace.is_empty() {
            "-"
        } else {
            &r.namespace
        };
        writeln!(out, "{}\t{ns}\t{}", r.kind, r.id)?;
    }
    let verb = if force {
        "removed"
    } else {
        "would remove (run with --force)"
    };
    writeln!(out, "{verb}: {} items", removed.len())?;
    Ok(())
}
