//! `node-agent fqdn cache list`: what a running agent learned from DNS answers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use xds::client::Endpoint;
use xds::{AgentClient, proto};

#[derive(Debug, Subcommand)]
pub enum FqdnCommand {
    /// The FQDN cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the names and IPs DNS answers gave each endpoint, with their expiry.
    List(ListArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this endpoint (NAMESPACE/POD).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
    /// The agent's policy-stream socket.
    #[arg(long, default_value = crate::agent::DEFAULT_SOCKET)]
    pub xds_socket: PathBuf,
}

pub fn run(command: &FqdnCommand) -> anyhow::Result<ExitCode> {
    let FqdnCommand::Cache(CacheCommand::List(args)) = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let response = runtime
        .block_on(async {
            let client = AgentClient::new(Endpoint::Unix(args.xds_socket.clone()))?;
            client
                .fqdn_cache(args.endpoint.as_deref().unwrap_or(""))
                .await
        })
        .with_context(|| format!("asking the agent at {}", args.xds_socket.display()))?;
    let text = match args.output {
        ListOutput::Table => table(&response.entries),
        ListOutput::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&entries_json(&response.entries))?
        ),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// The EXPIRES column: seconds left, or why an expired entry is still there.
fn expires(entry: &proto::FqdnCacheEntry) -> String {
    if entry.in_use {
        "expired (in use)".to_owned()
    } else if entry.expired {
        "expired".to_owned()
    } else {
        entry.expires_in_seconds.to_string()
    }
}

pub fn table(entries: &[proto::FqdnCacheEntry]) -> String {
    let header = ["ENDPOINT", "NAME", "IP", "EXPIRES", "SOURCE"].map(str::to_owned);
    let rows: Vec<[String; 5]> = std::iter::once(header)
        .chain(entries.iter().map(|e| {
            [
                e.endpoint.clone(),
                e.name.clone(),
                e.ip.clone(),
                expires(e),
                e.source.clone(),
            ]
        }))
        .collect();
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn entries_json(entries: &[proto::FqdnCacheEntry]) -> serde_json::Value {
    entries
        .iter()
        .map(|e| {
            json!({
                "endpoint": e.endpoint,
                "name": e.name,
                "ip": e.ip,
                "expires": expires(e),
                "expires_in_seconds": e.expires_in_seconds,
                "expired": e.expired,
                "in_use": e.in_use,
                "source": e.source,
            })
        })
        .collect()
}

pub fn metrics_json(m: &proto::FqdnMetrics) -> serde_json::Value {
    json!({
        "entries": m.entries,
        "identities": m.identities,
        "in_use": m.in_use,
        "observations": m.observations,
        "refused": m.refused,
        "expirations": m.expirations,
        "evictions_per_name_limit": m.evictions_per_name_limit,
        "evictions_global_limit": m.evictions_global_limit,
    })
}

pub fn metrics_line(m: &proto::FqdnMetrics) -> String {
    format!(
        "fqdn cache: {} entries ({} expired in use), {} identities; {} observations ({} refused); {} expired, {} + {} evicted (per-name, global)",
        m.entries,
        m.in_use,
        m.identities,
        m.observations,
        m.refused,
        m.expirations,
        m.evictions_per_name_limit,
        m.evictions_global_limit
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(endpoint: &str, name: &str, ip: &str, secs: u64) -> proto::FqdnCacheEntry {
        proto::FqdnCacheEntry {
            endpoint: endpoint.into(),
            name: name.into(),
            ip: ip.into(),
            expires_in_seconds: secs,
            source: "lookup".into(),
            ..proto::FqdnCacheEntry::default()
        }
    }

    #[test]
    fn table_aligns_columns_and_names_expired_entries() {
        let mut zombie = entry("prod/client", "api.example.com.", "192.0.2.10", 0);
        zombie.expired = true;
        zombie.in_use = true;
        zombie.source = "restored".into();
        let out = table(&[entry("prod/client", "a.example.", "192.0.2.1", 30), zombie]);
        let expected = "\
ENDPOINT      NAME               IP           EXPIRES            SOURCE
prod/client   a.example.         192.0.2.1    30                 lookup
prod/client   api.example.com.   192.0.2.10   expired (in use)   restored
";
        assert_eq!(out, expected);
    }

    #[test]
    fn an_empty_cache_is_the_header() {
        assert_eq!(table(&[]), "ENDPOINT   NAME   IP   EXPIRES   SOURCE\n");
        assert_eq!(entries_json(&[]), json!([]));
    }

    #[test]
    fn json_is_an_array_of_objects_with_the_table_fields() {
        let mut expired = entry("prod/client", "a.example.", "2001:db8::1", 0);
        expired.expired = true;
        let out = entries_json(&[expired]);
        assert_eq!(
            out,
            json!([{
                "endpoint": "prod/client",
                "name": "a.example.",
                "ip": "2001:db8::1",
                "expires": "expired",
                "expires_in_seconds": 0,
                "expired": true,
                "in_use": false,
                "source": "lookup",
            }])
        );
    }
}
