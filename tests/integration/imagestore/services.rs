//! containerd's Content, Images, Containers, Leases, Namespaces, Introspection and Version
//! services over the daemon's socket: what only the socket shows. The namespace header is
//! required; the store's errors reach clients with containerd's gRPC codes (a few for each
//! service); Read streams a blob in 1 MiB answers from any offset; a Write resumes on a
//! second stream; List and ListStatuses, generated lease ids, the snapshotter's plugin
//! entry and the version. The store's own behaviour (field masks, filters, validation,
//! namespaces, collection) is tested in process: `imagestore/tests/store`.

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
use api::services::version::v1::version_client::VersionClient;
use api::types::Descriptor;
use prost_types::FieldMask;
use tonic::Code;
use tonic::transport::Channel;

use super::{labels, ns};
use crate::util::{Daemon, TempDir, sha256};

/// The size of each Read answer (containerd's).
const READ_CHUNK: usize = 1 << 20;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// The code a Write stream of `requests` in `namespace` ends with (refused at once, or its
/// first answer an error).
async fn write_code(
    c: &mut ContentClient<Channel>,
    namespace: &str,
    requests: Vec<ctpb::WriteContentRequest>,
) -> Code {
    match c.write(ns(namespace, tokio_stream::iter(requests))).await {
        Err(s) => s.code(),
        Ok(r) => r.into_inner().message().await.unwrap_err().code(),
    }
}

/// Writes `data` as ref `reference` in `namespace` in two halves on two streams (the first
/// stream dropped before committing, as a client that lost its connection), checking the
/// status between them and the offset the second finds; the digest.
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
        (status.offset, status.total, status.r#ref.as_str()),
        (half as i64, data.len() as i64, reference)
    );
    assert_eq!(status.expected, digest);
    let statuses = c
        .list_statuses(ns(
            namespace,
            ctpb::ListStatusesRequest {
                filters: vec![format!("ref=={reference}")],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(statuses, [status]);

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
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends"
    );
    digest
}

/// Reads `size` bytes (0: to the end) of `digest` from `offset`; the bytes and how many
/// answers brought them (each at most [`READ_CHUNK`], offsets counting from `offset`).
async fn read_all(
    c: &mut ContentClient<Channel>,
    namespace: &str,
    digest: &str,
    offset: i64,
    size: i64,
) -> Result<(Vec<u8>, usize), tonic::Status> {
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
    let (mut out, mut answers) = (Vec::new(), 0);
    while let Some(chunk) = stream.message().await? {
        assert_eq!(
            chunk.offset,
            out.len() as i64,
            "offsets count from the requested one"
        );
        assert!(chunk.data.len() <= READ_CHUNK);
        out.extend_from_slice(&chunk.data);
        answers += 1;
    }
    Ok((out, answers))
}

/// Needs no root: the daemon runs a native snapshotter, and nothing here mounts.
#[tokio::test(flavor = "multi_thread")]
async fn codes_streams_and_headers() {
    let tmp = TempDir::new("imagestore");
    let daemon = Daemon::start(tmp.path(), "native");
    let channel = api::channel::connect(&daemon.socket).await.unwrap();
    let mut content = ContentClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let mut containers = ContainersClient::new(channel.clone());
    let mut leases = LeasesClient::new(channel.clone());
    let mut namespaces = NamespacesClient::new(channel.clone());
    let mut introspection = IntrospectionClient::new(channel.clone());
    let mut version = VersionClient::new(channel);

    // No namespace header: containerd's FailedPrecondition from every namespaced service.
    let missing = [
        (
            "content",
            content
                .info(ns(
                    "",
                    ctpb::InfoRequest {
                        digest: sha256(b"x"),
                    },
                ))
                .await
                .map(drop),
        ),
        (
            "images",
            images
                .list(ns("", ipb::ListImagesRequest::default()))
                .await
                .map(drop),
        ),
        (
            "containers",
            containers
                .list(ns("", cpb::ListContainersRequest::default()))
                .await
                .map(drop),
        ),
        (
            "leases",
            leases
                .list(ns("", lpb::ListRequest::default()))
                .await
                .map(drop),
        ),
    ];
    for (service, result) in missing {
        let err = result.expect_err(service);
        assert_eq!(err.code(), Code::FailedPrecondition, "{service}");
        assert!(err.message().contains("namespace is required"), "{err:?}");
    }

    // Content: a 3 MiB blob written in two streams, read whole and from an offset in
    // several 1 MiB answers, listed by filter.
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let digest = write_resumed(&mut content, "a", "blob-1", &data, labels(&[("x", "1")])).await;
    let (whole, answers) = read_all(&mut content, "a", &digest, 0, 0).await.unwrap();
    assert_eq!((whole == data, answers), (true, 4));
    let (part, answers) = read_all(&mut content, "a", &digest, 1_000_000, 2_000_000)
        .await
        .unwrap();
    assert_eq!((part == data[1_000_000..3_000_000], answers), (true, 2));
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
        (info.size, info.labels),
        (data.len() as i64, labels(&[("x", "1")]))
    );
    let list = |filters: &[&str]| ctpb::ListContentRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let mut listed = content
        .list(ns("a", list(&["labels.x==1"])))
        .await
        .unwrap()
        .into_inner();
    let batch = listed.message().await.unwrap().unwrap();
    assert_eq!(batch.info.len(), 1);
    assert!(listed.message().await.unwrap().is_none());

    // Images, containers and leases for the refusals below.
    let target = Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: digest.clone(),
        size: data.len() as i64,
        annotations: HashMap::new(),
    };
    let image = |name: &str| ipb::Image {
        name: name.into(),
        target: Some(target.clone()),
        ..Default::default()
    };
    let create_image = |i: ipb::Image| ipb::CreateImageRequest {
        image: Some(i),
        source_date_epoch: None,
    };
    images
        .create(ns("a", create_image(image("example.test/one:1"))))
        .await
        .unwrap();
    let container = |id: &str| cpb::Container {
        id: id.into(),
        runtime: Some(cpb::container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any::default()),
        snapshotter: "strata".into(),
        snapshot_key: id.into(),
        ..Default::default()
    };
    for id in ["web", "db"] {
        let c = cpb::CreateContainerRequest {
            container: Some(container(id)),
        };
        containers.create(ns("a", c)).await.unwrap();
    }
    let mut listed = containers
        .list_stream(ns(
            "a",
            cpb::ListContainersRequest {
                filters: vec!["id==db".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = listed.message().await.unwrap().unwrap().container.unwrap();
    assert_eq!(first.id, "db");
    assert!(listed.message().await.unwrap().is_none());
    let lease = |id: &str| lpb::CreateRequest {
        id: id.into(),
        labels: HashMap::new(),
    };
    let generated = leases.create(ns("a", lease(""))).await.unwrap();
    let generated = generated.into_inner().lease.unwrap();
    assert!(!generated.id.is_empty(), "an id is made up for the client");
    leases.create(ns("a", lease("pull-1"))).await.unwrap();
    let resource = |t: &str, id: &str| {
        Some(lpb::Resource {
            id: id.into(),
            r#type: t.into(),
        })
    };
    let add = |id: &str, t: &str, rid: &str| lpb::AddResourceRequest {
        id: id.into(),
        resource: resource(t, rid),
    };
    leases
        .add_resource(ns("a", add("pull-1", "content", &digest)))
        .await
        .unwrap();
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
    assert_eq!(held, [resource("content", &digest).unwrap()]);
    let namespace = |name: &str| npb::CreateNamespaceRequest {
        namespace: Some(npb::Namespace {
            name: name.into(),
            labels: HashMap::new(),
        }),
    };
    namespaces.create(ns("", namespace("c"))).await.unwrap();

    // The store's errors as containerd's codes, a few per service.
    let mut no_target = image("example.test/bad:1");
    no_target.target = None;
    let mut immutable = container("web");
    immutable.snapshotter = "other".into();
    let wrong_digest = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Commit as i32,
        r#ref: "wrong".into(),
        expected: sha256(b"other"),
        data: b"data".to_vec(),
        ..Default::default()
    }];
    let existing = vec![ctpb::WriteContentRequest {
        action: ctpb::WriteAction::Commit as i32,
        r#ref: "again".into(),
        expected: digest.clone(),
        ..Default::default()
    }];
    let past_end = read_all(&mut content, "a", &digest, data.len() as i64 + 1, 0).await;
    let bad_update = ctpb::UpdateRequest {
        info: Some(ctpb::Info {
            digest: digest.clone(),
            ..Default::default()
        }),
        update_mask: mask(&["size"]),
    };
    let delete_ns = |name: &str| npb::DeleteNamespaceRequest { name: name.into() };
    let rows: Vec<(&str, Code, Code)> = vec![
        (
            "content: Info in a namespace without the blob",
            code(
                content
                    .info(ns(
                        "b",
                        ctpb::InfoRequest {
                            digest: digest.clone(),
                        },
                    ))
                    .await,
            ),
            Code::NotFound,
        ),
        (
            "content: Update of a field that is no label",
            code(content.update(ns("a", bad_update)).await),
            Code::InvalidArgument,
        ),
        (
            "content: List with a filter that does not parse",
            code(content.list(ns("a", list(&["labels.x=="]))).await),
            Code::InvalidArgument,
        ),
        (
            "content: Read past the end",
            code(past_end),
            Code::OutOfRange,
        ),
        (
            "content: Write committing another digest",
            write_code(&mut content, "a", wrong_digest).await,
            Code::FailedPrecondition,
        ),
        (
            "content: Write expecting a blob the namespace has",
            write_code(&mut content, "a", existing).await,
            Code::AlreadyExists,
        ),
        (
            "content: Abort of no write",
            code(
                content
                    .abort(ns(
                        "a",
                        ctpb::AbortRequest {
                            r#ref: "none".into(),
                        },
                    ))
                    .await,
            ),
            Code::NotFound,
        ),
        (
            "images: Create of a name taken",
            code(
                images
                    .create(ns("a", create_image(image("example.test/one:1"))))
                    .await,
            ),
            Code::AlreadyExists,
        ),
        (
            "images: Create without a target",
            code(images.create(ns("a", create_image(no_target))).await),
            Code::InvalidArgument,
        ),
        (
            "images: Get in another namespace",
            code(
                images
                    .get(ns(
                        "b",
                        ipb::GetImageRequest {
                            name: "example.test/one:1".into(),
                        },
                    ))
                    .await,
            ),
            Code::NotFound,
        ),
        (
            "containers: Create with an id that is no identifier",
            code(
                containers
                    .create(ns(
                        "a",
                        cpb::CreateContainerRequest {
                            container: Some(container("-bad")),
                        },
                    ))
                    .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "containers: Update of the snapshotter",
            code(
                containers
                    .update(ns(
                        "a",
                        cpb::UpdateContainerRequest {
                            container: Some(immutable),
                            update_mask: None,
                        },
                    ))
                    .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "containers: Delete in another namespace",
            code(
                containers
                    .delete(ns("b", cpb::DeleteContainerRequest { id: "web".into() }))
                    .await,
            ),
            Code::NotFound,
        ),
        (
            "leases: Create of an id taken",
            code(leases.create(ns("a", lease("pull-1"))).await),
            Code::AlreadyExists,
        ),
        (
            "leases: AddResource of an unknown type",
            code(
                leases
                    .add_resource(ns("a", add("pull-1", "bogus", "x")))
                    .await,
            ),
            Code::Unimplemented,
        ),
        (
            "leases: AddResource to another namespace's lease",
            code(
                leases
                    .add_resource(ns("b", add("pull-1", "content", &digest)))
                    .await,
            ),
            Code::NotFound,
        ),
        (
            "namespaces: Create of one that exists",
            code(namespaces.create(ns("", namespace("a"))).await),
            Code::AlreadyExists,
        ),
        (
            "namespaces: Create with a name that is no identifier",
            code(namespaces.create(ns("", namespace("Bad Name"))).await),
            Code::InvalidArgument,
        ),
        (
            "namespaces: Delete of one holding things",
            code(namespaces.delete(ns("", delete_ns("a"))).await),
            Code::FailedPrecondition,
        ),
        (
            "namespaces: Delete of one that does not exist",
            code(namespaces.delete(ns("", delete_ns("none"))).await),
            Code::NotFound,
        ),
    ];
    for (name, got, expected) in rows {
        assert_eq!(got, expected, "{name}");
    }
    let all: Vec<String> = namespaces
        .list(ns("", npb::ListNamespacesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(all, ["a", "c"], "the refused calls stored nothing");

    // Introspection: the snapshotter with its root, found by containerd's filter; Version.
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
    let v = version.version(()).await.unwrap().into_inner();
    assert_eq!(v.version, format!("strata {}", env!("CARGO_PKG_VERSION")));
}
