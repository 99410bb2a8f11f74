//! Choosing the next token from logits: greedy, or sampling with temperature,
//! top-k and nucleus (top-p, Holtzman et al. 2020) filtering, seeded.
//!
//! Filters apply in the order Hugging Face's `generate` applies them: temperature,
//! then top-k, then top-p. The sampler keeps its candidate buffer between calls,
//! so choosing a token allocates nothing after the first call.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to choose tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = no limit).
    pub top_p: f32,
    /// Seed of the random generator (None = from the OS).
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks the values are usable, saying which is not.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// Chooses tokens according to [`SamplingParams`].
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// (probability or scaled logit, token) candidates, reused between calls.
    cand: Vec<(f32, u32)>,
}

/// Index of the largest logit (the first on ties); `None` when empty or all NaN.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            params,
            rng,
            cand: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token. Greedy when the temperature is 0 (or top-k is 1).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits).unwrap_or(0);
        }
        let inv_t = 1.0 / p.temperature;
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &v)| (v * inv_t, i as u32)),
        );
        if self.cand.is_empty() {
            return 0;
        }
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            self.cand.truncate(p.top_k);
        }
        // Softmax over the survivors.
        let max = self
            .cand
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for c in self.cand.iter_mut() {
            c.0 = (c.0 - max).exp();
            sum += c.0 as f64;
        }
        let mut total = sum;
        if p.top_p < 1.0 {
            self.cand.sort_unstable_by(by_logit_desc);
            let mut acc = 0.0f64;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.0 as f64 / sum;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
            total = self.cand.iter().map(|c| c.0 as f64).sum();
        }
        let mut r = self.rng.random::<f64>() * total;
        for c in &self.cand {
            r -= c.0 as f64;
            if r < 0.0 {
                return c.1;
            }
        }
        self.cand.last().map(|c| c.1).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(7),
        }
    }

    #[test]
    fn greedy_is_argmax() {
        let logits = [0.1, 3.0, -1.0, 3.0, f32::NAN];
        assert_eq!(Sampler::new(params(0.0, 0, 1.0)).sample(&logits), 1);
        assert_eq!(Sampler::new(params(1.5, 1, 1.0)).sample(&logits), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), None);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1.0]), Some(1));
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                ..params(1.0, 0, 1.0)
            });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    /// Empirical frequencies against the exact filtered distribution.
    fn check_distribution(logits: &[f32], p: SamplingParams, want: &[f64]) {
        let mut s = Sampler::new(p);
        let n = 40_000;
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        for (i, (&c, &w)) in counts.iter().zip(want).enumerate() {
            let f = c as f64 / n as f64;
            // Five standard errors.
            let tol = 5.0 * (w * (1.0 - w) / n as f64).sqrt() + 1e-9;
            assert!(
                (f - w).abs() <= tol,
                "token {i}: frequency {f:.4}, want {w:.4}"
            );
        }
    }

    fn softmax(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    }

    #[test]
    fn temperature_top_k_top_p_distributions() {
        let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0];
        let l64: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        // Temperature 2: softmax(l / 2).
        let t2 = softmax(&l64.iter().map(|v| v / 2.0).collect::<Vec<_>>());
        check_distribution(&logits, params(2.0, 0, 1.0), &t2);
        // Top-2: renormalised over the two best.
        let mut k2 = softmax(&l64[..2]);
        k2.extend([0.0, 0.0, 0.0]);
        check_distribution(&logits, params(1.0, 2, 1.0), &k2);
        // Top-p 0.8: the smallest prefix reaching 0.8.
        let full = softmax(&l64);
        let mut acc = 0.0;
        let keep = full.iter().position(|p| {
            acc += p;
            acc >= 0.8
        });
        let keep = keep.unwrap() + 1;
        let mut pp = softmax(&l64[..keep]);
        pp.resize(logits.len(), 0.0);
        check_distribution(&logits, params(1.0, 0, 0.8), &pp);
        // A tiny top-p keeps only the best token.
        let mut s = Sampler::new(params(1.0, 0, 1e-6));
        assert!((0..100).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn validation() {
        assert!(params(-1.0, 0, 1.0).validate().is_err());
        assert!(params(1.0, 0, 0.0).validate().is_err());
        assert!(params(1.0, 0, 1.5).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0).validate().is_err());
        assert!(params(0.7, 40, 0.9).validate().is_ok());
    }
}
