//! Content: containerd's Write protocol over [`WriteSession`] (a write resumed on a second
//! stream, every refusal of a request with its class and whether the write stays), a ref
//! held by one writer at a time, writes that need no data because the tree has the blob,
//! info, label updates by field mask, List and ListStatuses filters, lookups by digest,
//! deletion per namespace, and what survives reopening the store.

use imagestore::{StoreError, WriteAction, WriteRequest, WriteSession};

use crate::support::{
    Class, LabelUpdateRow, Store, error_class, filters, labels, outcome, paths, request, sha256,
    sorted,
};

/// A 3 MiB (and a bit) blob's bytes.
fn big() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

/// Writes the first half of `data` as `reference` in `ns` on one session, which is then
/// dropped (a client that lost its connection); the half's length.
fn write_half(s: &Store, ns: &str, reference: &str, data: &[u8]) -> usize {
    let half = data.len() / 2;
    let first = WriteRequest {
        total: data.len() as u64,
        expected: sha256(data),
        data: data[..half].to_vec(),
        ..request(WriteAction::Write, reference)
    };
    let mut session = WriteSession::open(s, ns, None, &first).unwrap();
    let answer = session.handle(s, first).unwrap();
    assert_eq!(answer.offset, half as u64);
    assert_eq!(answer.digest, sha256(&data[..half]), "the digest so far");
    half
}

/// A write dropped halfway is resumed by a second session on its ref: the status and the
/// second session's STAT say where it stands, the COMMIT with the rest stores the blob with
/// its labels, and the write is gone.
#[test]
fn a_write_resumed_on_a_second_session_commits_the_whole_blob() {
    let s = Store::new();
    let data = big();
    let digest = sha256(&data);
    let half = write_half(&s, "a", "blob-1", &data);

    let status = s.ingest_status("a", "blob-1").unwrap();
    assert_eq!(
        (
            status.offset,
            status.total,
            status.expected.map(|d| d.to_string())
        ),
        (half as u64, data.len() as u64, Some(digest.clone()))
    );
    let listed = s.ingest_list("a", &filters(&["ref==blob-1"]).unwrap());
    assert_eq!(listed.unwrap().len(), 1);

    let stat = request(WriteAction::Stat, "blob-1");
    let mut session = WriteSession::open(&s, "a", None, &stat).unwrap();
    let answer = session.handle(&s, stat).unwrap();
    assert_eq!(answer.offset, half as u64, "the second session resumes");
    assert_eq!(answer.total, data.len() as u64);
    assert!(answer.started <= answer.updated);
    let commit = WriteRequest {
        offset: half as u64,
        total: data.len() as u64,
        expected: digest.clone(),
        data: data[half..].to_vec(),
        labels: labels(&[("x", "1")]),
        ..request(WriteAction::Commit, "")
    };
    let answer = session.handle(&s, commit).unwrap();
    assert_eq!(
        (answer.offset, &answer.digest),
        (data.len() as u64, &digest)
    );
    assert!(session.committed());

    let info = s.content_info("a", &digest).unwrap();
    assert_eq!(
        (info.size, info.labels),
        (data.len() as i64, labels(&[("x", "1")]))
    );
    assert_eq!(s.read("a", &digest), data);
    assert_eq!(error_class(s.ingest_status("a", "blob-1")), Class::NotFound);
    assert_eq!(s.ingest_dirs(), 0, "the write's directory went with it");
}

/// Each row is one stream: its requests in order, the outcome of the last one (the
/// offset it answers, or the class of the error that ended the stream), and whether the
/// write is still there for another stream to resume.
#[test]
fn write_protocol_requests_and_refusals() {
    let s = Store::new();
    let present = s.blob("a", b"present", &[]);
    let w = |r: &str, offset: u64, data: &[u8]| WriteRequest {
        offset,
        data: data.to_vec(),
        ..request(WriteAction::Write, r)
    };
    let c = |r: &str, offset: u64, data: &[u8], total: u64, expected: &str| WriteRequest {
        offset,
        total,
        expected: expected.to_string(),
        data: data.to_vec(),
        ..request(WriteAction::Commit, r)
    };
    let stat = |r: &str| request(WriteAction::Stat, r);
    let other = sha256(b"other");
    type Row<'a> = (&'a str, Vec<WriteRequest>, Result<u64, Class>, bool);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("appends at the current offset",
            vec![w("append", 0, b"ab"), w("", 2, b"cd"), stat("")], Ok(4), true),
        ("offset 0 starts over",
            vec![w("restart", 0, b"aaaa"), w("", 0, b"bb"), stat("")], Ok(2), true),
        ("a write elsewhere than the current offset",
            vec![w("gap", 0, b"abc"), w("", 5, b"d")], Err(Class::OutOfRange), true),
        ("a commit with the right size and digest",
            vec![c("good", 0, b"data", 4, &sha256(b"data"))], Ok(4), false),
        ("a commit with another digest",
            vec![c("digest", 0, b"data", 0, &other)], Err(Class::FailedPrecondition), true),
        ("a commit with another size",
            vec![c("size", 0, b"data", 5, "")], Err(Class::FailedPrecondition), true),
        ("a ref changed mid-stream",
            vec![w("first", 0, b"a"), w("second", 1, b"b")], Err(Class::InvalidArgument), true),
        ("a request after the commit",
            vec![c("done", 0, b"done", 0, ""), stat("")], Err(Class::FailedPrecondition), false),
        ("a later request expecting a blob the namespace has",
            vec![w("late", 0, b"ab"), WriteRequest { expected: present.clone(), ..stat("") }],
            Err(Class::AlreadyExists), false),
        ("a first request expecting a blob the namespace has",
            vec![WriteRequest { expected: present.clone(), ..stat("early") }],
            Err(Class::AlreadyExists), false),
        ("a first request without a ref",
            vec![w("", 0, b"a")], Err(Class::InvalidArgument), false),
        ("a first expected digest that is no digest",
            vec![WriteRequest { expected: "sha256:nope".into(), ..stat("bad") }],
            Err(Class::InvalidArgument), false),
    ];
    for (name, requests, expected, left) in rows {
        let reference = requests[0].reference.clone();
        let mut last = Ok(0);
        match WriteSession::open(&s, "a", None, &requests[0]) {
            Err(e) => last = Err(e),
            Ok(mut session) => {
                for req in requests {
                    last = session.handle(&s, req).map(|a| a.offset);
                    if last.is_err() {
                        break;
                    }
                }
            }
        }
        assert_eq!(outcome(last), expected, "{name}");
        let status = s.ingest_status("a", &reference);
        assert_eq!(status.is_ok(), left, "{name}: whether the write stays");
    }
    // Only the good commit stored anything.
    assert_eq!(
        s.digests("a"),
        sorted(vec![present, sha256(b"data"), sha256(b"done")])
    );
}

/// A commit that fails its checks stores nothing and leaves the write, which an abort
/// drops once; a second abort finds nothing.
#[test]
fn a_failed_commit_stores_nothing_and_aborts_once() {
    let s = Store::new();
    let wrong = WriteRequest {
        expected: sha256(b"other"),
        data: b"data".to_vec(),
        ..request(WriteAction::Commit, "wrong")
    };
    let mut session = WriteSession::open(&s, "a", None, &wrong).unwrap();
    let failed = session.handle(&s, wrong);
    assert_eq!(error_class(failed), Class::FailedPrecondition);
    drop(session);
    assert_eq!(
        error_class(s.content_info("a", &sha256(b"data"))),
        Class::NotFound
    );
    assert_eq!(s.ingest_status("a", "wrong").unwrap().offset, 4);
    s.ingest_abort("a", "wrong").unwrap();
    assert_eq!(error_class(s.ingest_abort("a", "wrong")), Class::NotFound);
    assert_eq!(s.ingest_dirs(), 0);
}

/// One writer per ref at a time: a second is refused (Unavailable) until the first lets go;
/// the same ref in another namespace is another write.
#[test]
fn a_ref_has_one_writer_at_a_time() {
    let s = Store::new();
    let first = WriteRequest {
        data: b"abc".to_vec(),
        ..request(WriteAction::Write, "shared-ref")
    };
    let mut held = WriteSession::open(&s, "a", None, &first).unwrap();
    held.handle(&s, first.clone()).unwrap();
    let second = WriteSession::try_open(&s, "a", None, &first);
    assert_eq!(error_class(second.map(|_| ())), Class::Unavailable);
    let direct = s.content_writer("a", "shared-ref", 0, None, None);
    assert_eq!(error_class(direct.map(|_| ())), Class::Unavailable);
    let elsewhere = WriteSession::try_open(&s, "b", None, &first).unwrap();
    drop(elsewhere);
    drop(held);
    let mut again = WriteSession::try_open(&s, "a", None, &first).unwrap();
    let stat = again.handle(&s, request(WriteAction::Stat, "")).unwrap();
    assert_eq!(stat.offset, 3, "the write the first writer left");
}

/// The same blob written in another namespace needs no data (the tree has it): the write
/// opens at the blob's end and commits from there, after which that namespace has it too.
/// Writing it again where it is: AlreadyExists. Each namespace keeps its own labels.
#[test]
fn a_blob_in_the_tree_needs_no_data_in_another_namespace() {
    let s = Store::new();
    let data = big();
    let digest = s.blob("a", &data, &[("x", "1")]);
    assert_eq!(error_class(s.content_info("b", &digest)), Class::NotFound);
    assert!(s.digests("b").is_empty());

    let shared = WriteRequest {
        offset: data.len() as u64,
        total: data.len() as u64,
        expected: digest.clone(),
        ..request(WriteAction::Commit, "blob-1")
    };
    let mut session = WriteSession::open(&s, "b", None, &shared).unwrap();
    let answer = session.handle(&s, shared.clone()).unwrap();
    assert_eq!(
        (answer.offset, &answer.digest),
        (data.len() as u64, &digest)
    );
    assert_eq!(s.read("b", &digest), data);
    assert!(s.content_info("b", &digest).unwrap().labels.is_empty());

    let again = WriteSession::open(&s, "b", None, &shared);
    assert_eq!(error_class(again.map(|_| ())), Class::AlreadyExists);
    let direct = s.content_writer("b", "other-ref", 0, Some(&digest), None);
    assert_eq!(error_class(direct.map(|_| ())), Class::AlreadyExists);
    s.content_update(
        "b",
        api::services::content::v1::Info {
            digest: digest.clone(),
            labels: labels(&[("y", "2")]),
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        s.content_info("a", &digest).unwrap().labels,
        labels(&[("x", "1")])
    );
}

/// A write that needed no data becomes a real one when its client writes anyway: at the
/// blob's end it holds the blob's bytes and appends, at 0 it starts afresh, anywhere else
/// is OutOfRange; an empty write at either end changes nothing.
#[test]
fn a_write_that_needed_no_data_becomes_real_when_written() {
    let s = Store::new();
    let digest = s.blob("a", b"0123456789", &[]);
    type Row<'a> = (&'a str, u64, &'a [u8], Result<(u64, String), Class>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("appended at the end", 10, b"ab", Ok((12, sha256(b"0123456789ab")))),
        ("written from the start", 0, b"xy", Ok((2, sha256(b"xy")))),
        ("nothing at the end", 10, b"", Ok((10, digest.clone()))),
        ("nothing at the start", 0, b"", Ok((10, digest.clone()))),
        ("in the middle", 4, b"z", Err(Class::OutOfRange)),
    ];
    for (i, (name, offset, data, expected)) in rows.into_iter().enumerate() {
        let reference = format!("shared-{i}");
        let mut w = s
            .content_writer("b", &reference, 10, Some(&digest), None)
            .unwrap();
        assert_eq!(w.status().offset, 10, "{name}: opens at the blob's end");
        let got = w
            .write_at(offset, data)
            .map(|()| (w.status().offset, w.digest().to_string()));
        assert_eq!(outcome(got), expected, "{name}");
        drop(w);
        s.ingest_abort("b", &reference).unwrap();
    }
    assert_eq!(s.read("a", &digest), b"0123456789", "the blob is untouched");
}

/// Label updates by field mask: each row starts from labels {x: 1, keep: k}.
#[test]
fn content_labels_updated_by_field_mask() {
    let s = Store::new();
    let digest = s.blob("a", b"labelled", &[]);
    let start = labels(&[("x", "1"), ("keep", "k")]);
    let long = "v".repeat(4096);
    #[rustfmt::skip]
    let rows: Vec<LabelUpdateRow> = vec![
        ("single labels set and removed", vec![("y", "2")], vec!["labels.y", "labels.x"],
            Ok(vec![("y", "2"), ("keep", "k")])),
        ("every label by 'labels'", vec![("z", "3")], vec!["labels"], Ok(vec![("z", "3")])),
        ("no mask replaces every label", vec![("z", "3")], vec![], Ok(vec![("z", "3")])),
        ("an empty value removes", vec![("x", "")], vec!["labels.x"], Ok(vec![("keep", "k")])),
        ("a field that is no label", vec![], vec!["size"], Err(Class::InvalidArgument)),
        ("a label too long", vec![("big", long.as_str())], vec!["labels.big"],
            Err(Class::InvalidArgument)),
        ("an empty label key", vec![("", "v")], vec!["labels"], Err(Class::InvalidArgument)),
    ];
    for (name, new, mask, expected) in rows {
        let reset = api::services::content::v1::Info {
            digest: digest.clone(),
            labels: start.clone(),
            ..Default::default()
        };
        let before = s.content_update("a", reset, &[]).unwrap();
        assert_eq!(before.labels, start);
        let info = api::services::content::v1::Info {
            digest: digest.clone(),
            labels: labels(&new),
            ..Default::default()
        };
        let got = outcome(s.content_update("a", info, &paths(&mask)));
        assert_eq!(
            got.as_ref().map(|i| i.labels.clone()).map_err(|c| *c),
            expected.clone().map(|l| labels(&l)),
            "{name}"
        );
        let stored = s.content_info("a", &digest).unwrap();
        assert_eq!(stored.created_at, before.created_at, "{name}");
        let want = expected.map(|l| labels(&l)).unwrap_or(start.clone());
        assert_eq!(stored.labels, want, "{name}: what is stored");
    }
}

/// Info, Update, Open and Delete of a digest a namespace lacks, or of no digest at all.
#[test]
fn lookups_by_digest() {
    let s = Store::new();
    let digest = s.blob("a", b"mine", &[]);
    let never = sha256(b"never written");
    type Row<'a> = (&'a str, &'a str, &'a str, Class);
    let rows: Vec<Row> = vec![
        (
            "another namespace's blob",
            "b",
            digest.as_str(),
            Class::NotFound,
        ),
        ("a blob never written", "a", never.as_str(), Class::NotFound),
        ("no digest", "a", "sha256:xyz", Class::InvalidArgument),
        ("no algorithm", "a", "abc", Class::InvalidArgument),
    ];
    for (name, ns, d, expected) in rows {
        let update = api::services::content::v1::Info {
            digest: d.to_string(),
            ..Default::default()
        };
        let got = [
            error_class(s.content_info(ns, d)),
            error_class(s.content_open(ns, d).map(|(_, size)| size)),
            error_class(s.content_update(ns, update, &[])),
            error_class(s.content_delete(ns, d)),
        ];
        assert_eq!(got, [expected; 4], "{name}");
    }
    assert_eq!(s.read("a", &digest), b"mine");
}

/// List by filter (alternatives OR, selectors of one filter AND), and a filter the
/// language refuses.
#[test]
fn content_listed_by_filter() {
    let s = Store::new();
    let one = s.blob("a", b"one", &[("y", "2")]);
    let two = s.blob("a", b"two", &[("y", "3"), ("tier", "base")]);
    let three = s.blob("a", b"three", &[]);
    s.blob("b", b"elsewhere", &[("y", "2")]);
    let by_digest = format!("digest=={one}");
    type Row<'a> = (&'a str, Vec<&'a str>, Result<Vec<&'a String>, Class>);
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("no filter", vec![], Ok(vec![&one, &two, &three])),
        ("an empty filter", vec![""], Ok(vec![&one, &two, &three])),
        ("a label's value", vec!["labels.y==2"], Ok(vec![&one])),
        ("a value nobody has", vec!["labels.y==4"], Ok(vec![])),
        ("a label's presence", vec!["labels.y"], Ok(vec![&one, &two])),
        ("not equal, absent included", vec!["labels.y!=2"], Ok(vec![&two, &three])),
        ("a regular expression", vec!["labels.y~=^[23]$"], Ok(vec![&one, &two])),
        ("the digest", vec![by_digest.as_str()], Ok(vec![&one])),
        ("either of two", vec!["labels.y==2", "labels.tier==base"], Ok(vec![&one, &two])),
        ("both of two", vec!["labels.y==3,labels.tier==base"], Ok(vec![&two])),
        ("both of two, one failing", vec!["labels.y==2,labels.tier==base"], Ok(vec![])),
        ("no value", vec!["labels.y=="], Err(Class::InvalidArgument)),
        ("a bad regular expression", vec!["labels.y~=("], Err(Class::InvalidArgument)),
    ];
    for (name, f, expected) in rows {
        let got = filters(&f).and_then(|f| s.content_list("a", &f));
        let got = outcome(got).map(|l| sorted(l.into_iter().map(|i| i.digest).collect()));
        let expected = expected.map(|v| sorted(v.into_iter().cloned().collect()));
        assert_eq!(got, expected, "{name}");
    }
}

/// ListStatuses by filter on the ref.
#[test]
fn writes_listed_by_filter() {
    let s = Store::new();
    for reference in ["r-1", "r-2", "other"] {
        let mut w = s.content_writer("a", reference, 0, None, None).unwrap();
        w.write_at(0, reference.as_bytes()).unwrap();
    }
    type Row<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>);
    let rows: Vec<Row> = vec![
        ("no filter", vec![], vec!["other", "r-1", "r-2"]),
        ("one ref", vec!["ref==r-1"], vec!["r-1"]),
        ("refs by pattern", vec!["ref~=^r-"], vec!["r-1", "r-2"]),
        ("a field writes lack", vec!["labels.x==1"], vec![]),
    ];
    for (name, f, expected) in rows {
        let listed = s.ingest_list("a", &filters(&f).unwrap()).unwrap();
        let refs = sorted(listed.into_iter().map(|st| st.reference).collect());
        assert_eq!(refs, expected, "{name}");
    }
    assert!(s.ingest_list("b", &Default::default()).unwrap().is_empty());
}

/// Deleting removes the namespace's record; the file goes with the last record.
#[test]
fn a_blob_file_goes_with_its_last_record() {
    let s = Store::new();
    let digest = s.blob("a", b"two namespaces", &[]);
    assert_eq!(s.blob("b", b"two namespaces", &[]), digest);
    s.content_delete("b", &digest).unwrap();
    assert!(s.blob_file(&digest).exists(), "still a's");
    assert_eq!(s.read("a", &digest), b"two namespaces");
    assert_eq!(error_class(s.content_delete("b", &digest)), Class::NotFound);
    s.content_delete("a", &digest).unwrap();
    assert!(!s.blob_file(&digest).exists());
    assert_eq!(error_class(s.content_info("a", &digest)), Class::NotFound);
}

/// Records, blobs and a write in progress survive reopening the store (a daemon restart):
/// the write resumes where it stood.
#[test]
fn records_and_writes_survive_reopening() {
    let s = Store::new();
    let data = big();
    let digest = s.blob("a", &data, &[("x", "1")]);
    let half = write_half(&s, "a", "resumed", b"resumed after a restart");
    let s = s.reopen();
    assert_eq!(
        s.content_info("a", &digest).unwrap().labels,
        labels(&[("x", "1")])
    );
    assert_eq!(s.read("a", &digest), data);
    let stat = request(WriteAction::Stat, "resumed");
    let mut session = WriteSession::open(&s, "a", None, &stat).unwrap();
    assert_eq!(session.handle(&s, stat).unwrap().offset, half as u64);
    let rest = WriteRequest {
        offset: half as u64,
        data: b"resumed after a restart"[half..].to_vec(),
        ..request(WriteAction::Commit, "")
    };
    let answer = session.handle(&s, rest).unwrap();
    assert_eq!(answer.digest, sha256(b"resumed after a restart"));
}

/// A store error's own words end with containerd's class text (clients match on it).
#[test]
fn error_messages_end_with_the_class() {
    let s = Store::new();
    type Row<'a> = (StoreError, &'a str);
    let rows: Vec<Row> = vec![
        (
            s.content_info("a", &sha256(b"x")).unwrap_err(),
            ": not found",
        ),
        (
            s.content_info("a", "nope").unwrap_err(),
            ": invalid argument",
        ),
        (s.ingest_abort("a", "none").unwrap_err(), ": not found"),
    ];
    for (e, suffix) in rows {
        assert!(e.to_string().ends_with(suffix), "{e}");
    }
}
