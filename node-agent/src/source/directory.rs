//! The directory source: a folder of manifests read like `kubectl apply -f DIR`. Adding or
//! changing a file applies its objects, removing a file (or a document from a file)
//! deletes them.
//!
//! Which files: `*.yaml`, `*.yml` and `*.json` (JSON is YAML) directly in the folder; sub-
//! folders are not read. Hidden files and editor leftovers (`.#x`, `x~`, `#x#`, `*.swp`)
//! are ignored, so an editor's temporary copy never applies anything. Symbolic links are
//! followed, so a mounted ConfigMap (whose files are links into `..data/`) works.
//!
//! Rules for changes, in the order they are checked:
//! - A file whose stamp (size, times, inode) is unchanged is not read again.
//! - An object is applied again only when its content changed (a fingerprint of it), so
//!   saving a file with one edited policy re-applies that policy alone.
//! - A file that has errors deletes nothing: objects it defined before that are missing from
//!   what it now validly defines stay in force, as a rejected `kubectl apply` leaves the old
//!   object. A half-saved file must not remove a working policy. Once the file reads
//!   cleanly, what it no longer defines is deleted.
//! - An object defined by several files is in force in the version applied last (files are
//!   read in name order, so at start-up the last file by name wins), and is deleted only
//!   when no file defines it any more. When the file whose version is in force stops
//!   defining it, the version of another file (the last by name) is applied.
//! - If the folder itself cannot be listed, nothing is deleted; the problem is reported as
//!   `Invalid` once.
//!
//! Within one batch the `Applied` events come first, then `Deleted`, then `Invalid`, so a
//! consumer that acts on each event never passes through a state with neither the old nor
//! the new version of a renamed policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, trace, warn};

use super::{Source, SourceError, SourceEvent, WatchGuard};
use crate::manifest::{self, ManifestError, Object, ObjectKey};
use crate::policy::FieldError;

/// How long the watch waits after a change for further changes before rescanning, so that
/// an editor's save (truncate, write, rename) is read once, complete.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// The longest a rescan is put off by a stream of changes that never pauses.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// How often an idle watch thread checks whether it has been stopped.
const STOP_POLL: Duration = Duration::from_millis(100);

/// File times are coarse (one tick of the kernel clock, up to 2 s on some file systems): a
/// file changed again within the tick in which it was read keeps its stamp. Stamps younger
/// than this are therefore not trusted and the file is read again at the next rescan (git
/// calls this "racy clean").
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A folder of manifests; see the module documentation for the rules.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    /// Every manifest file seen at the last scan, with what it defines.
    files: BTreeMap<PathBuf, FileState>,
    /// Which files define each object.
    owners: BTreeMap<ObjectKey, BTreeSet<PathBuf>>,
    /// What the consumer holds for each object.
    delivered: BTreeMap<ObjectKey, Delivered>,
    /// The last failure to list the folder, reported once.
    dir_error: Option<ManifestError>,
}

#[derive(Debug, Default)]
struct FileState {
    /// `None` when the file must be read again at the next scan.
    stamp: Option<Stamp>,
    /// The objects the file defines (including those kept in force despite its errors).
    objects: BTreeMap<ObjectKey, Held>,
    /// The errors of the last read, so that only new ones are reported.
    errors: Vec<ManifestError>,
}

#[derive(Debug, Clone)]
struct Held {
    object: Object,
    fingerprint: u64,
}

#[derive(Debug)]
struct Delivered {
    fingerprint: u64,
    /// The file whose version is in force.
    from: PathBuf,
}

/// What tells an unchanged file from a changed one without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Status change time, inode and device: `cp -p` and `rsync -t` keep the modification
    /// time, and editors that save by renaming replace the inode.
    #[cfg(unix)]
    unix: (i64, i64, u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            unix: (meta.ctime(), meta.ctime_nsec(), meta.ino(), meta.dev()),
        }
    }

    /// Whether a later change is sure to show in the stamp (see `RACY_WINDOW`).
    fn trusted(&self, now: SystemTime) -> bool {
        let Some(mut newest) = self.modified else {
            return false;
        };
        #[cfg(unix)]
        {
            let (secs, nanos, _, _) = self.unix;
            let changed = u64::try_from(secs)
                .ok()
                .zip(u32::try_from(nanos).ok())
                .map(|(secs, nanos)| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos));
            match changed {
                Some(changed) => newest = newest.max(changed),
                None => return false,
            }
        }
        now.duration_since(newest)
            .is_ok_and(|age| age >= RACY_WINDOW)
    }
}

/// A fingerprint of an object's whole content. `Debug` prints every field, and the object
/// types hold no hash maps, so equal objects print equally; the text is hashed as it is
/// printed, never kept.
fn fingerprint(object: &Object) -> u64 {
    struct HashWriter(DefaultHasher);
    impl fmt::Write for HashWriter {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    let mut writer = HashWriter(DefaultHasher::new());
    // Writing into a hasher cannot fail.
    let _ = fmt::write(&mut writer, format_args!("{object:?}"));
    writer.0.finish()
}

/// Whether a directory entry is a manifest: by extension, skipping hidden files and editor
/// leftovers.
pub(crate) fn is_manifest_name(name: &str) -> bool {
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    let Some((stem, extension)) = name.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty() && matches!(extension, "yaml" | "yml" | "json")
}

/// Changes found in one scan, before they are turned into events.
#[derive(Debug, Default)]
struct Changes {
    /// Objects a file added or changed: the version to apply, with the order it was read in.
    changed: BTreeMap<ObjectKey, (usize, PathBuf, Held)>,
    /// Objects some file stopped defining.
    lost: BTreeSet<ObjectKey>,
    invalid: Vec<ManifestError>,
    files_read: usize,
    /// Objects kept in force because their file has errors.
    kept: usize,
    order: usize,
}

impl DirectorySource {
    /// A source for the manifests in `dir`. Nothing is read before `load`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            owners: BTreeMap::new(),
            delivered: BTreeMap::new(),
            dir_error: None,
        }
    }

    /// The folder this source reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every manifest (in file-name order): `Applied` for each valid object,
    /// `Invalid` for each error, then `Synced`. Forgets what earlier calls delivered: this
    /// is the full state, for a consumer starting empty.
    pub fn load(&mut self) -> Result<Vec<SourceEvent>, SourceError> {
        let path = || self.dir.clone();
        let meta = fs::metadata(&self.dir).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                SourceError::DirectoryMissing { path: path() }
            } else {
                SourceError::DirectoryUnreadable {
                    path: path(),
                    source,
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(SourceError::NotADirectory { path: path() });
        }
        let paths = self
            .list()
            .map_err(|source| SourceError::DirectoryUnreadable {
                path: path(),
                source,
            })?;
        self.files.clear();
        self.owners.clear();
        self.delivered.clear();
        self.dir_error = None;
        let mut events = self.scan(paths);
        events.push(SourceEvent::Synced);
        Ok(events)
    }

    /// Reads the folder again and returns what changed since the last `load` or `rescan`:
    /// `Applied` for new or changed objects, `Deleted` for objects no file defines any
    /// more, `Invalid` for new errors. Unchanged files are not read.
    pub fn rescan(&mut self) -> Vec<SourceEvent> {
        match self.list() {
            Ok(paths) => {
                self.dir_error = None;
                self.scan(paths)
            }
            Err(e) => {
                let error = ManifestError {
                    file: self.dir.display().to_string(),
                    object: "-".into(),
                    error: FieldError::new(
                        "-",
                        format!("cannot read directory: {e}; keeping every object in force"),
                    ),
                };
                if self.dir_error.as_ref() == Some(&error) {
                    return Vec::new();
                }
                warn!(%error, "manifest directory unreadable");
                self.dir_error = Some(error.clone());
                vec![SourceEvent::Invalid(error)]
            }
        }
    }

    /// Watches the folder and sends the events of a `rescan` after each change (after a
    /// short debounce), starting with one rescan for changes since `load`. Stops when the
    /// returned guard is dropped, or at the first send after `tx`'s receiver is gone. If the
    /// folder itself is removed or renamed, the watch sees no more changes.
    pub fn watch(self, tx: Sender<SourceEvent>) -> Result<DirectoryWatch, SourceError> {
        let dir = self.dir.clone();
        let watch_error = |source| SourceError::Watch {
            path: dir.clone(),
            source,
        };
        let (raw_tx, raw_rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // A send fails only once the watch thread has ended; then nobody listens.
            let _ = raw_tx.send(event);
        })
        .map_err(watch_error)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("directory-source".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || self.run(&raw_rx, &tx, &stop)
            })
            .map_err(|e| watch_error(notify::Error::io(e)))?;
        debug!(dir = %dir.display(), "watching manifest directory");
        Ok(DirectoryWatch {
            dir,
            watcher: Some(watcher),
            stop,
            thread: Some(thread),
        })
    }

    /// The watch thread: rescans after each burst of changes until stopped.
    fn run(
        mut self,
        raw: &Receiver<notify::Result<notify::Event>>,
        tx: &Sender<SourceEvent>,
        stop: &AtomicBool,
    ) {
        let mut pending = true;
        loop {
            if pending {
                let first = Instant::now();
                loop {
                    let wait = DEBOUNCE.min(MAX_DELAY.saturating_sub(first.elapsed()));
                    if wait.is_zero() {
                        break;
                    }
                    match raw.recv_timeout(wait) {
                        // Any event restarts the quiet period; whether it was relevant
                        // no longer matters, a rescan is coming anyway.
                        Ok(event) => {
                            let _ = relevant(&event);
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                for event in self.rescan() {
                    if tx.send(event).is_err() {
                        debug!(dir = %self.dir.display(), "event receiver gone; watch ends");
                        return;
                    }
                }
                pending = false;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match raw.recv_timeout(STOP_POLL) {
                Ok(event) => pending = relevant(&event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn list(&self) -> io::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_str().is_some_and(is_manifest_name) {
                paths.push(entry.path());
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// Brings the state up to date with the files in `paths` and returns the events.
    fn scan(&mut self, paths: Vec<PathBuf>) -> Vec<SourceEvent> {
        let now = SystemTime::now();
        let mut changes = Changes::default();
        let listed: BTreeSet<PathBuf> = paths.into_iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|path| !listed.contains(*path))
            .cloned()
            .collect();
        for path in gone {
            self.forget(&path, &mut changes);
        }
        for path in listed {
            self.scan_file(path, now, &mut changes);
        }
        self.events(changes)
    }

    /// A file is gone: everything it defined is lost.
    fn forget(&mut self, path: &Path, changes: &mut Changes) {
        if let Some(state) = self.files.remove(path) {
            for key in state.objects.into_keys() {
                self.disown(&key, path);
                changes.lost.insert(key);
            }
        }
    }

    fn disown(&mut self, key: &ObjectKey, path: &Path) {
        if let Some(owners) = self.owners.get_mut(key) {
            owners.remove(path);
            if owners.is_empty() {
                self.owners.remove(key);
            }
        }
    }

    fn scan_file(&mut self, path: PathBuf, now: SystemTime, changes: &mut Changes) {
        let stamp = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Some(Stamp::of(&meta)),
            // Removed since the listing, a dangling link, or a folder named like a file.
            Ok(_) => {
                self.forget(&path, changes);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(&path, changes);
                return;
            }
            // Unreadable: `read_file` reports it, and what the file defined stays in force.
            Err(_) => None,
        };
        let old = self.files.remove(&path).unwrap_or_default();
        if stamp.is_some() && old.stamp == stamp {
            self.files.insert(path, old);
            return;
        }
        let parsed = manifest::read_file(&path);
        changes.files_read += 1;
        let mut objects = BTreeMap::new();
        let mut document_order = Vec::with_capacity(parsed.objects.len());
        for object in parsed.objects {
            let fingerprint = fingerprint(&object);
            let key = object.key();
            document_order.push(key.clone());
            // Two documents with the same key in one file: the later one wins.
            objects.insert(
                key,
                Held {
                    object,
                    fingerprint,
                },
            );
        }
        if !parsed.errors.is_empty() {
            // Safety rule: a file with errors deletes nothing.
            for (key, held) in &old.objects {
                if !objects.contains_key(key) {
                    objects.insert(key.clone(), held.clone());
                    changes.kept += 1;
                }
            }
        }
        for key in objects.keys() {
            self.owners
                .entry(key.clone())
                .or_default()
                .insert(path.clone());
        }
        for key in document_order {
            let Some(held) = objects.get(&key) else {
                continue;
            };
            let unchanged = old
                .objects
                .get(&key)
                .is_some_and(|before| before.fingerprint == held.fingerprint);
            if !unchanged {
                changes.order += 1;
                changes
                    .changed
                    .insert(key.clone(), (changes.order, path.clone(), held.clone()));
            }
        }
        for key in old.objects.keys() {
            if !objects.contains_key(key) {
                self.disown(key, &path);
                changes.lost.insert(key.clone());
            }
        }
        for error in &parsed.errors {
            if !old.errors.contains(error) {
                changes.invalid.push(error.clone());
            }
        }
        let stamp = stamp.filter(|stamp| stamp.trusted(now));
        self.files.insert(
            path,
            FileState {
                stamp,
                objects,
                errors: parsed.errors,
            },
        );
    }

    /// Decides, per object that changed or lost a file, what the consumer must hear.
    fn events(&mut self, mut changes: Changes) -> Vec<SourceEvent> {
        let mut applied = Vec::new();
        let mut deleted = Vec::new();
        let keys: BTreeSet<ObjectKey> = changes
            .changed
            .keys()
            .chain(changes.lost.iter())
            .cloned()
            .collect();
        for key in keys {
            let candidate = match changes.changed.remove(&key) {
                Some(changed) => Some(changed),
                None => {
                    let owners = self.owners.get(&key);
                    let in_force = self
                        .delivered
                        .get(&key)
                        .is_some_and(|d| owners.is_some_and(|o| o.contains(&d.from)));
                    if in_force {
                        // Another file dropped its copy; the version in force still stands.
                        continue;
                    }
                    owners.and_then(BTreeSet::last).and_then(|path| {
                        let held = self.files.get(path)?.objects.get(&key)?;
                        changes.order += 1;
                        Some((changes.order, path.clone(), held.clone()))
                    })
                }
            };
            match candidate {
                Some((order, from, held)) => {
                    let same = self
                        .delivered
                        .get(&key)
                        .is_some_and(|d| d.fingerprint == held.fingerprint);
                    self.delivered.insert(
                        key,
                        Delivered {
                            fingerprint: held.fingerprint,
                            from,
                        },
                    );
                    if !same {
                        applied.push((order, held.object));
                    }
                }
                None => {
                    if self.delivered.remove(&key).is_some() {
                        deleted.push(key);
                    }
                }
            }
        }
        applied.sort_by_key(|(order, _)| *order);
        for error in &changes.invalid {
            warn!(%error, "invalid manifest");
        }
        debug!(
            dir = %self.dir.display(),
            files = self.files.len(),
            files_read = changes.files_read,
            applied = applied.len(),
            deleted = deleted.len(),
            invalid = changes.invalid.len(),
            kept_despite_errors = changes.kept,
            "scanned manifest directory"
        );
        let mut events: Vec<SourceEvent> = applied
            .into_iter()
            .map(|(_, object)| SourceEvent::Applied(object))
            .collect();
        events.extend(deleted.into_iter().map(SourceEvent::Deleted));
        events.extend(changes.invalid.into_iter().map(SourceEvent::Invalid));
        events
    }
}

/// Whether a watch event can mean a changed manifest. Opening and reading files (this
/// source's own reads among them) cannot; a failed watch may have missed anything.
fn relevant(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => {
            trace!(?event, "manifest directory event");
            !matches!(
                event.kind,
                EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)
            )
        }
        Err(error) => {
            warn!(%error, "manifest directory watch error; rescanning");
            true
        }
    }
}

impl Source for DirectorySource {
    fn load(&mut self) -> Result<Vec<SourceEvent>, SourceError> {
        DirectorySource::load(self)
    }

    fn watch(self: Box<Self>, tx: Sender<SourceEvent>) -> Result<Box<dyn WatchGuard>, SourceError> {
        Ok(Box::new(DirectorySource::watch(*self, tx)?))
    }
}

/// A running watch of a manifest directory; dropping it stops the watch and waits for its
/// thread (at most one rescan).
pub struct DirectoryWatch {
    dir: PathBuf,
    watcher: Option<RecommendedWatcher>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DirectoryWatch {
    /// The folder being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl fmt::Debug for DirectoryWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryWatch")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl WatchGuard for DirectoryWatch {}

impl Drop for DirectoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.watcher.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!(dir = %self.dir.display(), "manifest directory watch thread panicked");
        }
    }
}

#[cfg(test)]
#[path = "directory_tests.rs"]
mod tests;
