//! `node-agent policy explain`: the verdict of one flow, with the rules that decided it,
//! evaluated on the egress of the source and the ingress of the destination
//! (SEMANTICS 10).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use super::Output;
use super::show::{entry_json, entry_line};
use crate::compiler::evaluate::{DirectionVerdict, L7Decision, Reason, Verdict, evaluate};
use crate::compiler::visibility::only_by_visibility;
use crate::compiler::{Compiler, EndpointKey, EndpointScope};
use crate::identity::Identity;
use crate::policy::rule::L7Parser;
use crate::policy::{Direction, Protocol};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Manifests (Namespaces, Pods, policies): a folder or a file; repeatable.
    #[arg(long, required = true)]
    pub manifests: Vec<PathBuf>,
    /// Source pod, NAMESPACE/NAME.
    #[arg(long)]
    pub from: String,
    /// Destination pod (NAMESPACE/NAME) or IP address.
    #[arg(long)]
    pub to: String,
    /// Destination port and protocol, e.g. 80/TCP (protocol defaults to TCP).
    #[arg(long)]
    pub port: String,
    /// An HTTP request to evaluate: "METHOD PATH", e.g. "GET /v1/".
    #[arg(long)]
    pub http: Option<String>,
    /// Host header of the HTTP request.
    #[arg(long)]
    pub host: Option<String>,
    /// A header of the HTTP request, "Name: value" (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A DNS query name to evaluate.
    #[arg(long)]
    pub dns: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The request given on the command line.
enum Request {
    None,
    Http {
        method: String,
        target: String,
        host: Option<String>,
        headers: Vec<(String, String)>,
    },
    Dns(String),
}

impl Request {
    fn parse(args: &ExplainArgs) -> anyhow::Result<Self> {
        match (&args.http, &args.dns) {
            (Some(_), Some(_)) => bail!("give --http or --dns, not both"),
            (None, Some(name)) => Ok(Request::Dns(name.clone())),
            (Some(http), None) => {
                let (method, target) = http
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| anyhow!("--http {http:?}: expected \"METHOD PATH\""))?;
                let mut headers = Vec::new();
                for header in &args.headers {
                    let (name, value) = header
                        .split_once(':')
                        .ok_or_else(|| anyhow!("--header {header:?}: expected \"Name: value\""))?;
                    headers.push((name.trim().to_owned(), value.trim().to_owned()));
                }
                Ok(Request::Http {
                    method: method.to_owned(),
                    target: target.trim().to_owned(),
                    host: args.host.clone(),
                    headers,
                })
            }
            (None, None) => {
                if args.host.is_some() || !args.headers.is_empty() {
                    bail!("--host and --header need --http");
                }
                Ok(Request::None)
            }
        }
    }

    fn describe(&self) -> Option<String> {
        match self {
            Request::None => None,
            Request::Http { method, target, .. } => Some(format!("http {method} {target}")),
            Request::Dns(name) => Some(format!("dns {name}")),
        }
    }
}

fn parse_port(text: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, proto) = match text.split_once('/') {
        Some((port, proto)) => (port, proto),
        None => (text, "TCP"),
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("--port {text:?}: port must be 1-65535"))?;
    if port == 0 {
        bail!("--port {text:?}: port must be 1-65535");
    }
    let proto = Protocol::parse(proto)
        .ok_or_else(|| anyhow!("--port {text:?}: protocol must be TCP, UDP or SCTP"))?;
    Ok((port, proto))
}

/// One end of the flow, as explained.
struct Side {
    json: Value,
    verdict: Verdict,
    l7: Option<L7Decision>,
    text: Vec<String>,
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let request = Request::parse(args)?;
    let (port, protocol) = parse_port(&args.port)?;
    let (compiler, errors) = super::load_compiler(&args.manifests, EndpointScope::AllPods)?;
    for error in &errors {
        eprintln!("{error} (skipped)");
    }
    let from = EndpointKey::parse(&args.from)
        .ok_or_else(|| anyhow!("--from {:?}: expected NAMESPACE/POD", args.from))?;
    let source = compiler
        .pod(&from)
        .ok_or_else(|| anyhow!("--from {from}: no such pod in the manifests"))?;
    let source_identity = source.identity;

    let (to_key, to_identity) = match args.to.parse::<IpAddr>() {
        Ok(ip) => (compiler.pod_by_ip(ip).cloned(), compiler.identity_of_ip(ip)),
        Err(_) => {
            let key = EndpointKey::parse(&args.to).ok_or_else(|| {
                anyhow!(
                    "--to {:?}: expected NAMESPACE/POD or an IP address",
                    args.to
                )
            })?;
            let pod = compiler
                .pod(&key)
                .ok_or_else(|| anyhow!("--to {key}: no such pod in the manifests"))?;
            let identity = pod.identity;
            (Some(key), identity)
        }
    };

    let egress = explain_side(
        &compiler,
        Direction::Egress,
        Some(&from),
        source_identity,
        to_identity,
        (protocol, port),
        &request,
    )?;
    let ingress = explain_side(
        &compiler,
        Direction::Ingress,
        to_key.as_ref(),
        to_identity,
        source_identity,
        (protocol, port),
        &request,
    )?;

    // SEMANTICS 10.3: both ends must allow; either may redirect.
    let verdict = if egress.verdict == Verdict::Denied || ingress.verdict == Verdict::Denied {
        Verdict::Denied
    } else if egress.verdict == Verdict::AllowedViaProxy
        || ingress.verdict == Verdict::AllowedViaProxy
    {
        Verdict::AllowedViaProxy
    } else {
        Verdict::Allowed
    };
    // SEMANTICS 10.2: only meaningful when redirected; both ends' L7 rules apply.
    let l7_verdict = match (&request, verdict) {
        (Request::None, _) | (_, Verdict::Denied | Verdict::Allowed) => None,
        _ => {
            let decisions: Vec<&L7Decision> = egress.l7.iter().chain(ingress.l7.iter()).collect();
            Some(if decisions.iter().all(|d| d.allowed) {
                "allowed"
            } else {
                "denied"
            })
        }
    };

    match args.output {
        Output::Json => {
            let out = json!({
                "verdict": verdict.name(),
                "l7_verdict": l7_verdict,
                "from": {"endpoint": from.to_string(), "identity": source_identity},
                "to": {"endpoint": to_key.as_ref().map(ToString::to_string), "identity": to_identity, "address": args.to},
                "port": port,
                "protocol": protocol.name(),
                "request": request.describe(),
                "egress": egress.json,
                "ingress": ingress.json,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            println!(
                "Flow {from} (identity {source_identity}) -> {} (identity {to_identity}) {port}/{protocol}{}",
                to_key
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| args.to.clone()),
                request
                    .describe()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default()
            );
            for line in egress.text.iter().chain(&ingress.text) {
                println!("{line}");
            }
            println!("Verdict: {}", verdict.name());
            if let Some(l7) = l7_verdict {
                println!("L7 verdict: {l7}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn explain_side(
    compiler: &Compiler,
    direction: Direction,
    endpoint: Option<&EndpointKey>,
    identity: Identity,
    peer: Identity,
    (protocol, port): (Protocol, u16),
    request: &Request,
) -> anyhow::Result<Side> {
    let Some(key) = endpoint else {
        // The destination is outside the cluster: nothing here enforces its ingress.
        return Ok(Side {
            json: json!({"endpoint": null, "verdict": "allowed", "reason": "not-a-pod"}),
            verdict: Verdict::Allowed,
            l7: None,
            text: vec![format!(
                "{} : allowed (destination is not a pod; no ingress policy applies)",
                direction.name()
            )],
        });
    };
    let policy = compiler
        .endpoint(key)
        .ok_or_else(|| anyhow!("{key}: pod has no compiled policy"))?;
    let policy = policy.direction(direction);
    let result: DirectionVerdict<'_> = evaluate(policy, peer, protocol, port);
    let reason = match result.reason {
        Reason::NoPolicy => "no-policy",
        Reason::DenyRule => "deny-rule",
        Reason::AllowRule => "allow-rule",
        Reason::DefaultDeny => "default-deny",
    };
    let l7 = result.l7.as_ref().and_then(|rules| match (request, rules.parser) {
        (Request::Http { method, target, host, headers }, L7Parser::Http) => {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            Some(rules.evaluate_http(&l7_proxy::RequestView {
                method,
                target,
                host: host.as_deref(),
                headers: &pairs,
            }))
        }
        (Request::Dns(name), L7Parser::Dns) => Some(rules.evaluate_dns(name)),
        (Request::None, _) => None,
        (_, parser) => Some(L7Decision {
            allowed: false,
            matched: None,
            error: Some(format!("this port is redirected to the {} proxy; the request given is of another protocol", parser.name())),
        }),
    });

    let mut text = vec![format!(
        "{} of {key} (identity {identity}): {} ({})",
        direction.name(),
        result.verdict.name(),
        match result.reason {
            Reason::NoPolicy => "no policy selects this endpoint in this direction",
            Reason::DenyRule => "a deny rule matched",
            Reason::AllowRule => "allowed by rule",
            Reason::DefaultDeny => "no rule allows it: default deny",
        }
    )];
    for entry in &result.deciding {
        text.push(format!("    {}", entry_line(entry, direction)));
    }
    // SEMANTICS 7: policy allows the flow; only the pod's annotation sends it to the proxy.
    let visibility = match result.verdict {
        Verdict::AllowedViaProxy => only_by_visibility(result.deciding.iter().copied()),
        _ => None,
    };
    if let Some(items) = &visibility {
        text.push(format!(
            "    via the proxy only because of the visibility annotation {items} of {key} (every request allowed, logged)"
        ));
    }
    if let (Some(rules), Some(decision)) = (&result.l7, &l7) {
        text.push(format!(
            "    L7 {}: {}{}",
            rules.parser.name(),
            if decision.allowed {
                "allowed"
            } else {
                "denied"
            },
            match (&decision.matched, &decision.error) {
                (Some(m), _) => format!(" by {m}"),
                (None, Some(e)) => format!(" ({e})"),
                (None, None) => " (no rule matched)".into(),
            }
        ));
    }
    let json = json!({
        "endpoint": key.to_string(),
        "identity": identity,
        "peer_identity": peer,
        "enforced": policy.enforced,
        "default_deny": policy.default_deny,
        "verdict": result.verdict.name(),
        "reason": reason,
        "rules": result.deciding.iter().map(|e| entry_json(e)).collect::<Vec<_>>(),
        "visibility": visibility,
        "l7": result.l7.as_ref().map(|rules| json!({
            "parser": rules.parser,
            "allow_all": rules.allow_all,
            "verdict": l7.as_ref().map(|d| if d.allowed { "allowed" } else { "denied" }),
            "matched": l7.as_ref().and_then(|d| d.matched.clone()),
            "error": l7.as_ref().and_then(|d| d.error.clone()),
        })),
    });
    Ok(Side {
        json,
        verdict: result.verdict,
        l7,
        text,
    })
}
