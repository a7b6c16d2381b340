//! The image side over the daemon's socket: containerd's Content, Images, Containers,
//! Leases, Namespaces, Introspection and Version services. Create, read, update (field
//! masks), delete and list (filters) for each kind, namespaces kept apart, every misuse with
//! containerd's code and nothing changed, and content writes resumed after a disconnect.

use std::collections::HashMap;

use api::services::containers::v1 as cpb;
use api::services::containers::v1::containers_client::ContainersClient;
use api::services::content::v1 as ctpb;
use api::services::content::v1::content_client::ContentClient;
use api::services::images::v1 as ipb;
use api::services::images::v1::images_client::ImagesClient;
use api::services::introspection::v1 as inpb;
use api::services::introspection::v1::introspection_client::IntrospectionClient;
use api::services::leases::v1 as lpb;
use api::services::leases::v1::leases_client::LeasesClient;
use api::services::namespaces::v1 as npb;
use api::services::namespaces::v1::namespaces_client::NamespacesClient;
use api::types::Descriptor;
use prost_types::FieldMask;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::containerd::env::build_image;
use crate::util::{Daemon, TempDir, assert_root};

/// `message` as a request in containerd namespace `ns` (none if empty).
fn ns<T>(ns: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if !ns.is_empty() {
        r.metadata_mut()
            .insert("containerd-namespace", ns.parse().unwrap());
    }
    r
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

pub(crate) fn sha256(data: &[u8]) -> String {
    let mut h = differ::digest::Hasher::default();
    h.update(data);
    h.finish().0.to_string()
}

/// Writes `data` as ref `reference` in `namespace` in two halves on two streams (the first
/// stream dropped before committing, as a client that lost its connection), checking the
/// offset the second finds; the digest.
async fn write_resumed(
    c: &mut ContentClient<Channel>,
    namespace: &str,
    reference: &str,
    data: &[u8],
    labels_in: HashMap<String, String>,
) -> String {
    let digest = sha256(data);
    let half = data.len() / 2;
    let first = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Write as i32,
        r#ref: reference.into(),
        total: data.len() as i64,
        expected: digest.clone(),
        offset: 0,
        data: data[..half].to_vec(),
        labels: HashMap::new(),
    }];
    let mut answers = c
        .write(ns(namespace, tokio_stream::iter(first)))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.offset, half as i64);
    drop(answers);

    let status = c
        .status(ns(
            namespace,
            ctpb::StatusRequest {
                r#ref: reference.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        (status.offset, status.total),
        (half as i64, data.len() as i64)
    );
    assert_eq!(status.expected, digest);

    let second = vec![
        ctpb::WriteContentRequest {
            action: ctpb::WriteAction::Stat as i32,
            r#ref: reference.into(),
            ..Default::default()
        },
        ctpb::WriteContentRequest {
            action: ctpb::WriteAction::Commit as i32,
            r#ref: reference.into(),
            total: data.len() as i64,
            expected: digest.clone(),
            offset: half as i64,
            data: data[half..].to_vec(),
            labels: labels_in,
        },
    ];
    let mut answers = c
        .write(ns(namespace, tokio_stream::iter(second)))
        .await
        .unwrap()
        .into_inner();
    let stat = answers.message().await.unwrap().unwrap();
    assert_eq!(stat.offset, half as i64, "the second stream resumes");
    let commit = answers.message().await.unwrap().unwrap();
    assert_eq!(commit.digest, digest);
    assert_eq!(commit.offset, data.len() as i64);
    digest
}

async fn read_all(
    c: &mut ContentClient<Channel>,
    namespace: &str,
    digest: &str,
    offset: i64,
    size: i64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = c
        .read(ns(
            namespace,
            ctpb::ReadContentRequest {
                digest: digest.into(),
                offset,
                size,
            },
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert_eq!(
            chunk.offset,
            out.len() as i64,
            "offsets count from the requested one"
        );
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn content_images_containers_leases_namespaces() {
    assert_root("imagestore::content_images_containers_leases_namespaces");
    let tmp = TempDir::new("imagestore");
    let daemon = Daemon::start(tmp.path(), "native");
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let mut content = ContentClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let mut containers = ContainersClient::new(channel.clone());
    let mut leases = LeasesClient::new(channel.clone());
    let mut namespaces = NamespacesClient::new(channel.clone());
    let mut introspection = IntrospectionClient::new(channel);

    // No namespace: containerd's FailedPrecondition.
    let err = images
        .list(ns("", ipb::ListImagesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("namespace is required"), "{err:?}");

    // Content: a 3 MiB blob written in two sessions, read whole and in part (several
    // 1 MiB answers), labelled, listed by filter, invisible from another namespace.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let digest = write_resumed(&mut content, "a", "blob-1", &data, labels(&[("x", "1")])).await;
    assert_eq!(
        read_all(&mut content, "a", &digest, 0, 0).await.unwrap(),
        data
    );
    let part = read_all(&mut content, "a", &digest, 1_000_000, 2_000_000)
        .await
        .unwrap();
    assert_eq!(part, data[1_000_000..3_000_000]);
    assert_eq!(
        code(read_all(&mut content, "a", &digest, data.len() as i64 + 1, 0).await),
        Code::OutOfRange
    );
    assert_eq!(
        code(read_all(&mut content, "b", &digest, 0, 0).await),
        Code::NotFound
    );
    let info = content
        .info(ns(
            "a",
            ctpb::InfoRequest {
                digest: digest.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        (info.size, info.labels.clone()),
        (data.len() as i64, labels(&[("x", "1")]))
    );
    let updated = content
        .update(ns(
            "a",
            ctpb::UpdateRequest {
                info: Some(ctpb::Info {
                    digest: digest.clone(),
                    labels: labels(&[("y", "2")]),
                    ..Default::default()
                }),
                update_mask: mask(&["labels.y", "labels.x"]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(updated.labels, labels(&[("y", "2")]));
    let bad_mask = content
        .update(ns(
            "a",
            ctpb::UpdateRequest {
                info: Some(ctpb::Info {
                    digest: digest.clone(),
                    size: 1,
                    ..Default::default()
                }),
                update_mask: mask(&["size"]),
            },
        ))
        .await;
    assert_eq!(code(bad_mask), Code::InvalidArgument);
    let list = |filters: &[&str]| ctpb::ListContentRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let mut listed = content
        .list(ns("a", list(&["labels.y==2"])))
        .await
        .unwrap()
        .into_inner();
    let batch = listed.message().await.unwrap().unwrap();
    assert_eq!(batch.info.len(), 1);
    let mut none = content
        .list(ns("a", list(&["labels.y==3"])))
        .await
        .unwrap()
        .into_inner();
    assert!(
        none.message()
            .await
            .unwrap()
            .is_none_or(|b| b.info.is_empty())
    );
    assert_eq!(
        code(content.list(ns("a", list(&["labels.y=="]))).await),
        Code::InvalidArgument
    );
    // The same blob written in another namespace: no data needed (shared tree: the write
    // opens at the blob's end, and is committed from there as containerd's clients do), and
    // the namespace then sees it.
    let shared = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Commit as i32,
        r#ref: "blob-1".into(),
        total: data.len() as i64,
        expected: digest.clone(),
        offset: data.len() as i64,
        ..Default::default()
    }];
    let mut answers = content
        .write(ns("b", tokio_stream::iter(shared.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().digest, digest);
    assert_eq!(
        read_all(&mut content, "b", &digest, 0, 0).await.unwrap(),
        data
    );
    // Pinned in b, so that the collections after the deletes below leave it there.
    content
        .update(ns(
            "b",
            ctpb::UpdateRequest {
                info: Some(ctpb::Info {
                    digest: digest.clone(),
                    labels: labels(&[("containerd.io/gc.root", "test")]),
                    ..Default::default()
                }),
                update_mask: mask(&["labels.containerd.io/gc.root"]),
            },
        ))
        .await
        .unwrap();
    // Writing it again where it is: AlreadyExists.
    let again = content.write(ns("b", tokio_stream::iter(shared))).await;
    let again = match again {
        Err(s) => s.code(),
        Ok(r) => r.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(again, Code::AlreadyExists);
    // A wrong digest at commit: FailedPrecondition, nothing stored.
    let wrong = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Commit as i32,
        r#ref: "wrong".into(),
        expected: sha256(b"other"),
        data: b"data".to_vec(),
        ..Default::default()
    }];
    let mut answers = content
        .write(ns("a", tokio_stream::iter(wrong)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answers.message().await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            content
                .info(ns(
                    "a",
                    ctpb::InfoRequest {
                        digest: sha256(b"data")
                    }
                ))
                .await
        ),
        Code::NotFound
    );
    content
        .abort(ns(
            "a",
            ctpb::AbortRequest {
                r#ref: "wrong".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        code(
            content
                .abort(ns(
                    "a",
                    ctpb::AbortRequest {
                        r#ref: "wrong".into()
                    }
                ))
                .await
        ),
        Code::NotFound
    );

    // Images.
    let target = Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: digest.clone(),
        size: data.len() as i64,
        annotations: HashMap::new(),
    };
    let image = |name: &str, l: &[(&str, &str)]| ipb::Image {
        name: name.into(),
        labels: labels(l),
        target: Some(target.clone()),
        ..Default::default()
    };
    let created = images
        .create(ns(
            "a",
            ipb::CreateImageRequest {
                image: Some(image("example.test/one:1", &[("tier", "base")])),
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert!(created.created_at.is_some());
    images
        .create(ns(
            "a",
            ipb::CreateImageRequest {
                image: Some(image("example.test/two:1", &[])),
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap();
    let dup = images
        .create(ns(
            "a",
            ipb::CreateImageRequest {
                image: Some(image("example.test/one:1", &[])),
                source_date_epoch: None,
            },
        ))
        .await;
    assert_eq!(code(dup), Code::AlreadyExists);
    let mut no_target = image("example.test/bad:1", &[]);
    no_target.target = None;
    let bad = images
        .create(ns(
            "a",
            ipb::CreateImageRequest {
                image: Some(no_target),
                source_date_epoch: None,
            },
        ))
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);
    let names = |imgs: Vec<ipb::Image>| imgs.into_iter().map(|i| i.name).collect::<Vec<_>>();
    let list_images = |filters: &[&str]| ipb::ListImagesRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let all = images
        .list(ns("a", list_images(&[])))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(names(all), ["example.test/one:1", "example.test/two:1"]);
    let base = images
        .list(ns("a", list_images(&["labels.tier==base"])))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(names(base), ["example.test/one:1"]);
    let by_target = images
        .list(ns(
            "a",
            list_images(&[&format!("target.digest=={digest}"), "name~=two"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(
        names(by_target),
        ["example.test/one:1", "example.test/two:1"]
    );
    assert!(
        images
            .list(ns("b", list_images(&[])))
            .await
            .unwrap()
            .into_inner()
            .images
            .is_empty()
    );
    let relabelled = images
        .update(ns(
            "a",
            ipb::UpdateImageRequest {
                image: Some(image("example.test/one:1", &[("new", "yes")])),
                update_mask: mask(&["labels.new"]),
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(
        relabelled.labels,
        labels(&[("tier", "base"), ("new", "yes")])
    );
    assert_eq!(relabelled.created_at, created.created_at);
    let bad_path = images
        .update(ns(
            "a",
            ipb::UpdateImageRequest {
                image: Some(image("example.test/one:1", &[])),
                update_mask: mask(&["name"]),
                source_date_epoch: None,
            },
        ))
        .await;
    assert_eq!(code(bad_path), Code::InvalidArgument);
    let missing = images
        .update(ns(
            "b",
            ipb::UpdateImageRequest {
                image: Some(image("example.test/one:1", &[])),
                update_mask: None,
                source_date_epoch: None,
            },
        ))
        .await;
    assert_eq!(code(missing), Code::NotFound);
    let mut other_target = target.clone();
    other_target.digest = sha256(b"elsewhere");
    let stale = images
        .delete(ns(
            "a",
            ipb::DeleteImageRequest {
                name: "example.test/two:1".into(),
                sync: false,
                target: Some(other_target),
            },
        ))
        .await;
    assert_eq!(code(stale), Code::NotFound);
    images
        .delete(ns(
            "a",
            ipb::DeleteImageRequest {
                name: "example.test/two:1".into(),
                sync: false,
                target: Some(target.clone()),
            },
        ))
        .await
        .unwrap();
    let get = images
        .get(ns(
            "a",
            ipb::GetImageRequest {
                name: "example.test/two:1".into(),
            },
        ))
        .await;
    assert_eq!(code(get), Code::NotFound);

    // Containers.
    let spec = prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: br#"{"ociVersion":"1.2.0"}"#.to_vec(),
    };
    let container = |id: &str| cpb::Container {
        id: id.into(),
        labels: labels(&[("app", id)]),
        image: "example.test/one:1".into(),
        runtime: Some(cpb::container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(spec.clone()),
        snapshotter: "strata".into(),
        snapshot_key: id.into(),
        ..Default::default()
    };
    for id in ["web", "db"] {
        containers
            .create(ns(
                "a",
                cpb::CreateContainerRequest {
                    container: Some(container(id)),
                },
            ))
            .await
            .unwrap();
    }
    let bad_id = containers
        .create(ns(
            "a",
            cpb::CreateContainerRequest {
                container: Some(container("-bad")),
            },
        ))
        .await;
    assert_eq!(code(bad_id), Code::InvalidArgument);
    let mut no_spec = container("nospec");
    no_spec.spec = None;
    let bad = containers
        .create(ns(
            "a",
            cpb::CreateContainerRequest {
                container: Some(no_spec),
            },
        ))
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);
    let filters = vec!["labels.app==db".to_string()];
    let mut stream = containers
        .list_stream(ns(
            "a",
            cpb::ListContainersRequest {
                filters: filters.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().container.unwrap();
    assert_eq!(first.id, "db");
    assert!(stream.message().await.unwrap().is_none());
    let listed = containers
        .list(ns(
            "a",
            cpb::ListContainersRequest {
                filters: vec!["runtime.name==io.containerd.runc.v2".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2);
    let mut change = container("web");
    change.image = "example.test/two:1".into();
    change.labels = labels(&[("extra", "1")]);
    let changed = containers
        .update(ns(
            "a",
            cpb::UpdateContainerRequest {
                container: Some(change.clone()),
                update_mask: mask(&["image", "labels.extra"]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(changed.image, "example.test/two:1");
    assert_eq!(changed.labels, labels(&[("app", "web"), ("extra", "1")]));
    let mut immutable = change.clone();
    immutable.snapshotter = "other".into();
    let refused = containers
        .update(ns(
            "a",
            cpb::UpdateContainerRequest {
                container: Some(immutable),
                update_mask: None,
            },
        ))
        .await;
    assert_eq!(code(refused), Code::InvalidArgument);
    let refused = containers
        .update(ns(
            "a",
            cpb::UpdateContainerRequest {
                container: Some(change),
                update_mask: mask(&["snapshotter"]),
            },
        ))
        .await;
    assert_eq!(code(refused), Code::InvalidArgument);
    containers
        .delete(ns("a", cpb::DeleteContainerRequest { id: "db".into() }))
        .await
        .unwrap();
    assert_eq!(
        code(
            containers
                .delete(ns("a", cpb::DeleteContainerRequest { id: "db".into() }))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            containers
                .get(ns("b", cpb::GetContainerRequest { id: "web".into() }))
                .await
        ),
        Code::NotFound
    );

    // Leases.
    let lease = leases
        .create(ns(
            "a",
            lpb::CreateRequest {
                id: "pull-1".into(),
                labels: labels(&[("containerd.io/gc.expire", "2100-01-01T00:00:00Z")]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.id, "pull-1");
    let generated = leases
        .create(ns("a", lpb::CreateRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert!(!generated.id.is_empty());
    assert_eq!(
        code(
            leases
                .create(ns(
                    "a",
                    lpb::CreateRequest {
                        id: "pull-1".into(),
                        labels: HashMap::new()
                    }
                ))
                .await
        ),
        Code::AlreadyExists
    );
    let resource = |t: &str, id: &str| {
        Some(lpb::Resource {
            id: id.into(),
            r#type: t.into(),
        })
    };
    leases
        .add_resource(ns(
            "a",
            lpb::AddResourceRequest {
                id: "pull-1".into(),
                resource: resource("content", &digest),
            },
        ))
        .await
        .unwrap();
    leases
        .add_resource(ns(
            "a",
            lpb::AddResourceRequest {
                id: "pull-1".into(),
                resource: resource("snapshots/strata", "k1"),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        code(
            leases
                .add_resource(ns(
                    "a",
                    lpb::AddResourceRequest {
                        id: "pull-1".into(),
                        resource: resource("bogus", "x")
                    }
                ))
                .await
        ),
        Code::Unimplemented
    );
    assert_eq!(
        code(
            leases
                .add_resource(ns(
                    "b",
                    lpb::AddResourceRequest {
                        id: "pull-1".into(),
                        resource: resource("content", &digest)
                    }
                ))
                .await
        ),
        Code::NotFound
    );
    let held = leases
        .list_resources(ns(
            "a",
            lpb::ListResourcesRequest {
                id: "pull-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .resources;
    assert_eq!(held.len(), 2);
    let by_id = leases
        .list(ns(
            "a",
            lpb::ListRequest {
                filters: vec!["id==pull-1".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(by_id.len(), 1);
    leases
        .delete(ns(
            "a",
            lpb::DeleteRequest {
                id: generated.id.clone(),
                sync: false,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        code(
            leases
                .delete(ns(
                    "a",
                    lpb::DeleteRequest {
                        id: generated.id,
                        sync: false
                    }
                ))
                .await
        ),
        Code::NotFound
    );

    // Namespaces: "a" and "b" exist by holding things; "c" by creation, with labels.
    let created = namespaces
        .create(ns(
            "",
            npb::CreateNamespaceRequest {
                namespace: Some(npb::Namespace {
                    name: "c".into(),
                    labels: labels(&[("containerd.io/defaults/snapshotter", "strata")]),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(created.name, "c");
    assert_eq!(
        code(
            namespaces
                .create(ns(
                    "",
                    npb::CreateNamespaceRequest {
                        namespace: Some(npb::Namespace {
                            name: "a".into(),
                            labels: HashMap::new()
                        })
                    }
                ))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            namespaces
                .create(ns(
                    "",
                    npb::CreateNamespaceRequest {
                        namespace: Some(npb::Namespace {
                            name: "Bad Name".into(),
                            labels: HashMap::new()
                        })
                    }
                ))
                .await
        ),
        Code::InvalidArgument
    );
    let all: Vec<String> = namespaces
        .list(ns("", npb::ListNamespacesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(all, ["a", "b", "c"]);
    let got = namespaces
        .get(ns("", npb::GetNamespaceRequest { name: "c".into() }))
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(
        got.labels
            .get("containerd.io/defaults/snapshotter")
            .map(String::as_str),
        Some("strata")
    );
    let busy = namespaces
        .delete(ns("", npb::DeleteNamespaceRequest { name: "a".into() }))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition);
    assert!(busy.message().contains("must be empty"), "{busy:?}");
    namespaces
        .delete(ns("", npb::DeleteNamespaceRequest { name: "c".into() }))
        .await
        .unwrap();
    assert_eq!(
        code(
            namespaces
                .delete(ns("", npb::DeleteNamespaceRequest { name: "c".into() }))
                .await
        ),
        Code::NotFound
    );

    // Introspection: the snapshotter with its root, found by containerd's filter.
    let plugins = introspection
        .plugins(ns(
            "",
            inpb::PluginsRequest {
                filters: vec!["type==io.containerd.snapshotter.v1,id==strata".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert_eq!(plugins.len(), 1);
    assert_eq!(
        plugins[0].exports.get("root").map(String::as_str),
        daemon.root.to_str()
    );

    // Everything survives a restart of the daemon.
    drop(daemon);
    let daemon = Daemon::start(tmp.path(), "native");
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let mut images = ImagesClient::new(channel.clone());
    let mut content = ContentClient::new(channel);
    let kept = images
        .get(ns(
            "a",
            ipb::GetImageRequest {
                name: "example.test/one:1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(kept.labels, labels(&[("tier", "base"), ("new", "yes")]));
    assert_eq!(
        read_all(&mut content, "a", &digest, 0, 0).await.unwrap(),
        data
    );
}

/// Writes `data` as a blob in namespace `namespace` with `labels_in`, in one stream; the
/// digest.
async fn put_blob(
    c: &mut ContentClient<Channel>,
    namespace: &str,
    data: &[u8],
    labels_in: &[(&str, &str)],
) -> String {
    let digest = sha256(data);
    let req = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Commit as i32,
        r#ref: format!("put-{digest}"),
        total: data.len() as i64,
        expected: digest.clone(),
        data: data.to_vec(),
        labels: labels(labels_in),
        ..Default::default()
    }];
    let mut answers = c
        .write(ns(namespace, tokio_stream::iter(req)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().digest, digest);
    digest
}

/// containerd's collection semantics: what an image, a live lease or a gc.root label
/// reaches (through gc.ref.content labels, in its own namespace) stays; the rest goes, with
/// expired leases; a dry run only reports; the same blob recorded in two namespaces stays
/// while either keeps it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn garbage_collection() {
    use api::admin::v1 as apb;
    use api::admin::v1::admin_client::AdminClient;
    assert_root("imagestore::garbage_collection");
    let tmp = TempDir::new("imagestore-gc");
    let daemon = Daemon::start(tmp.path(), "native");
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let mut content = ContentClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let mut leases = LeasesClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);

    let layer = put_blob(&mut content, "a", b"layer", &[]).await;
    let config = put_blob(&mut content, "a", b"config", &[]).await;
    let manifest = put_blob(
        &mut content,
        "a",
        b"manifest",
        &[
            ("containerd.io/gc.ref.content.config", &config),
            ("containerd.io/gc.ref.content.l.0", &layer),
        ],
    )
    .await;
    let pinned = put_blob(
        &mut content,
        "a",
        b"pinned",
        &[("containerd.io/gc.root", "x")],
    )
    .await;
    let leased = put_blob(&mut content, "a", b"leased", &[]).await;
    let expired = put_blob(&mut content, "a", b"expired", &[]).await;
    let loose = put_blob(&mut content, "a", b"loose", &[]).await;
    // "layer" again in namespace b, unreferenced there.
    put_blob(&mut content, "b", b"layer", &[]).await;
    images
        .create(ns(
            "a",
            ipb::CreateImageRequest {
                image: Some(ipb::Image {
                    name: "example.test/gc:1".into(),
                    target: Some(Descriptor {
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        digest: manifest.clone(),
                        size: 8,
                        annotations: HashMap::new(),
                    }),
                    ..Default::default()
                }),
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap();
    for (id, until, blob) in [
        ("live", "2999-01-01T00:00:00Z", &leased),
        ("old", "2001-01-01T00:00:00Z", &expired),
    ] {
        leases
            .create(ns(
                "a",
                lpb::CreateRequest {
                    id: id.into(),
                    labels: labels(&[("containerd.io/gc.expire", until)]),
                },
            ))
            .await
            .unwrap();
        leases
            .add_resource(ns(
                "a",
                lpb::AddResourceRequest {
                    id: id.into(),
                    resource: Some(lpb::Resource {
                        id: blob.clone(),
                        r#type: "content".into(),
                    }),
                },
            ))
            .await
            .unwrap();
    }

    let removed = |r: &apb::CollectGarbageResponse| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = r
            .removed
            .iter()
            .map(|x| (x.kind.clone(), x.namespace.clone(), x.id.clone()))
            .collect();
        v.sort();
        v
    };
    let mut expected = vec![
        ("blob".to_string(), String::new(), expired.clone()),
        ("blob".to_string(), String::new(), loose.clone()),
        ("content".to_string(), "a".to_string(), expired.clone()),
        ("content".to_string(), "a".to_string(), loose.clone()),
        ("content".to_string(), "b".to_string(), layer.clone()),
        ("lease".to_string(), "a".to_string(), "old".to_string()),
    ];
    expected.sort();
    let dry = admin
        .collect_garbage(apb::CollectGarbageRequest { dry_run: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed(&dry), expected);
    let listed = |c: &mut ContentClient<Channel>, n: &'static str| {
        let mut c = c.clone();
        async move {
            let mut s = c
                .list(ns(n, ctpb::ListContentRequest::default()))
                .await
                .unwrap()
                .into_inner();
            let mut all = Vec::new();
            while let Some(b) = s.message().await.unwrap() {
                all.extend(b.info.into_iter().map(|i| i.digest));
            }
            all.sort();
            all
        }
    };
    assert_eq!(
        listed(&mut content, "a").await.len(),
        7,
        "a dry run removes nothing"
    );
    let done = admin
        .collect_garbage(apb::CollectGarbageRequest { dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed(&done), expected);
    let mut kept = vec![layer.clone(), config, manifest, pinned, leased];
    kept.sort();
    assert_eq!(listed(&mut content, "a").await, kept);
    assert!(listed(&mut content, "b").await.is_empty());
    // The blob "b" dropped is still a's: its file stays, the loose one's is gone.
    assert_eq!(
        read_all(&mut content, "a", &layer, 0, 0).await.unwrap(),
        b"layer"
    );
    let blobs = daemon.root.join("content/blobs/sha256");
    assert!(blobs.join(layer.trim_start_matches("sha256:")).exists());
    assert!(!blobs.join(loose.trim_start_matches("sha256:")).exists());
    let left = leases
        .list(ns("a", lpb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(
        left.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["live"]
    );

    // Removing the image with sync: its tree goes before the call returns.
    images
        .delete(ns(
            "a",
            ipb::DeleteImageRequest {
                name: "example.test/gc:1".into(),
                sync: true,
                target: None,
            },
        ))
        .await
        .unwrap();
    let mut kept = vec![pinned_digest(&kept, b"pinned"), sha256(b"leased")];
    kept.sort();
    assert_eq!(listed(&mut content, "a").await, kept);
}

/// The digest of `data` if it is among `digests`.
fn pinned_digest(digests: &[String], data: &[u8]) -> String {
    let d = sha256(data);
    assert!(digests.contains(&d));
    d
}

/// `strata --address SOCKET ARGS...`, finished.
pub(crate) fn strata_run(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    crate::util::strata_command()
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// `strata --address SOCKET ARGS...`, which must succeed; its stdout.
pub(crate) fn strata_ok(socket: &std::path::Path, args: &[&str]) -> String {
    let out = strata_run(socket, args);
    assert!(out.status.success(), "strata {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `strata image import` of the e2e test image (gzip layers with whiteouts and an opaque
/// directory): the first import applies every layer, the second applies none and says so;
/// `strata rootfs prepare --mount` shows the image's flattened tree; `container
/// create|label|rm` and `image rm --sync` leave nothing once the root filesystem is
/// removed.
#[test]
#[ignore = "needs root"]
fn cli_import_unpack_rootfs() {
    assert_root("imagestore::cli_import_unpack_rootfs");
    let tmp = TempDir::new("imagestore-cli");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let archive = tmp.path().join("image.tar");
    build_image(&archive, "strata.test/cli:1", 2, &[]);
    let strata = |args: &[&str]| strata_ok(&daemon.socket, args);
    let archive = archive.to_str().unwrap();

    let first = strata(&["image", "import", archive]);
    assert!(
        first.contains("unpacked strata.test/cli:1: 5 layers applied, 0 already present"),
        "{first}"
    );
    let second = strata(&["image", "import", archive]);
    assert!(
        second.contains("unpacked strata.test/cli:1: 0 layers applied, 5 already present"),
        "{second}"
    );
    assert!(strata(&["image", "ls"]).contains("strata.test/cli:1"));
    let unpack = strata(&["image", "unpack", "strata.test/cli:1"]);
    assert!(
        unpack.contains("0 layers applied, 5 already present"),
        "{unpack}"
    );

    let root = tmp.path().join("rootfs");
    strata(&[
        "rootfs",
        "prepare",
        "strata.test/cli:1",
        "rootfs-1",
        "--mount",
        root.to_str().unwrap(),
    ]);
    let tree = crate::tree::capture(&root);
    strata(&["rootfs", "unmount", root.to_str().unwrap()]);
    let read = |p: &str| String::from_utf8(tree[p].data.clone()).unwrap();
    assert_eq!(read("/etc/a"), "a2\n");
    assert_eq!(read("/etc/c"), "c2\n");
    assert_eq!(read("/extra/f2"), "extra 2\n");
    assert!(!tree.contains_key("/etc/b"), "whited out");
    assert!(!tree.contains_key("/data/gone"), "whited out");
    let old: Vec<&String> = tree
        .keys()
        .filter(|k| k.starts_with("/data/old/"))
        .collect();
    assert_eq!(old, ["/data/old/new"], "opaque directory");
    assert_eq!(tree["/tmp"].mode, 0o1777);

    strata(&["container", "create", "strata.test/cli:1", "c1"]);
    assert!(strata(&["container", "label", "c1", "tier=web"]).contains("tier=web"));
    assert!(strata(&["container", "ls"]).contains("c1"));
    strata(&["container", "rm", "c1"]);
    strata(&["snapshot", "rm", "rootfs-1"]);
    strata(&["image", "rm", "--sync", "strata.test/cli:1"]);
    assert_eq!(
        strata(&["gc"]),
        "would remove (run with --force): 0 items\n"
    );
    assert_eq!(
        strata(&["snapshot", "ls"]).lines().count(),
        1,
        "only the header"
    );
    assert_eq!(
        strata(&["content", "ls"]).lines().count(),
        1,
        "only the header"
    );
    assert_eq!(
        crate::util::snapshot_dirs(&daemon.root),
        Vec::<String>::new()
    );
}

/// `strata image pull` from a registry (Debian's docker-registry, filled by skopeo): the
/// first pull downloads every blob and applies every layer, a second downloads and applies
/// nothing and says so, an image sharing the first one's layers downloads and applies only
/// its own; a registry that wants a password refuses an anonymous pull and serves one with
/// `--user`; removal and collection leave nothing.
#[test]
#[ignore = "needs root"]
fn pull_from_registry() {
    use crate::containerd::registry::Registry;
    assert_root("imagestore::pull_from_registry");
    let tmp = TempDir::new("imagestore-pull");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let open = Registry::start(&tmp.path().join("open"));
    let locked = Registry::start_authenticated(&tmp.path().join("locked"), "puller", "pw-1");
    let build = |name: &str, extra: usize| {
        let archive = tmp.path().join(format!("{extra}.tar"));
        build_image(&archive, name, extra, &[]);
        archive
    };
    // "two" is "one" and one more layer.
    let one = open.push(&build("e2e/one:1", 2), "e2e/one:1");
    let two = open.push(&build("e2e/two:1", 3), "e2e/two:1");
    let private = locked.push(&build("e2e/one:1", 2), "e2e/private:1");
    let strata = |args: &[&str]| strata_run(&daemon.socket, args);
    let ok = |args: &[&str]| strata_ok(&daemon.socket, args);

    let first = ok(&["image", "pull", &one]);
    assert!(
        first.contains("7 blobs downloaded")
            && first.contains("5 layers applied, 0 already present"),
        "{first}"
    );
    let again = ok(&["image", "pull", "--quiet", &one]);
    assert!(
        again.contains(
            "0 blobs downloaded (0 bytes), 7 present; 0 layers applied, 5 already present"
        ),
        "{again}"
    );
    let shared = ok(&["image", "pull", &two]);
    assert!(
        shared.contains("3 blobs downloaded")
            && shared.contains("1 layers applied, 5 already present"),
        "{shared}"
    );

    let root = tmp.path().join("rootfs");
    ok(&[
        "rootfs",
        "prepare",
        &two,
        "two-root",
        "--mount",
        root.to_str().unwrap(),
    ]);
    let tree = crate::tree::capture(&root);
    ok(&["rootfs", "unmount", root.to_str().unwrap()]);
    assert_eq!(tree["/extra/f3"].data, b"extra 3\n");
    assert_eq!(tree["/etc/a"].data, b"a2\n");
    assert!(!tree.contains_key("/etc/b"));
    ok(&["snapshot", "rm", "two-root"]);

    let refused = strata(&["image", "pull", &private]);
    assert!(!refused.status.success(), "{refused:?}");
    let with_user = ok(&["image", "pull", "--user", "puller:pw-1", &private]);
    assert!(
        with_user.contains("0 layers applied, 5 already present"),
        "{with_user}"
    );

    ok(&["image", "rm", &one, &two]);
    ok(&["image", "rm", "--sync", &private]);
    assert_eq!(ok(&["gc"]), "would remove (run with --force): 0 items\n");
    assert_eq!(
        ok(&["snapshot", "ls"]).lines().count(),
        1,
        "only the header"
    );
    assert_eq!(ok(&["content", "ls"]).lines().count(), 1, "only the header");
    assert_eq!(
        crate::util::snapshot_dirs(&daemon.root),
        Vec::<String>::new()
    );
}

/// Bytes written so far into the content store's writes in progress under `root`.
pub(crate) fn ingest_bytes(root: &std::path::Path) -> u64 {
    let Ok(dirs) = std::fs::read_dir(root.join("content/ingest")) else {
        return 0;
    };
    dirs.filter_map(|d| std::fs::metadata(d.ok()?.path().join("data")).ok())
        .map(|m| m.len())
        .sum()
}

/// kill -9 during a pull, of the client and then of the daemon, and pull again: the pull
/// completes, and once collected nothing is left over: no lease, no write in progress, no
/// blob or snapshot beyond the image's.
#[test]
#[ignore = "needs root"]
fn pull_interrupted_by_kill() {
    use crate::containerd::registry::Registry;
    assert_root("imagestore::pull_interrupted_by_kill");
    let tmp = TempDir::new("imagestore-kill");
    let mut daemon = Daemon::start(tmp.path(), "overlayfs");
    let registry = Registry::start(&tmp.path().join("registry"));
    for (round, kill_daemon) in [("client", false), ("daemon", true)] {
        let archive = tmp.path().join(format!("{round}.tar"));
        build_image(&archive, &format!("e2e/{round}:1"), 0, &[("BIG_MB", "120")]);
        let image = registry.push(&archive, &format!("e2e/{round}:1"));

        let mut pull = crate::util::strata_command()
            .arg("--address")
            .arg(&daemon.socket)
            .args(["image", "pull", "--quiet", &image])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ingest_bytes(&daemon.root) < 16 << 20 {
            assert!(
                pull.try_wait().unwrap().is_none(),
                "the pull ended before it was killed"
            );
            assert!(std::time::Instant::now() < deadline, "the pull never wrote");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if kill_daemon {
            daemon.kill();
            let _ = pull.wait();
            daemon.respawn();
        } else {
            pull.kill().unwrap();
            pull.wait().unwrap();
        }
        assert!(ingest_bytes(&daemon.root) > 0, "a partial write is left");

        let done = strata_ok(&daemon.socket, &["image", "pull", "--quiet", &image]);
        assert!(done.contains("3 layers applied"), "{done}");
        strata_ok(&daemon.socket, &["gc", "--force"]);
        assert_eq!(
            strata_ok(&daemon.socket, &["lease", "ls"]).lines().count(),
            1,
            "leases left"
        );
        assert_eq!(ingest_bytes(&daemon.root), 0, "writes left");
        let blobs = std::fs::read_dir(daemon.root.join("content/blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 2 + 3, "manifest, config, 3 layers");
        let snapshots = strata_ok(&daemon.socket, &["snapshot", "ls"]);
        assert_eq!(snapshots.lines().count(), 1 + 3, "{snapshots}");
        strata_ok(&daemon.socket, &["image", "rm", "--sync", &image]);
        assert_eq!(
            strata_ok(&daemon.socket, &["snapshot", "ls"])
                .lines()
                .count(),
            1
        );
        assert_eq!(
            crate::util::snapshot_dirs(&daemon.root),
            Vec::<String>::new()
        );
    }
}

/// `strata image import` of a docker archive (`docker save`'s format, made with skopeo): the
/// image is named as containerd names it, unpacks, and mounts the same tree as the OCI
/// archive it was made from.
#[test]
#[ignore = "needs root"]
fn docker_archive_import() {
    assert_root("imagestore::docker_archive_import");
    let tmp = TempDir::new("imagestore-docker");
    let daemon = Daemon::start(tmp.path(), "overlayfs");
    let oci = tmp.path().join("oci.tar");
    build_image(&oci, "strata.test/docker:1", 1, &[]);
    let docker = tmp.path().join("docker.tar");
    let copied = std::process::Command::new("/usr/bin/skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("docker-archive:{}:e2e/docker:1", docker.display()))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{copied:?}");
    let strata = |args: &[&str]| strata_ok(&daemon.socket, args);
    let imported = strata(&["image", "import", docker.to_str().unwrap()]);
    assert!(
        imported.contains("imported docker.io/e2e/docker:1"),
        "{imported}"
    );
    assert!(
        imported.contains("4 layers applied, 0 already present"),
        "{imported}"
    );
    let from_oci = strata(&["image", "import", oci.to_str().unwrap()]);
    assert!(
        from_oci.contains("0 layers applied, 4 already present"),
        "{from_oci}"
    );
    let mut trees = Vec::new();
    for (name, key) in [
        ("docker.io/e2e/docker:1", "d"),
        ("strata.test/docker:1", "o"),
    ] {
        let root = tmp.path().join(key);
        strata(&[
            "rootfs",
            "prepare",
            name,
            key,
            "--mount",
            root.to_str().unwrap(),
        ]);
        trees.push(crate::tree::capture(&root));
        strata(&["rootfs", "unmount", root.to_str().unwrap()]);
        strata(&["snapshot", "rm", key]);
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0]["/extra/f1"].data, b"extra 1\n");
}
