//! The benchmarks' statistics: the one median (repeated runs of one measurement) and the one
//! set of nearest-rank percentiles (latency series). An empty series has no statistics: NaN,
//! which tables print as `NaN` and JSON carries as `null`, never a made-up zero.

use serde::Serialize;

/// The median of `xs` (the mean of the middle two for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    let v = sorted(xs);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The arithmetic mean of `xs`; NaN when empty.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// The nearest-rank `p`-quantile (`0 < p <= 1`) of an ascending series: the smallest value
/// with at least a fraction `p` of the series at or below it; NaN when empty.
pub fn nearest_rank(ascending: &[f64], p: f64) -> f64 {
    let n = ascending.len();
    if n == 0 {
        return f64::NAN;
    }
    ascending[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Summary of one series of seconds, reported in milliseconds: mean and nearest-rank
/// percentiles.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// How many values the series has (0: every other field is NaN).
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// The summary of `secs`.
    pub fn of(secs: &[f64]) -> Self {
        let ms: Vec<f64> = sorted(secs).into_iter().map(|s| s * 1e3).collect();
        Self {
            count: ms.len(),
            mean_ms: mean(&ms),
            p50_ms: nearest_rank(&ms, 0.50),
            p90_ms: nearest_rank(&ms, 0.90),
            p99_ms: nearest_rank(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let secs: Vec<f64> = (1..=100).rev().map(|i| i as f64 / 1e3).collect();
        let s = Summary::of(&secs);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        let one = Summary::of(&[0.002]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (2.0, 2.0, 2.0));
        // Ten values: p99 is the largest, p90 the ninth, p50 the fifth (not an average).
        let ten: Vec<f64> = (1..=10).map(|i| i as f64 / 1e3).collect();
        let t = Summary::of(&ten);
        assert_eq!((t.p50_ms, t.p90_ms, t.p99_ms), (5.0, 9.0, 10.0));
    }

    #[test]
    fn empty_series_have_no_statistics() {
        let s = Summary::of(&[]);
        assert_eq!(s.count, 0);
        for v in [s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms] {
            assert!(v.is_nan());
        }
        assert!(mean(&[]).is_nan());
        assert!(nearest_rank(&[], 0.5).is_nan());
        // JSON carries them as null.
        let j = serde_json::to_value(&s).unwrap();
        assert!(j["p99_ms"].is_null() && j["count"] == 0);
    }
}
