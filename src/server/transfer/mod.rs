//! `containerd.services.transfer.v1.Transfer`: how containerd 2.x's clients (`ctr images
//! pull|push|import|export|tag`) move images. A call names a source and a destination (Anys
//! decoded by their bare type URL); the pair is the operation, as in containerd's local
//! transfer service: registry → image store is a pull, image store → registry a push,
//! image store → image store a tag, import stream → image store an import, image store →
//! export stream an export; any other pair is Unimplemented. Each runs as an in-process
//! [`Transfer`] under a lease of its own, with its side channels (progress, credential
//! requests, archive bytes) claimed from the [`Streams`] the client opened first.
//!
//! The progress stream ends before the call answers, as containerd's does. A client that
//! goes away cancels the transfer: its lease goes, and so does the lease the client made
//! for it ([`Departure`]).

mod bytes;
mod departure;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost_types::Any;
use tonic::{Request, Response, Status};

use self::departure::Departure;
use super::streaming::{Stream, StreamSender, Streams};
use super::{lease_of, namespace_of};
use crate::status::to_status;
use api::any;
use api::services::transfer::v1::TransferRequest;
use api::services::transfer::v1::transfer_server::Transfer as TransferApi;
use api::types::transfer as t;
use imagestore::Snapshotters;
use imagestore::transfer::events::{Event, Progress};
use imagestore::transfer::export::ExportOptions;
use imagestore::transfer::import::ImportOptions;
use imagestore::transfer::naming::{ImageDestination, ImageReference};
use imagestore::transfer::pull::PullOptions;
use imagestore::transfer::registry::{Credentials, RegistryAuth, RegistryOptions};
use imagestore::transfer::{Transfer, Transfers};

/// How long a credential request waits for the client's answer.
const AUTH_WAIT: Duration = Duration::from_secs(60);

/// A transfer's source or destination.
enum Endpoint {
    Registry(t::OciRegistry),
    Store(t::ImageStore),
    Import(t::ImageImportStream),
    Export(t::ImageExportStream),
}

impl Endpoint {
    /// Decodes `any` (the request's `what`); NotFound for a type no transfer has, as
    /// containerd.
    fn decode(any: Option<Any>, what: &str) -> Result<(Self, String), Status> {
        let any =
            any.ok_or_else(|| Status::invalid_argument(format!("transfer without a {what}")))?;
        let name = any::type_name(&any).to_string();
        let bad = || Status::invalid_argument(format!("{what} {name}: does not decode"));
        let endpoint = match name.as_str() {
            <t::OciRegistry as any::TypeUrl>::TYPE_URL => {
                Endpoint::Registry(any::unpack(&any).ok_or_else(bad)?)
            }
            <t::ImageStore as any::TypeUrl>::TYPE_URL => {
                Endpoint::Store(any::unpack(&any).ok_or_else(bad)?)
            }
            <t::ImageImportStream as any::TypeUrl>::TYPE_URL => {
                Endpoint::Import(any::unpack(&any).ok_or_else(bad)?)
            }
            <t::ImageExportStream as any::TypeUrl>::TYPE_URL => {
                Endpoint::Export(any::unpack(&any).ok_or_else(bad)?)
            }
            _ => {
                return Err(Status::not_found(format!(
                    "type with url {}: not found",
                    any.type_url
                )));
            }
        };
        Ok((endpoint, any.type_url))
    }
}

/// The Transfer service.
pub struct TransferService {
    transfers: Transfers,
    snapshotters: Arc<dyn Snapshotters>,
    streams: Arc<Streams>,
    /// Registries reached over plain HTTP.
    insecure_registries: Vec<String>,
    /// The snapshotter an unpack that names none uses.
    default_snapshotter: String,
}

impl TransferService {
    pub fn new(
        transfers: Transfers,
        snapshotters: Arc<dyn Snapshotters>,
        streams: Arc<Streams>,
        insecure_registries: Vec<String>,
        default_snapshotter: String,
    ) -> Self {
        TransferService {
            transfers,
            snapshotters,
            streams,
            insecure_registries,
            default_snapshotter,
        }
    }

    /// A transfer in `namespace` unpacking into `snapshotter`.
    async fn begin(&self, namespace: &str, snapshotter: &str) -> Result<Transfer, Status> {
        self.transfers
            .begin(namespace, snapshotter)
            .await
            .map_err(to_status)
    }

    /// Claims stream `id`; NotFound if the client opened none by that name.
    fn claim(&self, namespace: &str, id: &str) -> Result<Stream, Status> {
        self.streams
            .claim(namespace, id)
            .ok_or_else(|| Status::not_found(format!("stream {id:?}: not found")))
    }

    /// The platform and snapshotter to unpack into, of the first of `unpacks` a snapshotter
    /// here serves (containerd skips the others); none if none is served. The snapshotter
    /// keeps the name the client gave (labels name it so, as containerd's do).
    fn unpack_of(&self, unpacks: &[t::UnpackConfiguration]) -> Option<(String, String)> {
        unpacks.iter().find_map(|u| {
            let wanted = match u.snapshotter.as_str() {
                "" => &self.default_snapshotter,
                name => name,
            };
            self.snapshotters.resolve(wanted)?;
            let platform = u
                .platform
                .as_ref()
                .map_or_else(imagestore::oci::this_platform, platform_name);
            Some((platform, wanted.to_string()))
        })
    }

    /// How to reach the registry of `registry`, asking the client for credentials on
    /// `departure`'s streams.
    fn registry_options(
        &self,
        namespace: &str,
        registry: &t::OciRegistry,
        departure: &mut Departure,
    ) -> Result<RegistryOptions, Status> {
        let resolver = registry.resolver.clone().unwrap_or_default();
        if !resolver.headers.is_empty() {
            return Err(Status::unimplemented(
                "registry headers are not supported: not implemented",
            ));
        }
        if !resolver.host_dir.is_empty() {
            return Err(Status::unimplemented(
                "registry host directories are not supported: not implemented",
            ));
        }
        let host = oci_client::Reference::try_from(registry.reference.as_str())
            .map_err(|e| {
                Status::invalid_argument(format!("reference {:?}: {e}", registry.reference))
            })?
            .resolve_registry()
            .to_string();
        let credentials = match resolver.auth_stream.as_str() {
            "" => None,
            id => {
                let stream = self.claim(namespace, id)?;
                departure.watch(stream.sender());
                Some(ask_client(stream, registry.reference.clone()))
            }
        };
        Ok(RegistryOptions {
            plain_http: resolver.default_scheme == "http"
                || self.insecure_registries.contains(&host),
            credentials,
        })
    }

    async fn pull(
        &self,
        namespace: &str,
        registry: t::OciRegistry,
        store: t::ImageStore,
        progress: Progress,
        departure: &mut Departure,
    ) -> Result<(), Status> {
        let options = self.registry_options(namespace, &registry, departure)?;
        let unpack = self.unpack_of(&store.unpacks);
        let snapshotter = unpack.as_ref().map_or(&self.default_snapshotter, |u| &u.1);
        let transfer = self.begin(namespace, snapshotter).await?;
        let options = PullOptions {
            registry: options,
            platforms: store.platforms.iter().map(platform_name).collect(),
            all_metadata: store.all_metadata,
            unpack: unpack.map(|u| u.0),
            image: destination(&store),
        };
        let pulled = transfer.pull(&registry.reference, &options, progress).await;
        if let Err(e) = &pulled {
            tracing::info!(reference = registry.reference, error = %crate::status::chain(e), "pull failed");
        }
        pulled.map_err(to_status)?;
        transfer.finish().await.map_err(to_status)
    }

    async fn push(
        &self,
        namespace: &str,
        store: t::ImageStore,
        registry: t::OciRegistry,
        progress: Progress,
        departure: &mut Departure,
    ) -> Result<(), Status> {
        let options = self.registry_options(namespace, &registry, departure)?;
        let transfer = self.begin(namespace, &self.default_snapshotter).await?;
        let platforms: Vec<String> = store.platforms.iter().map(platform_name).collect();
        transfer
            .push(
                &store.name,
                &registry.reference,
                &platforms,
                &options,
                progress,
            )
            .await
            .map_err(to_status)?;
        transfer.finish().await.map_err(to_status)
    }

    async fn tag(
        &self,
        namespace: &str,
        from: t::ImageStore,
        to: t::ImageStore,
    ) -> Result<(), Status> {
        let transfer = self.begin(namespace, &self.default_snapshotter).await?;
        transfer
            .tag(&from.name, &destination(&to))
            .await
            .map_err(to_status)?;
        transfer.finish().await.map_err(to_status)
    }

    async fn import(
        &self,
        namespace: &str,
        source: t::ImageImportStream,
        store: t::ImageStore,
        progress: Progress,
        departure: &mut Departure,
    ) -> Result<(), Status> {
        if source.force_compress {
            return Err(Status::unimplemented(
                "compressing an archive's layers on import (--compress-blobs): not implemented",
            ));
        }
        let stream = self.claim(namespace, &source.stream)?;
        departure.watch(stream.sender());
        let unpack = self.unpack_of(&store.unpacks);
        let snapshotter = unpack.as_ref().map_or(&self.default_snapshotter, |u| &u.1);
        let transfer = self.begin(namespace, snapshotter).await?;
        let options = ImportOptions {
            image: destination(&store),
            platforms: store.platforms.iter().map(platform_name).collect(),
            unpack: unpack.map(|u| u.0),
        };
        transfer
            .import(bytes::receive(stream), &options, progress)
            .await
            .map_err(to_status)?;
        transfer.finish().await.map_err(to_status)
    }

    async fn export(
        &self,
        namespace: &str,
        store: t::ImageStore,
        destination: t::ImageExportStream,
        progress: Progress,
        departure: &mut Departure,
    ) -> Result<(), Status> {
        // containerd's Lookup: the name, then each full extra reference.
        let mut names: Vec<String> = (!store.name.is_empty())
            .then(|| store.name.clone())
            .into_iter()
            .collect();
        for r in &store.extra_references {
            if r.is_prefix {
                return Err(Status::unimplemented(
                    "prefix lookup on export not implemented: not implemented",
                ));
            }
            names.push(r.name.clone());
        }
        let stream = self.claim(namespace, &destination.stream)?;
        departure.watch(stream.sender());
        let transfer = self.begin(namespace, &self.default_snapshotter).await?;
        let options = ExportOptions {
            platforms: destination.platforms.iter().map(platform_name).collect(),
            all_platforms: destination.all_platforms,
            skip_manifest_json: destination.skip_compatibility_manifest,
        };
        let (writer, sending) = bytes::send(stream);
        let out = std::io::BufWriter::with_capacity(64 * 1024, writer);
        let exported = transfer.export(&names, &options, out, progress).await;
        let sent = sending
            .await
            .map_err(crate::status::join_error)
            .and_then(|r| r);
        exported.map_err(to_status)?;
        sent?;
        transfer.finish().await.map_err(to_status)
    }
}

/// `os/arch[/variant]`.
fn platform_name(p: &api::types::Platform) -> String {
    match p.variant.as_str() {
        "" => format!("{}/{}", p.os, p.architecture),
        v => format!("{}/{}/{v}", p.os, p.architecture),
    }
}

/// Where an image store destination records images.
fn destination(store: &t::ImageStore) -> ImageDestination {
    ImageDestination {
        name: store.name.clone(),
        labels: store.labels.clone(),
        references: store
            .extra_references
            .iter()
            .map(|r| ImageReference {
                name: r.name.clone(),
                is_prefix: r.is_prefix,
                allow_overwrite: r.allow_overwrite,
                add_digest: r.add_digest,
                skip_named_digest: r.skip_named_digest,
            })
            .collect(),
    }
}

/// Asks the client on `stream` for a registry's credentials, one request at a time:
/// `AuthRequest{host, reference}` (the reference as the client gave it: ctr answers only
/// for that one), one `AuthResponse` back. A user and secret are basic credentials (also
/// exchanged for a bearer token); a secret alone is a token. Nothing of it is logged.
fn ask_client(stream: Stream, reference: String) -> Credentials {
    let stream = Arc::new(tokio::sync::Mutex::new(stream));
    Arc::new(move |host: String| {
        let (stream, reference) = (Arc::clone(&stream), reference.clone());
        Box::pin(async move {
            let mut stream = stream.lock().await;
            let request = t::AuthRequest {
                host,
                reference,
                wwwauthenticate: Vec::new(),
            };
            if !stream.send(&request) {
                return None;
            }
            let answer = tokio::time::timeout(AUTH_WAIT, async {
                loop {
                    match stream.recv().await {
                        Ok(Some(message)) => {
                            if let Some(answer) = any::unpack::<t::AuthResponse>(&message) {
                                return Some(answer);
                            }
                        }
                        Ok(None) | Err(_) => return None,
                    }
                }
            })
            .await
            .ok()
            .flatten()?;
            match t::AuthType::try_from(answer.auth_type) {
                Ok(t::AuthType::Credentials) => {
                    Some(RegistryAuth::Basic(answer.username, answer.secret))
                }
                Ok(t::AuthType::Refresh) if !answer.secret.is_empty() => {
                    Some(RegistryAuth::Bearer(answer.secret))
                }
                _ => None,
            }
        })
    })
}

/// A progress that sends containerd's `Progress` on a claimed stream, until
/// [`ProgressStream::close`]d; Strata's own events only if the client asked for them.
struct ProgressStream {
    sender: Arc<Mutex<Option<StreamSender>>>,
    extensions: bool,
}

impl ProgressStream {
    fn new(sender: Option<StreamSender>, extensions: bool) -> Self {
        ProgressStream {
            sender: Arc::new(Mutex::new(sender)),
            extensions,
        }
    }

    fn progress(&self) -> Progress {
        let (sender, extensions) = (Arc::clone(&self.sender), self.extensions);
        Arc::new(move |e: Event| {
            if e.extension && !extensions {
                return;
            }
            if let Some(s) = sender.lock().expect("progress lock").as_ref() {
                s.send(&t::Progress {
                    event: e.event,
                    name: e.name,
                    parents: e.parents,
                    progress: e.progress,
                    total: e.total,
                    desc: e.desc.map(|d| d.to_pb()),
                });
            }
        })
    }

    /// Ends the stream (with OK), whoever still holds the progress.
    fn close(&self) {
        self.sender.lock().expect("progress lock").take();
    }
}

#[tonic::async_trait]
impl TransferApi for TransferService {
    async fn transfer(&self, request: Request<TransferRequest>) -> Result<Response<()>, Status> {
        let namespace = namespace_of(&request)?;
        let client_lease = lease_of(&request);
        let extensions = request
            .metadata()
            .contains_key(api::headers::TRANSFER_DETAIL);
        let req = request.into_inner();
        let (source, source_url) = Endpoint::decode(req.source, "source")?;
        let (target, target_url) = Endpoint::decode(req.destination, "destination")?;
        let mut departure =
            Departure::new(Arc::clone(&self.transfers.store), &namespace, client_lease);
        let progress_id = req.options.map(|o| o.progress_stream).unwrap_or_default();
        let progress_stream = match progress_id.as_str() {
            "" => None,
            id => Some(self.claim(&namespace, id)?),
        };
        if let Some(stream) = &progress_stream {
            departure.watch(stream.sender());
        }
        let progress =
            ProgressStream::new(progress_stream.as_ref().map(Stream::sender), extensions);
        let events = progress.progress();
        let ns = namespace.as_str();
        let done = match (source, target) {
            (Endpoint::Registry(r), Endpoint::Store(s)) => {
                self.pull(ns, r, s, events, &mut departure).await
            }
            (Endpoint::Store(s), Endpoint::Registry(r)) => {
                self.push(ns, s, r, events, &mut departure).await
            }
            (Endpoint::Store(from), Endpoint::Store(to)) => self.tag(ns, from, to).await,
            (Endpoint::Import(i), Endpoint::Store(s)) => {
                self.import(ns, i, s, events, &mut departure).await
            }
            (Endpoint::Store(s), Endpoint::Export(e)) => {
                self.export(ns, s, e, events, &mut departure).await
            }
            _ => Err(Status::unimplemented(format!(
                "method Transfer not implemented for {source_url} to {target_url}"
            ))),
        };
        departure.answered();
        progress.close();
        drop(progress_stream);
        done.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn platforms_and_destinations_convert() {
        let p = |variant: &str| api::types::Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: variant.into(),
            ..Default::default()
        };
        assert_eq!(platform_name(&p("")), "linux/arm");
        assert_eq!(platform_name(&p("v7")), "linux/arm/v7");
        let store = t::ImageStore {
            name: "a".into(),
            labels: labels(&[("k", "v")]),
            extra_references: vec![t::ImageReference {
                name: "p".into(),
                is_prefix: true,
                add_digest: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = destination(&store);
        assert_eq!((d.name.as_str(), d.labels), ("a", labels(&[("k", "v")])));
        assert!(d.references[0].is_prefix && d.references[0].add_digest);
    }
}
