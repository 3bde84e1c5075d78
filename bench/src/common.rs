//! What `http-bench` and `datapath-bench` share: Ctrl-C handling, the release binaries,
//! child processes stopped on drop, pinned commands in a namespace, the backend nginx,
//! wrk's output, the machine description of the results header and writing the results.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use integration::netns::Netns;

use crate::procfs;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once Ctrl-C or SIGTERM arrived, so the run unwinds through the destructors that
/// stop every process and delete every namespace.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Notes Ctrl-C and SIGTERM (on a thread of its own) for [`check_interrupted`].
pub fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("interrupted: finishing the current run, then cleaning up");
            INTERRUPTED.store(true, Ordering::Relaxed);
        });
    });
}

/// The first non-empty line `program args` prints (stdout, then stderr), for the header.
pub fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

/// The CPU's model name from /proc/cpuinfo ("" when there is none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}

/// `seed`, or else one from the clock.
pub fn seed_or_clock(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    })
}

/// `out`, or else bench/results/NAME-DATE.md.
pub fn results_path(out: Option<&Path>, name: &str, date: &str) -> PathBuf {
    out.map_or_else(
        || {
            integration::workspace_root()
                .join("bench/results")
                .join(format!("{name}-{date}.md"))
        },
        Path::to_path_buf,
    )
}

/// Writes the results `text` to `out`, with a note when `result` is a failure: whatever
/// finished is written, also after a failure or Ctrl-C.
pub fn write_results(out: &Path, mut text: String, result: &Result<()>) -> Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if let Err(e) = result {
        text.push_str(&format!("\n**Run incomplete:** {e:#}\n"));
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("results in {}", out.display());
    Ok(())
}

/// Paths of our release binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub proxy: PathBuf,
}

/// The release binaries, built first unless `build` is false: benchmarks of a debug build
/// mean nothing.
pub fn release_binaries(build: bool) -> Result<Binaries> {
    let target = release_dir(build, &["l7-proxy", "node-agent"])?;
    Ok(Binaries {
        agent: target.join("node-agent"),
        proxy: target.join("l7-proxy"),
    })
}

/// The release folder holding the binaries of `packages` (each named after its package),
/// built first unless `build` is false; an error names what is missing.
pub fn release_dir(build: bool, packages: &[&str]) -> Result<PathBuf> {
    let root = integration::workspace_root();
    let package_args: Vec<&str> = packages.iter().flat_map(|p| ["-p", *p]).collect();
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet"])
            .args(&package_args)
            .current_dir(&root)
            .status()
            .context("running cargo build --release")?;
        if !status.success() {
            bail!(
                "cargo build --release {} failed: {status}",
                package_args.join(" ")
            );
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    for package in packages {
        let path = target.join(package);
        if !path.exists() {
            return Err(anyhow!(
                "{} missing: run cargo build --release {}",
                path.display(),
                package_args.join(" ")
            ));
        }
    }
    Ok(target)
}

/// A child process, stopped on drop: SIGTERM first so that nginx's master takes its worker
/// down, 3 s to exit, then SIGKILL for whatever is left (the worker included, found before
/// the term).
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(mut command: Command, what: &str) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child,
            what: what.to_owned(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (a bad config, a port in use).
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited: {status}", self.what),
            Err(e) => bail!("{}: {e}", self.what),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id();
        let children = procfs::children(pid);
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for child in children {
            if Path::new(&format!("/proc/{child}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &child.to_string()])
                    .status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -c CPU PROGRAM` in `ns`, stdout and stderr to `log`.
pub fn pinned_in(ns: &Netns, cpu: &str, program: &Path, log: &Path) -> Result<Command> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = ns.command("taskset");
    command
        .args(["-c", cpu])
        .arg(program)
        .stdout(out.try_clone()?)
        .stderr(out);
    Ok(command)
}

/// nginx in `ns` on `cpu` with `conf`, written to DIR/nginx.conf (its prefix and error
/// log in `dir` too, its stdout and stderr in DIR/`log`).
pub fn start_nginx(
    ns: &Netns,
    cpu: &str,
    dir: &Path,
    log: &str,
    conf: String,
    what: &str,
) -> Result<Proc> {
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut command = pinned_in(ns, cpu, Path::new("nginx"), &dir.join(log))?;
    command
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path);
    Proc::spawn(command, what)
}

/// `taskset -c CPU wrk -t1 -c CONNECTIONS -d SECONDS --timeout 5s` in `ns`; the caller
/// adds headers and the URL.
pub fn wrk_command(ns: &Netns, cpu: &str, duration: Duration, connections: usize) -> Command {
    let mut command = ns.command("taskset");
    command.args(["-c", cpu, "wrk", "-t1"]).args([
        "-c",
        &connections.to_string(),
        "-d",
        // wrk takes whole seconds only ("2000ms" is a usage error).
        &format!("{}s", duration.as_secs().max(1)),
        "--timeout",
        "5s",
    ]);
    command
}

/// The last lines of every log in `dir`, for errors: the scratch folder goes away.
pub fn log_tails(dir: &Path) -> String {
    let mut text = String::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    for path in paths {
        let content = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = content.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        text.push_str(&format!("\n--- {}:\n{tail}", path.display()));
    }
    text
}

/// One closed-loop run as wrk saw it.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// wrk's text summary.
pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut result = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            result.rps = v.trim().parse().context("wrk Requests/sec")?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            result.requests = n.trim().parse().context("wrk request count")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = v.trim().parse().context("wrk non-2xx count")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            result.socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
    }
    if result.rps == 0.0 {
        bail!("no Requests/sec in wrk's output: {}", truncate(text));
    }
    Ok(result)
}

/// The first 300 characters of `text`, for error messages.
pub fn truncate(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(300)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let text = "Running 2s test @ http://x/\n  1 threads and 50 connections\n  40000 requests in 2.00s, 3.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  19990.50\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk(text).expect("parses");
        assert_eq!(r.requests, 40000);
        assert_eq!(r.non_2xx, 4);
        assert_eq!(r.socket_errors, 3);
        assert!((r.rps - 19990.5).abs() < 1e-9);
    }

    #[test]
    fn wrk_without_rate_fails() {
        assert!(parse_wrk("Running 2s test @ http://x/\n").is_err());
    }
}
