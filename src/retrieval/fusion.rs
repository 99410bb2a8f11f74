//! Retriever fusion: one candidate list merged from several loaded retrievers, as production
//! systems merge candidate sources. A fused retriever is used by name like any other.
//!
//! - `rrf` — reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009):
//!   `score(i) = Σ_m w_m / (rrf_k + rank_m(i))`, ranks 1-based; a member that did not return
//!   `i` adds nothing. Scale-free: members' scores are never compared.
//! - `score` — weighted sum of each member's scores min-max normalised over the list it
//!   returned (best = 1, worst returned = 0; a member that did not return `i` adds nothing).
//!
//! Each member is asked for `max(k, depth)` items; ties are broken by lower item index.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::{Result, RetrievalError};

/// How member lists are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FusionMethod {
    /// Reciprocal rank fusion.
    #[default]
    Rrf,
    /// Weighted sum of min-max normalised scores.
    Score,
}

impl FusionMethod {
    /// `rrf` / `score`.
    pub fn name(self) -> &'static str {
        match self {
            FusionMethod::Rrf => "rrf",
            FusionMethod::Score => "score",
        }
    }
}

/// One fused retriever, as configured (`[[retrieval.fusions]]`) or written on a command line
/// (`NAME=METHOD:MEMBER*WEIGHT,MEMBER*WEIGHT,...`, weight 1 when left out).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionSpec {
    /// What requests use, like a retriever's name.
    pub name: String,
    /// Loaded retrievers (not fusions) to merge, at least two.
    pub members: Vec<String>,
    /// `rrf` (default) or `score`.
    #[serde(default)]
    pub method: FusionMethod,
    /// One weight per member (finite, >= 0, not all 0); empty = all 1.
    #[serde(default)]
    pub weights: Vec<f32>,
    /// RRF's rank offset (default 60, as in the paper).
    #[serde(default = "default_rrf_k")]
    pub rrf_k: f32,
    /// How many items each member is asked for, at least (default 100).
    #[serde(default = "default_depth")]
    pub depth: usize,
}

fn default_rrf_k() -> f32 {
    60.0
}

fn default_depth() -> usize {
    100
}

impl FusionSpec {
    /// A spec with default weights, offset and depth.
    pub fn new(name: &str, method: FusionMethod, members: &[&str]) -> Self {
        FusionSpec {
            name: name.to_owned(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            method,
            weights: Vec::new(),
            rrf_k: default_rrf_k(),
            depth: default_depth(),
        }
    }

    /// Member `m`'s weight.
    pub fn weight(&self, m: usize) -> f32 {
        self.weights.get(m).copied().unwrap_or(1.0)
    }

    /// Checks everything that does not need the registry.
    pub fn check(&self) -> Result<()> {
        let bad = |problem: String| RetrievalError::Config {
            name: self.name.clone(),
            problem,
        };
        if self.members.len() < 2 {
            return Err(bad("a fusion needs at least two members".into()));
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].contains(m) {
                return Err(bad(format!("member {m:?} is listed twice")));
            }
        }
        if !self.weights.is_empty() && self.weights.len() != self.members.len() {
            return Err(bad(format!(
                "{} weights for {} members: give one per member or none",
                self.weights.len(),
                self.members.len()
            )));
        }
        if self.weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(bad("weights must be finite and >= 0".into()));
        }
        if !self.weights.is_empty() && self.weights.iter().all(|&w| w == 0.0) {
            return Err(bad("at least one weight must be above 0".into()));
        }
        if !(self.rrf_k.is_finite() && self.rrf_k >= 0.0) {
            return Err(bad(format!(
                "rrf_k must be finite and >= 0, got {}",
                self.rrf_k
            )));
        }
        if self.depth == 0 {
            return Err(bad("depth must be at least 1".into()));
        }
        Ok(())
    }

    /// Merges the members' lists (`lists[m]`: member `m`'s items, best first, with scores)
    /// and keeps the best `k`.
    pub fn merge(&self, lists: &[Vec<(u32, f32)>], k: usize) -> Vec<(u32, f32)> {
        let mut fused: HashMap<u32, f64> = HashMap::new();
        for (m, list) in lists.iter().enumerate() {
            let w = f64::from(self.weight(m));
            if w == 0.0 || list.is_empty() {
                continue;
            }
            match self.method {
                FusionMethod::Rrf => {
                    for (r, &(item, _)) in list.iter().enumerate() {
                        *fused.entry(item).or_default() +=
                            w / (f64::from(self.rrf_k) + r as f64 + 1.0);
                    }
                }
                FusionMethod::Score => {
                    let hi = f64::from(list[0].1);
                    let lo = f64::from(list[list.len() - 1].1);
                    let span = hi - lo;
                    for &(item, s) in list {
                        let norm = if span > 0.0 {
                            (f64::from(s) - lo) / span
                        } else {
                            1.0
                        };
                        *fused.entry(item).or_default() += w * norm;
                    }
                }
            }
        }
        let mut out: Vec<(u32, f32)> = fused
            .into_iter()
            .map(|(item, s)| (item, s as f32))
            .collect();
        out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        out
    }
}

impl FromStr for FusionSpec {
    type Err = String;

    /// `NAME=METHOD:MEMBER*WEIGHT,MEMBER,...` (e.g. `blend=rrf:sasrec*1,markov*0.5`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let usage = "write NAME=METHOD:MEMBER*WEIGHT,MEMBER*WEIGHT,... (METHOD rrf or score; \
                     a weight left out is 1), e.g. blend=rrf:sasrec*1,markov*0.5";
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("fusion {s:?}: {usage}"))?;
        let (method, members) = rest
            .split_once(':')
            .ok_or_else(|| format!("fusion {s:?}: {usage}"))?;
        let method = match method {
            "rrf" => FusionMethod::Rrf,
            "score" => FusionMethod::Score,
            m => return Err(format!("fusion {s:?}: unknown method {m:?}; {usage}")),
        };
        let mut spec = FusionSpec::new(name, method, &[]);
        let mut weights = Vec::new();
        for part in members.split(',') {
            let (m, w) = match part.split_once('*') {
                Some((m, w)) => (
                    m,
                    w.parse::<f32>()
                        .map_err(|e| format!("fusion {s:?}: weight {w:?}: {e}"))?,
                ),
                None => (part, 1.0),
            };
            if m.is_empty() {
                return Err(format!("fusion {s:?}: empty member name; {usage}"));
            }
            spec.members.push(m.to_owned());
            weights.push(w);
        }
        if weights.iter().any(|&w| w != 1.0) {
            spec.weights = weights;
        }
        spec.check().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

impl fmt::Display for FusionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:", self.name, self.method.name())?;
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{m}*{}", self.weight(i))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_adds_reciprocal_ranks_with_weights() {
        let mut spec = FusionSpec::new("f", FusionMethod::Rrf, &["a", "b"]);
        spec.rrf_k = 0.0;
        spec.weights = vec![1.0, 2.0];
        // a: 5, 6, 7; b: 7, 8. Scores: 5 = 1, 6 = 1/2, 7 = 1/3 + 2, 8 = 2/2.
        let got = spec.merge(
            &[vec![(5, 9.0), (6, 8.0), (7, 1.0)], vec![(7, 0.1), (8, 0.0)]],
            10,
        );
        let items: Vec<u32> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            items,
            [7, 5, 8, 6],
            "ties (5 and 8 at 1.0) go to the lower index"
        );
        assert!((got[0].1 - (1.0 / 3.0 + 2.0)).abs() < 1e-6);
        assert_eq!(spec.merge(&[vec![(5, 9.0)], vec![]], 1), [(5, 1.0)]);
    }

    #[test]
    fn score_fusion_normalises_each_list() {
        let spec = FusionSpec::new("f", FusionMethod::Score, &["a", "b"]);
        // a's scores span 10..0, b's 0.3..0.1: each becomes 1..0 before adding.
        let got = spec.merge(
            &[
                vec![(1, 10.0), (2, 5.0), (3, 0.0)],
                vec![(3, 0.3), (4, 0.2), (1, 0.1)],
            ],
            3,
        );
        let s: HashMap<u32, f32> = got.iter().copied().collect();
        assert_eq!(got.len(), 3);
        assert!((s[&1] - 1.0).abs() < 1e-6 && (s[&3] - 1.0).abs() < 1e-6);
        assert!((s[&2] - 0.5).abs() < 1e-6);
        assert_eq!(got[0].0, 1, "1 and 3 tie at 1.0: lower index first");
        // A one-item or flat list counts fully.
        let got = spec.merge(&[vec![(9, -4.0)], vec![(8, 2.0), (9, 2.0)]], 2);
        assert_eq!(got, [(9, 2.0), (8, 1.0)]);
    }

    #[test]
    fn specs_parse_print_and_check() {
        let s: FusionSpec = "blend=rrf:sasrec*1,markov*0.5".parse().unwrap();
        assert_eq!(s.members, ["sasrec", "markov"]);
        assert_eq!(s.weights, [1.0, 0.5]);
        assert_eq!(s.to_string(), "blend=rrf:sasrec*1,markov*0.5");
        let s: FusionSpec = "b=score:x,y".parse().unwrap();
        assert!(s.weights.is_empty());
        assert_eq!(s.method, FusionMethod::Score);
        for (bad, why) in [
            ("blend", "write NAME=METHOD"),
            ("b=max:x,y", "unknown method"),
            ("b=rrf:x", "at least two members"),
            ("b=rrf:x,x", "listed twice"),
            ("b=rrf:x*-1,y", ">= 0"),
            ("b=rrf:x*0,y*0", "above 0"),
            ("b=rrf:x*z,y", "weight \"z\""),
            ("b=rrf:x,", "empty member"),
        ] {
            let e = bad.parse::<FusionSpec>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        #[derive(Deserialize)]
        struct Doc {
            fusions: Vec<FusionSpec>,
        }
        let d: Doc = toml::from_str(
            "[[fusions]]\nname = \"b\"\nmembers = [\"x\", \"y\"]\nmethod = \"score\"\nweights = [1, 0.5]\n",
        )
        .unwrap();
        assert_eq!(d.fusions[0].weight(1), 0.5);
        assert_eq!((d.fusions[0].rrf_k, d.fusions[0].depth), (60.0, 100));
        assert!(toml::from_str::<Doc>("[[fusions]]\nname = \"b\"\nmembers = []\nk = 1\n").is_err());
    }
}
