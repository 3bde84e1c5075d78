//! `node-agent status`: the proxies connected to a running agent, with what they have
//! acknowledged and their last NACK.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;
use xds::client::Endpoint;

use super::Output;

pub fn run(socket: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let status = runtime
        .block_on(xds::client::fetch_status(&Endpoint::Unix(
            socket.to_owned(),
        )))
        .with_context(|| format!("asking the agent at {}", socket.display()))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let short = |t: &str| t.rsplit('.').next().unwrap_or(t).to_owned();
    match output {
        Output::Json => {
            let clients: Vec<_> = status
                .clients
                .iter()
                .map(|c| {
                    json!({
                        "id": c.client.as_ref().map(|i| i.id.clone()),
                        "kind": c.client.as_ref().map(|i| i.kind.clone()),
                        "connected_seconds": (now_ms - c.connected_unix_ms).max(0) / 1000,
                        "types": c.types.iter().map(|t| json!({
                            "type": short(&t.type_url),
                            "acked_version": t.acked_version,
                            "sent_version": t.sent_version,
                            "responses_sent": t.responses_sent,
                            "resources_sent": t.resources_sent,
                            "bytes_sent": t.bytes_sent,
                            "last_nack": (!t.last_nack_error.is_empty()).then(|| json!({
                                "version": t.last_nack_version,
                                "error": t.last_nack_error,
                                "seconds_ago": (now_ms - t.last_nack_unix_ms).max(0) / 1000,
                            })),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let out = json!({
                "ready": status.ready,
                "versions": status.versions.iter().map(|(t, v)| (short(t), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                "clients": clients,
                "flows": {"received": status.flows_received, "dropped": status.flows_dropped},
                "fqdn": status.fqdn.as_ref().map(super::fqdn::metrics_json),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            let versions: Vec<String> = status
                .versions
                .iter()
                .map(|(t, v)| format!("{} {v}", short(t)))
                .collect();
            println!(
                "agent: {}; versions: {}",
                if status.ready { "ready" } else { "loading" },
                versions.join(", ")
            );
            println!(
                "flow records: {} received, {} dropped",
                status.flows_received, status.flows_dropped
            );
            if let Some(m) = &status.fqdn {
                println!("{}", super::fqdn::metrics_line(m));
            }
            if status.clients.is_empty() {
                println!("no proxies connected");
            }
            for client in &status.clients {
                let (id, kind) = client
                    .client
                    .as_ref()
                    .map(|i| (i.id.as_str(), i.kind.as_str()))
                    .unwrap_or(("?", "?"));
                let age = Duration::from_millis((now_ms - client.connected_unix_ms).max(0) as u64);
                println!("{id} ({kind}), connected {}s", age.as_secs());
                for t in &client.types {
                    let dash = |s: &str| {
                        if s.is_empty() {
                            "-".to_owned()
                        } else {
                            s.to_owned()
                        }
                    };
                    print!(
                        "  {:<14} acked {:<6} in flight {:<6}",
                        short(&t.type_url),
                        dash(&t.acked_version),
                        dash(&t.sent_version)
                    );
                    if t.last_nack_error.is_empty() {
                        println!(" no NACK");
                    } else {
                        let ago = (now_ms - t.last_nack_unix_ms).max(0) / 1000;
                        println!(
                            " last NACK of version {} {ago}s ago: {}",
                            t.last_nack_version, t.last_nack_error
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
