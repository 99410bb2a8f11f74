//! Every CUDA kernel against the CPU backend (or, for ops the CPU backend lacks,
//! a plain f64 reference written here), on fresh random inputs each run.
//!
//! Bounds are for bf16: ‖out − ref‖ / ‖ref‖ ≤ 1e-2 where an op rounds to bf16
//! (its output, or the operands of a tensor-core product), tighter where it does
//! not; NaN never passes. GPU outputs are poisoned with NaN before each op, so an
//! element the op fails to write shows up. Every test is `#[ignore]`d (reported as
//! ignored, never as passed, on machines without a GPU); run them with `--include-ignored`
//! on a GPU (scripts/gpu/gpu-check.sh) or the emulator (scripts/gpu/fake-gpu.sh), where a missing
//! device fails the test.

mod cuda_common;

use cuda_common::*;
use half::bf16;
use palr::engine::backend::{Backend, Heads, KvLayer};
use palr::engine::cpu::{CpuBackend, CpuMat};
use palr::engine::cuda::{CudaBackend, CudaBuf, Dtype, LoraSegment};
use palr::engine::{EngineError, WeightDtype};

fn cpu() -> CpuBackend {
    CpuBackend::new(0, WeightDtype::Bf16).unwrap()
}

fn down(g: &CudaBackend, b: &CudaBuf, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    g.download(b, 0, &mut out).unwrap();
    out
}

/// A GPU output buffer of `n` values, poisoned.
fn poisoned(g: &CudaBackend, n: usize) -> CudaBuf {
    let mut b = g.alloc(n).unwrap();
    g.poison(&mut b).unwrap();
    b
}

fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn tensor_core_fragment_layout() {
    let g = gpu();
    let mut rng = Rng::new(fresh_seed("mma"));
    let a = rng.vec_bf16(256, 1.0);
    let b = rng.vec_bf16(128, 1.0);
    let d = g.mma_selftest(&a, &b).unwrap();
    let mut want = vec![0f32; 128];
    for i in 0..16 {
        for j in 0..8 {
            want[i * 8 + j] = (0..16)
                .map(|k| a[i * 16 + k] as f64 * b[k * 8 + j] as f64)
                .sum::<f64>() as f32;
        }
    }
    assert_close("mma m16n8k16 (16×16 · 16×8)", &d, &want, 1e-5);
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn embedding_gather() {
    let g = gpu();
    let c = cpu();
    let mut rng = Rng::new(fresh_seed("embed"));
    let (vocab, dim) = (1000, 192);
    let table = rng.vec(vocab * dim, 1.0);
    let ct = CpuMat::from_f32(vocab, dim, table.clone(), WeightDtype::Bf16);
    let gt = g.mat_from_f32(vocab, dim, &table).unwrap();
    let mut tokens: Vec<u32> = (0..37).map(|_| rng.below(vocab) as u32).collect();
    tokens[0] = 0;
    tokens[1] = vocab as u32 - 1;
    let mut cout = c.alloc(tokens.len() * dim).unwrap();
    c.embed(&ct, &tokens, &mut cout).unwrap();
    let mut gout = poisoned(&g, tokens.len() * dim);
    g.embed(&gt, &tokens, &mut gout).unwrap();
    assert_close("embed", &down(&g, &gout, tokens.len() * dim), &cout, 0.0);
    // An id outside the vocabulary is an error naming it, not an out-of-bounds read.
    match g.embed(&gt, &[3, vocab as u32], &mut gout) {
        Err(EngineError::InvalidToken { token, vocab: v }) => {
            assert_eq!((token, v), (vocab as u32, vocab))
        }
        other => panic!("expected InvalidToken, got {:?}", other.err()),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn rms_norm_and_fused_residual_add() {
    let g = gpu();
    let c = cpu();
    let mut rng = Rng::new(fresh_seed("rmsnorm"));
    for (rows, dim) in [(1, 576), (7, 4096), (33, 100), (300, 576)] {
        let x = rng.vec(rows * dim, 2.0);
        let hv = rng.vec(rows * dim, 1.0);
        let w: Vec<f32> = rng.vec(dim, 0.3).iter().map(|v| 1.0 + v).collect();
        let eps = 1e-5;
        // rms_norm
        let mut cout = c.alloc(rows * dim).unwrap();
        c.rms_norm(&x, &w, rows, dim, eps, &mut cout).unwrap();
        let (gx, gw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        let mut gout = poisoned(&g, rows * dim);
        g.rms_norm(&gx, &gw, rows, dim, eps, &mut gout).unwrap();
        assert_eq!(
            gout.dtype(),
            Dtype::Bf16,
            "RMSNorm feeds projections in bf16"
        );
        assert_close(
            &format!("rms_norm ({rows}×{dim})"),
            &down(&g, &gout, rows * dim),
            &cout,
            5e-3,
        );
        // x += h; h = rms_norm(x)
        let (mut cx, mut ch) = (x.clone(), hv.clone());
        c.add_rms_norm(&mut cx, &mut ch, &w, rows, dim, eps)
            .unwrap();
        let mut gx = g.upload(&x).unwrap();
        let mut gh = g.upload(&hv).unwrap();
        g.add_rms_norm(&mut gx, &mut gh, &gw, rows, dim, eps)
            .unwrap();
        assert_close(
            &format!("add_rms_norm residual ({rows}×{dim})"),
            &down(&g, &gx, rows * dim),
            &cx,
            1e-6,
        );
        assert_close(
            &format!("add_rms_norm output ({rows}×{dim})"),
            &down(&g, &gh, rows * dim),
            &ch,
            5e-3,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn linear_through_cublas() {
    let g = gpu();
    let c = cpu();
    let mut rng = Rng::new(fresh_seed("linear"));
    for (rows, n, k, bias) in [
        (1, 576, 576, false),
        (3, 1536, 576, true),
        (37, 192, 576, false),
        (300, 1000, 257, true),
    ] {
        let x = rng.vec(rows * k, 1.0);
        let w = rng.vec(n * k, 1.0 / (k as f32).sqrt());
        let b = rng.vec(n, 0.5);
        let cw = CpuMat::from_f32(n, k, w.clone(), WeightDtype::Bf16);
        let gw = g.mat_from_f32(n, k, &w).unwrap();
        // The GPU narrows x to bf16 for cuBLAS; give the CPU the same x.
        let xr = round_bf16(&x);
        let mut cout = c.alloc(rows * n).unwrap();
        c.linear(&xr, rows, &cw, bias.then_some(&b), &mut cout)
            .unwrap();
        let gx = g.upload(&x).unwrap();
        let gb = g.upload(&b).unwrap();
        let mut gout = poisoned(&g, rows * n);
        g.linear(&gx, rows, &gw, bias.then_some(&gb), &mut gout)
            .unwrap();
        assert_close(
            &format!("linear ({rows}×{k})·({n}×{k})ᵀ bias={bias}"),
            &down(&g, &gout, rows * n),
            &cout,
            1e-4,
        );
    }
    // A misshapen call is an error, not an out-of-bounds access.
    let gw = g.mat_from_f32(8, 8, &[0.5; 64]).unwrap();
    let gx = g.upload(&[1.0; 8]).unwrap();
    let mut small = g.alloc(4).unwrap();
    assert!(g.linear(&gx, 1, &gw, None, &mut small).is_err());
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn rope_swiglu_and_residual_add() {
    let g = gpu();
    let c = cpu();
    let mut rng = Rng::new(fresh_seed("rope"));
    let cfg =
        palr::model::LlamaConfig::from_json(palr::engine::cuda::synthetic::SMOLLM2_135M).unwrap();
    let inv = cfg.rope_inv_freq();
    let (rows, heads, hd, start) = (29, 9, 64, 1000 + rng.below(3000));
    let mut ct = c.alloc(rows * hd).unwrap();
    c.rope_table(&inv, start, rows, &mut ct).unwrap();
    let mut gt = poisoned(&g, rows * hd);
    g.rope_table(&inv, start, rows, &mut gt).unwrap();
    assert_close("rope table", &down(&g, &gt, rows * hd), &ct, 0.0);
    let x = rng.vec(rows * heads * hd, 1.0);
    let mut cx = x.clone();
    c.rope(&mut cx, rows, heads, hd, &ct).unwrap();
    let mut gx = g.upload(&x).unwrap();
    g.rope(&mut gx, rows, heads, hd, &gt).unwrap();
    assert_close("rope", &down(&g, &gx, rows * heads * hd), &cx, 1e-6);

    let n = 3 * 1536 + 5;
    let (gate, up) = (rng.vec(n, 4.0), rng.vec(n, 2.0));
    let mut cg = gate.clone();
    c.silu_mul(&mut cg, &up, n).unwrap();
    let mut gg = g.upload(&gate).unwrap();
    g.silu_mul(&mut gg, &g.upload(&up).unwrap(), n).unwrap();
    assert_eq!(
        gg.dtype(),
        Dtype::Bf16,
        "SwiGLU feeds the down projection in bf16"
    );
    assert_close("silu_mul", &down(&g, &gg, n), &cg, 5e-3);

    let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
    let mut ca = a.clone();
    c.add_assign(&mut ca, &b, n).unwrap();
    let mut ga = g.upload(&a).unwrap();
    g.add_assign(&mut ga, &g.upload(&b).unwrap(), n).unwrap();
    assert_close("add_assign", &down(&g, &ga, n), &ca, 1e-7);
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn copy_rows_between_types() {
    let g = gpu();
    let mut rng = Rng::new(fresh_seed("copy_rows"));
    let (rows, width) = (10, 96);
    let x = rng.vec(rows * width, 1.0);
    let gx = g.upload(&x).unwrap();
    let mut dst = poisoned(&g, 3 * width);
    g.copy_rows(&gx, 4, &mut dst, 1, 2, width).unwrap();
    let got = down(&g, &dst, 3 * width);
    assert_eq!(&got[width..3 * width], &x[4 * width..6 * width]);
    // bf16 source (an RMSNorm output) into an f32 buffer.
    let w = vec![1.0f32; width];
    let mut normed = g.alloc(rows * width).unwrap();
    g.rms_norm(&gx, &g.upload(&w).unwrap(), rows, width, 1e-5, &mut normed)
        .unwrap();
    let all = down(&g, &normed, rows * width);
    let mut last = poisoned(&g, width);
    g.copy_rows(&normed, rows - 1, &mut last, 0, 1, width)
        .unwrap();
    assert_eq!(down(&g, &last, width), &all[(rows - 1) * width..]);
}

/// Fills positions 0..start+rows of both caches with the same bf16 keys and values.
#[allow(clippy::too_many_arguments)]
fn fill_caches(
    c: &CpuBackend,
    g: &CudaBackend,
    rng: &mut Rng,
    heads: Heads,
    capacity: usize,
    len: usize,
    ccache: &mut KvLayer<CpuBackend>,
    gcache: &mut KvLayer<CudaBackend>,
) {
    let w = heads.n_kv_heads * heads.head_dim;
    // In chunks, as a session would fill it.
    let mut pos = 0;
    while pos < len {
        let rows = (len - pos).min(1 + rng.below(200));
        let k = rng.vec_bf16(rows * w, 1.0);
        let v = rng.vec_bf16(rows * w, 1.0);
        c.kv_store(&k, &v, rows, pos, heads, capacity, ccache)
            .unwrap();
        g.kv_store(
            &g.upload(&k).unwrap(),
            &g.upload(&v).unwrap(),
            rows,
            pos,
            heads,
            capacity,
            gcache,
        )
        .unwrap();
        pos += rows;
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn attention_prefill_and_decode_against_cpu() {
    let g = gpu();
    let c = cpu();
    let mut split = gpu();
    split.set_flash_attention(false);
    let mut rng = Rng::new(fresh_seed("attention"));
    // (n_heads, n_kv_heads, head_dim): SmolLM2, LLaMA-2-7B, GQA 4:1, and the
    // split kernel's other head sizes and its largest group.
    let shapes = [
        (9, 3, 64),
        (32, 32, 128),
        (8, 2, 128),
        (4, 4, 32),
        (4, 1, 256),
        (16, 1, 64),
    ];
    // (rows, start): decode (one split and many), short and long prefill, chunked
    // prefill starting mid-tile, rows not a multiple of the 64-row tile.
    let cases = [
        (1, 0),
        (1, 777),
        (1, 4000),
        (5, 100),
        (9, 0),
        (64, 0),
        (100, 37),
        (300, 0),
        (130, 1000),
    ];
    for (n_heads, n_kv, hd) in shapes {
        let heads = Heads {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        for (rows, start) in cases {
            let capacity = start + rows + rng.below(50);
            let kv_len = n_kv * capacity * hd;
            let mut cc = KvLayer {
                k: c.alloc_kv(kv_len).unwrap(),
                v: c.alloc_kv(kv_len).unwrap(),
            };
            let mut gc = KvLayer {
                k: g.alloc_kv(kv_len).unwrap(),
                v: g.alloc_kv(kv_len).unwrap(),
            };
            // Positions never written stay NaN: attention must not read them.
            g.poison(&mut gc.k).unwrap();
            g.poison(&mut gc.v).unwrap();
            fill_caches(
                &c,
                &g,
                &mut rng,
                heads,
                capacity,
                start + rows,
                &mut cc,
                &mut gc,
            );
            let q = rng.vec(rows * n_heads * hd, 1.0);
            let mut cout = c.alloc(rows * n_heads * hd).unwrap();
            c.attention(&q, &cc, rows, start, heads, capacity, &mut cout)
                .unwrap();
            let gq = g.upload(&q).unwrap();
            let mut gout = poisoned(&g, rows * n_heads * hd);
            g.attention(&gq, &gc, rows, start, heads, capacity, &mut gout)
                .unwrap();
            assert_close(
                &format!("attention heads {n_heads}/{n_kv} hd {hd}, rows {rows} at {start}"),
                &down(&g, &gout, rows * n_heads * hd),
                &cout,
                1e-2,
            );
            // Long prefill again on the split-sequence kernel (the fallback path).
            // Another backend has its own stream: wait for this one's writes first.
            if rows > 8 && [64, 128].contains(&hd) {
                g.synchronize().unwrap();
                let mut sout = poisoned(&split, rows * n_heads * hd);
                split
                    .attention(&gq, &gc, rows, start, heads, capacity, &mut sout)
                    .unwrap();
                assert_close(
                    &format!(
                        "split-kernel prefill heads {n_heads}/{n_kv} hd {hd}, rows {rows} at {start}"
                    ),
                    &down(&split, &sout, rows * n_heads * hd),
                    &cout,
                    1e-2,
                );
            }
            // The same with bf16 queries (the kernels' other query type).
            let width = n_heads * hd;
            let mut gqb = g.alloc_bf16(rows * width).unwrap();
            g.copy_rows(&gq, 0, &mut gqb, 0, rows, width).unwrap();
            assert_eq!(gqb.dtype(), Dtype::Bf16);
            let qr = round_bf16(&q);
            let mut cout = c.alloc(rows * width).unwrap();
            c.attention(&qr, &cc, rows, start, heads, capacity, &mut cout)
                .unwrap();
            let mut gout = poisoned(&g, rows * width);
            g.attention(&gqb, &gc, rows, start, heads, capacity, &mut gout)
                .unwrap();
            assert_close(
                &format!(
                    "attention, bf16 queries, heads {n_heads}/{n_kv} hd {hd}, rows {rows} at {start}"
                ),
                &down(&g, &gout, rows * width),
                &cout,
                1e-2,
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn kv_cache_prefix_copy_and_type_errors() {
    let g = gpu();
    let c = cpu();
    let mut rng = Rng::new(fresh_seed("kv_copy"));
    let heads = Heads {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let (cap_a, cap_b, len) = (300, 500, 250);
    let mut cc = KvLayer {
        k: c.alloc_kv(3 * cap_a * 64).unwrap(),
        v: c.alloc_kv(3 * cap_a * 64).unwrap(),
    };
    let mut ga = KvLayer {
        k: g.alloc_kv(3 * cap_a * 64).unwrap(),
        v: g.alloc_kv(3 * cap_a * 64).unwrap(),
    };
    fill_caches(&c, &g, &mut rng, heads, cap_a, len, &mut cc, &mut ga);
    let mut gb = KvLayer {
        k: g.alloc_kv(3 * cap_b * 64).unwrap(),
        v: g.alloc_kv(3 * cap_b * 64).unwrap(),
    };
    g.poison(&mut gb.k).unwrap();
    g.poison(&mut gb.v).unwrap();
    g.kv_copy_prefix(&ga, &mut gb, len, heads, cap_a, cap_b)
        .unwrap();
    let (a, b) = (
        down(&g, &ga.k, 3 * cap_a * 64),
        down(&g, &gb.k, 3 * cap_b * 64),
    );
    for h in 0..3 {
        assert_eq!(
            &a[h * cap_a * 64..][..len * 64],
            &b[h * cap_b * 64..][..len * 64],
            "head {h}"
        );
        assert_eq!(
            &cc.k[h * cap_a * 64..][..len * 64],
            &a[h * cap_a * 64..][..len * 64],
            "CPU vs GPU head {h}"
        );
    }
    // Attention over the copy equals attention over the original.
    let q = rng.vec(9 * 64, 1.0);
    let gq = g.upload(&q).unwrap();
    let (mut oa, mut ob) = (poisoned(&g, 9 * 64), poisoned(&g, 9 * 64));
    g.attention(&gq, &ga, 1, len - 1, heads, cap_a, &mut oa)
        .unwrap();
    g.attention(&gq, &gb, 1, len - 1, heads, cap_b, &mut ob)
        .unwrap();
    assert_eq!(down(&g, &oa, 9 * 64), down(&g, &ob, 9 * 64));
    // Keys and values already in bf16 store the same cache as f32 ones.
    let w = 3 * 64;
    let (k, v) = (rng.vec_bf16(7 * w, 1.0), rng.vec_bf16(7 * w, 1.0));
    let (gk, gv) = (g.upload(&k).unwrap(), g.upload(&v).unwrap());
    let (mut kb, mut vb) = (g.alloc_bf16(7 * w).unwrap(), g.alloc_bf16(7 * w).unwrap());
    g.copy_rows(&gk, 0, &mut kb, 0, 7, w).unwrap();
    g.copy_rows(&gv, 0, &mut vb, 0, 7, w).unwrap();
    let fresh = |g: &CudaBackend| KvLayer {
        k: g.alloc_kv(3 * cap_a * 64).unwrap(),
        v: g.alloc_kv(3 * cap_a * 64).unwrap(),
    };
    let (mut c32, mut c16) = (fresh(&g), fresh(&g));
    g.kv_store(&gk, &gv, 7, 11, heads, cap_a, &mut c32).unwrap();
    g.kv_store(&kb, &vb, 7, 11, heads, cap_a, &mut c16).unwrap();
    assert_eq!(
        down(&g, &c32.k, 3 * cap_a * 64),
        down(&g, &c16.k, 3 * cap_a * 64)
    );
    assert_eq!(
        down(&g, &c32.v, 3 * cap_a * 64),
        down(&g, &c16.v, 3 * cap_a * 64)
    );
    // A cache made with alloc (f32) instead of alloc_kv is refused with a clear error.
    let mut bad = KvLayer {
        k: g.alloc(3 * cap_a * 64).unwrap(),
        v: g.alloc(3 * cap_a * 64).unwrap(),
    };
    let k = g.upload(&vec![0.0; 3 * 64]).unwrap();
    let err = g
        .kv_store(&k, &k, 1, 0, heads, cap_a, &mut bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("alloc_kv"), "{err}");
    // Past the capacity: ContextFull, not a write out of bounds.
    assert!(matches!(
        g.kv_store(&k, &k, 1, cap_a, heads, cap_a, &mut ga),
        Err(EngineError::ContextFull { .. })
    ));
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn log_softmax_token_logprobs_and_argmax() {
    let g = gpu();
    let mut rng = Rng::new(fresh_seed("softmax"));
    let (rows, vocab) = (6, 49152);
    let mut x = rng.vec(rows * vocab, 8.0);
    // Row 2: a tie for the maximum (the first index wins); row 3: NaNs never win.
    x[2 * vocab + 100] = 50.0;
    x[2 * vocab + 200] = 50.0;
    x[3 * vocab + 5] = f32::NAN;
    x[3 * vocab + 7] = 60.0;
    let gx = g.upload(&x).unwrap();
    // Reference in f64 (rows without NaN).
    let lse = |r: usize| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
    };
    let clean = [0usize, 1, 2, 4, 5];
    let mut out = poisoned(&g, rows * vocab);
    g.log_softmax(&gx, rows, vocab, &mut out).unwrap();
    let got = down(&g, &out, rows * vocab);
    for &r in &clean {
        let l = lse(r);
        let want: Vec<f32> = x[r * vocab..(r + 1) * vocab]
            .iter()
            .map(|&v| (v as f64 - l) as f32)
            .collect();
        assert_close(
            &format!("log_softmax row {r}"),
            &got[r * vocab..(r + 1) * vocab],
            &want,
            1e-6,
        );
    }
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
    let lp = g.token_logprobs(&gx, vocab, &targets).unwrap();
    for &r in &clean {
        let want = x[r * vocab + targets[r] as usize] as f64 - lse(r);
        assert!(
            (lp[r] as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
            "row {r}: {} vs {want}",
            lp[r]
        );
    }
    assert!(g.token_logprobs(&gx, vocab, &[vocab as u32]).is_err());
    let am = g.argmax(&gx, rows, vocab).unwrap();
    for r in 0..rows {
        let row = &x[r * vocab..(r + 1) * vocab];
        let mut best = 0;
        for (i, v) in row.iter().enumerate() {
            if *v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                best = i;
            }
        }
        assert_eq!(am[r].0 as usize, best, "argmax row {r}");
        assert_eq!(am[r].1, row[best], "max value row {r}");
    }
    assert_eq!(am[2].0, 100);
    assert_eq!(am[3].0, 7);
}

/// y = x · (W + s·B·A)ᵀ in f64, for rows `rows` of x.
#[allow(clippy::too_many_arguments)]
fn lora_reference(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    rank: usize,
    scale: f64,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let rows = x.len() / k;
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        let t: Vec<f64> = (0..rank)
            .map(|j| (0..k).map(|i| xr[i] as f64 * a[j * k + i] as f64).sum())
            .collect();
        for o in 0..n {
            let base: f64 = (0..k).map(|i| xr[i] as f64 * w[o * k + i] as f64).sum();
            let delta: f64 = (0..rank).map(|j| t[j] * b[o * rank + j] as f64).sum();
            out[r * n + o] = (base + scale * delta) as f32;
        }
    }
    out
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn lora_merge_and_segmented_unmerged_apply() {
    let g = gpu();
    let mut rng = Rng::new(fresh_seed("lora"));
    let (k, n) = (576, 1536);
    let w = rng.vec_bf16(n * k, 1.0 / (k as f32).sqrt());
    let (ra, rb) = (16, 8);
    let a1 = rng.vec_bf16(ra * k, 1.0 / (k as f32).sqrt());
    let b1 = rng.vec_bf16(n * ra, 0.5);
    let a2 = rng.vec_bf16(rb * k, 1.0 / (k as f32).sqrt());
    let b2 = rng.vec_bf16(n * rb, 0.5);
    let ad1 = g.lora_adapter(&a1, &b1, ra, k, n, 32.0).unwrap();
    let ad2 = g.lora_adapter(&a2, &b2, rb, k, n, 8.0).unwrap();
    let (s1, s2) = (32.0 / ra as f64, 8.0 / rb as f64);

    // Merge: W + s·B·A, rounded to bf16.
    let mut gw = g.mat_from_f32(n, k, &w).unwrap();
    g.lora_merge(&mut gw, &ad1, 1.0).unwrap();
    let merged = g.download_mat(&gw).unwrap();
    let mut want = w.clone();
    for o in 0..n {
        for i in 0..k {
            let d: f64 = (0..ra)
                .map(|j| b1[o * ra + j] as f64 * a1[j * k + i] as f64)
                .sum();
            want[o * k + i] = (w[o * k + i] as f64 + s1 * d) as f32;
        }
    }
    assert_close("lora_merge", &merged, &want, 5e-3);
    g.lora_merge(&mut gw, &ad1, -1.0).unwrap();
    assert_close("lora unmerge", &g.download_mat(&gw).unwrap(), &w, 1e-2);

    // Unmerged: three segments (adapter 1, none, adapter 2) in one batch.
    let gw = g.mat_from_f32(n, k, &w).unwrap();
    let (r1, r0, r2) = (3, 4, 5);
    let rows = r1 + r0 + r2;
    let x = rng.vec_bf16(rows * k, 1.0);
    let gx = g.upload(&x).unwrap();
    let mut y = poisoned(&g, rows * n);
    g.linear(&gx, rows, &gw, None, &mut y).unwrap();
    g.lora_apply(
        &gx,
        &gw,
        &mut y,
        &[
            LoraSegment {
                rows: r1,
                adapter: Some(&ad1),
            },
            LoraSegment {
                rows: r0,
                adapter: None,
            },
            LoraSegment {
                rows: r2,
                adapter: Some(&ad2),
            },
        ],
    )
    .unwrap();
    let got = down(&g, &y, rows * n);
    let want1 = lora_reference(&x[..r1 * k], &w, &a1, &b1, ra, s1, k, n);
    let want0 = lora_reference(&x[r1 * k..(r1 + r0) * k], &w, &a1, &b1, ra, 0.0, k, n);
    let want2 = lora_reference(&x[(r1 + r0) * k..], &w, &a2, &b2, rb, s2, k, n);
    assert_close("lora_apply segment 1", &got[..r1 * n], &want1, 1e-2);
    assert_close(
        "lora_apply no adapter",
        &got[r1 * n..(r1 + r0) * n],
        &want0,
        1e-2,
    );
    assert_close("lora_apply segment 2", &got[(r1 + r0) * n..], &want2, 1e-2);

    // Unmerged equals merged on the same rows.
    let mut gm = g.mat_from_f32(n, k, &w).unwrap();
    g.lora_merge(&mut gm, &ad2, 1.0).unwrap();
    let xs = g.upload(&x[(r1 + r0) * k..]).unwrap();
    let mut ym = poisoned(&g, r2 * n);
    g.linear(&xs, r2, &gm, None, &mut ym).unwrap();
    assert_close(
        "lora merged vs unmerged",
        &down(&g, &ym, r2 * n),
        &got[(r1 + r0) * n..],
        1e-2,
    );

    // Mismatched shapes are errors.
    let wrong = g
        .lora_adapter(&a2, &vec![0.0; 7 * rb], rb, k, 7, 1.0)
        .unwrap();
    let mut y2 = g.alloc(rows * n).unwrap();
    assert!(
        g.lora_apply(
            &gx,
            &gw,
            &mut y2,
            &[LoraSegment {
                rows,
                adapter: Some(&wrong)
            }]
        )
        .is_err()
    );
    assert!(g.lora_adapter(&a1, &b1, 0, k, n, 1.0).is_err());
}

#[test]
#[ignore = "needs an NVIDIA GPU (or scripts/gpu/fake-gpu.sh): run with --include-ignored, as scripts/gpu/gpu-check.sh does"]
fn model_lora_update_matches_the_cpu_backend() {
    // The engine's unmerged-adapter path (`Backend::lora_update`): the SGMV kernels on the
    // GPU, two matrix products on the CPU. 1536 inputs = 3 shrink chunks, 37 rows = 3 row
    // tiles (one partial), rank 16.
    let g = gpu();
    let c = cpu();
    let mut rng = Rng::new(fresh_seed("lora_update"));
    let (k, n, rank, rows) = (1536, 576, 16, 37);
    let x = rng.vec_bf16(rows * k, 1.0);
    let w = rng.vec_bf16(n * k, 1.0 / (k as f32).sqrt());
    let a = rng.vec_bf16(rank * k, 1.0 / (k as f32).sqrt());
    let b = rng.vec_bf16(n * rank, 0.5);
    let scale = 2.0f32;

    let (gw, ga, gb) = (
        Backend::mat_from_f32(&g, n, k, w.clone()).unwrap(),
        Backend::mat_from_f32(&g, rank, k, a.clone()).unwrap(),
        Backend::mat_from_f32(&g, n, rank, b.clone()).unwrap(),
    );
    let gx = g.upload(&x).unwrap();
    let mut gy = poisoned(&g, rows * n);
    let mut gtmp = g.alloc(rows * rank).unwrap();
    g.linear(&gx, rows, &gw, None, &mut gy).unwrap();
    g.lora_update(&gx, rows, &ga, &gb, scale, &mut gtmp, &mut gy)
        .unwrap();
    let got = down(&g, &gy, rows * n);

    let (cw, ca, cb) = (
        c.mat_from_f32(n, k, w.clone()).unwrap(),
        c.mat_from_f32(rank, k, a.clone()).unwrap(),
        c.mat_from_f32(n, rank, b.clone()).unwrap(),
    );
    let cx = c.upload(&x).unwrap();
    let mut cy = c.alloc(rows * n).unwrap();
    let mut ctmp = c.alloc(rows * rank).unwrap();
    c.linear(&cx, rows, &cw, None, &mut cy).unwrap();
    c.lora_update(&cx, rows, &ca, &cb, scale, &mut ctmp, &mut cy)
        .unwrap();
    let mut want = vec![0f32; rows * n];
    c.download(&cy, 0, &mut want).unwrap();
    assert_close("lora_update (GPU SGMV vs CPU)", &got, &want, 1e-2);
    // And against the f64 reference of the same update.
    let reference = lora_reference(&x, &w, &a, &b, rank, scale as f64, k, n);
    assert_close("lora_update vs f64", &got, &reference, 1e-2);
}
