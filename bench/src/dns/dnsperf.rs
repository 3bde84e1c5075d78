//! dnsperf's output: the statistics block, and with `-v` one line per answer
//! (`> RCODE NAME TYPE SECONDS`), which is where the latency percentiles come from
//! (dnsperf 2.10 prints only the average itself).

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::common::truncate;

/// One dnsperf run.
#[derive(Debug, Clone, Default)]
pub struct DnsperfResult {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub run_secs: f64,
    /// Per-answer latencies in µs, sorted (empty without `-v`).
    pub latencies_us: Vec<f64>,
    pub rcodes: BTreeMap<String, u64>,
    /// Answers whose rcode is not the one expected for their name.
    pub wrong: u64,
}

impl DnsperfResult {
    /// Nearest-rank percentile of the per-answer latencies, µs.
    pub fn latency(&self, p: f64) -> f64 {
        crate::fqdn_load::percentile(&self.latencies_us, p)
    }
}

fn number_after(line: &str, key: &str) -> Option<f64> {
    line.strip_prefix(key)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parses dnsperf's stdout. `expected` gives the rcode each name must get (None: any);
/// it is only consulted for `-v` lines.
pub fn parse(text: &str, expected: &dyn Fn(&str) -> Option<&'static str>) -> Result<DnsperfResult> {
    let mut r = DnsperfResult::default();
    let mut seen_stats = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("> ") {
            let mut parts = rest.split_whitespace();
            let (Some(rcode), Some(name), Some(_type), Some(secs)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(secs) = secs.parse::<f64>() else {
                continue;
            };
            r.latencies_us.push(secs * 1e6);
            *r.rcodes.entry(rcode.to_owned()).or_default() += 1;
            if expected(name).is_some_and(|want| want != rcode) {
                r.wrong += 1;
            }
            continue;
        }
        let line = line.trim();
        if let Some(v) = number_after(line, "Queries sent:") {
            r.sent = v as u64;
            seen_stats = true;
        } else if let Some(v) = number_after(line, "Queries completed:") {
            r.completed = v as u64;
        } else if let Some(v) = number_after(line, "Queries lost:") {
            r.lost = v as u64;
        } else if let Some(v) = number_after(line, "Queries per second:") {
            r.qps = v;
        } else if let Some(v) = number_after(line, "Run time (s):") {
            r.run_secs = v;
        } else if let Some(codes) = line.strip_prefix("Response codes:") {
            // "NOERROR 1334 (66.70%), REFUSED 666 (33.30%)": used when there is no -v.
            if r.latencies_us.is_empty() {
                for part in codes.split(',') {
                    let mut words = part.split_whitespace();
                    if let (Some(code), Some(Ok(n))) =
                        (words.next(), words.next().map(str::parse::<u64>))
                    {
                        r.rcodes.insert(code.to_owned(), n);
                    }
                }
            }
        }
    }
    if !seen_stats || r.qps == 0.0 {
        bail!("no statistics in dnsperf's output: {}", truncate(text));
    }
    r.latencies_us.sort_by(f64::total_cmp);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[Status] Sending queries (to 10.202.0.53:53)\n\
> NOERROR a.bench.test A 0.000804\n\
> NOERROR b.bench.test A 0.000046\n\
> REFUSED c.other.test A 0.000065\n\
> NOERROR c.other.test A 0.000070\n\
\nStatistics:\n\n  Queries sent:         4\n  Queries completed:    4 (100.00%)\n  Queries lost:         0 (0.00%)\n\n\
  Response codes:       NOERROR 3 (75.00%), REFUSED 1 (25.00%)\n  Run time (s):         2.000255\n  Queries per second:   999.872516\n";

    #[test]
    fn parses_verbose_output() {
        let expected = |name: &str| {
            if name.ends_with("other.test") {
                Some("REFUSED")
            } else {
                Some("NOERROR")
            }
        };
        let r = parse(TEXT, &expected).expect("parses");
        assert_eq!((r.sent, r.completed, r.lost), (4, 4, 0));
        assert_eq!(r.latencies_us.len(), 4);
        assert_eq!(r.wrong, 1);
        assert_eq!(r.rcodes.get("NOERROR"), Some(&3));
        assert!((r.qps - 999.872516).abs() < 1e-9);
        assert!((r.latency(50.0) - 65.0).abs() < 1e-6);
        assert!((r.latency(100.0) - 804.0).abs() < 1e-6);
    }

    #[test]
    fn rcodes_without_verbose() {
        let quiet: String = TEXT
            .lines()
            .filter(|l| !l.starts_with('>'))
            .collect::<Vec<_>>()
            .join("\n");
        let r = parse(&quiet, &|_| None).expect("parses");
        assert!(r.latencies_us.is_empty());
        assert_eq!(r.rcodes.get("REFUSED"), Some(&1));
    }

    #[test]
    fn no_statistics_is_an_error() {
        assert!(parse("dnsperf: invalid argument\n", &|_| None).is_err());
    }
}
