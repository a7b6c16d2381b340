//! Who the fleet's nodes are, from what the deployment already has rather than a protocol
//! of Strata's own: a static list (small clusters, tests), or a DNS name resolved again every
//! few seconds — a Kubernetes headless Service over the DaemonSet, whose A records are the
//! ready pods (no API client, no RBAC, and the same on any DNS-based discovery).

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

/// The fleet's nodes (`host:port` of their peer API), this one among them or not.
pub trait Membership: Send + Sync {
    fn nodes(&self) -> Vec<String>;
}

/// A fixed list.
pub struct StaticNodes(pub Vec<String>);

impl Membership for StaticNodes {
    fn nodes(&self) -> Vec<String> {
        self.0.clone()
    }
}

/// The addresses a DNS name resolves to, with a port, refreshed periodically.
pub struct DnsNodes {
    /// `name:port`.
    name: String,
    current: RwLock<Vec<String>>,
}

impl DnsNodes {
    /// Resolves `name` (`host:port`) now and every `every` from then on, while the value
    /// returned lives. A failed resolution keeps the last answer.
    pub async fn start(name: &str, every: Duration) -> Arc<Self> {
        let nodes = Arc::new(DnsNodes {
            name: name.to_string(),
            current: RwLock::new(Vec::new()),
        });
        nodes.refresh().await;
        let weak: Weak<DnsNodes> = Arc::downgrade(&nodes);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(nodes) = weak.upgrade() else { return };
                nodes.refresh().await;
            }
        });
        nodes
    }

    async fn refresh(&self) {
        match tokio::net::lookup_host(&self.name).await {
            Ok(addrs) => {
                let mut found: Vec<String> = addrs.map(|a: SocketAddr| a.to_string()).collect();
                found.sort();
                found.dedup();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = found;
            }
            Err(e) => tracing::warn!(name = self.name, error = %e, "fleet: resolving peers"),
        }
    }
}

impl Membership for DnsNodes {
    fn nodes(&self) -> Vec<String> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_resolves_to_its_addresses_with_the_port() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let nodes = runtime.block_on(DnsNodes::start("localhost:5050", Duration::from_secs(60)));
        let found = nodes.nodes();
        assert!(
            found
                .iter()
                .any(|n| n == "127.0.0.1:5050" || n == "[::1]:5050"),
            "{found:?}"
        );
        let fixed = StaticNodes(vec!["a:1".into()]);
        assert_eq!(fixed.nodes(), ["a:1"]);
    }
}
