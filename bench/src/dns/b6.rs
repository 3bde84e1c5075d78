//! B6: our dns-proxy (forward mode, policy from a `--no-datapath` agent) against dnsdist
//! with the same rules, in one network namespace on loopback addresses: the systems under
//! test on CPU 0, dnsperf and the upstream (dnsmasq) on CPU 1. Everything is stopped and
//! the namespace deleted on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration::netns::Netns;

use crate::b6conf::{
    CLIENT_IP, DNSDIST_RE_IP, DNSDIST_SFX_IP, OURS_IP, RuleSet, UPSTREAM_IP, ZONE, pods_yaml,
};
use crate::common::{Proc, check_interrupted, log_tails, pinned_in};
use crate::dnsperf::{self, DnsperfResult};
use crate::procfs::{self, MachineCpu};
use crate::{Bins, LOAD_CPU, SUT_CPU};

pub const ADMIN: &str = "127.0.0.1:9953";

/// Who answers the queries of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// dnsperf straight to the upstream: the latency floor.
    Direct,
    Ours,
    /// dnsdist, wildcards as one RE2 alternation.
    DnsdistRe,
    /// dnsdist, wildcards as a SuffixMatchNode.
    DnsdistSfx,
}

impl System {
    pub const ALL: [System; 4] = [
        System::Direct,
        System::Ours,
        System::DnsdistRe,
        System::DnsdistSfx,
    ];
    pub const PEERS: [System; 2] = [System::DnsdistRe, System::DnsdistSfx];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Ours => "dns-proxy",
            System::DnsdistRe => "dnsdist-re2",
            System::DnsdistSfx => "dnsdist-suffix",
        }
    }

    fn address(self) -> Ipv4Addr {
        match self {
            System::Direct => UPSTREAM_IP,
            System::Ours => OURS_IP,
            System::DnsdistRe => DNSDIST_RE_IP,
            System::DnsdistSfx => DNSDIST_SFX_IP,
        }
    }
}

/// The B6 namespace and its processes. Field order is drop order.
#[derive(Debug)]
pub struct B6Env {
    proxy: Proc,
    agent: Proc,
    dnsdist_re: Proc,
    dnsdist_sfx: Proc,
    upstream: Proc,
    pub ns: Netns,
    pub dir: PathBuf,
    pub rules: RuleSet,
    queries: PathBuf,
}

impl B6Env {
    /// Sets up the namespace, writes the configs and starts every system; returns once
    /// each answers an allowed and a refused name as the rules say.
    pub fn start(bins: &Bins, scratch: &Path, rules: RuleSet, seed: u64) -> Result<Self> {
        let dir = scratch.join("b6");
        std::fs::create_dir_all(&dir)?;
        let ns = Netns::new("dnsb6");
        for ip in [
            CLIENT_IP,
            UPSTREAM_IP,
            OURS_IP,
            DNSDIST_RE_IP,
            DNSDIST_SFX_IP,
        ] {
            ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        let queries = dir.join("queries.txt");
        std::fs::write(&queries, rules.queries(10_000, seed))?;

        // The upstream: dnsmasq answering every name of the zone itself, no cache misses,
        // no upstream of its own, no logging.
        let mut upstream = pinned_in(
            &ns,
            LOAD_CPU,
            Path::new("dnsmasq"),
            &dir.join("dnsmasq.log"),
        )?;
        upstream.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            &format!("--listen-address={UPSTREAM_IP}"),
            &format!("--address=/{ZONE}/10.99.0.1"),
        ]);
        let upstream = Proc::spawn(upstream, "dnsmasq")?;

        let mut dnsdists = Vec::new();
        for (ip, regex, name) in [
            (DNSDIST_RE_IP, true, "dnsdist-re2"),
            (DNSDIST_SFX_IP, false, "dnsdist-suffix"),
        ] {
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(&conf, rules.dnsdist_lua(ip, regex))?;
            let mut command = pinned_in(
                &ns,
                SUT_CPU,
                Path::new("dnsdist"),
                &dir.join(format!("{name}.log")),
            )?;
            command
                .args(["--supervised", "--disable-syslog", "-C"])
                .arg(&conf);
            dnsdists.push(Proc::spawn(command, name)?);
        }
        let dnsdist_sfx = dnsdists.pop().context("two dnsdists")?;
        let dnsdist_re = dnsdists.pop().context("two dnsdists")?;

        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("pods.yaml"),
            pods_yaml(CLIENT_IP, UPSTREAM_IP),
        )?;
        std::fs::write(manifests.join("policy.yaml"), rules.policy_yaml())?;
        let socket = dir.join("agent.sock");
        let mut agent = pinned_in(&ns, SUT_CPU, &bins.agent, &dir.join("agent.log"))?;
        agent
            .args(["run", "--no-datapath", "--node-name", "node1", "--source"])
            .arg(format!("dir:{}", manifests.display()))
            .arg("--xds-socket")
            .arg(&socket)
            // Not the default file under /var/lib, which would outlive the run.
            .arg("--fqdn-state")
            .arg(dir.join("fqdn-cache.json"))
            .env("NODE_AGENT_LOG", "warn")
            .env("NO_COLOR", "1");
        let agent = Proc::spawn(agent, "node-agent")?;
        let mut proxy = pinned_in(&ns, SUT_CPU, &bins.dns_proxy, &dir.join("dns-proxy.log"))?;
        proxy
            .args(["--mode", "forward", "--threads", "1", "--admin", ADMIN])
            .arg("--listen")
            .arg(format!("{OURS_IP}:53"))
            .arg("--upstream")
            .arg(format!("{UPSTREAM_IP}:53"))
            .arg("--agent")
            .arg(format!("unix:{}", socket.display()))
            .env("DNS_PROXY_LOG", "warn")
            .env("NO_COLOR", "1");
        let proxy = Proc::spawn(proxy, "dns-proxy")?;
        let mut env = Self {
            proxy,
            agent,
            dnsdist_re,
            dnsdist_sfx,
            upstream,
            ns,
            dir,
            rules,
            queries,
        };
        env.wait_ready()
            .with_context(|| format!("B6 systems not ready{}", log_tails(&env.dir)))?;
        Ok(env)
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.upstream.check_running()?;
        self.dnsdist_re.check_running()?;
        self.dnsdist_sfx.check_running()?;
        self.agent.check_running()?;
        self.proxy.check_running()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let probe = self.dir.join("probe.txt");
        std::fs::write(
            &probe,
            format!("e0.exact.{ZONE} A\nw1.p0.{ZONE} A\nw1.q0.{ZONE} A\nx0.exact.{ZONE} A\n"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ready_seen = false;
        for system in System::ALL {
            loop {
                self.check_running()?;
                check_interrupted()?;
                if system == System::Ours && !ready_seen {
                    ready_seen = self.admin("/ready").0 == 200;
                }
                let ok = (system != System::Ours || ready_seen)
                    && self.probe(system, &probe).is_ok_and(|r| {
                        r.wrong == 0 && r.completed == 4 && r.latencies_us.len() == 4
                    });
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    let last = self.probe(system, &probe);
                    bail!(
                        "{} never answered the probe as the rules say: {last:?}",
                        system.name()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// The probe names once through `system`, verbose, with the verdicts checked.
    fn probe(&self, system: System, file: &Path) -> Result<DnsperfResult> {
        let out = self
            .dnsperf(system, file, None, Duration::from_secs(2), true)
            .arg("-n")
            .arg("1")
            .output()
            .context("running dnsperf")?;
        let rules = self.rules;
        let expect = move |name: &str| Some(expected(system, rules, name));
        dnsperf::parse(&String::from_utf8_lossy(&out.stdout), &expect)
    }

    /// dnsperf from the client address to `system` on `file`, pinned to the load CPU:
    /// `rate` fixed (open loop, `-Q`) or None for as fast as 100 outstanding queries go.
    fn dnsperf(
        &self,
        system: System,
        file: &Path,
        rate: Option<u32>,
        duration: Duration,
        verbose: bool,
    ) -> Command {
        let mut command = self.ns.command("taskset");
        command
            .args(["-c", LOAD_CPU, "dnsperf", "-s"])
            .arg(system.address().to_string())
            .args(["-a", &CLIENT_IP.to_string(), "-d"])
            .arg(file)
            .args([
                "-l",
                &format!("{}", duration.as_secs().max(1)),
                "-t",
                "2",
                "-c",
                "4",
                "-q",
                "100",
            ]);
        if let Some(rate) = rate {
            command.args(["-Q", &rate.to_string()]);
        }
        if verbose {
            command.arg("-v");
        }
        command
    }

    /// GET on the dns-proxy's admin listener: (status, body).
    pub fn admin(&self, path: &str) -> (u16, String) {
        admin_get(&self.ns, path)
    }

    fn sut_pids(&self, system: System) -> Vec<u32> {
        match system {
            System::Direct => vec![],
            System::Ours => vec![self.proxy.id(), self.agent.id()],
            System::DnsdistRe => vec![self.dnsdist_re.id()],
            System::DnsdistSfx => vec![self.dnsdist_sfx.id()],
        }
    }

    /// One dnsperf run against `system`, with the CPU of everything involved read around
    /// it. `rate` None is the max-throughput run (not verbose: printing every answer
    /// would slow the generator down).
    pub fn measure(
        &mut self,
        system: System,
        rate: Option<u32>,
        duration: Duration,
        ticks_per_sec: f64,
    ) -> Result<B6Sample> {
        check_interrupted()?;
        self.check_running()?;
        let sut = self.sut_pids(system);
        let agent = [self.agent.id()];
        let upstream = [self.upstream.id()];
        let read = |pids: &[u32]| procfs::cpu_ticks_sum(pids);
        let (sut0, agent0, up0) = (read(&sut)?, read(&agent)?, read(&upstream)?);
        let machine0 = MachineCpu::read()?;
        let verbose = rate.is_some();
        let command = self.dnsperf(system, &self.queries, rate, duration, verbose);
        let (output, generator) = run_counting(command, duration)?;
        let machine1 = MachineCpu::read()?;
        let (sut1, agent1, up1) = (read(&sut)?, read(&agent)?, read(&upstream)?);
        self.check_running()?;
        if !output.status.success() {
            bail!(
                "dnsperf against {} failed: {}: {}",
                system.name(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let rules = self.rules;
        let expect = move |name: &str| Some(expected(system, rules, name));
        let result = dnsperf::parse(&String::from_utf8_lossy(&output.stdout), &expect)?;
        let us = |ticks: u64| ticks as f64 / ticks_per_sec * 1e6;
        let sut = sut1.saturating_sub(sut0);
        let agent_ticks = if system == System::Ours {
            agent1.saturating_sub(agent0)
        } else {
            0
        };
        let up = up1.saturating_sub(up0);
        Ok(B6Sample {
            round: 0,
            system,
            rate,
            sut_us: us(sut),
            agent_us: us(agent_ticks),
            upstream_us: us(up),
            generator_us: us(generator),
            steal_percent: machine0.steal_percent(&machine1),
            other_percent: machine0.other_percent(&machine1, sut + up + generator),
            result,
        })
    }
}

/// The rcode `system` must give `name`: the upstream answers everything of the zone.
fn expected(system: System, rules: RuleSet, name: &str) -> &'static str {
    if system == System::Direct {
        "NOERROR"
    } else {
        rules.verdict(name)
    }
}

/// GET `path` on the dns-proxy's admin listener inside `ns`: (status, body).
pub fn admin_get(ns: &Netns, path: &str) -> (u16, String) {
    let out = ns.output(
        "curl",
        &[
            "-sS",
            "--max-time",
            "3",
            "-w",
            "\n%{http_code}",
            &format!("http://{ADMIN}{path}"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Runs `command` with its output captured and reads its CPU time (clock ticks) while it
/// is a zombie: once reaped its /proc entry is gone.
pub fn run_counting(
    mut command: Command,
    duration: Duration,
) -> Result<(std::process::Output, u64)> {
    use std::io::Read;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the load generator")?;
    // Drained on a thread: a verbose dnsperf prints megabytes and must not block.
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let ticks =
        procfs::cpu_ticks_at_exit(child.id(), duration + Duration::from_secs(60)).unwrap_or(0);
    let mut output = child
        .wait_with_output()
        .context("waiting for the generator")?;
    output.stdout = reader.join().unwrap_or_default();
    Ok((output, ticks))
}

/// One measured B6 run.
#[derive(Debug, Clone)]
pub struct B6Sample {
    pub round: usize,
    pub system: System,
    /// The fixed rate, or None for the max-throughput run.
    pub rate: Option<u32>,
    /// System under test: dns-proxy + agent, or dnsdist (all threads).
    pub sut_us: f64,
    pub agent_us: f64,
    pub upstream_us: f64,
    pub generator_us: f64,
    pub steal_percent: f64,
    pub other_percent: f64,
    pub result: DnsperfResult,
}

impl B6Sample {
    /// CPU µs per completed query of the system under test.
    pub fn sut_per_query(&self) -> f64 {
        per(self.sut_us, self.result.completed)
    }

    pub fn agent_per_query(&self) -> f64 {
        per(self.agent_us, self.result.completed)
    }

    pub fn all_per_query(&self) -> f64 {
        per(
            self.sut_us + self.upstream_us + self.generator_us,
            self.result.completed,
        )
    }
}

fn per(us: f64, n: u64) -> f64 {
    if n == 0 { f64::NAN } else { us / n as f64 }
}
