use std::process::ExitCode;

use clap::Parser;
use node_agent::cli::{Cli, Command, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The running agent logs its pushes and ACK/NACKs; one-shot commands stay quiet.
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODE_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
