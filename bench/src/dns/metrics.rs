//! The dns-proxy's Prometheus text from /metrics: a counter summed over its label sets,
//! and a histogram's cumulative buckets, so that a run's share is the difference of two
//! scrapes.

use std::collections::BTreeMap;

/// `name{labels} value` or `name value`: the name, the labels text and the value.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    match head.split_once('{') {
        Some((name, labels)) => Some((name, labels.trim_end_matches('}'), value)),
        None => Some((head.trim(), "", value)),
    }
}

/// `name`'s value summed over every label set (0 when absent).
pub fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(sample)
        .filter(|(n, _, _)| *n == name)
        .map(|(_, _, v)| v)
        .sum()
}

/// A histogram as scraped: cumulative counts per upper bound, count and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound in the metric's unit, cumulative count), ascending; +Inf last.
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// Histogram `name` (its `_bucket`, `_count`, `_sum`), summed over label sets other
    /// than `le`.
    pub fn scrape(text: &str, name: &str) -> Self {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (n, labels, v) in text.lines().filter_map(sample) {
            if n != bucket {
                continue;
            }
            let Some(le) = labels.split(',').find_map(|l| l.trim().strip_prefix("le=")) else {
                continue;
            };
            let le = le.trim_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            };
            // Keyed by the bits of a non-negative float: they sort as the floats do.
            by_le.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += v;
        }
        Self {
            buckets: by_le.into_values().collect(),
            count: counter(text, &format!("{name}_count")),
            sum: counter(text, &format!("{name}_sum")),
        }
    }

    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c)
        };
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|&(b, c)| (b, c - before(b)))
                .collect(),
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
        }
    }

    /// The smallest bucket bound that holds at least `p` % of the observations: an upper
    /// estimate of that percentile (NaN without observations).
    pub fn percentile_bound(&self, p: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let want = self.count * p / 100.0;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map_or(f64::INFINITY, |(b, _)| *b)
    }

    /// Buckets as `≤bound: count` text, non-cumulative, empty buckets left out.
    pub fn describe(&self) -> String {
        let mut previous = 0.0;
        let mut parts = Vec::new();
        for &(bound, cumulative) in &self.buckets {
            let n = cumulative - previous;
            previous = cumulative;
            if n > 0.0 {
                parts.push(format!("≤{}: {n:.0}", fmt_seconds(bound)));
            }
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// A bound in seconds as µs or ms text.
fn fmt_seconds(s: f64) -> String {
    if s.is_infinite() {
        "+Inf".to_owned()
    } else if s < 1e-3 {
        format!("{:.0}µs", s * 1e6)
    } else {
        format!("{}ms", s * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP dns_proxy_fqdn_hold_seconds How long\n\
# TYPE dns_proxy_fqdn_hold_seconds histogram\n\
dns_proxy_fqdn_hold_seconds_bucket{le=\"0.0001\"} 2\n\
dns_proxy_fqdn_hold_seconds_bucket{le=\"0.001\"} 9\n\
dns_proxy_fqdn_hold_seconds_bucket{le=\"+Inf\"} 10\n\
dns_proxy_fqdn_hold_seconds_count 10\n\
dns_proxy_fqdn_hold_seconds_sum 0.02\n\
dns_proxy_fqdn_hold_timeouts_total 1\n\
dns_proxy_queries_total{verdict=\"allowed\"} 5\n\
dns_proxy_queries_total{verdict=\"denied\"} 2\n";

    #[test]
    fn counters_sum_label_sets() {
        assert_eq!(counter(TEXT, "dns_proxy_queries_total"), 7.0);
        assert_eq!(counter(TEXT, "dns_proxy_fqdn_hold_timeouts_total"), 1.0);
        assert_eq!(counter(TEXT, "missing"), 0.0);
    }

    #[test]
    fn histogram_difference_and_percentiles() {
        let after = Histogram::scrape(TEXT, "dns_proxy_fqdn_hold_seconds");
        assert_eq!(after.buckets.len(), 3);
        assert_eq!(after.count, 10.0);
        let before = Histogram {
            buckets: vec![(0.0001, 1.0), (0.001, 1.0), (f64::INFINITY, 1.0)],
            count: 1.0,
            sum: 0.001,
        };
        let run = after.since(&before);
        assert_eq!(run.count, 9.0);
        assert_eq!(run.buckets[1], (0.001, 8.0));
        assert_eq!(run.percentile_bound(50.0), 0.001);
        assert_eq!(run.percentile_bound(100.0), f64::INFINITY);
        assert_eq!(run.describe(), "≤100µs: 1, ≤1ms: 7, ≤+Inf: 1");
        assert!(Histogram::default().percentile_bound(50.0).is_nan());
    }
}
