//! Which resources of a type changed at which version, so that a client that ACKed an
//! earlier version is sent what changed since, at a cost of what changed: a DNS answer
//! adds one identity to tens of thousands, and diffing every resource per answer and per
//! client made each answer O(identities) in the agent.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::proto;

use super::TypeSnapshot;

/// The newest changes of one type, oldest first. Bounded: a client that fell further
/// behind than the log reaches is diffed over every resource instead.
#[derive(Debug, Clone, Default)]
pub struct ChangeLog {
    /// (type version of the change, resource name); versions never decrease.
    entries: VecDeque<(u64, String)>,
    /// Every change at a version above this one is in `entries`.
    complete_after: u64,
}

/// How many changes a log keeps: enough for a client a few thousand versions behind.
const MAX_ENTRIES: usize = 65_536;

impl ChangeLog {
    /// A log that knows every change after `version` (the type's version when it starts).
    pub fn starting_at(version: u64) -> Self {
        ChangeLog {
            entries: VecDeque::new(),
            complete_after: version,
        }
    }

    fn record(&mut self, version: u64, name: String) {
        self.entries.push_back((version, name));
        while self.entries.len() > MAX_ENTRIES {
            if let Some((dropped, _)) = self.entries.pop_front() {
                // Other changes of that version may still be in the log, but not all.
                self.complete_after = self.complete_after.max(dropped);
            }
        }
    }

    /// The names changed after `version` (repeats possible), or `None` if the log no
    /// longer reaches back that far.
    pub fn since(&self, version: u64) -> Option<impl Iterator<Item = &str>> {
        if version < self.complete_after {
            return None;
        }
        let first = self.entries.partition_point(|(v, _)| *v <= version);
        Some(self.entries.range(first..).map(|(_, name)| name.as_str()))
    }
}

impl TypeSnapshot {
    /// Inserts or replaces `name` as changed at `version` (which the caller makes the
    /// type's version). With a change log, writers must change resources only through
    /// this and [`TypeSnapshot::remove`], or clients miss changes.
    pub fn upsert(&mut self, name: String, resource: Arc<proto::Resource>, version: u64) {
        if let Some(log) = &mut self.changes {
            log.record(version, name.clone());
        }
        self.resources.insert(name, resource);
    }

    /// Removes `name` as changed at `version`; false if it was not there.
    pub fn remove(&mut self, name: &str, version: u64) -> bool {
        let removed = self.resources.remove(name).is_some();
        if removed && let Some(log) = &mut self.changes {
            log.record(version, name.to_owned());
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_lists_later_changes_until_the_log_is_cut() {
        let mut log = ChangeLog::starting_at(10);
        log.record(11, "a".into());
        log.record(12, "b".into());
        log.record(12, "c".into());
        fn since(log: &ChangeLog, v: u64) -> Option<Vec<&str>> {
            log.since(v).map(Iterator::collect)
        }
        assert_eq!(since(&log, 10), Some(vec!["a", "b", "c"]));
        assert_eq!(since(&log, 11), Some(vec!["b", "c"]));
        assert_eq!(since(&log, 12), Some(vec![]));
        assert_eq!(since(&log, 9), None, "before the log started");
        for n in 0..MAX_ENTRIES {
            log.record(13, format!("n{n}"));
        }
        // The first three were cut: version 12 is complete, 11 no longer.
        assert_eq!(since(&log, 11), None);
        assert_eq!(since(&log, 12).map(|n| n.len()), Some(MAX_ENTRIES));
    }
}
