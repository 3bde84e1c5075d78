//! What the datapath needs from the node's network configuration: its devices, the routes
//! to local pods, its own addresses, and the policy routing that delivers redirected
//! packets to the proxies.
//!
//! This goes through iproute2's JSON output (`ip -j`) rather than a netlink crate: iproute2
//! is already required on every node (the README's set-up installs it), the agent reads
//! these tables once per reconcile, and `ip` gives exactly the kernel's view (including
//! which route wins for an address) with no second implementation of route selection.

use std::net::IpAddr;
use std::process::Command;

use ipnet::IpNet;
use serde::Deserialize;

use super::abi::{DP_MARK_MASK, DP_MARK_TO_PROXY};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("running `ip {args}`: {error} (install iproute2)")]
    Spawn { args: String, error: std::io::Error },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("`ip {args}` printed JSON we cannot read: {error}")]
    Json {
        args: String,
        error: serde_json::Error,
    },
}

fn ip(args: &[&str]) -> Result<Vec<u8>, SystemError> {
    let joined = args.join(" ");
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| SystemError::Spawn {
            args: joined.clone(),
            error: source,
        })?;
    if !output.status.success() {
        return Err(SystemError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<T, SystemError> {
    let out = ip(args)?;
    let text = if out.iter().all(u8::is_ascii_whitespace) {
        b"[]".as_slice()
    } else {
        out.as_slice()
    };
    serde_json::from_slice(text).map_err(|source| SystemError::Json {
        args: args.join(" "),
        error: source,
    })
}

/// A network device of the node's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    pub ifindex: u32,
    pub ifname: String,
}

pub fn links() -> Result<Vec<Link>, SystemError> {
    ip_json(&["-j", "link", "show"])
}

#[derive(Debug, Deserialize)]
struct RouteJson {
    dst: String,
    dev: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// A unicast route through a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub dev: String,
}

/// The main table's unicast routes of both families.
pub fn routes() -> Result<Vec<Route>, SystemError> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let routes: Vec<RouteJson> = ip_json(&[family, "-j", "route", "show", "table", "main"])?;
        for route in routes {
            if route.kind.as_deref().is_some_and(|k| k != "unicast") {
                continue;
            }
            let Some(dev) = route.dev else { continue };
            let dst = match route.dst.as_str() {
                "default" if family == "-4" => "0.0.0.0/0".to_string(),
                "default" => "::/0".to_string(),
                d if d.contains('/') => d.to_string(),
                d if d.contains(':') => format!("{d}/128"),
                d => format!("{d}/32"),
            };
            if let Ok(dst) = dst.parse() {
                out.push(Route { dst, dev });
            }
        }
    }
    Ok(out)
}

/// The device the most specific route to `ip` goes through.
pub fn device_for(routes: &[Route], ip: IpAddr) -> Option<&str> {
    routes
        .iter()
        .filter(|r| r.dst.contains(&ip))
        .max_by_key(|r| r.dst.prefix_len())
        .map(|r| r.dev.as_str())
}

#[derive(Debug, Deserialize)]
struct AddrJson {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: Option<String>,
}

/// Every address configured in the node's namespace (the host identity's addresses).
pub fn addresses() -> Result<Vec<IpAddr>, SystemError> {
    let links: Vec<AddrJson> = ip_json(&["-j", "addr", "show"])?;
    Ok(links
        .into_iter()
        .flat_map(|l| l.addr_info)
        .filter_map(|a| a.local?.parse().ok())
        .collect())
}

#[derive(Debug, Deserialize)]
struct RuleJson {
    fwmark: Option<String>,
    fwmask: Option<String>,
    table: Option<String>,
}

/// Routes packets the programs marked DP_MARK_TO_PROXY to the local stack (where the socket
/// bpf_sk_assign chose receives them), for both families: `ip rule add fwmark
/// 0x200/0xf00 lookup TABLE` and `ip route replace local default dev lo table TABLE`.
/// Idempotent, so a restarted agent finds its rules in place.
pub fn ensure_proxy_routing(table: u32) -> Result<(), SystemError> {
    let mark = format!("{DP_MARK_TO_PROXY:#x}");
    let mask = format!("{DP_MARK_MASK:#x}");
    let table_s = table.to_string();
    for family in ["-4", "-6"] {
        let result = ensure_family_routing(family, &mark, &mask, &table_s);
        match result {
            Err(e) if family == "-6" => {
                // A node without IPv6 has nothing to route there.
                tracing::warn!(error = %e, "IPv6 proxy routing not set up");
            }
            other => other?,
        }
    }
    Ok(())
}

fn ensure_family_routing(
    family: &str,
    mark: &str,
    mask: &str,
    table_s: &str,
) -> Result<(), SystemError> {
    {
        let rules: Vec<RuleJson> = ip_json(&[family, "-j", "rule", "show"])?;
        let present = rules.iter().any(|r| {
            r.fwmark.as_deref() == Some(mark)
                && r.fwmask.as_deref() == Some(mask)
                && r.table.as_deref() == Some(table_s)
        });
        if !present {
            ip(&[
                family,
                "rule",
                "add",
                "fwmark",
                &format!("{mark}/{mask}"),
                "lookup",
                table_s,
                "pref",
                "9",
            ])?;
        }
        ip(&[
            family, "route", "replace", "local", "default", "dev", "lo", "table", table_s,
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_route_wins() {
        let routes = vec![
            Route {
                dst: "0.0.0.0/0".parse().expect("literal"),
                dev: "eth0".into(),
            },
            Route {
                dst: "10.0.0.0/8".parse().expect("literal"),
                dev: "uplink".into(),
            },
            Route {
                dst: "10.0.1.5/32".parse().expect("literal"),
                dev: "lxc3".into(),
            },
        ];
        assert_eq!(
            device_for(&routes, "10.0.1.5".parse().expect("literal")),
            Some("lxc3")
        );
        assert_eq!(
            device_for(&routes, "10.0.1.6".parse().expect("literal")),
            Some("uplink")
        );
        assert_eq!(device_for(&routes, "::1".parse().expect("literal")), None);
    }

    #[test]
    fn reads_this_machines_tables() {
        // Whatever this namespace has, the JSON must parse.
        links().expect("ip -j link");
        routes().expect("ip -j route");
        addresses().expect("ip -j addr");
    }
}
