// Runs kernels/*.cu on CPU threads (emu.hpp) against double-precision
// references: attention prefill (tensor-core path, with the documented mma
// fragment map) and decode (split + merge), RMSNorm, RoPE, SwiGLU, softmax and
// argmax, LoRA merge and SGMV. Built and run by tests/cuda_kernels_emulated.rs
// (with AddressSanitizer: out-of-bounds accesses abort). Exit status 1 if a check fails.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels_all.inc"

static int g_failures = 0;

struct Rng {
    unsigned long long s;
    explicit Rng(unsigned long long seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
    unsigned long long next() {
        s += 0x9e3779b97f4a7c15ull;
        unsigned long long z = s;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    float uniform() { return (float)(next() >> 40) / 16777216.0f * 2.0f - 1.0f; }
    int below(int n) { return (int)(next() % (unsigned long long)n); }
};

static std::vector<float> rand_vec(Rng& r, size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& x : v) x = r.uniform() * scale;
    return v;
}
static std::vector<bf16_t> to_bf16(const std::vector<float>& v) {
    std::vector<bf16_t> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = f2bf(v[i]);
    return o;
}
static std::vector<float> widen(const std::vector<bf16_t>& v) {
    std::vector<float> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = bf2f(v[i]);
    return o;
}

static double rel_err(const std::vector<float>& out, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        if (!std::isfinite(out[i])) return INFINITY;
        num += (out[i] - ref[i]) * (out[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den == 0 ? (num == 0 ? 0 : INFINITY) : std::sqrt(num / den);
}

static void check(const std::string& what, const std::vector<float>& out, const std::vector<double>& ref,
                  double tol) {
    const double e = rel_err(out, ref);
    const bool ok = e <= tol;
    std::printf("%s %-70s rel err %.2e (bound %.0e)\n", ok ? "ok  " : "FAIL", what.c_str(), e, tol);
    if (!ok) ++g_failures;
}

static void check_true(const std::string& what, bool ok) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) ++g_failures;
}

// Causal GQA attention in double: q (rows, H, hd), cache (n_kv, cap, hd).
static std::vector<double> attention_ref(const std::vector<float>& q, const std::vector<float>& k,
                                         const std::vector<float>& v, int rows, int start, int H,
                                         int n_kv, int hd, int cap) {
    std::vector<double> out((size_t)rows * H * hd);
    const int group = H / n_kv;
    for (int r = 0; r < rows; ++r)
        for (int h = 0; h < H; ++h) {
            const int g = h / group, len = start + r + 1;
            std::vector<double> s(len);
            double m = -INFINITY;
            for (int j = 0; j < len; ++j) {
                double d = 0;
                for (int e = 0; e < hd; ++e)
                    d += (double)q[((size_t)r * H + h) * hd + e] * k[((size_t)g * cap + j) * hd + e];
                s[j] = d / std::sqrt((double)hd);
                m = std::max(m, s[j]);
            }
            double l = 0;
            for (int j = 0; j < len; ++j) l += (s[j] = std::exp(s[j] - m));
            for (int e = 0; e < hd; ++e) {
                double acc = 0;
                for (int j = 0; j < len; ++j) acc += s[j] * v[((size_t)g * cap + j) * hd + e];
                out[((size_t)r * H + h) * hd + e] = acc / l;
            }
        }
    return out;
}

struct Cache {
    int n_kv, cap, hd;
    std::vector<bf16_t> k, v;  // positions >= filled hold NaN (never written)
};

static Cache make_cache(Rng& r, int n_kv, int cap, int hd, int filled) {
    Cache c{n_kv, cap, hd, std::vector<bf16_t>((size_t)n_kv * cap * hd, 0x7fc0),
            std::vector<bf16_t>((size_t)n_kv * cap * hd, 0x7fc0)};
    for (int g = 0; g < n_kv; ++g)
        for (int p = 0; p < filled; ++p)
            for (int e = 0; e < hd; ++e) {
                c.k[((size_t)g * cap + p) * hd + e] = f2bf(r.uniform());
                c.v[((size_t)g * cap + p) * hd + e] = f2bf(r.uniform());
            }
    return c;
}

static void test_prefill() {
    Rng r(1);
    struct Case { int hd, rows, start, H, n_kv; };
    // Tails of the 64-row tile, chunks starting mid-tile, GQA, both head sizes.
    const Case cases[] = {{64, 100, 37, 4, 2}, {64, 64, 0, 3, 3}, {128, 9, 0, 2, 1},
                          {128, 130, 5, 1, 1}, {64, 70, 100, 3, 1}};
    for (const Case& c : cases) {
        const int cap = c.start + c.rows + 3;
        Cache kv = make_cache(r, c.n_kv, cap, c.hd, c.start + c.rows);
        const size_t qn = (size_t)c.rows * c.H * c.hd;
        std::vector<float> q = rand_vec(r, qn, 1.0f);
        const float scale = 1.4426950408889634f / std::sqrt((float)c.hd);
        const dim3 grid{(unsigned)((c.rows + 63) / 64), (unsigned)c.H, 1};
        // q rounded to bf16 as the kernel does; the reference gets the same q.
        std::vector<float> qr = widen(to_bf16(q));
        auto ref = attention_ref(qr, widen(kv.k), widen(kv.v), c.rows, c.start, c.H, c.n_kv, c.hd, cap);
        std::vector<bf16_t> out(qn, 0x7fc0);
        if (c.hd == 64)
            emu_launch(grid, 128, 0, [&] {
                attn_prefill_hd64_f32_bf16(q.data(), kv.k.data(), kv.v.data(), out.data(), c.rows, c.start, c.H,
                                           c.n_kv, cap, scale);
            });
        else
            emu_launch(grid, 128, 0, [&] {
                attn_prefill_hd128_f32_bf16(q.data(), kv.k.data(), kv.v.data(), out.data(), c.rows, c.start, c.H,
                                            c.n_kv, cap, scale);
            });
        char name[160];
        std::snprintf(name, sizeof name, "attn_prefill hd %d rows %d at %d heads %d/%d (f32 q)", c.hd, c.rows,
                      c.start, c.H, c.n_kv);
        check(name, widen(out), ref, 1e-2);
        // bf16 queries.
        std::vector<bf16_t> qb = to_bf16(q);
        std::vector<bf16_t> out2(qn, 0x7fc0);
        if (c.hd == 64)
            emu_launch(grid, 128, 0, [&] {
                attn_prefill_hd64_bf16_bf16(qb.data(), kv.k.data(), kv.v.data(), out2.data(), c.rows, c.start,
                                            c.H, c.n_kv, cap, scale);
            });
        else
            emu_launch(grid, 128, 0, [&] {
                attn_prefill_hd128_bf16_bf16(qb.data(), kv.k.data(), kv.v.data(), out2.data(), c.rows, c.start,
                                             c.H, c.n_kv, cap, scale);
            });
        std::snprintf(name, sizeof name, "attn_prefill hd %d rows %d at %d heads %d/%d (bf16 q)", c.hd, c.rows,
                      c.start, c.H, c.n_kv);
        check(name, widen(out2), ref, 1e-2);
    }
}

template <class K>
static void run_decode(K kernel, int hd, int rows, int start, int H, int n_kv, int chunk, Rng& r) {
    const int cap = start + rows + 5;
    Cache kv = make_cache(r, n_kv, cap, hd, start + rows);
    const size_t qn = (size_t)rows * H * hd;
    std::vector<float> q = rand_vec(r, qn, 1.0f);
    const int group = H / n_kv;
    const int kv_len = start + rows;
    const int splits = (kv_len + chunk - 1) / chunk;
    const size_t smem = 4 * ((size_t)group * hd + (size_t)group * chunk + 2 * group);
    std::vector<float> part_o((size_t)rows * H * splits * hd, NAN), part_ml((size_t)rows * H * splits * 2, NAN);
    std::vector<bf16_t> out(qn, 0x7fc0);
    const float scale = 1.4426950408889634f / std::sqrt((float)hd);
    emu_launch(dim3{(unsigned)n_kv, (unsigned)splits, (unsigned)rows}, 128, smem, [&] {
        kernel(q.data(), kv.k.data(), kv.v.data(), out.data(), part_o.data(), part_ml.data(), start, H, n_kv, cap,
               chunk, splits, scale);
    });
    if (splits > 1)
        emu_launch(dim3{(unsigned)(rows * H), 1, 1}, hd, 0,
                   [&] { attn_merge_bf16(part_o.data(), part_ml.data(), out.data(), splits, hd); });
    auto ref = attention_ref(q, widen(kv.k), widen(kv.v), rows, start, H, n_kv, hd, cap);
    char name[160];
    std::snprintf(name, sizeof name, "attn_decode hd %d rows %d at %d heads %d/%d, %d splits of %d", hd, rows,
                  start, H, n_kv, splits, chunk);
    check(name, widen(out), ref, 5e-3);  // only the output is rounded to bf16
}

static void test_decode() {
    Rng r(2);
    for (int chunk : {16, 64}) {
        run_decode(attn_decode_hd64_f32, 64, 1, 300, 9, 3, chunk, r);
        run_decode(attn_decode_hd64_f32, 64, 5, 0, 16, 1, chunk, r);
        run_decode(attn_decode_hd128_f32, 128, 1, 77, 4, 4, chunk, r);
        run_decode(attn_decode_hd128_f32, 128, 3, 130, 8, 2, chunk, r);
        run_decode(attn_decode_hd32_f32, 32, 2, 40, 6, 2, chunk, r);
        run_decode(attn_decode_hd256_f32, 256, 1, 50, 4, 1, chunk, r);
    }
}

static void test_rmsnorm_rope_swiglu() {
    Rng r(3);
    const int rows = 3, dim = 100;
    auto x = rand_vec(r, rows * dim, 2.0f), h = rand_vec(r, rows * dim, 1.0f), w = rand_vec(r, dim, 0.3f);
    for (auto& v : w) v += 1.0f;
    const float eps = 1e-5f;
    std::vector<double> ref(rows * dim), sum(rows * dim);
    for (int i = 0; i < rows; ++i) {
        double ss = 0;
        for (int j = 0; j < dim; ++j) {
            sum[i * dim + j] = (double)x[i * dim + j] + h[i * dim + j];
            ss += sum[i * dim + j] * sum[i * dim + j];
        }
        const double inv = 1.0 / std::sqrt(ss / dim + eps);
        for (int j = 0; j < dim; ++j) ref[i * dim + j] = w[j] * sum[i * dim + j] * inv;
    }
    std::vector<float> xs = x;
    std::vector<bf16_t> out(rows * dim, 0x7fc0);
    emu_launch(dim3{rows, 1, 1}, 256, 0,
               [&] { add_rmsnorm_f32_bf16(xs.data(), h.data(), w.data(), out.data(), dim, eps); });
    check("add_rmsnorm_f32_bf16 output", widen(out), ref, 5e-3);
    check("add_rmsnorm_f32_bf16 residual", xs, sum, 1e-7);
    std::vector<bf16_t> out2(rows * dim, 0x7fc0);
    emu_launch(dim3{rows, 1, 1}, 256, 0, [&] { rmsnorm_f32_bf16(xs.data(), w.data(), out2.data(), dim, eps); });
    check("rmsnorm_f32_bf16", widen(out2), ref, 5e-3);

    // RoPE (rotate half) with a table of (cos, sin).
    const int H = 3, hd = 8, half = 4;
    auto q = rand_vec(r, rows * H * hd, 1.0f);
    std::vector<float> table(rows * half * 2);
    for (int i = 0; i < rows; ++i)
        for (int k = 0; k < half; ++k) {
            const double a = (10 + i) * std::pow(10000.0, -2.0 * k / hd);
            table[(i * half + k) * 2] = (float)std::cos(a);
            table[(i * half + k) * 2 + 1] = (float)std::sin(a);
        }
    std::vector<double> rref(q.size());
    for (int i = 0; i < rows; ++i)
        for (int hh = 0; hh < H; ++hh)
            for (int k = 0; k < half; ++k) {
                const size_t b = ((size_t)i * H + hh) * hd;
                const double c = table[(i * half + k) * 2], s = table[(i * half + k) * 2 + 1];
                rref[b + k] = q[b + k] * c - q[b + k + half] * s;
                rref[b + k + half] = q[b + k + half] * c + q[b + k] * s;
            }
    emu_launch(dim3{rows, 1, 1}, 128, 0, [&] { rope_f32(q.data(), table.data(), H, hd); });
    check("rope_f32", q, rref, 1e-6);

    const long long n = 1000;
    auto g = rand_vec(r, n, 4.0f), u = rand_vec(r, n, 2.0f);
    std::vector<bf16_t> so(n, 0x7fc0);
    std::vector<double> sref(n);
    for (long long i = 0; i < n; ++i) sref[i] = g[i] / (1.0 + std::exp(-(double)g[i])) * u[i];
    emu_launch(dim3{2, 1, 1}, 256, 0, [&] { silu_mul_f32_bf16(g.data(), u.data(), so.data(), n); });
    check("silu_mul_f32_bf16", widen(so), sref, 5e-3);
}

static void test_softmax() {
    Rng r(4);
    const int rows = 3, vocab = 5000;
    auto x = rand_vec(r, rows * vocab, 8.0f);
    x[1 * vocab + 10] = 50.0f;
    x[1 * vocab + 20] = 50.0f;  // tie: the first index wins
    x[2 * vocab + 3] = NAN;     // NaN never wins
    x[2 * vocab + 4] = 60.0f;
    std::vector<float> ls(rows * vocab, NAN);
    emu_launch(dim3{rows, 1, 1}, 1024, 0, [&] { log_softmax_f32(x.data(), ls.data(), vocab); });
    for (int i = 0; i < 2; ++i) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j < vocab; ++j) m = std::max(m, (double)x[i * vocab + j]);
        for (int j = 0; j < vocab; ++j) s += std::exp(x[i * vocab + j] - m);
        std::vector<double> ref(vocab);
        for (int j = 0; j < vocab; ++j) ref[j] = x[i * vocab + j] - m - std::log(s);
        check("log_softmax_f32 row " + std::to_string(i),
              std::vector<float>(ls.begin() + i * vocab, ls.begin() + (i + 1) * vocab), ref, 1e-6);
        unsigned t = 1234;
        float lp = NAN;
        emu_launch(dim3{1, 1, 1}, 1024, 0, [&] { token_logprob_f32(x.data() + i * vocab, &t, &lp, vocab); });
        check("token_logprob_f32 row " + std::to_string(i), {lp}, {ref[1234]}, 1e-6);
    }
    std::vector<int> idx(rows, -1);
    std::vector<float> val(rows, 0);
    emu_launch(dim3{rows, 1, 1}, 1024, 0, [&] { argmax_f32(x.data(), vocab, idx.data(), val.data()); });
    int best0 = 0;
    for (int j = 0; j < vocab; ++j)
        if (x[j] > x[best0]) best0 = j;
    check_true("argmax_f32 row 0", idx[0] == best0 && val[0] == x[best0]);
    check_true("argmax_f32 tie takes the first index", idx[1] == 10 && val[1] == 50.0f);
    check_true("argmax_f32 skips NaN", idx[2] == 4 && val[2] == 60.0f);
}

static void test_lora() {
    Rng r(5);
    const int in_f = 96, out_f = 80, rows = 7;
    const int ranks[2] = {16, 4};
    std::vector<bf16_t> A[2], B[2];
    for (int a = 0; a < 2; ++a) {
        A[a] = to_bf16(rand_vec(r, (size_t)ranks[a] * in_f, 0.3f));
        B[a] = to_bf16(rand_vec(r, (size_t)out_f * ranks[a], 0.5f));
    }
    const float scale[2] = {2.0f, 0.5f};
    // Merge into W.
    std::vector<bf16_t> W = to_bf16(rand_vec(r, (size_t)out_f * in_f, 0.2f));
    std::vector<double> wref(W.size());
    for (int o = 0; o < out_f; ++o)
        for (int i = 0; i < in_f; ++i) {
            double d = 0;
            for (int k = 0; k < ranks[0]; ++k) d += (double)bf2f(B[0][o * ranks[0] + k]) * bf2f(A[0][k * in_f + i]);
            wref[o * in_f + i] = bf2f(W[o * in_f + i]) + scale[0] * d;
        }
    std::vector<bf16_t> Wm = W;
    emu_launch(dim3{(unsigned)((in_f + 255) / 256), (unsigned)((out_f + 7) / 8), 1}, 256, 0, [&] {
        lora_merge_bf16(Wm.data(), A[0].data(), B[0].data(), out_f, in_f, ranks[0], scale[0]);
    });
    check("lora_merge_bf16", widen(Wm), wref, 5e-3);

    // SGMV over several input widths: one 512-column chunk (16-byte loads), three
    // chunks with 16-byte loads, three chunks with scalar loads (in_f not a multiple of 8);
    // 20 rows = two row tiles; segments: adapter 0 (rank 16: 16-byte loads of B),
    // none, adapter 1 (rank 4: scalar loads of B).
    for (const int in_w : {96, 1040, 1100}) {
        const int rows_s = 20;
        std::vector<bf16_t> As[2], Bs[2];
        for (int a = 0; a < 2; ++a) {
            As[a] = to_bf16(rand_vec(r, (size_t)ranks[a] * in_w, 0.3f));
            Bs[a] = to_bf16(rand_vec(r, (size_t)out_f * ranks[a], 0.5f));
        }
        std::vector<bf16_t> x = to_bf16(rand_vec(r, (size_t)rows_s * in_w, 1.0f));
        std::vector<float> y0 = rand_vec(r, (size_t)rows_s * out_f, 1.0f);
        LoraBatch p{};
        p.n_segs = 3;
        int starts[4] = {0, 9, 11, rows_s};
        for (int s = 0; s < 4; ++s) p.start[s] = starts[s];
        p.a[0] = (unsigned long long)As[0].data();
        p.b[0] = (unsigned long long)Bs[0].data();
        p.rank[0] = ranks[0];
        p.scale[0] = scale[0];
        p.a[2] = (unsigned long long)As[1].data();
        p.b[2] = (unsigned long long)Bs[1].data();
        p.rank[2] = ranks[1];
        p.scale[2] = scale[1];
        const int max_rank = 16;
        const unsigned splits = (unsigned)((in_w + 511) / 512), tiles = (unsigned)((rows_s + 15) / 16);
        std::vector<float> t((size_t)splits * rows_s * max_rank, NAN), y = y0;
        emu_launch(dim3{splits, tiles, 1}, 256, 0,
                   [&] { lora_shrink_bf16(x.data(), in_w, p, 0, t.data(), in_w, max_rank, rows_s); });
        emu_launch(dim3{(unsigned)((out_f + 255) / 256), tiles, 1}, 256, 0, [&] {
            lora_expand_f32(t.data(), (int)splits, rows_s, p, 0, y.data(), out_f, out_f, max_rank);
        });
        std::vector<double> yref(y.size());
        for (int row = 0; row < rows_s; ++row) {
            const int a = row < 9 ? 0 : row < 11 ? -1 : 1;
            for (int o = 0; o < out_f; ++o) {
                double acc = y0[row * out_f + o];
                if (a >= 0) {
                    double d = 0;
                    for (int k = 0; k < ranks[a]; ++k) {
                        double tk = 0;
                        for (int i = 0; i < in_w; ++i)
                            tk += (double)bf2f(x[row * in_w + i]) * bf2f(As[a][k * in_w + i]);
                        d += tk * bf2f(Bs[a][o * ranks[a] + k]);
                    }
                    acc += scale[a] * d;
                }
                yref[row * out_f + o] = acc;
            }
        }
        char name[160];
        std::snprintf(name, sizeof name,
                      "lora_shrink_bf16 + lora_expand_f32 (in %d: %u chunks, 3 segments, one without adapter)",
                      in_w, splits);
        check(name, y, yref, 1e-5);
        // A call over rows 11..20 only (row0 = 11), as a second group of segments would be.
        LoraBatch p2{};
        p2.n_segs = 1;
        p2.start[0] = 11;
        p2.start[1] = rows_s;
        p2.a[0] = p.a[2];
        p2.b[0] = p.b[2];
        p2.rank[0] = ranks[1];
        p2.scale[0] = scale[1];
        std::vector<float> y2 = y0;
        const unsigned tiles2 = (unsigned)((rows_s - 11 + 15) / 16);
        emu_launch(dim3{splits, tiles2, 1}, 256, 0,
                   [&] { lora_shrink_bf16(x.data(), in_w, p2, 11, t.data(), in_w, max_rank, rows_s); });
        emu_launch(dim3{(unsigned)((out_f + 255) / 256), tiles2, 1}, 256, 0, [&] {
            lora_expand_f32(t.data(), (int)splits, rows_s, p2, 11, y2.data(), out_f, out_f, max_rank);
        });
        std::snprintf(name, sizeof name, "lora SGMV with row0 = 11 (in %d)", in_w);
        check(name, std::vector<float>(y2.begin() + 11 * out_f, y2.end()),
              std::vector<double>(yref.begin() + 11 * out_f, yref.end()), 1e-5);
        check_true("lora SGMV leaves rows outside the call alone",
                   std::equal(y2.begin(), y2.begin() + 11 * out_f, y0.begin()));
    }
}

static void test_elementwise() {
    Rng r(6);
    const int vocab = 50, dim = 24;
    auto table = to_bf16(rand_vec(r, vocab * dim, 1.0f));
    unsigned tokens[4] = {0, 49, 7, 7};
    std::vector<float> out(4 * dim, NAN);
    emu_launch(dim3{4, 1, 1}, 256, 0, [&] { embed_bf16_f32(table.data(), tokens, out.data(), dim); });
    std::vector<double> ref(4 * dim);
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < dim; ++j) ref[i * dim + j] = bf2f(table[tokens[i] * dim + j]);
    check("embed_bf16_f32", out, ref, 0);

    const int rows = 3, n_kv = 2, hd = 16, cap = 10, start = 4;
    auto k = rand_vec(r, rows * n_kv * hd, 1.0f), v = rand_vec(r, rows * n_kv * hd, 1.0f);
    std::vector<bf16_t> kc(n_kv * cap * hd, 0x7fc0), vc(n_kv * cap * hd, 0x7fc0);
    emu_launch(dim3{rows, n_kv, 1}, 32, 0,
               [&] { kv_store_f32_bf16(k.data(), v.data(), kc.data(), vc.data(), start, n_kv, hd, cap); });
    bool ok = true;
    for (int g = 0; g < n_kv; ++g)
        for (int p = 0; p < cap; ++p)
            for (int e = 0; e < hd; ++e) {
                const size_t c = ((size_t)g * cap + p) * hd + e;
                if (p >= start && p < start + rows) {
                    const size_t s = ((size_t)(p - start) * n_kv + g) * hd + e;
                    ok &= kc[c] == f2bf(k[s]) && vc[c] == f2bf(v[s]);
                } else {
                    ok &= kc[c] == 0x7fc0 && vc[c] == 0x7fc0;
                }
            }
    check_true("kv_store_f32_bf16 writes exactly its positions", ok);

    std::vector<float> u(10000, NAN);
    emu_launch(dim3{4, 1, 1}, 256, 0, [&] { fill_uniform_f32(u.data(), (long long)u.size(), 7, 0.3f, 1.0f); });
    double mn = 10, mx = -10, mean = 0;
    for (float f : u) {
        mn = std::min(mn, (double)f);
        mx = std::max(mx, (double)f);
        mean += f / u.size();
    }
    check_true("fill_uniform_f32 in [0.7, 1.3) with mean 1", mn >= 0.7 && mx < 1.3 && std::abs(mean - 1.0) < 0.01);
}

int main() {
    test_elementwise();
    test_rmsnorm_rope_swiglu();
    test_softmax();
    test_lora();
    test_decode();
    test_prefill();
    std::printf("%d failure(s)\n", g_failures);
    return g_failures ? 1 : 0;
}
