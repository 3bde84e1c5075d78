//! Helpers for the end-to-end tests: the real binaries of the workspace, built once.

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root (where `examples/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary, built with the dev profile the tests run under. Cargo only
/// exposes `CARGO_BIN_EXE_*` to tests of the binary's own package, so the end-to-end crate
/// builds the binaries it drives itself.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let root = workspace_root();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bins"])
            .current_dir(&root)
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build --bins failed: {status}"))
        }
    });
    if let Err(e) = built {
        panic!("cannot build {package}/{name}: {e}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join(name)
}

/// Runs `node-agent` with `args` from the workspace root.
pub fn node_agent(args: &[&str]) -> Output {
    let bin = binary("node-agent", "node-agent");
    match Command::new(&bin)
        .args(args)
        .current_dir(workspace_root())
        .output()
    {
        Ok(output) => output,
        Err(e) => panic!("running {}: {e}", bin.display()),
    }
}

/// A `node-agent run` process on a folder of manifests and a socket in a temporary folder.
/// Killed when dropped, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct AgentProcess {
    child: std::process::Child,
    pub socket: PathBuf,
}

impl AgentProcess {
    /// Starts the agent for node `node1` on `manifests`, serving on `socket`.
    pub fn start(manifests: &Path, socket: &Path) -> Self {
        Self::start_on("node1", manifests, socket)
    }

    /// Starts the agent for `node` on `manifests`, serving on `socket`.
    pub fn start_on(node: &str, manifests: &Path, socket: &Path) -> Self {
        let bin = binary("node-agent", "node-agent");
        let child = Command::new(&bin)
            .args(["run", "--no-datapath", "--node-name", node, "--source"])
            .arg(format!("dir:{}", manifests.display()))
            .arg("--xds-socket")
            .arg(socket)
            // Its own FQDN state next to the socket: never the machine's default file,
            // which parallel tests would share.
            .arg("--fqdn-state")
            .arg(socket.with_extension("fqdn.json"))
            .env("NODE_AGENT_LOG", "info")
            .spawn();
        match child {
            Ok(child) => Self {
                child,
                socket: socket.to_owned(),
            },
            Err(e) => panic!("starting {}: {e}", bin.display()),
        }
    }

    /// The agent's process id, for signals a test sends itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the agent to exit after a signal the test sent.
    pub fn wait(mut self) -> std::process::ExitStatus {
        match self.child.wait() {
            Ok(status) => status,
            Err(e) => panic!("waiting for the agent: {e}"),
        }
    }

    /// Stops the agent with SIGTERM, as an orchestrator would, and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        match self.child.wait() {
            Ok(status) => status,
            Err(e) => panic!("waiting for the agent: {e}"),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
