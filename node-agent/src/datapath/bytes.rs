//! The byte images of the [`abi`](super::abi) structs as the kernel stores them.
//!
//! aya's typed maps want `Pod` keys and values; implementing `Pod` for our structs would
//! need `unsafe`, which the workspace forbids. Byte arrays are `Pod` already, so each
//! struct is written and read here field by field in the C layout (native byte order for
//! the integer fields, whose network-order ones already hold network-order values). The
//! layout test of `abi` pins the offsets these functions assume.

use super::abi::{
    CtKey, CtValue, DpEvent, EndpointValue, IpcacheKey, IpcacheValue, LocalIpKey, PolicyKey,
    PolicyValue,
};

/// LPM key data of the ipcache: the key without its `prefixlen` (aya's `lpm_trie::Key`
/// holds the prefix length itself).
pub fn ipcache_key_data(key: &IpcacheKey) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0] = key.family;
    out[1..4].copy_from_slice(&key.pad);
    out[4..20].copy_from_slice(&key.addr);
    out
}

pub fn ipcache_key_from(prefixlen: u32, data: &[u8; 20]) -> IpcacheKey {
    let mut key = IpcacheKey {
        prefixlen,
        family: data[0],
        ..IpcacheKey::default()
    };
    key.pad.copy_from_slice(&data[1..4]);
    key.addr.copy_from_slice(&data[4..20]);
    key
}

pub fn ipcache_value(value: &IpcacheValue) -> [u8; 4] {
    value.identity.to_ne_bytes()
}

pub fn ipcache_value_from(data: &[u8; 4]) -> IpcacheValue {
    IpcacheValue {
        identity: u32::from_ne_bytes(*data),
    }
}

pub fn endpoint_value(value: &EndpointValue) -> [u8; 28] {
    let mut out = [0u8; 28];
    out[0..2].copy_from_slice(&value.endpoint_id.to_ne_bytes());
    out[2..4].copy_from_slice(&value.flags.to_ne_bytes());
    out[4..8].copy_from_slice(&value.identity.to_ne_bytes());
    out[8..12].copy_from_slice(&value.ipv4);
    out[12..28].copy_from_slice(&value.ipv6);
    out
}

pub fn endpoint_value_from(data: &[u8; 28]) -> EndpointValue {
    let mut value = EndpointValue {
        endpoint_id: u16::from_ne_bytes([data[0], data[1]]),
        flags: u16::from_ne_bytes([data[2], data[3]]),
        identity: u32::from_ne_bytes([data[4], data[5], data[6], data[7]]),
        ..EndpointValue::default()
    };
    value.ipv4.copy_from_slice(&data[8..12]);
    value.ipv6.copy_from_slice(&data[12..28]);
    value
}

pub fn local_ip_key(key: &LocalIpKey) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0] = key.family;
    out[1..4].copy_from_slice(&key.pad);
    out[4..20].copy_from_slice(&key.addr);
    out
}

pub fn local_ip_key_from(data: &[u8; 20]) -> LocalIpKey {
    let mut key = LocalIpKey {
        family: data[0],
        ..LocalIpKey::default()
    };
    key.pad.copy_from_slice(&data[1..4]);
    key.addr.copy_from_slice(&data[4..20]);
    key
}

/// LPM key data of the policy map (the key without `prefixlen`).
pub fn policy_key_data(key: &PolicyKey) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..2].copy_from_slice(&key.endpoint_id.to_ne_bytes());
    out[2] = key.direction;
    out[3] = key.pad;
    out[4..8].copy_from_slice(&key.identity.to_ne_bytes());
    out[8] = key.pad2;
    out[9] = key.protocol;
    out[10..12].copy_from_slice(&key.dport.to_ne_bytes());
    out
}

pub fn policy_key_from(prefixlen: u32, data: &[u8; 12]) -> PolicyKey {
    PolicyKey {
        prefixlen,
        endpoint_id: u16::from_ne_bytes([data[0], data[1]]),
        direction: data[2],
        pad: data[3],
        identity: u32::from_ne_bytes([data[4], data[5], data[6], data[7]]),
        pad2: data[8],
        protocol: data[9],
        dport: u16::from_ne_bytes([data[10], data[11]]),
    }
}

pub fn policy_value(value: &PolicyValue) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = value.action;
    out[1] = value.flags;
    out[2..4].copy_from_slice(&value.proxy_port.to_ne_bytes());
    out[4] = value.l4_prefixlen;
    out[5..8].copy_from_slice(&value.pad);
    out
}

pub fn policy_value_from(data: &[u8; 8]) -> PolicyValue {
    let mut value = PolicyValue {
        action: data[0],
        flags: data[1],
        proxy_port: u16::from_ne_bytes([data[2], data[3]]),
        l4_prefixlen: data[4],
        ..PolicyValue::default()
    };
    value.pad.copy_from_slice(&data[5..8]);
    value
}

pub fn ct_key_from(data: &[u8; 40]) -> CtKey {
    let mut key = CtKey::default();
    key.saddr.copy_from_slice(&data[0..16]);
    key.daddr.copy_from_slice(&data[16..32]);
    key.sport = u16::from_ne_bytes([data[32], data[33]]);
    key.dport = u16::from_ne_bytes([data[34], data[35]]);
    key.protocol = data[36];
    key.direction = data[37];
    key.family = data[38];
    key.pad = data[39];
    key
}

pub fn ct_value_from(data: &[u8; 16]) -> CtValue {
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&data[0..8]);
    CtValue {
        last_seen_ns: u64::from_ne_bytes(ns),
        remote_identity: u32::from_ne_bytes([data[8], data[9], data[10], data[11]]),
        proxy_port: u16::from_ne_bytes([data[12], data[13]]),
        action: data[14],
        flags: data[15],
    }
}

/// Size of one ring-buffer record.
pub const DP_EVENT_SIZE: usize = 72;

/// Decodes a ring-buffer record; `None` if it is not the size of `struct dp_event` (a
/// program and agent built from different headers).
pub fn dp_event_from(data: &[u8]) -> Option<DpEvent> {
    if data.len() != DP_EVENT_SIZE {
        return None;
    }
    let u16_at = |i: usize| u16::from_ne_bytes([data[i], data[i + 1]]);
    let u32_at = |i: usize| u32::from_ne_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&data[0..8]);
    let mut event = DpEvent {
        timestamp_ns: u64::from_ne_bytes(ts),
        r#type: data[8],
        reason: data[9],
        action: data[10],
        r#match: data[11],
        direction: data[12],
        family: data[13],
        protocol: data[14],
        pad: data[15],
        ifindex: u32_at(16),
        endpoint_id: u16_at(20),
        proxy_port: u16_at(22),
        src_identity: u32_at(24),
        dst_identity: u32_at(28),
        sport: u16_at(32),
        dport: u16_at(34),
        ..DpEvent::default()
    };
    event.saddr.copy_from_slice(&data[36..52]);
    event.daddr.copy_from_slice(&data[52..68]);
    event.pad2.copy_from_slice(&data[68..72]);
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn offsets_used_here_match_the_mirrors() {
        assert_eq!(offset_of!(EndpointValue, ipv4), 8);
        assert_eq!(offset_of!(EndpointValue, ipv6), 12);
        assert_eq!(offset_of!(PolicyKey, identity) - 4, 4);
        assert_eq!(offset_of!(PolicyKey, dport) - 4, 10);
        assert_eq!(offset_of!(PolicyValue, l4_prefixlen), 4);
        assert_eq!(offset_of!(CtKey, protocol), 36);
        assert_eq!(offset_of!(CtValue, proxy_port), 12);
        assert_eq!(offset_of!(DpEvent, ifindex), 16);
        assert_eq!(offset_of!(DpEvent, src_identity), 24);
        assert_eq!(offset_of!(DpEvent, sport), 32);
        assert_eq!(offset_of!(DpEvent, saddr), 36);
        assert_eq!(offset_of!(DpEvent, daddr), 52);
        assert_eq!(std::mem::size_of::<DpEvent>(), DP_EVENT_SIZE);
    }

    #[test]
    fn round_trips() {
        let key = PolicyKey {
            prefixlen: 96,
            endpoint_id: 7,
            direction: 1,
            identity: 4242,
            protocol: 6,
            dport: 80u16.to_be(),
            ..PolicyKey::default()
        };
        let data = policy_key_data(&key);
        assert_eq!(&data[10..12], &[0, 80], "dport is network order in the key");
        assert_eq!(policy_key_from(96, &data), key);
        let value = PolicyValue {
            action: 2,
            flags: 1,
            proxy_port: 15001,
            l4_prefixlen: 24,
            pad: [0; 3],
        };
        assert_eq!(policy_value_from(&policy_value(&value)), value);
        let ep = EndpointValue {
            endpoint_id: 3,
            flags: 5,
            identity: 99,
            ipv4: [10, 0, 0, 1],
            ipv6: [1; 16],
        };
        assert_eq!(endpoint_value_from(&endpoint_value(&ep)), ep);
        let ip = IpcacheKey {
            prefixlen: 64,
            family: 4,
            pad: [0; 3],
            addr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(ipcache_key_from(64, &ipcache_key_data(&ip)), ip);
    }

    #[test]
    fn events_of_the_wrong_size_are_refused() {
        assert!(dp_event_from(&[0u8; 71]).is_none());
        let mut raw = [0u8; 72];
        raw[8] = 1;
        raw[9] = 2;
        raw[24..28].copy_from_slice(&576u32.to_ne_bytes());
        raw[36..40].copy_from_slice(&[10, 0, 0, 40]);
        let event = dp_event_from(&raw).expect("72 bytes");
        assert_eq!(
            (event.r#type, event.reason, event.src_identity),
            (1, 2, 576)
        );
        assert_eq!(&event.saddr[..4], &[10, 0, 0, 40]);
    }
}
