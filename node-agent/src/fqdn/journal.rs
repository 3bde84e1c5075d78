//! The write-ahead journal of the cache file: every DNS answer the agent programs is
//! appended here before the DNS proxy gets its reply, so an agent killed between two saves
//! of the whole cache (at most one a second) still restores it. Without it, an agent killed
//! right after an answer forgets the answer's IPs, and its successor withdraws them from
//! the datapath, cutting the connections the client just made.
//!
//! One JSON line per (endpoint, name, IP), in the cache file's entry format. The file is
//! emptied after each save of the whole cache, which holds everything it held. Appends are
//! one `write` each and not synced: they survive the process being killed, not the machine
//! crashing (the pinned maps do not survive that either).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::persist::{FileEntry, unix_secs};
use super::{FqdnCache, LoadOutcome, PersistError, Source};
use crate::compiler::EndpointKey;

/// The journal kept next to the cache file `state`.
pub fn journal_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// An open journal, appended to by the running agent.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating it if needed) the journal of the cache file `state` for appending.
    pub fn open(state: &Path) -> Result<Self, PersistError> {
        let path = journal_path(state);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| PersistError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, file })
    }

    /// Appends one answer: `ips` of `name` for `endpoint`, valid `ttl_secs` from
    /// `wall_now`. Call [`Journal::flush`] to write what was appended.
    pub fn record(
        buffer: &mut Vec<u8>,
        endpoint: &EndpointKey,
        name: &str,
        ips: &[IpAddr],
        ttl_secs: u32,
        wall_now: SystemTime,
    ) {
        let expires_at_unix_secs = unix_secs(wall_now).saturating_add(u64::from(ttl_secs));
        for ip in ips {
            let entry = FileEntry {
                endpoint: endpoint.to_string(),
                name: name.to_owned(),
                ip: *ip,
                expires_at_unix_secs,
                source: Source::Lookup,
            };
            // Serialising plain strings, numbers and addresses cannot fail.
            if serde_json::to_writer(&mut *buffer, &entry).is_ok() {
                buffer.push(b'\n');
            }
        }
    }

    /// Writes `buffer` (lines made by [`Journal::record`]) in one append.
    pub fn flush(&mut self, buffer: &[u8]) -> Result<(), PersistError> {
        if buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(buffer)
            .map_err(|source| PersistError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Empties the journal: the cache file just saved holds all of it.
    pub fn clear(&mut self) -> Result<(), PersistError> {
        self.file.set_len(0).map_err(|source| PersistError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

impl FqdnCache {
    /// Adds the answers journaled after the cache file `state` was last saved (as
    /// [`Source::Restored`], like [`FqdnCache::load`]). A missing journal restores nothing;
    /// a line that does not parse (the last one, cut by a kill) is counted as skipped.
    pub fn replay_journal(
        &mut self,
        state: &Path,
        now: Instant,
        wall_now: SystemTime,
    ) -> Result<LoadOutcome, PersistError> {
        let path = journal_path(state);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LoadOutcome {
                    missing: true,
                    ..LoadOutcome::default()
                });
            }
            Err(source) => return Err(PersistError::Read { path, source }),
        };
        let mut bad = 0;
        let entries: Vec<FileEntry> = text
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                let entry = serde_json::from_slice(line).ok();
                bad += usize::from(entry.is_none());
                entry
            })
            .collect();
        let mut outcome = self.restore(entries, now, wall_now);
        outcome.skipped += bad;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fqdn::FqdnConfig;

    fn endpoint() -> EndpointKey {
        EndpointKey::parse("default/client").expect("test setup")
    }

    #[test]
    fn journaled_answers_come_back_after_a_kill() {
        let dir = tempfile::tempdir().expect("test setup");
        let state = dir.path().join("fqdn-cache.json");
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut journal = Journal::open(&state).expect("test setup");
        let mut buffer = Vec::new();
        let ips: Vec<IpAddr> = vec![
            "198.18.0.1".parse().expect("test setup"),
            "198.18.0.2".parse().expect("test setup"),
        ];
        Journal::record(&mut buffer, &endpoint(), "google.com.", &ips, 300, wall);
        journal.flush(&buffer).expect("test setup");
        // A line cut in the middle by a kill.
        journal
            .flush(b"{\"endpoint\":\"default/cl")
            .expect("test setup");
        drop(journal);

        let mut cache = FqdnCache::new(FqdnConfig::default());
        let outcome = cache.replay_journal(&state, now, wall).expect("test setup");
        assert_eq!((outcome.restored, outcome.skipped), (2, 1));
        let listed = cache.list(Some(&endpoint()), now);
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|e| e.source == Source::Restored
            && e.name == "google.com."
            && e.expires_in_secs == 300));
    }

    #[test]
    fn a_save_empties_the_journal_and_a_missing_one_restores_nothing() {
        let dir = tempfile::tempdir().expect("test setup");
        let state = dir.path().join("fqdn-cache.json");
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut cache = FqdnCache::new(FqdnConfig::default());
        assert!(
            cache
                .replay_journal(&state, now, wall)
                .expect("test setup")
                .missing
        );

        let mut journal = Journal::open(&state).expect("test setup");
        let mut buffer = Vec::new();
        let ip: IpAddr = "198.18.0.1".parse().expect("test setup");
        Journal::record(&mut buffer, &endpoint(), "a.test.", &[ip], 0, wall);
        journal.flush(&buffer).expect("test setup");
        journal.clear().expect("test setup");
        // Appends after a clear start at the beginning again.
        journal.flush(&buffer).expect("test setup");
        let later = now + Duration::from_secs(1);
        let outcome = cache
            .replay_journal(&state, later, wall)
            .expect("test setup");
        assert_eq!(outcome.restored, 1);
        assert_eq!(
            std::fs::read_to_string(journal_path(&state))
                .expect("test setup")
                .lines()
                .count(),
            1
        );
    }
}
