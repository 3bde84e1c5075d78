//! Tests of the directory source: real files in temporary folders, real notify.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::policy::{PolicyKey, PolicyKind};

/// The bound for the watch tests: how long a change may take to arrive, not a timing
/// assertion.
const PATIENCE: Duration = Duration::from_secs(5);

fn cnp(name: &str, app: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\n\
         kind: CiliumNetworkPolicy\n\
         metadata: {{name: {name}, namespace: default}}\n\
         spec:\n  \
           endpointSelector: {{matchLabels: {{app: {app}}}}}\n  \
           ingress: [{{}}]\n"
    )
}

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Pod\n\
         metadata: {{name: {name}, namespace: default, labels: {{app: a}}}}\n\
         spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\n\
         status: {{podIP: 10.0.0.1}}\n"
    )
}

fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

fn policy(name: &str) -> ObjectKey {
    ObjectKey::Policy(PolicyKey {
        kind: PolicyKind::Namespaced,
        namespace: Some("default".into()),
        name: name.into(),
    })
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).expect("write a manifest");
}

fn remove(dir: &Path, name: &str) {
    fs::remove_file(dir.join(name)).expect("remove a manifest");
}

fn loaded(dir: &Path) -> (DirectorySource, Vec<SourceEvent>) {
    let mut source = DirectorySource::new(dir);
    let events = source.load().expect("the directory loads");
    (source, events)
}

/// The fingerprint of the one object in `text`, to tell which version was applied.
fn fingerprint_of(text: &str) -> u64 {
    let parsed = manifest::parse_str("test", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    fingerprint(parsed.objects.first().expect("one object"))
}

#[derive(Debug, Default, PartialEq)]
struct Summary {
    applied: Vec<ObjectKey>,
    deleted: Vec<ObjectKey>,
    invalid: Vec<String>,
    synced: usize,
}

fn summary(events: &[SourceEvent]) -> Summary {
    let mut summary = Summary::default();
    for event in events {
        match event {
            SourceEvent::Applied(object) => summary.applied.push(object.key()),
            SourceEvent::Deleted(key) => summary.deleted.push(key.clone()),
            SourceEvent::Invalid(error) => summary.invalid.push(error.object.clone()),
            SourceEvent::Synced => summary.synced += 1,
        }
    }
    summary
}

fn applied_fingerprints(events: &[SourceEvent]) -> BTreeMap<ObjectKey, u64> {
    events
        .iter()
        .filter_map(|event| match event {
            SourceEvent::Applied(object) => Some((object.key(), fingerprint(object))),
            _ => None,
        })
        .collect()
}

#[test]
fn manifest_names() {
    for name in ["a.yaml", "a.yml", "a.json", "a.b.yaml"] {
        assert!(is_manifest_name(name), "{name}");
    }
    for name in [
        ".a.yaml",
        ".#a.yaml",
        "a.yaml~",
        "#a.yaml#",
        ".a.yaml.swp",
        "a.yaml.swp",
        "a.txt",
        "yaml",
        ".yaml",
    ] {
        assert!(!is_manifest_name(name), "{name}");
    }
}

#[test]
fn load_reads_multi_document_files_and_lists() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "a.yaml", &docs(&[cnp("p1", "a"), pod("x")]));
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Namespace, metadata: {{name: default}}}}\n",
        cnp("p2", "b").trim_end().replace('\n', "\n  ")
    );
    write(dir.path(), "b.yml", &list);
    write(
        dir.path(),
        "c.json",
        r#"{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p3"},
            "spec": {"endpointSelector": {}, "ingress": [{}]}}"#,
    );
    // Editor leftovers, hidden files and other extensions are not manifests.
    for ignored in [
        ".#a.yaml",
        "a.yaml~",
        ".a.yaml.swp",
        "notes.txt",
        ".hidden.yaml",
    ] {
        write(dir.path(), ignored, &cnp("ignored", "a"));
    }
    fs::create_dir(dir.path().join("sub.yaml")).expect("create a folder");

    let (_, events) = loaded(dir.path());
    assert!(matches!(events.last(), Some(SourceEvent::Synced)));
    let summary = summary(&events);
    assert_eq!(
        summary.applied,
        vec![
            policy("p1"),
            ObjectKey::Pod {
                namespace: "default".into(),
                name: "x".into()
            },
            policy("p2"),
            ObjectKey::Namespace("default".into()),
            policy("p3"),
        ],
        "file-name order, then document order"
    );
    assert!(summary.deleted.is_empty() && summary.invalid.is_empty());
    assert_eq!(summary.synced, 1);
}

#[test]
fn an_invalid_policy_does_not_hide_the_valid_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = cnp("p2", "a").replace("ingress: [{}]", "ingress: not-a-list");
    write(dir.path(), "a.yaml", &docs(&[cnp("p1", "a"), broken]));
    write(dir.path(), "b.yaml", &cnp("p3", "a"));

    let (_, events) = loaded(dir.path());
    let summary = summary(&events);
    assert_eq!(summary.applied, vec![policy("p1"), policy("p3")]);
    assert_eq!(summary.invalid.len(), 1, "{:?}", summary.invalid);
    assert!(summary.invalid[0].contains("p2"), "{:?}", summary.invalid);
    assert!(matches!(events.last(), Some(SourceEvent::Synced)));
}

#[test]
fn rescan_applies_only_the_changed_object() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "a.yaml",
        &docs(&[cnp("p1", "a"), cnp("p2", "a")]),
    );
    write(dir.path(), "b.yaml", &cnp("p3", "a"));
    let (mut source, _) = loaded(dir.path());
    assert!(source.rescan().is_empty(), "nothing changed");

    // Same length, same second: only the content tells the change.
    write(
        dir.path(),
        "a.yaml",
        &docs(&[cnp("p1", "a"), cnp("p2", "b")]),
    );
    let events = source.rescan();
    assert_eq!(summary(&events).applied, vec![policy("p2")]);
    assert_eq!(events.len(), 1);
    assert_eq!(
        applied_fingerprints(&events).get(&policy("p2")),
        Some(&fingerprint_of(&cnp("p2", "b")))
    );
    assert!(source.rescan().is_empty(), "nothing changed since");
}

#[test]
fn removing_a_document_deletes_its_object() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "a.yaml",
        &docs(&[cnp("p1", "a"), cnp("p2", "a")]),
    );
    let (mut source, _) = loaded(dir.path());
    write(dir.path(), "a.yaml", &cnp("p1", "a"));
    assert_eq!(
        summary(&source.rescan()),
        Summary {
            deleted: vec![policy("p2")],
            ..Summary::default()
        }
    );
}

#[test]
fn removing_a_file_deletes_its_objects() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "a.yaml",
        &docs(&[cnp("p1", "a"), cnp("p2", "a")]),
    );
    write(dir.path(), "b.yaml", &cnp("p3", "a"));
    let (mut source, _) = loaded(dir.path());
    remove(dir.path(), "a.yaml");
    assert_eq!(
        summary(&source.rescan()),
        Summary {
            deleted: vec![policy("p1"), policy("p2")],
            ..Summary::default()
        }
    );
}

#[test]
fn a_broken_file_deletes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "a.yaml",
        &docs(&[cnp("p1", "a"), cnp("p2", "a")]),
    );
    let (mut source, _) = loaded(dir.path());

    write(
        dir.path(),
        "a.yaml",
        "apiVersion: cilium.io/v2\nspec: [unclosed\n",
    );
    let summary_broken = summary(&source.rescan());
    assert!(summary_broken.deleted.is_empty(), "{summary_broken:?}");
    assert!(summary_broken.applied.is_empty(), "{summary_broken:?}");
    assert_eq!(summary_broken.invalid.len(), 1, "{summary_broken:?}");
    assert!(
        source.rescan().is_empty(),
        "the same error is reported once"
    );

    // Fixed, without p2: now p2 is really gone.
    write(dir.path(), "a.yaml", &cnp("p1", "a"));
    assert_eq!(
        summary(&source.rescan()),
        Summary {
            deleted: vec![policy("p2")],
            ..Summary::default()
        }
    );
}

#[test]
fn a_file_with_an_invalid_object_still_applies_its_valid_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "a.yaml",
        &docs(&[cnp("p1", "a"), cnp("p2", "a"), cnp("p3", "a")]),
    );
    let (mut source, _) = loaded(dir.path());

    // p1 changed, p2 dropped, p3 broken: p1 applies, p2 and p3 stay as they were.
    let broken = cnp("p3", "a").replace("ingress: [{}]", "ingress: not-a-list");
    write(dir.path(), "a.yaml", &docs(&[cnp("p1", "b"), broken]));
    let summary = summary(&source.rescan());
    assert_eq!(summary.applied, vec![policy("p1")]);
    assert!(summary.deleted.is_empty(), "{summary:?}");
    assert_eq!(summary.invalid.len(), 1, "{summary:?}");
}

#[test]
fn an_object_in_two_files_lives_until_both_are_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "a.yaml", &cnp("p1", "a"));
    write(dir.path(), "b.yaml", &cnp("p1", "b"));
    let (mut source, events) = loaded(dir.path());
    assert_eq!(summary(&events).applied, vec![policy("p1")], "applied once");
    assert_eq!(
        applied_fingerprints(&events).get(&policy("p1")),
        Some(&fingerprint_of(&cnp("p1", "b"))),
        "the last file by name wins at start-up"
    );

    // Editing a.yaml applies its version: the last applied wins.
    write(dir.path(), "a.yaml", &cnp("p1", "c"));
    let events = source.rescan();
    assert_eq!(
        applied_fingerprints(&events).get(&policy("p1")),
        Some(&fingerprint_of(&cnp("p1", "c")))
    );

    // Removing the file in force falls back to the other file's version.
    remove(dir.path(), "a.yaml");
    let events = source.rescan();
    assert_eq!(summary(&events).applied, vec![policy("p1")]);
    assert_eq!(
        applied_fingerprints(&events).get(&policy("p1")),
        Some(&fingerprint_of(&cnp("p1", "b")))
    );

    // Only when no file defines it is it deleted.
    remove(dir.path(), "b.yaml");
    assert_eq!(summary(&source.rescan()).deleted, vec![policy("p1")]);
}

#[test]
fn removing_a_copy_that_is_not_in_force_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "a.yaml", &cnp("p1", "a"));
    write(dir.path(), "b.yaml", &cnp("p1", "b"));
    let (mut source, _) = loaded(dir.path());
    remove(dir.path(), "a.yaml");
    assert!(source.rescan().is_empty());
}

#[test]
fn load_fails_on_a_missing_directory_or_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing");
    match DirectorySource::new(&missing).load() {
        Err(SourceError::DirectoryMissing { path }) => assert_eq!(path, missing),
        other => panic!("expected DirectoryMissing, got {other:?}"),
    }
    write(dir.path(), "a.yaml", &cnp("p1", "a"));
    let file = dir.path().join("a.yaml");
    assert!(matches!(
        DirectorySource::new(&file).load(),
        Err(SourceError::NotADirectory { path }) if path == file
    ));
}

#[test]
fn a_vanished_directory_deletes_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("manifests");
    fs::create_dir(&dir).expect("create the manifest folder");
    write(&dir, "a.yaml", &cnp("p1", "a"));
    let (mut source, _) = loaded(&dir);
    fs::remove_dir_all(&dir).expect("remove the manifest folder");
    let summary = summary(&source.rescan());
    assert!(summary.deleted.is_empty(), "{summary:?}");
    assert_eq!(summary.invalid.len(), 1, "{summary:?}");
    assert!(source.rescan().is_empty(), "reported once");
}

#[test]
fn only_old_stamps_are_trusted() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "a.yaml", &cnp("p1", "a"));
    let meta = fs::metadata(dir.path().join("a.yaml")).expect("stat");
    let stamp = Stamp::of(&meta);
    let now = SystemTime::now();
    assert!(!stamp.trusted(now), "just written");
    assert!(stamp.trusted(now + RACY_WINDOW + Duration::from_secs(1)));
}

/// Receives until an event of the wanted kind arrives, within `PATIENCE`.
fn receive(rx: &mpsc::Receiver<SourceEvent>, want: impl Fn(&SourceEvent) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(event) if want(&event) => return,
            Ok(event) => seen.push(event),
            Err(_) => break,
        }
    }
    panic!("the wanted event did not arrive within {PATIENCE:?}; saw {seen:?}");
}

#[test]
fn the_watch_applies_new_files_and_deletes_removed_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut source: Box<dyn Source> = Box::new(DirectorySource::new(dir.path()));
    let events = source.load().expect("the directory loads");
    assert_eq!(
        summary(&events),
        Summary {
            synced: 1,
            ..Summary::default()
        }
    );
    let (tx, rx) = mpsc::channel();
    let guard = source.watch(tx).expect("the watch starts");

    write(dir.path(), "a.yaml", &cnp("p1", "a"));
    receive(
        &rx,
        |e| matches!(e, SourceEvent::Applied(o) if o.key() == policy("p1")),
    );
    remove(dir.path(), "a.yaml");
    receive(
        &rx,
        |e| matches!(e, SourceEvent::Deleted(k) if *k == policy("p1")),
    );

    // Dropping the guard ends the thread, which drops the sender.
    drop(guard);
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the watch did not stop"),
        }
    }
}
