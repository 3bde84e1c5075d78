//! The fast path for DNS answers (SEMANTICS 6.3): the DNS proxy holds an answer until the
//! datapath allows its IPs, so after an FQDN flush only what that flush changed is
//! written: the ipcache entries of the prefixes it touched and the policy entries of the
//! endpoints it recompiled, under the endpoint ids the last reconcile assigned. No `ip`
//! calls, no attachments: devices and endpoints are the full reconcile's business.
//!
//! Writes go identities and policy upserts first, then policy deletes, then ipcache
//! deletes, so a flow is never judged against a policy entry whose identity is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;

use super::abi::{IpcacheKey, IpcacheValue, PolicyKey, PolicyValue};
use super::entries::{self, ProxyPorts};
use super::{Datapath, DatapathError};
use crate::compiler::{Changes, Compiler, EndpointKey, EndpointPolicy};

/// What one incremental programming did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IncrementalReport {
    pub ipcache_upserts: usize,
    pub ipcache_deletes: usize,
    pub policy_upserts: usize,
    pub policy_deletes: usize,
    /// Recompiled endpoints without an endpoint id yet (no device at the last reconcile):
    /// nothing of theirs is enforced, so nothing to write; the next reconcile does it.
    pub without_id: usize,
}

impl IncrementalReport {
    /// Something was deleted: established flows may need a policy re-check.
    pub fn deleted(&self) -> bool {
        self.ipcache_deletes + self.policy_deletes > 0
    }
}

/// The writes of one incremental step.
#[derive(Debug, Default, Clone)]
pub(super) struct Plan {
    pub(super) ipcache_up: Vec<(IpcacheKey, IpcacheValue)>,
    pub(super) ipcache_del: Vec<IpcacheKey>,
    pub(super) policy_up: Vec<(PolicyKey, PolicyValue)>,
    pub(super) policy_del: Vec<PolicyKey>,
    pub(super) without_id: usize,
    /// The endpoint policies this plan programs, to remember as programmed.
    pub(super) programmed: Vec<(EndpointKey, Arc<EndpointPolicy>)>,
}

/// What the maps hold, as the controller knows it.
pub(super) struct Current<'a> {
    pub(super) ipcache: &'a BTreeMap<IpcacheKey, IpcacheValue>,
    pub(super) policy: &'a BTreeMap<PolicyKey, PolicyValue>,
    pub(super) ids: &'a BTreeMap<EndpointKey, u16>,
    pub(super) programmed: &'a BTreeMap<EndpointKey, Arc<EndpointPolicy>>,
    pub(super) host_prefixes: &'a BTreeSet<IpNet>,
    pub(super) ports: &'a ProxyPorts,
}

/// What to write to bring the maps to the compiler's state for what `changes` touched.
/// Pure, so it is tested without a kernel.
pub(super) fn plan(current: &Current<'_>, compiler: &Compiler, changes: &Changes) -> Plan {
    let Current {
        ipcache,
        policy,
        ids,
        programmed,
        host_prefixes,
        ports,
    } = *current;
    let mut out = Plan::default();
    for net in &changes.ipcache_prefixes {
        // The node's addresses and the /0 world defaults are the full reconcile's.
        if host_prefixes.contains(net) || net.prefix_len() == 0 {
            continue;
        }
        let key = entries::ipcache_key(*net);
        match compiler.ipcache_entry(*net) {
            Some(identity) => {
                let value = IpcacheValue { identity };
                if ipcache.get(&key) != Some(&value) {
                    out.ipcache_up.push((key, value));
                }
            }
            None if ipcache.contains_key(&key) => out.ipcache_del.push(key),
            None => {}
        }
    }
    for key in &changes.recompiled {
        let (Some(id), Some(endpoint)) = (ids.get(key), compiler.endpoint(key)) else {
            out.without_id += 1;
            continue;
        };
        // Usually only selections changed (a learned IP joined or left): then only the
        // entries of the identities that came or went are rebuilt and diffed, which keeps
        // an endpoint with thousands of identities cheap.
        let changed = programmed
            .get(key)
            .and_then(|old| entries::changed_identities(old, endpoint));
        let (desired, current) = match &changed {
            Some(ids) => (
                entries::policy_entries_of(*id, endpoint, ports, Some(ids)),
                entries::endpoint_policy_of(policy, *id, ids),
            ),
            None => (
                entries::policy_entries(*id, endpoint, ports),
                entries::endpoint_policy(policy, *id),
            ),
        };
        out.programmed.push((key.clone(), endpoint.clone()));
        let (up, del) = entries::diff(&current, &desired);
        out.policy_up.extend(up);
        out.policy_del.extend(del);
    }
    out
}

impl Datapath {
    /// Programs what one flush changed (see the module documentation). Changes that need
    /// more (an endpoint removed) are left to [`Datapath::reconcile`]: the caller checks
    /// [`Datapath::needs_reconcile`] first.
    pub fn program_changes(
        &mut self,
        compiler: &Compiler,
        changes: &Changes,
    ) -> Result<IncrementalReport, DatapathError> {
        let current = Current {
            ipcache: &self.ipcache,
            policy: &self.policy,
            ids: &self.ids,
            programmed: &self.programmed,
            host_prefixes: &self.host_prefixes,
            ports: &self.config.proxy_ports,
        };
        let plan = plan(&current, compiler, changes);
        for (k, v) in &plan.ipcache_up {
            self.loaded.maps.put_ipcache(k, v)?;
            self.ipcache.insert(*k, *v);
        }
        for (k, v) in &plan.policy_up {
            self.loaded.maps.put_policy(k, v)?;
            self.policy.insert(*k, *v);
        }
        for k in &plan.policy_del {
            self.loaded.maps.delete_policy(k)?;
            self.policy.remove(k);
        }
        for k in &plan.ipcache_del {
            self.loaded.maps.delete_ipcache(k)?;
            self.ipcache.remove(k);
        }
        self.programmed.extend(plan.programmed);
        Ok(IncrementalReport {
            ipcache_upserts: plan.ipcache_up.len(),
            ipcache_deletes: plan.ipcache_del.len(),
            policy_upserts: plan.policy_up.len(),
            policy_deletes: plan.policy_del.len(),
            without_id: plan.without_id,
        })
    }

    /// Whether `changes` needs the full reconcile rather than [`Datapath::program_changes`].
    pub fn needs_reconcile(changes: &Changes) -> bool {
        !changes.removed.is_empty()
    }

    /// (source, destination) of every egress conntrack entry that has not idled out: the
    /// connections endpoints have open, for FQDN expiry (SEMANTICS 6.4); idle entries are
    /// removed on the way. One map scan, on the caller's thread (the agent normally runs
    /// it on the scanner's, see `datapath::scanner`).
    pub fn expire_idle_and_collect_flows(
        &mut self,
    ) -> Result<super::scanner::EgressFlows, DatapathError> {
        super::scanner::expire_idle_and_collect(&mut self.loaded.maps.ct).map(|(_, flows)| flows)
    }
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
