//! `Identity` resources -> [`IdentityMap`]: peer IP -> identity by longest prefix match,
//! identity -> labels (SEMANTICS 1.6, 1.7).
//!
//! The prefixes are kept in one hash table per prefix length, probed from the longest
//! length present to the shortest: a lookup costs at most one hash probe per distinct
//! length (33 for IPv4, 129 for IPv6, in practice a handful), whatever the number of
//! prefixes.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use crate::proto;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The identity of addresses no prefix covers (SEMANTICS 1.6).
pub const WORLD: u32 = 2;

/// Prefixes of one address family: per length, masked address -> identity; lengths
/// longest first, only those present.
#[derive(Debug, Clone)]
struct Lpm<K> {
    tables: Vec<(u8, HashMap<K, u32>)>,
}

impl<K> Default for Lpm<K> {
    fn default() -> Self {
        Lpm { tables: Vec::new() }
    }
}

impl<K: Copy + Eq + Hash> Lpm<K> {
    /// Inserts `key/len`; returns the identity already there, if another one.
    fn insert(&mut self, len: u8, key: K, id: u32) -> Option<u32> {
        let at = match self.tables.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(at) => at,
            Err(at) => {
                self.tables.insert(at, (len, HashMap::new()));
                at
            }
        };
        let (_, table) = &mut self.tables[at];
        match table.insert(key, id) {
            Some(old) if old != id => {
                table.insert(key, old);
                Some(old)
            }
            _ => None,
        }
    }

    /// The longest prefix containing the address; `mask(len)` is its first `len` bits.
    fn lookup(&self, mask: impl Fn(u8) -> K) -> Option<(u8, u32)> {
        self.tables
            .iter()
            .find_map(|(len, table)| table.get(&mask(*len)).map(|id| (*len, *id)))
    }

    fn len(&self) -> usize {
        self.tables.iter().map(|(_, t)| t.len()).sum()
    }
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        l => addr & (u32::MAX << (32 - u32::from(l.min(32)))),
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l => addr & (u128::MAX << (128 - u32::from(l.min(128)))),
    }
}

/// Peer IP -> identity and identity -> labels: the state of the `Identity` type.
#[derive(Debug, Clone, Default)]
pub struct IdentityMap {
    v4: Lpm<u32>,
    v6: Lpm<u128>,
    labels: HashMap<u32, Vec<String>>,
}

impl IdentityMap {
    /// Builds the map from `(resource name, identity)` pairs. Errors name the resource: a
    /// prefix that does not parse, or a prefix or identity number claimed twice.
    pub fn from_identities<'a>(
        identities: impl IntoIterator<Item = (&'a str, &'a proto::Identity)>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut map = IdentityMap::default();
        let mut errors = Vec::new();
        let mut names: HashMap<u32, &str> = HashMap::new();
        // prefix -> resource, to name both sides of a conflict.
        let mut owners: HashMap<IpNet, &str> = HashMap::new();
        for (name, identity) in identities {
            if let Some(other) = names.insert(identity.id, name) {
                errors.push((
                    name.to_owned(),
                    format!("identity {} is also resource {other:?}", identity.id),
                ));
                continue;
            }
            map.labels.insert(identity.id, identity.labels.clone());
            for (i, prefix) in identity.prefixes.iter().enumerate() {
                let net: IpNet = match prefix.trim().parse() {
                    Ok(net) => net,
                    Err(_) => {
                        errors.push((
                            name.to_owned(),
                            format!("prefixes[{i}]: invalid IP prefix {prefix:?}"),
                        ));
                        continue;
                    }
                };
                let net = canonical(net.trunc());
                let clash = match net {
                    IpNet::V4(n) => map
                        .v4
                        .insert(n.prefix_len(), u32::from(n.addr()), identity.id),
                    IpNet::V6(n) => {
                        map.v6
                            .insert(n.prefix_len(), u128::from(n.addr()), identity.id)
                    }
                };
                if let Some(old) = clash {
                    let other = owners.get(&net).copied().unwrap_or("?");
                    errors.push((
                        name.to_owned(),
                        format!(
                            "prefix {net} maps to identity {} and to identity {old} (resource {other:?})",
                            identity.id
                        ),
                    ));
                } else {
                    owners.entry(net).or_insert(name);
                }
            }
        }
        if errors.is_empty() {
            Ok(map)
        } else {
            Err(errors)
        }
    }

    /// The identity of `ip`: that of the longest prefix containing it, or [`WORLD`].
    pub fn lookup(&self, ip: IpAddr) -> u32 {
        self.lookup_prefix(ip).map_or(WORLD, |(_, id)| id)
    }

    /// The longest prefix containing `ip` and its identity, if any. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are looked up as IPv4.
    pub fn lookup_prefix(&self, ip: IpAddr) -> Option<(IpNet, u32)> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let addr = u32::from(v4);
                let (len, id) = self.v4.lookup(|len| mask_v4(addr, len))?;
                let net = Ipv4Net::new(v4, len).ok()?.trunc();
                Some((IpNet::V4(net), id))
            }
            IpAddr::V6(v6) => {
                let addr = u128::from(v6);
                let (len, id) = self.v6.lookup(|len| mask_v6(addr, len))?;
                let net = Ipv6Net::new(v6, len).ok()?.trunc();
                Some((IpNet::V6(net), id))
            }
        }
    }

    /// The labels of `identity` (`source:key=value`), if the agent sent it.
    pub fn labels(&self, identity: u32) -> Option<&[String]> {
        self.labels.get(&identity).map(Vec::as_slice)
    }

    /// Number of identities.
    pub fn identity_count(&self) -> usize {
        self.labels.len()
    }

    /// Number of distinct prefixes.
    pub fn prefix_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// `::ffff:a.b.c.d/96+n` is `a.b.c.d/n`: lookups see IPv4-mapped addresses as IPv4.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// [`crate::TypeHandler`] of [`crate::IDENTITY_TYPE`].
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityHandler;

impl crate::TypeHandler for IdentityHandler {
    type State = IdentityMap;

    fn type_url(&self) -> &'static str {
        crate::IDENTITY_TYPE
    }

    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<IdentityMap, Vec<(String, String)>> {
        let mut identities = Vec::with_capacity(resources.len());
        let mut errors = Vec::new();
        for (name, resource) in resources {
            match &resource.body {
                Some(proto::resource::Body::Identity(identity)) => {
                    identities.push((name.as_str(), identity));
                }
                Some(_) => errors.push((name.clone(), "resource is not an Identity".to_owned())),
                None => errors.push((name.clone(), "resource has no body".to_owned())),
            }
        }
        match IdentityMap::from_identities(identities) {
            Ok(map) if errors.is_empty() => Ok(map),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }
}
