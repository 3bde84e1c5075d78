//! What the kernel says about the processes under test: CPU time, memory, steal.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Clock ticks per second for `/proc/PID/stat` times, from `getconf` (no libc binding in
/// this crate: unsafe code is forbidden workspace-wide).
pub fn clock_ticks() -> Result<f64> {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let ticks: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))?;
    if ticks <= 0.0 {
        bail!("getconf CLK_TCK printed {ticks}");
    }
    Ok(ticks)
}

/// Fields of `/proc/PID/stat` after the command name, which may itself hold spaces and
/// parentheses; the last `)` ends it.
fn stat_fields(pid: u32) -> Result<(char, Vec<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| anyhow!("/proc/{pid}/stat without a command name"))?;
    let rest: Vec<String> = text[close + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let state = rest
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| anyhow!("/proc/{pid}/stat without a state"))?;
    Ok((state, rest))
}

/// utime + stime of `pid` (all its threads) in clock ticks: fields 14 and 15, which are
/// the 12th and 13th after the command name.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let (_, rest) = stat_fields(pid)?;
    let field = |i: usize| -> Result<u64> {
        rest.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat field {} missing", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Sum of [`cpu_ticks`] over `pids`.
pub fn cpu_ticks_sum(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&pid| cpu_ticks(pid)).sum()
}

/// The CPU time of a child that is exiting, read while it is a zombie: once reaped its
/// `/proc` entry is gone. Waits up to `limit` for it to exit.
pub fn cpu_ticks_at_exit(pid: u32, limit: Duration) -> Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let (state, _) = stat_fields(pid)?;
        if state == 'Z' || Instant::now() > deadline {
            return cpu_ticks(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Direct children of `pid` (nginx workers of their master).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whole-machine CPU counters from the first line of `/proc/stat`, for steal.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub total: u64,
    pub steal: u64,
    /// Everything but idle and iowait.
    pub busy: u64,
}

impl MachineCpu {
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| anyhow!("/proc/stat without a cpu line"))?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time
        // is already counted in user, so it is left out of the total.
        let total = values.iter().take(8).sum();
        let steal = values.get(7).copied().unwrap_or(0);
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        Ok(Self {
            total,
            steal,
            busy: total - idle.min(total),
        })
    }

    /// Steal over the interval from `self` to `later`, in percent of all CPU time.
    pub fn steal_percent(&self, later: &Self) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * later.steal.saturating_sub(self.steal) as f64 / total as f64
    }

    /// CPU used by processes other than `ours_ticks` (the measured ones) over the interval,
    /// in percent of the machine: other tenants' builds disturb a run as steal does. Both
    /// counters are in USER_HZ ticks, which is CLK_TCK.
    pub fn other_percent(&self, later: &Self, ours_ticks: u64) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        let busy = later.busy.saturating_sub(self.busy);
        100.0 * busy.saturating_sub(ours_ticks) as f64 / total as f64
    }
}

/// Memory of one process in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Proportional set size: shared pages split between the processes that map them,
    /// so nginx's master and worker are not counted twice.
    pub pss_kib: u64,
}

impl Memory {
    pub fn read(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
        Ok(Self {
            rss_kib: kib_field(&status, "VmRSS:"),
            hwm_kib: kib_field(&status, "VmHWM:"),
            pss_kib: kib_field(&rollup, "Pss:"),
        })
    }

    /// Summed over the processes of one system.
    pub fn read_sum(pids: &[u32]) -> Result<Self> {
        let mut sum = Self::default();
        for &pid in pids {
            let m = Self::read(pid)?;
            sum.rss_kib += m.rss_kib;
            sum.hwm_kib += m.hwm_kib;
            sum.pss_kib += m.pss_kib;
        }
        Ok(sum)
    }
}

fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        let memory = Memory::read(pid).expect("own memory");
        assert!(memory.rss_kib > 0);
        assert_eq!(kib_field("Pss:   12 kB\n", "Pss:"), 12);
    }
}
