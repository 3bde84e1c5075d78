//! Saving the cache across agent restarts, so that names resolved before a restart stay
//! reachable (issue 6, item 4).
//!
//! The file is JSON with absolute expiry times in wall-clock seconds since the Unix epoch
//! (a monotonic `Instant` means nothing to the next process). It is written to a temporary
//! file in the same directory, synced, then renamed over the old one, so a crash leaves
//! either the old file or the new one, never half of one.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dns_proxy::normalize_name;

use super::cache::add_secs;
use super::{FqdnCache, Removed, Source};
use crate::compiler::EndpointKey;

/// The version of the file format this agent writes and reads.
pub const FILE_VERSION: u32 = 1;

/// Errors of [`FqdnCache::save`] and [`FqdnCache::load`]; the caller logs them and goes
/// on (with an empty cache after a failed load).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("reading the FQDN cache file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the FQDN cache file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the FQDN cache file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the FQDN cache file {path} has format version {found}; this agent reads version {FILE_VERSION}"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
}

/// What [`FqdnCache::load`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// No file: nothing to restore (a first start).
    pub missing: bool,
    /// Entries added to the cache and still in it (the caller programs them, for example
    /// by recomputing [`FqdnCache::ips_for`] for every endpoint's selectors).
    pub restored: usize,
    /// Entries whose endpoint is not `NAMESPACE/POD`: skipped.
    pub skipped: usize,
    /// Entries evicted by the bounds while loading, to withdraw if already programmed.
    pub evicted: Vec<Removed>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    entries: Vec<FileEntry>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEntry {
    pub(super) endpoint: String,
    pub(super) name: String,
    pub(super) ip: IpAddr,
    /// Wall-clock expiry, seconds since the Unix epoch.
    pub(super) expires_at_unix_secs: u64,
    /// Where the entry came from before it was saved; for whoever reads the file (a loaded
    /// entry is always [`Source::Restored`]).
    pub(super) source: Source,
}

pub(super) fn unix_secs(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FqdnCache {
    /// Writes every entry to `path` atomically. `now` and `wall_now` are the same moment
    /// on the monotonic and the wall clock. Expired entries kept for live connections are
    /// written as expiring at `wall_now`. Returns the number of entries written.
    pub fn save(
        &self,
        path: &Path,
        now: Instant,
        wall_now: SystemTime,
    ) -> Result<usize, PersistError> {
        let wall = unix_secs(wall_now);
        let entries: Vec<FileEntry> = self
            .iter_states()
            .map(|(endpoint, name, ip, state)| {
                let left = state.expires.saturating_duration_since(now);
                let left = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                FileEntry {
                    endpoint: endpoint.to_string(),
                    name: name.to_owned(),
                    ip,
                    expires_at_unix_secs: wall.saturating_add(left),
                    source: state.source,
                }
            })
            .collect();
        let count = entries.len();
        let file = CacheFile {
            version: FILE_VERSION,
            entries,
        };
        let write_err = |source| PersistError::Write {
            path: path.to_owned(),
            source,
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| write_err(std::io::Error::other(e)))?;
        write_atomically(path, &bytes).map_err(write_err)?;
        Ok(count)
    }

    /// Adds the entries saved in `path` (as [`Source::Restored`]), converting their
    /// wall-clock expiry with `wall_now` (the same moment as `now`). Entries already past
    /// their expiry are kept as expired, so the next [`FqdnCache::expire`] drops them
    /// unless a connection that survived the restart still uses them. A missing file is
    /// not an error; an unreadable or corrupt one is, and leaves the cache unchanged.
    pub fn load(
        &mut self,
        path: &Path,
        now: Instant,
        wall_now: SystemTime,
    ) -> Result<LoadOutcome, PersistError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LoadOutcome {
                    missing: true,
                    ..LoadOutcome::default()
                });
            }
            Err(source) => {
                return Err(PersistError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let file: CacheFile =
            serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        if file.version != FILE_VERSION {
            return Err(PersistError::UnsupportedVersion {
                path: path.to_owned(),
                found: file.version,
            });
        }
        Ok(self.restore(file.entries, now, wall_now))
    }

    /// Adds saved entries as [`Source::Restored`], converting their wall-clock expiry with
    /// `wall_now` (the same moment as `now`).
    pub(super) fn restore(
        &mut self,
        entries: impl IntoIterator<Item = FileEntry>,
        now: Instant,
        wall_now: SystemTime,
    ) -> LoadOutcome {
        let wall = unix_secs(wall_now);
        let mut out = LoadOutcome::default();
        // What this load added and still holds: an entry evicted by a later one of the same
        // file was never reported, so it is neither restored nor to withdraw.
        let mut added: BTreeSet<(EndpointKey, String, IpAddr)> = BTreeSet::new();
        for entry in entries {
            let Some(endpoint) = EndpointKey::parse(&entry.endpoint) else {
                out.skipped += 1;
                continue;
            };
            // Past expiry: expires "now", so it is expired from the next instant on.
            let expires = add_secs(now, entry.expires_at_unix_secs.saturating_sub(wall));
            let name = normalize_name(&entry.name);
            let inserted = self.insert(&endpoint, &name, &[entry.ip], expires, Source::Restored);
            for ip in inserted.added {
                added.insert((endpoint.clone(), name.clone(), ip));
            }
            for removed in inserted.evicted {
                let key = (removed.endpoint, removed.name, removed.ip);
                if !added.remove(&key) {
                    let (endpoint, name, ip) = key;
                    out.evicted.push(Removed {
                        endpoint,
                        name,
                        ip,
                        reason: removed.reason,
                    });
                }
            }
        }
        out.restored = added.len();
        out
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; a directory that cannot be opened for syncing
        // (some filesystems) does not make the write fail.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
