//! A registry as a transfer reaches it: one reference, plain HTTP when asked (and for
//! loopback registries), and credentials asked of the client only when the registry refuses
//! a request without them, then used for the rest of the transfer (bearer tokens are
//! negotiated with them by the `oci-client` crate). Failed requests are tried again a few
//! times; credentials are never logged.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use oci_client::Reference;
use oci_client::errors::OciDistributionError;
pub use oci_client::secrets::RegistryAuth;

use super::{Result, TransferError};

/// Asks the client for credentials for a registry host; none (or anonymous) if it has none.
pub type Credentials =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<RegistryAuth>> + Send>> + Send + Sync>;

/// How to reach a registry.
#[derive(Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP even for a registry that is not on loopback.
    pub plain_http: bool,
    /// Where to ask for credentials when the registry wants them.
    pub credentials: Option<Credentials>,
}

/// Attempts in a row that bring nothing before a request is given up.
pub const ATTEMPTS: usize = 3;

/// The pause after the `failures`th failure in a row.
pub fn backoff(failures: usize) -> Duration {
    Duration::from_millis(200 << failures.min(5))
}

/// The client and the authentication it uses now.
struct Session {
    client: Arc<oci_client::Client>,
    auth: RegistryAuth,
    /// Credentials were asked for already.
    asked: bool,
}

/// One registry reference's session (see the module doc).
pub struct Registry {
    image: Reference,
    host: String,
    /// Plain HTTP to the registry.
    plain_http: bool,
    credentials: Option<Credentials>,
    session: tokio::sync::Mutex<Session>,
}

/// Whether `registry` (`host[:port]`) is on this machine.
pub(super) fn loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Whether the registry refused for want of (valid) credentials.
fn refused(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::Unauthorized)),
        _ => false,
    }
}

/// Whether the registry has no such thing (a manifest, blob or repository).
fn missing(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode as C;
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                C::ManifestUnknown | C::BlobUnknown | C::NameUnknown | C::NotFound
            )
        }),
        _ => false,
    }
}

impl Registry {
    /// A session for `reference`.
    pub async fn new(reference: &str, options: &RegistryOptions) -> Result<Self> {
        let image = Reference::from_str(reference)
            .map_err(|e| TransferError::Invalid(format!("reference {reference:?}: {e}")))?;
        let host = image.resolve_registry().to_string();
        let plain_http = options.plain_http || loopback(&host);
        let client = super::clients::shared(plain_http).await;
        Ok(Registry {
            image,
            host,
            plain_http,
            credentials: options.credentials.clone(),
            session: tokio::sync::Mutex::new(Session {
                client,
                auth: RegistryAuth::Anonymous,
                asked: false,
            }),
        })
    }

    /// The reference.
    pub fn image(&self) -> &Reference {
        &self.image
    }

    /// The registry's `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the registry is reached over plain HTTP.
    pub fn plain_http(&self) -> bool {
        self.plain_http
    }

    /// The client and authentication in use (for the downloads after a resolve).
    pub async fn client(&self) -> (Arc<oci_client::Client>, RegistryAuth) {
        let s = self.session.lock().await;
        (Arc::clone(&s.client), s.auth.clone())
    }

    /// Runs `op` (about `what`) until it succeeds, fails [`ATTEMPTS`] times in a row, or is
    /// refused for want of credentials twice (once without, once with what the client gave);
    /// what the registry does not have is not asked for again.
    pub async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<oci_client::Client>, RegistryAuth) -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let mut failures = 0;
        loop {
            let (client, auth) = self.client().await;
            match op(client, auth).await {
                Ok(v) => return Ok(v),
                Err(e) if refused(&e) => {
                    if !self.ask().await {
                        let anonymous = matches!(self.client().await.1, RegistryAuth::Anonymous);
                        let why = match anonymous {
                            true => "wants credentials (none were given)",
                            false => "refused the credentials",
                        };
                        return Err(TransferError::Unauthenticated(format!(
                            "{what}: the registry {} {why}: {e}",
                            self.host
                        )));
                    }
                }
                Err(e) if missing(&e) => {
                    return Err(TransferError::NotFound(format!("{what}: {e}")));
                }
                Err(e) => {
                    failures += 1;
                    if failures >= ATTEMPTS {
                        return Err(TransferError::Registry(format!("{what}: {e}")));
                    }
                    tracing::debug!(what, error = %e, failures, "retrying");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// Asks the client for credentials once; whether there are new ones to try.
    async fn ask(&self) -> bool {
        let mut s = self.session.lock().await;
        if s.asked {
            return false;
        }
        s.asked = true;
        let Some(credentials) = &self.credentials else {
            return false;
        };
        let auth = match credentials(self.host.clone()).await {
            None | Some(RegistryAuth::Anonymous) => return false,
            Some(auth) => auth,
        };
        // A client of its own: the shared one keeps the anonymous authentication it saw.
        s.client = Arc::new(super::clients::dedicated(self.plain_http).await);
        s.auth = auth;
        true
    }
}
