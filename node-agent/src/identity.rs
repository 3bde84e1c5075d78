//! Local security identities (DESIGN.md "Identities"): one number per distinct set of
//! security labels. Numbers only mean something inside this node's maps and proxies, so
//! they are allocated locally with no cluster coordination.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::labels::{LabelSet, SOURCE_CIDR, SOURCE_RESERVED};

pub type Identity = u32;

/// Reserved identities (SEMANTICS 1.6), numbered as in Cilium.
pub mod reserved {
    use super::Identity;
    pub const HOST: Identity = 1;
    pub const WORLD: Identity = 2;
    pub const UNMANAGED: Identity = 3;
    pub const HEALTH: Identity = 4;
    pub const INIT: Identity = 5;
    pub const REMOTE_NODE: Identity = 6;
    pub const KUBE_APISERVER: Identity = 7;
    pub const INGRESS: Identity = 8;
    pub const WORLD_IPV4: Identity = 9;
    pub const WORLD_IPV6: Identity = 10;

    pub const ALL: [(Identity, &str); 10] = [
        (HOST, "host"),
        (WORLD, "world"),
        (UNMANAGED, "unmanaged"),
        (HEALTH, "health"),
        (INIT, "init"),
        (REMOTE_NODE, "remote-node"),
        (KUBE_APISERVER, "kube-apiserver"),
        (INGRESS, "ingress"),
        (WORLD_IPV4, "world-ipv4"),
        (WORLD_IPV6, "world-ipv6"),
    ];
}

/// Pod identities start here, as Cilium's cluster-scoped identities do.
pub const FIRST_POD_IDENTITY: Identity = 256;
/// CIDR identities live in Cilium's node-local scope.
pub const FIRST_LOCAL_IDENTITY: Identity = 1 << 24;

#[derive(Debug)]
struct Entry {
    labels: Arc<LabelSet>,
    references: usize,
}

/// Allocates identities by label set, with reference counts so that an identity is freed
/// when its last pod or prefix goes away.
#[derive(Debug)]
pub struct IdentityAllocator {
    by_labels: HashMap<Arc<LabelSet>, Identity>,
    by_id: BTreeMap<Identity, Entry>,
    next_pod: Identity,
    next_local: Identity,
    /// Numbers a previous run gave to label sets (see [`IdentityAllocator::hint`]); kept
    /// out of the counters so that a new label set never takes one.
    hints: HashMap<LabelSet, Identity>,
    hint_owners: HashMap<Identity, LabelSet>,
    reserved_ids: BTreeSet<Identity>,
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityAllocator {
    pub fn new() -> Self {
        let mut allocator = Self {
            by_labels: HashMap::new(),
            by_id: BTreeMap::new(),
            next_pod: FIRST_POD_IDENTITY,
            next_local: FIRST_LOCAL_IDENTITY,
            hints: HashMap::new(),
            hint_owners: HashMap::new(),
            reserved_ids: BTreeSet::new(),
        };
        for (id, name) in reserved::ALL {
            let labels = Arc::new(LabelSet::new().with(SOURCE_RESERVED, name, ""));
            allocator.by_labels.insert(labels.clone(), id);
            allocator.by_id.insert(
                id,
                Entry {
                    labels,
                    references: 1,
                },
            );
        }
        allocator
    }

    /// Takes a reference on the identity of `labels`; returns it and whether it is new.
    pub fn acquire(&mut self, labels: &LabelSet) -> (Identity, bool) {
        if let Some(&id) = self.by_labels.get(labels) {
            if let Some(entry) = self.by_id.get_mut(&id) {
                entry.references += 1;
            }
            return (id, false);
        }
        let hinted = self
            .hints
            .get(labels)
            .copied()
            .filter(|id| !self.by_id.contains_key(id));
        let id = match hinted {
            Some(id) => id,
            None => {
                let local = labels.has_source(SOURCE_CIDR);
                let counter = if local {
                    &mut self.next_local
                } else {
                    &mut self.next_pod
                };
                while self.by_id.contains_key(counter) || self.reserved_ids.contains(counter) {
                    *counter += 1;
                }
                let id = *counter;
                *counter += 1;
                id
            }
        };
        let labels = Arc::new(labels.clone());
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(
            id,
            Entry {
                labels,
                references: 1,
            },
        );
        (id, true)
    }

    /// Drops a reference; returns true when the identity was freed.
    pub fn release(&mut self, id: Identity) -> bool {
        if id < FIRST_POD_IDENTITY {
            return false;
        }
        let Some(entry) = self.by_id.get_mut(&id) else {
            return false;
        };
        entry.references = entry.references.saturating_sub(1);
        if entry.references > 0 {
            return false;
        }
        if let Some(entry) = self.by_id.remove(&id) {
            self.by_labels.remove(&entry.labels);
        }
        true
    }

    /// Keeps `ids` out of the counters: numbers the kernel's maps still use (a restarted
    /// agent reads them back from the pinned ipcache) go only to the label sets hinted to
    /// them ([`IdentityAllocator::hint`]), so that recompiling the same cluster gives the
    /// same numbers and rewriting the maps never briefly pairs an address with another
    /// label set's identity. Reserved identities are never affected.
    pub fn reserve(&mut self, ids: impl IntoIterator<Item = Identity>) {
        self.reserved_ids
            .extend(ids.into_iter().filter(|id| *id >= FIRST_POD_IDENTITY));
    }

    /// Asks that `labels` get `id` when first acquired, unless another label set was
    /// hinted to it first.
    pub fn hint(&mut self, labels: LabelSet, id: Identity) {
        if id < FIRST_POD_IDENTITY || self.hint_owners.contains_key(&id) {
            return;
        }
        if let Some(old) = self.hints.insert(labels.clone(), id) {
            self.hint_owners.remove(&old);
        }
        self.hint_owners.insert(id, labels);
        self.reserved_ids.insert(id);
    }

    pub fn labels(&self, id: Identity) -> Option<&Arc<LabelSet>> {
        self.by_id.get(&id).map(|e| &e.labels)
    }

    pub fn lookup(&self, labels: &LabelSet) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Identity, &Arc<LabelSet>)> {
        self.by_id.iter().map(|(id, e)| (*id, &e.labels))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_keep_numbers_and_counters_skip_them() {
        let pod = |app: &str| LabelSet::new().with("k8s", "app", app);
        let mut ids = IdentityAllocator::new();
        ids.reserve([256, 300, 301]);
        ids.hint(pod("b"), 256);
        ids.hint(pod("c"), 300);
        // A label set without a hint never takes a hinted number.
        assert_eq!(ids.acquire(&pod("a")), (257, true));
        assert_eq!(ids.acquire(&pod("b")), (256, true));
        assert_eq!(ids.acquire(&pod("c")), (300, true));
        assert_eq!(ids.acquire(&pod("d")), (258, true));
        // Reserved numbers are never hinted, and a number goes to the first hint only.
        ids.hint(pod("e"), reserved::WORLD);
        assert_eq!(ids.acquire(&pod("e")), (259, true));
        ids.hint(pod("f"), 300);
        assert_eq!(ids.acquire(&pod("f")), (260, true));
        // 301 was reserved for a pod that is gone: nobody gets it.
        assert_eq!(ids.acquire(&pod("g")), (261, true));
    }

    // SEMANTICS 1.6
    #[test]
    fn reserved_identities_have_fixed_numbers() {
        let alloc = IdentityAllocator::new();
        let cases = [
            (1, "host"),
            (2, "world"),
            (3, "unmanaged"),
            (4, "health"),
            (5, "init"),
            (6, "remote-node"),
            (7, "kube-apiserver"),
            (8, "ingress"),
            (9, "world-ipv4"),
            (10, "world-ipv6"),
        ];
        for (id, name) in cases {
            let labels = alloc.labels(id).expect("reserved identity exists");
            assert_eq!(labels.values("reserved", name).count(), 1, "{id} {name}");
        }
    }

    // SEMANTICS 1.3: one identity per distinct label set, freed with its last user.
    #[test]
    fn same_labels_share_an_identity() {
        let mut alloc = IdentityAllocator::new();
        let a = LabelSet::new().with("k8s", "app", "a");
        let b = LabelSet::new().with("k8s", "app", "b");
        let (ia, new_a) = alloc.acquire(&a);
        let (ia2, new_a2) = alloc.acquire(&a);
        let (ib, _) = alloc.acquire(&b);
        assert!(new_a && !new_a2);
        assert_eq!(ia, ia2);
        assert_ne!(ia, ib);
        assert!(ia >= FIRST_POD_IDENTITY);
        assert!(!alloc.release(ia));
        assert!(alloc.release(ia));
        assert!(alloc.labels(ia).is_none());
        assert!(
            !alloc.release(reserved::HOST),
            "reserved identities are never freed"
        );
        let cidr = LabelSet::new().with("cidr", "10.0.0.0/8", "");
        assert!(alloc.acquire(&cidr).0 >= FIRST_LOCAL_IDENTITY);
    }
}
