//! Summaries of per-round numbers. Rounds on a shared 2-core machine drift, so every
//! ratio is taken within a round and only then summarised across rounds (BENCHMARKS 5).

use std::fmt;

/// The median of `values`, or `None` for no values. NaNs are ignored: a ratio with a zero
/// denominator says nothing about the other rounds.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Median and the full range of per-round values: with 3 to 10 rounds the range is more
/// honest than a standard deviation that assumes a shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let median = median(&finite)?;
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self {
            median,
            min,
            max,
            n: finite.len(),
        })
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} [{:.2}–{:.2}, n={}]",
            self.median, self.min, self.max, self.n
        )
    }
}

/// `a / b`, NaN when `b` is zero so that the round drops out of the median.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

/// A small deterministic shuffle (xorshift) for the order of systems within a round: the
/// order only has to vary between rounds, and a seed printed in the results makes a run
/// reproducible without another dependency.
#[derive(Debug)]
pub struct Shuffler(u64);

impl Shuffler {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            // Modulo bias is irrelevant for lists of four.
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn spread_skips_undefined_ratios() {
        let values = [ratio(1.0, 2.0), ratio(1.0, 0.0), ratio(3.0, 2.0), 1.0];
        let spread = Spread::of(&values).expect("three finite values");
        assert_eq!(spread.n, 3);
        assert_eq!(spread.median, 1.0);
        assert_eq!(spread.min, 0.5);
        assert_eq!(spread.max, 1.5);
        assert_eq!(spread.to_string(), "1.00 [0.50–1.50, n=3]");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut items = [0, 1, 2, 3];
        let mut shuffler = Shuffler::new(42);
        for _ in 0..20 {
            shuffler.shuffle(&mut items);
            let mut sorted = items;
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3]);
        }
    }
}
