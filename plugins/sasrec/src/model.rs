//! SASRec inference (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), in
//! the post-LN, full-softmax variant `scripts/train_sasrec.py` trains (RecBole's layout):
//!
//! ```text
//! h_t = LN_emb(E[item_t + 1] + P[L - n + t])            right-aligned: the last item at L - 1
//! per block: h = LN1(h + MHA(h)),  h = LN2(h + W2 GELU(W1 h + b1) + b2)
//!            MHA: causal (key s <= query t), heads of size d / H, scale 1/sqrt(d / H)
//! score(i) = h_{n-1} · E[i + 1]                         the input table, shared
//! ```
//!
//! A history of `n <= L` items is computed at its own `n` positions only: padded positions are
//! masked out of every real position's attention in training, so leaving them out is exact.
//! The last block needs every position's keys and values but only the last position's query,
//! attention and feed-forward.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// The weights file's header (`__metadata__["palr_sasrec"]`, JSON), as the trainer writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    /// `palr-sasrec/1`.
    pub format: String,
    pub hidden: usize,
    pub blocks: usize,
    pub heads: usize,
    pub inner: usize,
    pub max_len: usize,
    pub layer_norm_eps: f32,
    /// `gelu` (the exact, erf form).
    pub activation: String,
    /// The training view's stage (`valid`, `test`, `all`).
    pub stage: String,
    /// The training view's fingerprint.
    pub fingerprint: String,
    /// The training view's item ids, in the order of the table's rows `1..`.
    pub item_ids: Vec<String>,
    /// How the weights were made (kept for `describe`; not interpreted).
    #[serde(default)]
    pub trained: serde_json::Value,
}

/// The format this plugin reads.
pub const FORMAT: &str = "palr-sasrec/1";
/// The metadata key of the header.
pub const HEADER_KEY: &str = "palr_sasrec";

impl Header {
    /// Reads only the header of a weights file.
    pub fn read(path: &Path) -> Result<Header, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<Header, String> {
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file: {e}"))?;
        let text = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HEADER_KEY))
            .ok_or_else(|| {
                format!(
                    "no `{HEADER_KEY}` metadata: not SASRec weights written by \
                     scripts/train_sasrec.py"
                )
            })?;
        let h: Header =
            serde_json::from_str(text).map_err(|e| format!("bad `{HEADER_KEY}` header: {e}"))?;
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "weights format {:?}; this plugin reads {FORMAT:?}",
                self.format
            ));
        }
        if self.activation != "gelu" {
            return Err(format!(
                "activation {:?} is not supported (gelu)",
                self.activation
            ));
        }
        if self.hidden == 0
            || self.heads == 0
            || !self.hidden.is_multiple_of(self.heads)
            || self.blocks == 0
            || self.inner == 0
            || self.max_len == 0
        {
            return Err(format!(
                "bad shape: hidden {}, heads {}, blocks {}, inner {}, max_len {} (hidden must \
                 be a multiple of heads, all positive)",
                self.hidden, self.heads, self.blocks, self.inner, self.max_len
            ));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(format!(
                "layer_norm_eps {} must be > 0",
                self.layer_norm_eps
            ));
        }
        if self.item_ids.is_empty() {
            return Err("no item ids".into());
        }
        Ok(())
    }
}

/// A linear layer, weight `(out, in)` row-major as PyTorch stores it.
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
}

struct Block {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln1: LayerNorm,
    w1: Linear,
    w2: Linear,
    ln2: LayerNorm,
}

/// A loaded model.
pub struct SasRec {
    pub header: Header,
    /// `(n_rows, d)`: row 0 padding, row `r + 1` item `r` of `header.item_ids`.
    item_emb: Vec<f32>,
    /// `(max_len, d)`.
    pos_emb: Vec<f32>,
    emb_ln: LayerNorm,
    blocks: Vec<Block>,
}

/// Tensors of a file by name, widened to f32, shape-checked on take.
struct Tensors<'a> {
    st: SafeTensors<'a>,
}

impl Tensors<'_> {
    fn take(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| format!("tensor `{name}` is missing"))?;
        if t.shape() != shape {
            return Err(format!(
                "tensor `{name}` has shape {:?}, the header implies {shape:?}",
                t.shape()
            ));
        }
        let data = t.data();
        let v: Vec<f32> = match t.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(format!(
                    "tensor `{name}` has dtype {other:?} (f32/f16/bf16)"
                ));
            }
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("tensor `{name}` has a non-finite value at {i}"));
        }
        Ok(v)
    }

    fn linear(&self, name: &str, n_out: usize, n_in: usize) -> Result<Linear, String> {
        Ok(Linear {
            w: self.take(&format!("{name}.weight"), &[n_out, n_in])?,
            b: self.take(&format!("{name}.bias"), &[n_out])?,
            n_in,
            n_out,
        })
    }

    fn norm(&self, name: &str, d: usize) -> Result<LayerNorm, String> {
        Ok(LayerNorm {
            w: self.take(&format!("{name}.weight"), &[d])?,
            b: self.take(&format!("{name}.bias"), &[d])?,
        })
    }
}

impl SasRec {
    /// Loads and checks a weights file (header, every tensor's name, shape and values).
    pub fn load(path: &Path) -> Result<SasRec, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn from_bytes(bytes: &[u8]) -> Result<SasRec, String> {
        let header = Header::parse(bytes)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| format!("unreadable: {e}"))?;
        let t = Tensors { st };
        let (d, l, inner) = (header.hidden, header.max_len, header.inner);
        let rows = header.item_ids.len() + 1;
        let item_emb = t.take("item_emb", &[rows, d])?;
        let pos_emb = t.take("pos_emb", &[l, d])?;
        let emb_ln = t.norm("emb_ln", d)?;
        let blocks = (0..header.blocks)
            .map(|b| {
                let p = format!("blocks.{b}");
                Ok(Block {
                    q: t.linear(&format!("{p}.attn.q"), d, d)?,
                    k: t.linear(&format!("{p}.attn.k"), d, d)?,
                    v: t.linear(&format!("{p}.attn.v"), d, d)?,
                    out: t.linear(&format!("{p}.attn.out"), d, d)?,
                    ln1: t.norm(&format!("{p}.ln1"), d)?,
                    w1: t.linear(&format!("{p}.ffn.w1"), inner, d)?,
                    w2: t.linear(&format!("{p}.ffn.w2"), d, inner)?,
                    ln2: t.norm(&format!("{p}.ln2"), d)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(SasRec {
            header,
            item_emb,
            pos_emb,
            emb_ln,
            blocks,
        })
    }

    /// Number of items the model knows (`header.item_ids`).
    pub fn n_items(&self) -> usize {
        self.header.item_ids.len()
    }

    /// The longest history the model reads.
    pub fn max_len(&self) -> usize {
        self.header.max_len
    }

    /// The final hidden state for `history` (model item indices `< n_items()`, oldest first,
    /// `1..=max_len` of them): what every item's score is a dot product with.
    pub fn encode(&self, history: &[u32]) -> Vec<f32> {
        let (d, l) = (self.header.hidden, self.header.max_len);
        let n = history.len();
        assert!(
            (1..=l).contains(&n),
            "encode takes 1..=max_len items, got {n}"
        );
        let eps = self.header.layer_norm_eps;
        // h: (n, d), the hidden states of the real positions.
        let mut h = vec![0f32; n * d];
        for (t, &item) in history.iter().enumerate() {
            let e = &self.item_emb[(item as usize + 1) * d..][..d];
            let p = &self.pos_emb[(l - n + t) * d..][..d];
            for (o, (a, b)) in h[t * d..][..d].iter_mut().zip(e.iter().zip(p)) {
                *o = a + b;
            }
        }
        layer_norm(&mut h, &self.emb_ln, eps);
        let last = self.blocks.len() - 1;
        for (bi, block) in self.blocks.iter().enumerate() {
            // In the last block only the last position goes on.
            let q_rows = if bi == last { 1 } else { n };
            h = self.block(block, &h, n, q_rows);
        }
        h[h.len() - d..].to_vec()
    }

    /// One block over the `n` rows of `h` (n, d); returns the last `q_rows` rows' outputs.
    fn block(&self, b: &Block, h: &[f32], n: usize, q_rows: usize) -> Vec<f32> {
        let d = self.header.hidden;
        let heads = self.header.heads;
        let hd = d / heads;
        let eps = self.header.layer_norm_eps;
        let first_q = n - q_rows;
        let k = linear(&b.k, h, n);
        let v = linear(&b.v, h, n);
        let q = linear(&b.q, &h[first_q * d..], q_rows);
        // Causal attention, head by head: row r (position first_q + r) sees keys 0..=first_q + r.
        let scale = 1.0 / (hd as f32).sqrt();
        let mut att = vec![0f32; q_rows * d];
        let mut scores = vec![0f32; n];
        for head in 0..heads {
            let off = head * hd;
            for r in 0..q_rows {
                let t = first_q + r;
                let qr = &q[r * d + off..][..hd];
                for (s, score) in scores[..=t].iter_mut().enumerate() {
                    *score = dot(qr, &k[s * d + off..][..hd]) * scale;
                }
                softmax(&mut scores[..=t]);
                let o = &mut att[r * d + off..][..hd];
                for (s, &p) in scores[..=t].iter().enumerate() {
                    for (oi, &vi) in o.iter_mut().zip(&v[s * d + off..][..hd]) {
                        *oi += p * vi;
                    }
                }
            }
        }
        let mut x = linear(&b.out, &att, q_rows);
        for (xi, hi) in x.iter_mut().zip(&h[first_q * d..]) {
            *xi += hi;
        }
        layer_norm(&mut x, &b.ln1, eps);
        let mut f = linear(&b.w1, &x, q_rows);
        for fi in &mut f {
            *fi = gelu(*fi);
        }
        let mut y = linear(&b.w2, &f, q_rows);
        for (yi, xi) in y.iter_mut().zip(&x) {
            *yi += xi;
        }
        layer_norm(&mut y, &b.ln2, eps);
        y
    }

    /// Every item's score for the final hidden state `h`: `scores[i] = h · E[i + 1]`.
    pub fn scores(&self, h: &[f32]) -> Vec<f32> {
        let d = self.header.hidden;
        self.item_emb[d..]
            .chunks_exact(d)
            .map(|e| dot(h, e))
            .collect()
    }

    /// Indices of the model's items by id.
    pub fn index_by_id(&self) -> HashMap<&str, u32> {
        self.header
            .item_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect()
    }
}

/// `x (rows, in) · wᵀ + b` → `(rows, out)`.
fn linear(lin: &Linear, x: &[f32], rows: usize) -> Vec<f32> {
    let (n_in, n_out) = (lin.n_in, lin.n_out);
    let x = &x[..rows * n_in];
    let mut out: Vec<f32> = lin.b.iter().copied().cycle().take(rows * n_out).collect();
    // SAFETY: dst is (rows, n_out) row-major; lhs x is (rows, n_in) row-major; rhs is wᵀ
    // (n_in, n_out): element (kk, j) = w[j * n_in + kk], so column stride n_in, row stride 1;
    // the three buffers hold exactly those extents. dst = 1·dst + 1·(x·wᵀ) adds the bias.
    unsafe {
        gemm::gemm(
            rows,
            n_out,
            n_in,
            out.as_mut_ptr(),
            1,
            n_out as isize,
            true,
            x.as_ptr(),
            1,
            n_in as isize,
            lin.w.as_ptr(),
            n_in as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums so the compiler vectorises the loop.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Row-wise layer norm of `x` (rows of the norm's width), in place.
fn layer_norm(x: &mut [f32], ln: &LayerNorm, eps: f32) {
    let d = ln.w.len();
    for row in x.chunks_exact_mut(d) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&ln.w).zip(&ln.b) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// GELU, exact form: `x · Φ(x) = x/2 · (1 + erf(x/√2))`.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small random model written as the trainer writes one (f32), for tests.
    pub(crate) fn write_model(
        path: &Path,
        ids: &[&str],
        stage: &str,
        fingerprint: &str,
        seed: u64,
    ) -> Header {
        let (d, l, inner, blocks, heads) = (8usize, 5usize, 12usize, 2usize, 2usize);
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut rand = |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
                })
                .collect()
        };
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut emb = rand((ids.len() + 1) * d, 0.5);
        emb[..d].iter_mut().for_each(|v| *v = 0.0);
        tensors.push(("item_emb".into(), vec![ids.len() + 1, d], emb));
        tensors.push(("pos_emb".into(), vec![l, d], rand(l * d, 0.5)));
        type Tensor = (String, Vec<usize>, Vec<f32>);
        fn norm(
            name: &str,
            d: usize,
            tensors: &mut Vec<Tensor>,
            rand: &mut impl FnMut(usize, f32) -> Vec<f32>,
        ) {
            let w: Vec<f32> = rand(d, 0.2).iter().map(|v| v + 1.0).collect();
            tensors.push((format!("{name}.weight"), vec![d], w));
            tensors.push((format!("{name}.bias"), vec![d], rand(d, 0.1)));
        }
        norm("emb_ln", d, &mut tensors, &mut rand);
        for b in 0..blocks {
            for (lin, o, i) in [
                ("attn.q", d, d),
                ("attn.k", d, d),
                ("attn.v", d, d),
                ("attn.out", d, d),
                ("ffn.w1", inner, d),
                ("ffn.w2", d, inner),
            ] {
                tensors.push((
                    format!("blocks.{b}.{lin}.weight"),
                    vec![o, i],
                    rand(o * i, 0.4),
                ));
                tensors.push((format!("blocks.{b}.{lin}.bias"), vec![o], rand(o, 0.1)));
            }
            norm(&format!("blocks.{b}.ln1"), d, &mut tensors, &mut rand);
            norm(&format!("blocks.{b}.ln2"), d, &mut tensors, &mut rand);
        }
        let header = serde_json::json!({
            "format": FORMAT, "hidden": d, "blocks": blocks, "heads": heads, "inner": inner,
            "max_len": l, "layer_norm_eps": 1e-12, "activation": "gelu", "stage": stage,
            "fingerprint": fingerprint, "item_ids": ids, "n_items": ids.len(),
            "trained": {"created_utc": format!("2026-01-0{}T00:00:00Z", seed % 9 + 1)},
        });
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let meta = HashMap::from([(HEADER_KEY.to_owned(), header.to_string())]);
        safetensors::serialize_to_file(views, Some(meta), path).unwrap();
        Header::read(path).unwrap()
    }

    /// The same forward pass written plainly: every position, full causal attention with
    /// padding, f64 — an independent check of the optimised path.
    fn reference_scores(m: &SasRec, history: &[u32]) -> Vec<f64> {
        let (d, l) = (m.header.hidden, m.header.max_len);
        let hd = d / m.header.heads;
        let eps = m.header.layer_norm_eps as f64;
        let n = history.len();
        let mut padded = vec![None; l - n];
        padded.extend(history.iter().map(|&i| Some(i)));
        let ln = |x: &[f64], w: &[f32], b: &[f32]| -> Vec<f64> {
            let mean = x.iter().sum::<f64>() / d as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            x.iter()
                .enumerate()
                .map(|(j, v)| (v - mean) / (var + eps).sqrt() * w[j] as f64 + b[j] as f64)
                .collect()
        };
        let lin = |x: &[f64], l: &Linear| -> Vec<f64> {
            (0..l.n_out)
                .map(|o| {
                    l.b[o] as f64
                        + (0..l.n_in)
                            .map(|i| l.w[o * l.n_in + i] as f64 * x[i])
                            .sum::<f64>()
                })
                .collect()
        };
        let mut h: Vec<Vec<f64>> = (0..l)
            .map(|p| {
                let e = padded[p].map_or(0, |i| i as usize + 1);
                let x: Vec<f64> = (0..d)
                    .map(|j| m.item_emb[e * d + j] as f64 + m.pos_emb[p * d + j] as f64)
                    .collect();
                ln(&x, &m.emb_ln.w, &m.emb_ln.b)
            })
            .collect();
        for b in &m.blocks {
            let q: Vec<Vec<f64>> = h.iter().map(|x| lin(x, &b.q)).collect();
            let k: Vec<Vec<f64>> = h.iter().map(|x| lin(x, &b.k)).collect();
            let v: Vec<Vec<f64>> = h.iter().map(|x| lin(x, &b.v)).collect();
            let mut next = Vec::with_capacity(l);
            for t in 0..l {
                let mut att = vec![0f64; d];
                for head in 0..m.header.heads {
                    let r = head * hd..(head + 1) * hd;
                    let logits: Vec<f64> = (0..l)
                        .map(|s| {
                            if s <= t && padded[s].is_some() {
                                q[t][r.clone()]
                                    .iter()
                                    .zip(&k[s][r.clone()])
                                    .map(|(a, b)| a * b)
                                    .sum::<f64>()
                                    / (hd as f64).sqrt()
                            } else {
                                -1e9
                            }
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = logits.iter().map(|x| (x - max).exp()).sum();
                    for s in 0..l {
                        let p = (logits[s] - max).exp() / z;
                        for j in r.clone() {
                            att[j] += p * v[s][j];
                        }
                    }
                }
                let a = lin(&att, &b.out);
                let x: Vec<f64> = (0..d).map(|j| h[t][j] + a[j]).collect();
                let x = ln(&x, &b.ln1.w, &b.ln1.b);
                let f: Vec<f64> = lin(&x, &b.w1)
                    .iter()
                    .map(|&u| 0.5 * u * (1.0 + libm::erf(u / std::f64::consts::SQRT_2)))
                    .collect();
                let f = lin(&f, &b.w2);
                let y: Vec<f64> = (0..d).map(|j| x[j] + f[j]).collect();
                next.push(ln(&y, &b.ln2.w, &b.ln2.b));
            }
            h = next;
        }
        let last = &h[l - 1];
        (0..m.n_items())
            .map(|i| {
                (0..d)
                    .map(|j| last[j] * m.item_emb[(i + 1) * d + j] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn optimised_forward_matches_a_plain_padded_one() {
        let dir = std::env::temp_dir().join(format!("sasrec-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let ids: Vec<String> = (0..9).map(|i| format!("i{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        write_model(&path, &ids, "valid", &"0".repeat(64), 7);
        let m = SasRec::load(&path).unwrap();
        for history in [&[3u32][..], &[1, 2], &[8, 0, 4, 4], &[5, 6, 7, 1, 2]] {
            let got = m.scores(&m.encode(history));
            let want = reference_scores(&m, history);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() < 1e-4,
                    "{history:?}: {got:?} vs {want:?}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broken_files_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("sasrec-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        write_model(&path, &["a", "b"], "valid", "f", 1);
        let bytes = std::fs::read(&path).unwrap();
        let e = SasRec::from_bytes(&bytes[..bytes.len() - 10])
            .err()
            .unwrap();
        assert!(e.contains("unreadable") || e.contains("safetensors"), "{e}");
        let e = SasRec::from_bytes(b"not a file at all").err().unwrap();
        assert!(e.contains("not a safetensors file"), "{e}");
        let e = SasRec::load(&dir.join("missing.safetensors"))
            .err()
            .unwrap();
        assert!(e.contains("missing.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
