//! Vector kernels for the CPU backend: dot products, the matrix-vector products of
//! decoding, softmax and SiLU, with AVX-512 and AVX2+FMA versions chosen at run
//! time and a portable fallback.
//!
//! Everything here works on plain slices; callers guarantee the lengths named in
//! each function's doc comment (checked with `debug_assert!`). The exponential is
//! a Cephes-style range reduction (`x = n ln2 + r`, `|r| <= ln2/2`) with a degree-6
//! polynomial, accurate to about 2 ulp over the range softmax and SiLU use.

use half::bf16;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Which instruction set the kernels run with on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The best instruction set this CPU supports for the f32 vector kernels (detected once;
/// `PALR_CPU_ISA=avx2|portable` caps it; `amx`, `avx512bf16` and `avx512` leave it at
/// AVX-512 and cap the bf16 products instead, see [`super::bf16mm::best`]).
pub fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = std::env::var("PALR_CPU_ISA").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            if cap != "avx2"
                && cap != "portable"
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512;
            }
            if cap != "portable"
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        let _ = cap;
        Isa::Portable
    })
}

/// Weight rows the matrix-vector kernel reads together.
pub const ROWS: usize = 4;

/// `out[r] = dot(w[r], x)` for four weight rows of `x.len()` elements each.
#[inline]
pub fn dot4_f32(w: [&[f32]; ROWS], x: &[f32]) -> [f32; ROWS] {
    debug_assert!(w.iter().all(|r| r.len() == x.len()));
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was detected at run time.
        Isa::Avx512 => unsafe { avx512::dot4_f32(w, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::dot4_f32(w, x) },
        _ => portable::dot4(w, x, |v: &f32| *v),
    }
}

/// Like [`dot4_f32`] with `bf16` weights widened on the fly.
#[inline]
pub fn dot4_bf16(w: [&[bf16]; ROWS], x: &[f32]) -> [f32; ROWS] {
    debug_assert!(w.iter().all(|r| r.len() == x.len()));
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was detected at run time.
        Isa::Avx512 => unsafe { avx512::dot4_bf16(w, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::dot4_bf16(w, x) },
        _ => portable::dot4(w, x, |v: &bf16| v.to_f32()),
    }
}

/// `dot(a, b)` (`a.len() == b.len()`).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was detected at run time.
        Isa::Avx512 => unsafe { avx512::dot(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::dot(a, b) },
        _ => portable::dot(a, b),
    }
}

/// `y += a * x` (`y.len() == x.len()`).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was detected at run time.
        Isa::Avx512 => unsafe { avx512::axpy(y, a, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::axpy(y, a, x) },
        _ => y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x),
    }
}

/// An element type of stored weights: f32, or bf16 widened on the fly.
pub trait WeightElem: Copy + Sync {
    /// Whether the values are bf16 (the SIMD kernels' load differs).
    const BF16: bool;
    fn widen(&self) -> f32;
}

impl WeightElem for f32 {
    const BF16: bool = false;
    fn widen(&self) -> f32 {
        *self
    }
}

impl WeightElem for bf16 {
    const BF16: bool = true;
    fn widen(&self) -> f32 {
        self.to_f32()
    }
}

/// `acc[r·n + j] += Σ_{kk in rows} x[r·k + kk] · w[kk·n + j]` for `r < m` (at most
/// [`ROWS`]) and `j < n`: part of the matrix-vector product of a weight stored transposed,
/// `(k, n)` row-major, over a range of its rows — each row is read once, contiguously,
/// and shared by the `m` input rows; the accumulators stay in L1.
#[inline]
pub fn gemv_t<T: WeightElem>(
    acc: &mut [f32],
    x: &[f32],
    m: usize,
    k: usize,
    rows: std::ops::Range<usize>,
    w: &[T],
    n: usize,
) {
    debug_assert!((1..=ROWS).contains(&m) && acc.len() >= m * n && x.len() >= m * k);
    debug_assert!(rows.end <= k && w.len() >= k * n);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was detected at run time; extents checked above.
        Isa::Avx512 => unsafe { avx512::gemv_t(acc, x, m, k, rows, w.as_ptr().cast(), n, T::BF16) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::gemv_t(acc, x, m, k, rows, w.as_ptr().cast(), n, T::BF16) },
        _ => portable::gemv_t(acc, x, m, k, rows, w, n),
    }
}

/// `x[i] = exp(x[i] - max)` and returns the sum of the results.
#[inline]
pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was detected at run time.
        Isa::Avx512 => unsafe { avx512::exp_sub_sum(x, max) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::exp_sub_sum(x, max) },
        _ => {
            let mut s = 0.0;
            for v in x.iter_mut() {
                *v = (*v - max).exp();
                s += *v;
            }
            s
        }
    }
}

/// `gate[i] = silu(gate[i]) * up[i]` (`gate.len() == up.len()`).
#[inline]
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was detected at run time.
        Isa::Avx512 => unsafe { avx512::silu_mul(gate, up) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::silu_mul(gate, up) },
        _ => gate
            .iter_mut()
            .zip(up)
            .for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u),
    }
}

/// Largest element (`-inf` for an empty slice).
#[inline]
pub fn max(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `x *= a`.
#[inline]
pub fn scale(x: &mut [f32], a: f32) {
    x.iter_mut().for_each(|v| *v *= a);
}

/// Widens `src` into `dst` (`dst.len() == src.len()`).
#[inline]
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    // A bf16 is the high half of an f32: the compiler vectorises this shift.
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

/// Constants of the exponential: clamp range, ln 2 split in two for an exact
/// reduction, and the minimax polynomial of e^r on |r| <= ln2/2 (Cephes `expf`).
#[allow(clippy::excessive_precision, dead_code)]
mod exp_poly {
    pub const EXP_HI: f32 = 88.3762626647949;
    pub const EXP_LO: f32 = -87.33654;
    pub const LN2_HI: f32 = 0.693359375;
    pub const LN2_LO: f32 = -2.12194440e-4;
    pub const P0: f32 = 1.9875691500e-4;
    pub const P1: f32 = 1.3981999507e-3;
    pub const P2: f32 = 8.3334519073e-3;
    pub const P3: f32 = 4.1665795894e-2;
    pub const P4: f32 = 1.6666665459e-1;
    pub const P5: f32 = 5.0000001201e-1;
}

mod portable {
    use super::ROWS;

    pub fn gemv_t<T: super::WeightElem>(
        acc: &mut [f32],
        x: &[f32],
        m: usize,
        k: usize,
        rows: std::ops::Range<usize>,
        w: &[T],
        n: usize,
    ) {
        for kk in rows {
            let row = &w[kk * n..(kk + 1) * n];
            for r in 0..m {
                let a = x[r * k + kk];
                for (o, v) in acc[r * n..(r + 1) * n].iter_mut().zip(row) {
                    *o += a * v.widen();
                }
            }
        }
    }

    pub fn dot4<T>(w: [&[T]; ROWS], x: &[f32], widen: impl Fn(&T) -> f32) -> [f32; ROWS] {
        let k = x.len();
        let mut out = [0.0; ROWS];
        for (r, o) in out.iter_mut().enumerate() {
            let row = w[r];
            let mut acc = [0.0f32; 8];
            let chunks = k / 8;
            for c in 0..chunks {
                for j in 0..8 {
                    acc[j] += widen(&row[c * 8 + j]) * x[c * 8 + j];
                }
            }
            let mut s: f32 = acc.iter().sum();
            for i in chunks * 8..k {
                s += widen(&row[i]) * x[i];
            }
            *o = s;
        }
        out
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot4_single(a, b)
    }

    fn dot4_single(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let chunks = a.len() / 8;
        for c in 0..chunks {
            for j in 0..8 {
                acc[j] += a[c * 8 + j] * b[c * 8 + j];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for i in chunks * 8..a.len() {
            s += a[i] * b[i];
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_bf16(p: *const bf16) -> __m512 {
        // SAFETY: caller guarantees 16 readable bf16 at p.
        unsafe {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_bf16_mask(p: *const bf16, m: __mmask16) -> __m512 {
        // SAFETY: only lanes in `m` are read.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(m, p as *const i16);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot4_f32(w: [&[f32]; ROWS], x: &[f32]) -> [f32; ROWS] {
        let k = x.len();
        let (w0, w1, w2, w3) = (w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr());
        let xp = x.as_ptr();
        let mut a = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load is within 0..k of rows of length k.
        unsafe {
            while i + 16 <= k {
                let xv = _mm512_loadu_ps(xp.add(i));
                a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(w0.add(i)), xv, a[0]);
                a[1] = _mm512_fmadd_ps(_mm512_loadu_ps(w1.add(i)), xv, a[1]);
                a[2] = _mm512_fmadd_ps(_mm512_loadu_ps(w2.add(i)), xv, a[2]);
                a[3] = _mm512_fmadd_ps(_mm512_loadu_ps(w3.add(i)), xv, a[3]);
                i += 16;
            }
            if i < k {
                let m: __mmask16 = (1u32 << (k - i)) as u16 - 1;
                let xv = _mm512_maskz_loadu_ps(m, xp.add(i));
                a[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0.add(i)), xv, a[0]);
                a[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w1.add(i)), xv, a[1]);
                a[2] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w2.add(i)), xv, a[2]);
                a[3] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w3.add(i)), xv, a[3]);
            }
        }
        [
            _mm512_reduce_add_ps(a[0]),
            _mm512_reduce_add_ps(a[1]),
            _mm512_reduce_add_ps(a[2]),
            _mm512_reduce_add_ps(a[3]),
        ]
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot4_bf16(w: [&[bf16]; ROWS], x: &[f32]) -> [f32; ROWS] {
        let k = x.len();
        let (w0, w1, w2, w3) = (w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr());
        let xp = x.as_ptr();
        let mut a = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load is within 0..k of rows of length k.
        unsafe {
            while i + 16 <= k {
                let xv = _mm512_loadu_ps(xp.add(i));
                a[0] = _mm512_fmadd_ps(load_bf16(w0.add(i)), xv, a[0]);
                a[1] = _mm512_fmadd_ps(load_bf16(w1.add(i)), xv, a[1]);
                a[2] = _mm512_fmadd_ps(load_bf16(w2.add(i)), xv, a[2]);
                a[3] = _mm512_fmadd_ps(load_bf16(w3.add(i)), xv, a[3]);
                i += 16;
            }
            if i < k {
                let m: __mmask16 = (1u32 << (k - i)) as u16 - 1;
                let xv = _mm512_maskz_loadu_ps(m, xp.add(i));
                a[0] = _mm512_fmadd_ps(load_bf16_mask(w0.add(i), m), xv, a[0]);
                a[1] = _mm512_fmadd_ps(load_bf16_mask(w1.add(i), m), xv, a[1]);
                a[2] = _mm512_fmadd_ps(load_bf16_mask(w2.add(i), m), xv, a[2]);
                a[3] = _mm512_fmadd_ps(load_bf16_mask(w3.add(i), m), xv, a[3]);
            }
        }
        [
            _mm512_reduce_add_ps(a[0]),
            _mm512_reduce_add_ps(a[1]),
            _mm512_reduce_add_ps(a[2]),
            _mm512_reduce_add_ps(a[3]),
        ]
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let k = a.len();
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm512_setzero_ps();
        let mut s1 = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: loads stay within 0..k.
        unsafe {
            while i + 32 <= k {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(i)), _mm512_loadu_ps(bp.add(i)), s0);
                s1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(ap.add(i + 16)),
                    _mm512_loadu_ps(bp.add(i + 16)),
                    s1,
                );
                i += 32;
            }
            while i < k {
                let n = (k - i).min(16);
                let m: __mmask16 = ((1u32 << n) - 1) as u16;
                s0 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(m, ap.add(i)),
                    _mm512_maskz_loadu_ps(m, bp.add(i)),
                    s0,
                );
                i += n;
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    /// See [`super::gemv_t`]; `w` points at f32 or (with `bf16`) bf16 values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn gemv_t(
        acc: &mut [f32],
        x: &[f32],
        m: usize,
        k: usize,
        rows: std::ops::Range<usize>,
        w: *const u8,
        n: usize,
        bf16: bool,
    ) {
        // SAFETY (all four): forwarded from the caller's extents.
        unsafe {
            match m {
                1 => gemv_t_m::<1>(acc, x, k, rows, w, n, bf16),
                2 => gemv_t_m::<2>(acc, x, k, rows, w, n, bf16),
                3 => gemv_t_m::<3>(acc, x, k, rows, w, n, bf16),
                _ => gemv_t_m::<4>(acc, x, k, rows, w, n, bf16),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn gemv_t_m<const M: usize>(
        acc: &mut [f32],
        x: &[f32],
        k: usize,
        rows: std::ops::Range<usize>,
        w: *const u8,
        n: usize,
        bf16: bool,
    ) {
        let ap = acc.as_mut_ptr();
        // SAFETY: row kk < k of w holds n values at kk·n; acc holds M·n floats, x M·k;
        // masked lanes are neither read nor written.
        unsafe {
            for kk in rows {
                let xs: [__m512; M] =
                    std::array::from_fn(|r| _mm512_set1_ps(*x.get_unchecked(r * k + kk)));
                let mut j = 0;
                while j < n {
                    let cnt = (n - j).min(16);
                    let mask: __mmask16 = ((1u32 << cnt) - 1) as u16;
                    let off = kk * n + j;
                    let wv = if bf16 {
                        load_bf16_mask((w as *const bf16).add(off), mask)
                    } else {
                        _mm512_maskz_loadu_ps(mask, (w as *const f32).add(off))
                    };
                    for (r, xv) in xs.iter().enumerate() {
                        let p = ap.add(r * n + j);
                        _mm512_mask_storeu_ps(
                            p,
                            mask,
                            _mm512_fmadd_ps(*xv, wv, _mm512_maskz_loadu_ps(mask, p)),
                        );
                    }
                    j += cnt;
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let k = y.len();
        let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm512_set1_ps(a);
        let mut i = 0;
        // SAFETY: loads and stores stay within 0..k.
        unsafe {
            while i < k {
                let n = (k - i).min(16);
                let m: __mmask16 = ((1u32 << n) - 1) as u16;
                let r = _mm512_fmadd_ps(
                    av,
                    _mm512_maskz_loadu_ps(m, xp.add(i)),
                    _mm512_maskz_loadu_ps(m, yp.add(i)),
                );
                _mm512_mask_storeu_ps(yp.add(i), m, r);
                i += n;
            }
        }
    }

    /// e^x for every lane; lanes below -87.3 flush to 0.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(
            _mm512_min_ps(x, _mm512_set1_ps(exp_poly::EXP_HI)),
            _mm512_set1_ps(exp_poly::EXP_LO),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x - n*ln2, in two steps for accuracy.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(exp_poly::LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(exp_poly::LN2_LO), r);
        let mut p = _mm512_set1_ps(exp_poly::P0);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::P1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::P2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::P3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::P4));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly::P5));
        let r2 = _mm512_mul_ps(r, r);
        p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(p, n)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        let k = x.len();
        let p = x.as_mut_ptr();
        let mv = _mm512_set1_ps(max);
        let mut s = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: loads and stores stay within 0..k; masked lanes are neither read nor written.
        unsafe {
            while i < k {
                let n = (k - i).min(16);
                let m: __mmask16 = ((1u32 << n) - 1) as u16;
                let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), mv));
                _mm512_mask_storeu_ps(p.add(i), m, e);
                s = _mm512_mask_add_ps(s, m, s, e);
                i += n;
            }
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        let k = g.len();
        let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        // SAFETY: loads and stores stay within 0..k.
        unsafe {
            while i < k {
                let n = (k - i).min(16);
                let m: __mmask16 = ((1u32 << n) - 1) as u16;
                let gv = _mm512_maskz_loadu_ps(m, gp.add(i));
                let sig = _mm512_div_ps(
                    one,
                    _mm512_add_ps(one, exp(_mm512_sub_ps(_mm512_setzero_ps(), gv))),
                );
                let r = _mm512_mul_ps(_mm512_mul_ps(gv, sig), _mm512_maskz_loadu_ps(m, up.add(i)));
                _mm512_mask_storeu_ps(gp.add(i), m, r);
                i += n;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16(p: *const bf16) -> __m256 {
        // SAFETY: caller guarantees 8 readable bf16 at p.
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }

    /// See [`super::gemv_t`]: 8 columns per step, the tail of a row in scalar code.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemv_t(
        acc: &mut [f32],
        x: &[f32],
        m: usize,
        k: usize,
        rows: std::ops::Range<usize>,
        w: *const u8,
        n: usize,
        bf16: bool,
    ) {
        let ap = acc.as_mut_ptr();
        let main = n / 8 * 8;
        // SAFETY: row kk < k of w holds n values at kk·n; acc holds m·n floats, x m·k;
        // vector loads cover columns 0..main, the scalar tail main..n.
        unsafe {
            for kk in rows {
                let mut xs = [_mm256_setzero_ps(); ROWS];
                for (r, xv) in xs.iter_mut().enumerate().take(m) {
                    *xv = _mm256_set1_ps(*x.get_unchecked(r * k + kk));
                }
                for j in (0..main).step_by(8) {
                    let off = kk * n + j;
                    let wv = if bf16 {
                        load_bf16((w as *const bf16).add(off))
                    } else {
                        _mm256_loadu_ps((w as *const f32).add(off))
                    };
                    for (r, xv) in xs.iter().enumerate().take(m) {
                        let p = ap.add(r * n + j);
                        _mm256_storeu_ps(p, _mm256_fmadd_ps(*xv, wv, _mm256_loadu_ps(p)));
                    }
                }
                for j in main..n {
                    let off = kk * n + j;
                    let v = if bf16 {
                        (*(w as *const bf16).add(off)).to_f32()
                    } else {
                        *(w as *const f32).add(off)
                    };
                    for r in 0..m {
                        *ap.add(r * n + j) += *x.get_unchecked(r * k + kk) * v;
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_f32(w: [&[f32]; ROWS], x: &[f32]) -> [f32; ROWS] {
        let k = x.len();
        let main = k / 8 * 8;
        let mut a = [_mm256_setzero_ps(); 4];
        // SAFETY: loads stay within 0..main of rows of length k.
        unsafe {
            for i in (0..main).step_by(8) {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                for (r, acc) in a.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(w[r].as_ptr().add(i)), xv, *acc);
                }
            }
        }
        let mut out = [0.0; ROWS];
        for r in 0..ROWS {
            let mut s = hsum(a[r]);
            for i in main..k {
                s += w[r][i] * x[i];
            }
            out[r] = s;
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_bf16(w: [&[bf16]; ROWS], x: &[f32]) -> [f32; ROWS] {
        let k = x.len();
        let main = k / 8 * 8;
        let mut a = [_mm256_setzero_ps(); 4];
        // SAFETY: loads stay within 0..main of rows of length k.
        unsafe {
            for i in (0..main).step_by(8) {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                for (r, acc) in a.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(load_bf16(w[r].as_ptr().add(i)), xv, *acc);
                }
            }
        }
        let mut out = [0.0; ROWS];
        for r in 0..ROWS {
            let mut s = hsum(a[r]);
            for i in main..k {
                s += w[r][i].to_f32() * x[i];
            }
            out[r] = s;
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let k = a.len();
        let main = k / 8 * 8;
        let mut s = _mm256_setzero_ps();
        // SAFETY: loads stay within 0..main.
        unsafe {
            for i in (0..main).step_by(8) {
                s = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    s,
                );
            }
        }
        let mut r = hsum(s);
        for i in main..k {
            r += a[i] * b[i];
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let k = y.len();
        let main = k / 8 * 8;
        let av = _mm256_set1_ps(a);
        // SAFETY: loads and stores stay within 0..main.
        unsafe {
            for i in (0..main).step_by(8) {
                let yp = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    yp,
                    _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
                );
            }
        }
        for i in main..k {
            y[i] += a * x[i];
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(
            _mm256_min_ps(x, _mm256_set1_ps(exp_poly::EXP_HI)),
            _mm256_set1_ps(exp_poly::EXP_LO),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(exp_poly::LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(exp_poly::LN2_LO), r);
        let mut p = _mm256_set1_ps(exp_poly::P0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::P1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::P2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::P3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::P4));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly::P5));
        let r2 = _mm256_mul_ps(r, r);
        p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n: n + 127 into the exponent field (n is within [-126, 128) after the clamp).
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p, _mm256_castsi256_ps(e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        let k = x.len();
        let main = k / 8 * 8;
        let mv = _mm256_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        // SAFETY: loads and stores stay within 0..main.
        unsafe {
            for i in (0..main).step_by(8) {
                let p = x.as_mut_ptr().add(i);
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
                _mm256_storeu_ps(p, e);
                s = _mm256_add_ps(s, e);
            }
        }
        let mut r = hsum(s);
        for v in &mut x[main..] {
            *v = (*v - max).exp();
            r += *v;
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        let k = g.len();
        let main = k / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        // SAFETY: loads and stores stay within 0..main.
        unsafe {
            for i in (0..main).step_by(8) {
                let gp = g.as_mut_ptr().add(i);
                let gv = _mm256_loadu_ps(gp);
                let sig = _mm256_div_ps(
                    one,
                    _mm256_add_ps(one, exp(_mm256_sub_ps(_mm256_setzero_ps(), gv))),
                );
                _mm256_storeu_ps(
                    gp,
                    _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u.as_ptr().add(i))),
                );
            }
        }
        for i in main..k {
            g[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn close(a: f32, b: f64, tol: f64) -> bool {
        ((a as f64) - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn kernels_match_f64_on_odd_lengths() {
        for k in [1usize, 7, 15, 16, 17, 33, 64, 100, 576] {
            let w = data(4 * k, k as u32);
            let x = data(k, 7 + k as u32);
            let wb: Vec<bf16> = w.iter().map(|v| bf16::from_f32(*v)).collect();
            let rows: [&[f32]; 4] = std::array::from_fn(|r| &w[r * k..(r + 1) * k]);
            let rows_b: [&[bf16]; 4] = std::array::from_fn(|r| &wb[r * k..(r + 1) * k]);
            let got = dot4_f32(rows, &x);
            let got_b = dot4_bf16(rows_b, &x);
            for r in 0..4 {
                let want: f64 = (0..k).map(|i| w[r * k + i] as f64 * x[i] as f64).sum();
                let want_b: f64 = (0..k).map(|i| wb[r * k + i].to_f64() * x[i] as f64).sum();
                assert!(
                    close(got[r], want, 1e-5),
                    "dot4_f32 k={k} r={r}: {} vs {want}",
                    got[r]
                );
                assert!(close(got_b[r], want_b, 1e-5), "dot4_bf16 k={k} r={r}");
            }
            let want: f64 = (0..k).map(|i| w[i] as f64 * x[i] as f64).sum();
            assert!(close(dot(&w[..k], &x), want, 1e-5), "dot k={k}");
            let mut y = w[..k].to_vec();
            axpy(&mut y, 0.5, &x);
            for i in 0..k {
                assert!(close(y[i], w[i] as f64 + 0.5 * x[i] as f64, 1e-6));
            }
        }
    }

    #[test]
    fn transposed_gemv_kernels_match_f64_on_every_isa() {
        type Kernel = fn(
            &mut [f32],
            &[f32],
            usize,
            usize,
            std::ops::Range<usize>,
            &[f32],
            &[bf16],
            usize,
            bool,
        );
        let mut kernels: Vec<(&str, Kernel)> =
            vec![("portable", |acc, x, m, k, rows, w, wb, n, b| {
                if b {
                    portable::gemv_t(acc, x, m, k, rows, wb, n)
                } else {
                    portable::gemv_t(acc, x, m, k, rows, w, n)
                }
            })];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kernels.push(("avx2", |acc, x, m, k, rows, w, wb, n, b| {
                    let p: *const u8 = if b {
                        wb.as_ptr().cast()
                    } else {
                        w.as_ptr().cast()
                    };
                    // SAFETY: AVX2 and FMA detected; extents as the test builds them.
                    unsafe { avx2::gemv_t(acc, x, m, k, rows, p, n, b) }
                }));
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                kernels.push(("avx512", |acc, x, m, k, rows, w, wb, n, b| {
                    let p: *const u8 = if b {
                        wb.as_ptr().cast()
                    } else {
                        w.as_ptr().cast()
                    };
                    // SAFETY: AVX-512 detected; extents as the test builds them.
                    unsafe { avx512::gemv_t(acc, x, m, k, rows, p, n, b) }
                }));
            }
        }
        for (name, kernel) in &kernels {
            for &(n, k) in &[(1usize, 5usize), (7, 33), (17, 64), (33, 100), (576, 40)] {
                let w = data(k * n, (n * 7 + k) as u32);
                let wb: Vec<bf16> = w.iter().map(|v| bf16::from_f32(*v)).collect();
                for m in 1..=ROWS {
                    let x = data(m * k, m as u32);
                    // A middle range of the weight's rows, on top of non-zero accumulators.
                    let rows = k / 4..k - k / 5;
                    for b in [false, true] {
                        let start = data(m * n, 5);
                        let mut acc = start.clone();
                        kernel(&mut acc, &x, m, k, rows.clone(), &w, &wb, n, b);
                        for r in 0..m {
                            for j in 0..n {
                                let wv = |kk: usize| {
                                    if b {
                                        wb[kk * n + j].to_f64()
                                    } else {
                                        w[kk * n + j] as f64
                                    }
                                };
                                let want = start[r * n + j] as f64
                                    + rows
                                        .clone()
                                        .map(|kk| x[r * k + kk] as f64 * wv(kk))
                                        .sum::<f64>();
                                assert!(
                                    close(acc[r * n + j], want, 1e-5),
                                    "{name} bf16={b} n={n} k={k} m={m} ({r}, {j}): {} vs {want}",
                                    acc[r * n + j]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn exp_and_silu_are_accurate() {
        // Softmax only ever exponentiates x - max <= 0; SiLU needs the far tails to saturate.
        let mut xs: Vec<f32> = (-2000..=1200).map(|i| i as f32 * 0.05).collect();
        xs.extend([-100.0, -88.0, 0.0, 1e-8]);
        let orig = xs.clone();
        let sum = exp_sub_sum(&mut xs, 10.0);
        let mut want_sum = 0.0f64;
        for (got, x) in xs.iter().zip(&orig) {
            let want = ((*x as f64) - 10.0).exp();
            want_sum += want;
            let ok = close(*got, want, 1e-6) || (want < 1e-37 && *got < 1e-37);
            assert!(ok, "exp({x} - 10) = {got}, want {want}");
        }
        assert!(close(sum, want_sum, 1e-5));
        let mut g = orig.clone();
        let u = data(g.len(), 3);
        silu_mul(&mut g, &u);
        for i in 0..g.len() {
            let x = orig[i] as f64;
            let want = x / (1.0 + (-x).exp()) * u[i] as f64;
            assert!(
                (g[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "silu({x})"
            );
        }
    }
}
