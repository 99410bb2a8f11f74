//! The LLaMA decoder (Touvron et al. 2023), written once against [`Backend`].
//!
//! ```text
//! x = embed[tokens]
//! for each block:
//!     h  = rmsnorm(x) ;  q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ ;  rope(q), rope(k) ;  cache ← k, v
//!     x += attention(q, cache)·Woᵀ
//!     h  = rmsnorm(x) ;  x += (silu(h·Wgateᵀ) ⊙ h·Wupᵀ)·Wdownᵀ
//! logits = rmsnorm(x)·Wheadᵀ            (Whead = embed when the embeddings are tied)
//! ```
//!
//! The struct tree mirrors the Hugging Face checkpoint (`Llama { embed, blocks,
//! norm, lm_head }`, `Block { attn, mlp, norms }`); each part loads itself from the
//! checkpoint. The KV cache and scratch buffers live apart, in [`State`], and are
//! allocated once per session: a forward pass allocates nothing.

use std::sync::Arc;

use rayon::prelude::*;

use crate::model::lora::{Adapter, MODULES, module_shape};
use crate::model::{Checkpoint, LlamaConfig};

use super::backend::{Backend, Heads, KvLayer};
use super::{EngineError, Result};

/// An unmerged LoRA update of a linear layer: `y += scale · (x·Aᵀ)·Bᵀ`.
pub struct Lora<B: Backend> {
    pub a: B::Mat, // (r, in_features)
    pub b: B::Mat, // (out_features, r)
    pub scale: f32,
}

/// A linear layer `y = x·Wᵀ (+ b)`; `w` is `(out_features, in_features)`.
pub struct Linear<B: Backend> {
    pub w: B::Mat,
    pub bias: Option<B::Buf>,
}

/// The weights of one unmerged LoRA adapter on one model: per block, one slot per
/// projection of [`MODULES`] (None where the adapter leaves it alone). Held apart from the
/// base weights, so adapters can be loaded and dropped while the model serves: a session
/// pins the one it runs with ([`State::adapter`]) and the weights go when the last pin does.
pub struct LoraWeights<B: Backend> {
    pub layers: Vec<[Option<Lora<B>>; MODULES.len()]>,
    /// Largest rank of any adapted projection (sizes a session's LoRA scratch).
    pub max_rank: usize,
    /// Adapted projections, and the parameters of their A and B matrices.
    pub projections: usize,
    pub parameters: usize,
}

impl<B: Backend> LoraWeights<B> {
    fn get(&self, layer: usize, module: usize) -> Option<&Lora<B>> {
        self.layers.get(layer).and_then(|l| l[module].as_ref())
    }
}

/// `w (out, inp) += scale · b (out, r) · a (r, inp)`, as PEFT's merge does.
fn merge_lora(w: &mut [f32], a: &[f32], b: &[f32], inp: usize, r: usize, scale: f32) {
    w.par_chunks_mut(inp).enumerate().for_each(|(o, row)| {
        let bo = &b[o * r..(o + 1) * r];
        for (j, wj) in row.iter_mut().enumerate() {
            let d: f32 = bo
                .iter()
                .enumerate()
                .map(|(rr, bv)| bv * a[rr * inp + j])
                .sum();
            *wj += scale * d;
        }
    });
}

impl<B: Backend> Linear<B> {
    #[allow(clippy::too_many_arguments)]
    fn load(
        b: &B,
        ck: &Checkpoint,
        layer: usize,
        module: &str,
        out: usize,
        inp: usize,
        bias: bool,
        merged: Option<&Adapter>,
    ) -> Result<Self> {
        let m = MODULES
            .iter()
            .position(|x| *x == module)
            .expect("a LLaMA projection");
        // MODULES lists the attention projections first, then the MLP's.
        let group = if m < 4 { "self_attn" } else { "mlp" };
        let name = format!("model.layers.{layer}.{group}.{module}");
        let t = ck.get_shaped(&format!("{name}.weight"), &[out, inp])?;
        let merged = match merged {
            Some(ad) => ad.pair(layer, m, out, inp)?,
            None => None,
        };
        let w = match merged {
            Some(p) => {
                let mut wf = t.to_f32();
                merge_lora(
                    &mut wf,
                    &p.a.to_f32(),
                    &p.b.to_f32(),
                    inp,
                    p.a.shape[0],
                    p.scale,
                );
                b.linear_from_f32(out, inp, wf)?
            }
            None => b.load_linear(&t)?,
        };
        let bias = if bias {
            Some(b.upload(&ck.get_shaped(&format!("{name}.bias"), &[out])?.to_f32())?)
        } else {
            None
        };
        Ok(Linear { w, bias })
    }

    /// `out = x·Wᵀ (+ b)`, plus `lora`'s update; `tmp` holds `(rows, r)`.
    fn forward(
        &self,
        b: &B,
        x: &B::Buf,
        rows: usize,
        out: &mut B::Buf,
        lora: Option<&Lora<B>>,
        tmp: &mut B::Buf,
    ) -> Result<()> {
        b.linear(x, rows, &self.w, self.bias.as_ref(), out)?;
        if let Some(l) = lora {
            b.lora_update(x, rows, &l.a, &l.b, l.scale, tmp, out)?;
        }
        Ok(())
    }
}

pub struct Attention<B: Backend> {
    pub q: Linear<B>, // (n_heads * head_dim, dim)
    pub k: Linear<B>, // (n_kv_heads * head_dim, dim)
    pub v: Linear<B>, // (n_kv_heads * head_dim, dim)
    pub o: Linear<B>, // (dim, n_heads * head_dim)
}

pub struct Mlp<B: Backend> {
    pub gate: Linear<B>, // (hidden_dim, dim)
    pub up: Linear<B>,   // (hidden_dim, dim)
    pub down: Linear<B>, // (dim, hidden_dim)
}

pub struct Block<B: Backend> {
    pub attn_norm: B::Buf, // (dim)
    pub attn: Attention<B>,
    pub mlp_norm: B::Buf, // (dim)
    pub mlp: Mlp<B>,
}

pub struct Llama<B: Backend> {
    pub cfg: LlamaConfig,
    pub backend: B,
    pub embed: B::Mat, // (vocab, dim)
    pub blocks: Vec<Block<B>>,
    pub norm: B::Buf,            // (dim)
    pub lm_head: Option<B::Mat>, // (vocab, dim); None when tied to `embed`
    inv_freq: Vec<f64>,          // (head_dim / 2)
}

/// Which logits a forward pass produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (filling the cache only, e.g. a shared prompt prefix).
    None,
    /// The last fed position's.
    Last,
    /// Every fed position's, `(rows, vocab)`.
    All,
}

/// Per-session state: the KV cache and the scratch buffers of one forward pass.
pub struct State<B: Backend> {
    /// Positions the cache can hold.
    pub capacity: usize,
    /// Positions filled.
    pub len: usize,
    /// Rows one forward pass processes at most (longer inputs go in chunks).
    pub max_rows: usize,
    pub kv: Vec<KvLayer<B>>, // per layer: (n_kv_heads, capacity, head_dim) each
    x: B::Buf,               // (max_rows, dim) residual stream
    h: B::Buf,               // (max_rows, dim) normed / projected
    q: B::Buf,               // (max_rows, n_heads * head_dim)
    k: B::Buf,               // (max_rows, n_kv_heads * head_dim)
    v: B::Buf,               // (max_rows, n_kv_heads * head_dim)
    att: B::Buf,             // (max_rows, n_heads * head_dim)
    gate: B::Buf,            // (max_rows, hidden_dim)
    up: B::Buf,              // (max_rows, hidden_dim)
    rope: B::Buf,            // (max_rows, head_dim / 2, 2)
    lora: B::Buf,            // (max_rows, lora_rank)
    lora_rank: usize,        // ranks the LoRA scratch holds (grown by `set_adapter`)
    /// Unmerged adapter applied to this session's tokens (set with [`Llama::set_adapter`]).
    adapter: Option<Arc<LoraWeights<B>>>,
    last: B::Buf,       // (1, dim)
    pub logits: B::Buf, // (max_rows, vocab) when all-position logits were asked for, else (1, vocab)
    logits_rows: usize,
}

impl<B: Backend> Llama<B> {
    /// Loads every weight named by `cfg` from `ck` onto `backend`, with adapter `merged`
    /// folded into the projections.
    pub fn load(
        cfg: LlamaConfig,
        ck: &Checkpoint,
        backend: B,
        merged: Option<&Adapter>,
    ) -> Result<Self> {
        let (d, hd) = (cfg.dim, cfg.hidden_dim);
        let b = &backend;
        let embed =
            b.load_mat(&ck.get_shaped("model.embed_tokens.weight", &[cfg.vocab_size, d])?)?;
        let vec = |name: &str| -> Result<B::Buf> { b.upload(&ck.get_shaped(name, &[d])?.to_f32()) };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("model.layers.{i}");
            let lin = |n: &str, out, inp, bias| Linear::load(b, ck, i, n, out, inp, bias, merged);
            blocks.push(Block {
                attn_norm: vec(&format!("{p}.input_layernorm.weight"))?,
                attn: Attention {
                    q: lin("q_proj", cfg.q_dim(), d, cfg.qkv_bias)?,
                    k: lin("k_proj", cfg.kv_dim(), d, cfg.qkv_bias)?,
                    v: lin("v_proj", cfg.kv_dim(), d, cfg.qkv_bias)?,
                    o: lin("o_proj", d, cfg.q_dim(), cfg.o_bias)?,
                },
                mlp_norm: vec(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate: lin("gate_proj", hd, d, cfg.mlp_bias)?,
                    up: lin("up_proj", hd, d, cfg.mlp_bias)?,
                    down: lin("down_proj", d, hd, cfg.mlp_bias)?,
                },
            });
        }
        let norm = vec("model.norm.weight")?;
        // Tied checkpoints usually omit lm_head; some store a copy anyway.
        let lm_head = if cfg.tie_word_embeddings && !ck.contains("lm_head.weight") {
            None
        } else {
            Some(b.load_mat(&ck.get_shaped("lm_head.weight", &[cfg.vocab_size, d])?)?)
        };
        let inv_freq = cfg.rope_inv_freq();
        Ok(Llama {
            cfg,
            backend,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// A model from weights already on `backend` (e.g. synthetic weights for
    /// benchmarks of shapes too large to ship); `cfg` must describe them.
    pub fn from_parts(
        cfg: LlamaConfig,
        backend: B,
        embed: B::Mat,
        blocks: Vec<Block<B>>,
        norm: B::Buf,
        lm_head: Option<B::Mat>,
    ) -> Self {
        let inv_freq = cfg.rope_inv_freq();
        Llama {
            cfg,
            backend,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
        }
    }

    /// Reads the unmerged weights of `ad` (checked against this model's shapes when it was
    /// opened) into memory the backend owns, for sessions to run with.
    pub fn load_lora(&self, ad: &Adapter) -> Result<LoraWeights<B>> {
        let b = &self.backend;
        let mut weights = LoraWeights {
            layers: Vec::with_capacity(self.cfg.n_layers),
            max_rank: 0,
            projections: 0,
            parameters: 0,
        };
        for layer in 0..self.cfg.n_layers {
            let mut slots: [Option<Lora<B>>; MODULES.len()] = Default::default();
            for (m, slot) in slots.iter_mut().enumerate() {
                let (out, inp) = module_shape(&self.cfg, m);
                if let Some(p) = ad.pair(layer, m, out, inp)? {
                    let r = p.a.shape[0];
                    weights.max_rank = weights.max_rank.max(r);
                    weights.projections += 1;
                    weights.parameters += r * (out + inp);
                    // Copied out of the file's mapping (not windows into it): an adapter is
                    // read whole at load, and its files may change or go afterwards.
                    *slot = Some(Lora {
                        a: b.lora_mat_from_f32(r, inp, p.a.to_f32())?,
                        b: b.lora_mat_from_f32(out, r, p.b.to_f32())?,
                        scale: p.scale,
                    });
                }
            }
            weights.layers.push(slots);
        }
        Ok(weights)
    }

    /// Runs `st`'s tokens from now on with `adapter` (None: the base weights), growing
    /// the state's LoRA scratch to the adapter's rank. The cache must be empty: keys and
    /// values computed under one adapter are wrong under another.
    pub fn set_adapter(
        &self,
        st: &mut State<B>,
        adapter: Option<Arc<LoraWeights<B>>>,
    ) -> Result<()> {
        if st.len > 0 {
            return Err(EngineError::Invalid(
                "set_adapter needs an empty session (truncate it to 0 first)".into(),
            ));
        }
        if let Some(w) = &adapter {
            if w.layers.len() != self.cfg.n_layers {
                return Err(EngineError::Invalid(format!(
                    "adapter weights for {} layers on a model of {}",
                    w.layers.len(),
                    self.cfg.n_layers
                )));
            }
            if w.max_rank > st.lora_rank {
                st.lora = self.backend.alloc(st.max_rows * w.max_rank)?;
                st.lora_rank = w.max_rank;
            }
        }
        st.adapter = adapter;
        Ok(())
    }

    pub fn heads(&self) -> Heads {
        Heads {
            n_heads: self.cfg.n_heads,
            n_kv_heads: self.cfg.n_kv_heads,
            head_dim: self.cfg.head_dim,
        }
    }

    /// A fresh state whose cache holds `capacity` positions and whose passes take up to `max_rows` rows.
    pub fn new_state(&self, capacity: usize, max_rows: usize) -> Result<State<B>> {
        let (b, c) = (&self.backend, &self.cfg);
        let max_rows = max_rows.clamp(1, capacity.max(1));
        let kv_len = c.n_kv_heads * capacity * c.head_dim;
        let kv = (0..c.n_layers)
            .map(|_| {
                Ok(KvLayer {
                    k: b.alloc_kv(kv_len)?,
                    v: b.alloc_kv(kv_len)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(State {
            capacity,
            len: 0,
            max_rows,
            kv,
            x: b.alloc(max_rows * c.dim)?,
            h: b.alloc(max_rows * c.dim)?,
            q: b.alloc(max_rows * c.q_dim())?,
            k: b.alloc(max_rows * c.kv_dim())?,
            v: b.alloc(max_rows * c.kv_dim())?,
            att: b.alloc(max_rows * c.q_dim())?,
            gate: b.alloc(max_rows * c.hidden_dim)?,
            up: b.alloc(max_rows * c.hidden_dim)?,
            rope: b.alloc(max_rows * c.head_dim)?,
            lora: b.alloc(max_rows)?,
            lora_rank: 1,
            adapter: None,
            last: b.alloc(c.dim)?,
            logits: b.alloc(c.vocab_size)?,
            logits_rows: 1,
        })
    }

    /// Runs `tokens` (at most `st.max_rows`) at positions `st.len..`, appending to the
    /// cache. Returns how many logit rows were written to `st.logits`.
    pub fn forward(&self, st: &mut State<B>, tokens: &[u32], want: Logits) -> Result<usize> {
        self.forward_until(st, tokens, want, &|| false)
    }

    /// [`Llama::forward`], checking `stop` before each block: when it holds, returns
    /// [`EngineError::Interrupted`] with `st.len` unchanged (the rows written to the cache
    /// so far lie beyond `st.len` and are overwritten by the next call).
    pub fn forward_until(
        &self,
        st: &mut State<B>,
        tokens: &[u32],
        want: Logits,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<usize> {
        let (b, c) = (&self.backend, &self.cfg);
        let rows = tokens.len();
        let start = st.len;
        debug_assert!(rows <= st.max_rows);
        let heads = self.heads();
        let (dim, hidden) = (c.dim, c.hidden_dim);
        // A clone of the pin, so the state's buffers can be borrowed mutably below.
        let ad = st.adapter.clone();

        b.embed(&self.embed, tokens, &mut st.x)?; // x: (rows, dim)
        b.rope_table(&self.inv_freq, start, rows, &mut st.rope)?;
        if let Some(first) = self.blocks.first() {
            b.rms_norm(&st.x, &first.attn_norm, rows, dim, c.norm_eps, &mut st.h)?;
        }
        for (i, (blk, kv)) in self.blocks.iter().zip(st.kv.iter_mut()).enumerate() {
            if stop() {
                return Err(EngineError::Interrupted);
            }
            // The adapter's pair for projection `m` (index into MODULES) of this block, if any.
            let pair = |m: usize| ad.as_deref().and_then(|w| w.get(i, m));
            // Attention (h = attn_norm(x) on entry).
            let lora = &mut st.lora;
            blk.attn
                .q
                .forward(b, &st.h, rows, &mut st.q, pair(0), lora)?;
            blk.attn
                .k
                .forward(b, &st.h, rows, &mut st.k, pair(1), lora)?;
            blk.attn
                .v
                .forward(b, &st.h, rows, &mut st.v, pair(2), lora)?;
            b.rope(&mut st.q, rows, c.n_heads, c.head_dim, &st.rope)?;
            b.rope(&mut st.k, rows, c.n_kv_heads, c.head_dim, &st.rope)?;
            b.kv_store(&st.k, &st.v, rows, start, heads, st.capacity, kv)?;
            b.attention(&st.q, kv, rows, start, heads, st.capacity, &mut st.att)?;
            blk.attn
                .o
                .forward(b, &st.att, rows, &mut st.h, pair(3), &mut st.lora)?;
            // x += attention; h = mlp_norm(x).
            b.add_rms_norm(&mut st.x, &mut st.h, &blk.mlp_norm, rows, dim, c.norm_eps)?;
            // SwiGLU MLP.
            blk.mlp
                .gate
                .forward(b, &st.h, rows, &mut st.gate, pair(4), &mut st.lora)?;
            blk.mlp
                .up
                .forward(b, &st.h, rows, &mut st.up, pair(5), &mut st.lora)?;
            b.silu_mul(&mut st.gate, &st.up, rows * hidden)?;
            blk.mlp
                .down
                .forward(b, &st.gate, rows, &mut st.h, pair(6), &mut st.lora)?;
            // x += mlp; h = the next block's attn_norm(x).
            match self.blocks.get(i + 1) {
                Some(next) => {
                    b.add_rms_norm(&mut st.x, &mut st.h, &next.attn_norm, rows, dim, c.norm_eps)?
                }
                None => b.add_assign(&mut st.x, &st.h, rows * dim)?,
            }
        }
        st.len = start + rows;

        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        match want {
            Logits::None => Ok(0),
            Logits::Last => {
                b.copy_rows(&st.x, rows - 1, &mut st.last, 0, 1, dim)?;
                b.rms_norm(&st.last, &self.norm, 1, dim, c.norm_eps, &mut st.h)?;
                b.linear(&st.h, 1, head, None, &mut st.logits)?;
                Ok(1)
            }
            Logits::All => {
                if st.logits_rows < st.max_rows {
                    // Grown once per session, on the first all-positions request.
                    st.logits = b.alloc(st.max_rows * c.vocab_size)?;
                    st.logits_rows = st.max_rows;
                }
                b.rms_norm(&st.x, &self.norm, rows, dim, c.norm_eps, &mut st.h)?;
                b.linear(&st.h, rows, head, None, &mut st.logits)?;
                Ok(rows)
            }
        }
    }
}
