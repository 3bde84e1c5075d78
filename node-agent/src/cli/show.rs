//! `node-agent policy show --manifests DIR --node NODE`

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::Output;
use crate::compiler::{
    DirectionPolicy, EndpointPolicy, EndpointScope, L7Policy, PolicyEntry, PortKey,
};
use crate::policy::{Direction, L7Spec, Peer};

pub fn run(manifests: &[PathBuf], node: &str, output: Output) -> anyhow::Result<ExitCode> {
    let (compiler, errors) = super::load_compiler(manifests, EndpointScope::Node(node.to_owned()))?;
    for error in &errors {
        eprintln!("{error} (skipped)");
    }
    match output {
        Output::Json => {
            let endpoints: Vec<Value> = compiler.endpoints().map(|e| endpoint_json(e)).collect();
            println!("{}", serde_json::to_string_pretty(&endpoints)?);
        }
        Output::Text => {
            let mut any = false;
            for endpoint in compiler.endpoints() {
                any = true;
                print_endpoint(endpoint);
            }
            if !any {
                println!(
                    "no local endpoints on node {node} (pods need spec.nodeName: {node} and status.podIP)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_endpoint(endpoint: &EndpointPolicy) {
    let ip = endpoint
        .ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "no IP".into());
    println!(
        "{} (identity {}, {ip}) {}",
        endpoint.key, endpoint.identity, endpoint.labels
    );
    for direction in Direction::BOTH {
        let policy = endpoint.direction(direction);
        println!("  {}: {}", direction.name(), direction_mode(policy));
        for entry in &policy.entries {
            println!("    {}", entry_line(entry, direction));
        }
    }
    for note in &endpoint.notes {
        println!("  note: {note}");
    }
}

fn direction_mode(policy: &DirectionPolicy) -> &'static str {
    let only_visibility = policy.entries.iter().any(|e| {
        e.port == PortKey::ANY
            && e.peer == Peer::Any
            && e.origins.is_empty()
            && e.visibility.is_some()
    });
    if only_visibility {
        return "not enforced by policy: everything allowed; the visibility annotation redirects its ports to the proxy";
    }
    match (policy.enforced, policy.default_deny) {
        (false, _) => "not enforced (no policy selects this endpoint): everything allowed",
        (true, true) => "enforced, default deny",
        (true, false) => "enforced, default allow (enableDefaultDeny: false)",
    }
}

pub(super) fn entry_line(entry: &PolicyEntry, direction: Direction) -> String {
    let peer_word = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let action = match (&entry.deny, &entry.l7) {
        (true, _) => "DENY".to_string(),
        (false, None) => "allow".to_string(),
        (false, Some(l7)) => format!("allow via proxy ({})", l7_summary(l7)),
    };
    // SEMANTICS 7: entries that exist or redirect only because of the pod's annotation.
    let action = match &entry.visibility {
        Some(items) => format!("{action} by visibility annotation {items}"),
        None => action,
    };
    let origins: Vec<String> = entry.origins.iter().map(ToString::to_string).collect();
    format!(
        "{:<12} {peer_word} {}  identities {}  {action}  [{}]",
        entry.port.to_string(),
        entry.peer,
        identities_text(entry),
        origins.join("; ")
    )
}

fn identities_text(entry: &PolicyEntry) -> String {
    if entry.selection.all {
        return "all".into();
    }
    let ids: Vec<String> = entry
        .selection
        .identities
        .iter()
        .map(ToString::to_string)
        .collect();
    format!("[{}]", ids.join(","))
}

fn l7_summary(l7: &L7Policy) -> String {
    let count: usize = l7
        .rules
        .iter()
        .map(|(_, spec)| match spec {
            L7Spec::Http { specs, .. } => specs.len(),
            L7Spec::Dns { specs, .. } => specs.len(),
        })
        .sum();
    if l7.allow_all {
        format!("{}: any request (wildcard)", l7.parser.name())
    } else {
        let plural = if count == 1 { "" } else { "s" };
        format!("{}: {count} rule{plural}", l7.parser.name())
    }
}

pub(super) fn l7_json(l7: &L7Policy) -> Value {
    let rules: Vec<Value> = l7
        .rules
        .iter()
        .map(|(path, spec)| match spec {
            L7Spec::Http { specs, .. } => json!({"from": path, "http": specs}),
            L7Spec::Dns { specs, .. } => json!({"from": path, "dns": specs}),
        })
        .collect();
    json!({"parser": l7.parser, "allow_all": l7.allow_all, "rules": rules})
}

pub(super) fn entry_json(entry: &PolicyEntry) -> Value {
    json!({
        "port": entry.port.to_string(),
        "protocol": entry.port.protocol.map(|p| p.name()).unwrap_or("ANY"),
        "port_start": entry.port.port,
        "port_end": entry.port.end_port,
        "peer": entry.peer.to_string(),
        "named_port": entry.named_port,
        "identities": if entry.selection.all { json!("all") } else { json!(entry.selection.identities) },
        "action": if entry.deny { "deny" } else if entry.l7.is_some() { "redirect" } else { "allow" },
        "l7": entry.l7.as_ref().map(l7_json),
        "visibility": entry.visibility,
        "rules": entry.origins.iter().map(|o| json!({
            "kind": o.policy.kind.kind_name(),
            "namespace": o.policy.namespace,
            "name": o.policy.name,
            "rule": o.path,
        })).collect::<Vec<_>>(),
    })
}

fn direction_json(policy: &DirectionPolicy) -> Value {
    json!({
        "enforced": policy.enforced,
        "default_deny": policy.default_deny,
        "entries": policy.entries.iter().map(entry_json).collect::<Vec<_>>(),
    })
}

fn endpoint_json(endpoint: &EndpointPolicy) -> Value {
    json!({
        "endpoint": endpoint.key.to_string(),
        "ip": endpoint.ip,
        "identity": endpoint.identity,
        "labels": endpoint.labels.to_strings(),
        "ingress": direction_json(&endpoint.ingress),
        "egress": direction_json(&endpoint.egress),
        "notes": endpoint.notes,
    })
}
