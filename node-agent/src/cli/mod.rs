//! The `node-agent` command line. Each subcommand lives in its own module; this one holds
//! the argument definitions and what they share (loading a folder of manifests).

mod explain;
mod fqdn;
pub mod monitor;
pub mod observe;
mod run;
mod show;
mod status;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::compiler::{Compiler, EndpointScope};
use crate::manifest::{self, ManifestError};
use crate::source::directory::is_manifest_name;
use crate::source::{DirectorySource, SourceEvent};

#[derive(Debug, Parser)]
#[command(
    name = "node-agent",
    version,
    about = "Sidecar-less L7 policy enforcer: the per-node agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with CiliumNetworkPolicy manifests offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the agent: read policy from a source and serve it to the proxies.
    Run(run::RunArgs),
    /// Show the proxies connected to a running agent and what they acknowledged.
    Status {
        /// The agent's policy-stream socket.
        #[arg(long, default_value = crate::agent::DEFAULT_SOCKET)]
        xds_socket: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print a running agent's live events like `cilium monitor`: datapath drops, policy
    /// verdicts, L7 flow records.
    Monitor(monitor::MonitorArgs),
    /// Print a running agent's flow records like `hubble observe`.
    Observe(observe::ObserveArgs),
    /// A running agent's toFQDNs state.
    #[command(subcommand)]
    Fqdn(fqdn::FqdnCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check manifests; print one line per error and exit 1 if there is any.
    Validate {
        /// Files or folders of manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Explain the verdict for one flow from a pod to a pod or an IP.
    Explain(explain::ExplainArgs),
    /// Print the compiled policy of every local endpoint of a node.
    Show {
        /// Manifests (Namespaces, Pods, policies): a folder or a file; repeatable.
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// The node whose endpoints to show (pods with this `spec.nodeName` and a pod IP).
        #[arg(long)]
        node: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(PolicyCommand::Validate { paths }) => validate::run(&paths),
        Command::Policy(PolicyCommand::Explain(args)) => explain::run(&args),
        Command::Policy(PolicyCommand::Show {
            manifests,
            node,
            output,
        }) => show::run(&manifests, &node, output),
        Command::Run(args) => run::run(&args),
        Command::Status { xds_socket, output } => status::run(&xds_socket, output),
        Command::Monitor(args) => monitor::run(&args),
        Command::Observe(args) => observe::run(&args),
        Command::Fqdn(command) => fqdn::run(&command),
    }
}

/// The manifest files of `path`: the file itself, or the YAML/JSON files of a folder
/// (sub-folders too when `recursive`, like `kubectl apply -R`), sorted by name so every
/// run reads them in the same order. Names are filtered as the directory source does.
pub fn manifest_files(path: &Path, recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for file in entries {
        if file.is_dir() {
            let hidden = file
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if recursive && !hidden {
                files.extend(manifest_files(&file, true)?);
            }
        } else if file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_manifest_name)
        {
            files.push(file);
        }
    }
    Ok(files)
}

/// Loads folders (through the directory source, as the agent will) or files of manifests
/// into a compiler. Invalid objects are returned (for stderr) and left out; the valid ones
/// still compile.
pub fn load_compiler(
    paths: &[PathBuf],
    scope: EndpointScope,
) -> anyhow::Result<(Compiler, Vec<ManifestError>)> {
    let mut compiler = Compiler::new(scope);
    let mut errors = Vec::new();
    for path in paths {
        let events = if path.is_dir() {
            DirectorySource::new(path).load()?
        } else {
            let parsed = manifest::read_file(path);
            let invalid = parsed.errors.into_iter().map(SourceEvent::Invalid);
            parsed
                .objects
                .into_iter()
                .map(SourceEvent::Applied)
                .chain(invalid)
                .collect()
        };
        for event in events {
            match event {
                SourceEvent::Invalid(error) => errors.push(error),
                event => compiler.apply(event),
            }
        }
    }
    compiler.flush();
    Ok((compiler, errors))
}
