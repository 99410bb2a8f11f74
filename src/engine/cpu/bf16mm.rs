//! bf16 matrix products on CPUs with bf16 dot-product instructions: AMX tiles
//! (`TDPBF16PS`, Sapphire Rapids and later) or AVX512-BF16 (`VDPBF16PS`, Zen 4,
//! Cooper Lake), chosen at run time, and a portable reference that computes the same
//! thing one element at a time.
//!
//! **Layout.** A weight `(n, k)` (out, in) is packed once, at load, in the layout both
//! instructions read (pairs of input positions side by side, "VNNI" order): panels of
//! 16 output columns; in each panel one 64-byte [`Line`] per pair of input positions,
//! holding for each of the 16 columns its two weights of that pair. Sixteen consecutive
//! lines of a panel are one AMX B tile (16 rows × 64 bytes) and one line is one 512-bit
//! operand of `VDPBF16PS`, so neither kernel repacks anything per call. `k` is padded
//! with zeros to a multiple of 32 (one AMX A-tile row) and `n` to a multiple of 16.
//!
//! **Numerics.** Activations are rounded to bf16 (to nearest, ties to even) at the
//! product's input and the products accumulate in f32, as oneDNN does; the caller's
//! residual stream stays f32. The instructions treat bf16 denormals as zero, which the
//! portable kernel does too, so all three kernels agree up to f32 summation order.
//!
//! **AMX on Linux.** A process must ask the kernel for the tile-data state
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`) before its first tile
//! instruction. [`best`] asks once; a refusal (an old kernel, a seccomp filter) falls
//! back to AVX512-BF16 and says so in the log.

use half::bf16;
use rayon::prelude::*;

use super::SendPtr;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One 64-byte, 64-byte-aligned row of packed bf16 values (32 of them).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Line(pub [u16; 32]);

/// The bf16 product kernels, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles (`TDPBF16PS`), with [`Kernel::Avx512Bf16`] for products of few rows.
    Amx,
    /// AVX-512 with `VDPBF16PS`.
    Avx512Bf16,
    /// Plain Rust (tests, and machines the others cannot run on).
    Portable,
}

impl Kernel {
    /// Lower-case name, as logs and `PALR_CPU_ISA` write it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Avx512Bf16 => "avx512bf16",
            Kernel::Portable => "portable",
        }
    }

    /// Whether this machine (and the `PALR_CPU_ISA` cap) lets the kernel run.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx512Bf16 => matches!(best(), Some(Kernel::Avx512Bf16 | Kernel::Amx)),
            Kernel::Amx => best() == Some(Kernel::Amx),
        }
    }
}

/// The kernel bf16 weights are multiplied with on this machine: `None` where the CPU has
/// no bf16 dot-product instruction (bf16 weights are then widened to f32 and multiplied
/// by the f32 kernels, as before). Detected once; `PALR_CPU_ISA=avx512bf16` caps it at
/// AVX512-BF16, and `avx512`, `avx2` or `portable` turn it off.
pub fn best() -> Option<Kernel> {
    use std::sync::OnceLock;
    static BEST: OnceLock<Option<Kernel>> = OnceLock::new();
    *BEST.get_or_init(detect)
}

fn detect() -> Option<Kernel> {
    let cap = std::env::var("PALR_CPU_ISA").unwrap_or_default();
    if matches!(cap.as_str(), "avx512" | "avx2" | "portable") {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::isa() != super::simd::Isa::Avx512 || !is_x86_feature_detected!("avx512bf16")
        {
            return None;
        }
        if cap != "avx512bf16" && amx_usable() {
            return Some(Kernel::Amx);
        }
        Some(Kernel::Avx512Bf16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether the CPU has AMX-BF16, the OS saves tile state, and Linux grants this process
/// the tile data (asked here, once).
#[cfg(target_arch = "x86_64")]
fn amx_usable() -> bool {
    // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let leaf = __cpuid_count(7, 0);
    if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
        return false;
    }
    // OSXSAVE, then XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
    if __cpuid(1).ecx & (1 << 27) == 0 {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is available.
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    request_tile_permission()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes the process's permitted
    // xsave features; it reads and writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "the kernel refused AMX tile data to this process; bf16 products use AVX512-BF16"
        );
    }
    rc == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// Output columns per panel.
const PANEL: usize = 16;
/// Input positions per AMX A-tile row (and the padding of `k`).
const KBLOCK: usize = 32;
/// Products of at most this many rows use [`Kernel::Avx512Bf16`] on AMX machines too:
/// an AMX tile computes 16 rows whatever it is given.
const AMX_MIN_ROWS: usize = 16;

/// Lines between rounded activation rows for inputs padded to `kp`: an odd number, so
/// the 16 rows of a tile fall into different L1 sets (a stride of a multiple of 1 KiB, as
/// k = 1536 gives, would put them into four).
fn row_lines(kp: usize) -> usize {
    (kp / KBLOCK) | 1
}

/// A weight matrix `(n, k)` packed for the bf16 kernels (see the module docs).
pub struct Packed {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of [`KBLOCK`].
    kp: usize,
    lines: Vec<Line>,
}

impl Packed {
    /// Packs `src`, `(n, k)` row-major (call inside the backend's thread pool: the
    /// panels are packed in parallel).
    pub fn from_rows(src: &[bf16], n: usize, k: usize) -> Packed {
        assert_eq!(
            src.len(),
            n * k,
            "{n}x{k} matrix given {} values",
            src.len()
        );
        let kp = k.next_multiple_of(KBLOCK);
        let per = kp / 2;
        let mut lines = vec![Line::default(); n.div_ceil(PANEL) * per];
        if per > 0 {
            lines
                .par_chunks_mut(per)
                .enumerate()
                .for_each(|(p, panel)| {
                    for c in 0..PANEL.min(n - p * PANEL) {
                        let row = &src[(p * PANEL + c) * k..][..k];
                        for (kk, v) in row.iter().enumerate() {
                            panel[kk / 2].0[c * 2 + kk % 2] = v.to_bits();
                        }
                    }
                });
        }
        Packed { n, k, kp, lines }
    }

    /// Element `(r, c)` of the original matrix.
    pub fn get(&self, r: usize, c: usize) -> bf16 {
        let line = &self.lines[(r / PANEL) * (self.kp / 2) + c / 2];
        bf16::from_bits(line.0[(r % PANEL) * 2 + c % 2])
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    fn panel(&self, p: usize) -> *const Line {
        self.lines[p * (self.kp / 2)..].as_ptr()
    }
}

/// Rounds an f32 to bf16, to nearest with ties to even, flushing denormals to zero as the
/// instructions do (NaN stays NaN).
#[inline]
fn round(v: f32) -> u16 {
    if v.is_nan() {
        return bf16::NAN.to_bits();
    }
    let bits = if v.is_subnormal() {
        v.to_bits() & 0x8000_0000
    } else {
        v.to_bits()
    };
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// A bf16 value as the instructions read it: denormals are zero.
#[inline]
fn widen(v: u16) -> f32 {
    let v = if v & 0x7f80 == 0 { v & 0x8000 } else { v };
    f32::from_bits((v as u32) << 16)
}

thread_local! {
    /// Rounded activations of the product running on this thread.
    static ACT: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out (m, n) = x (m, k) · wᵀ`, or `out += s · x · wᵀ` with `acc = Some(s)`, with
/// `kernel` (which must be [available](Kernel::available)), split over `threads` tasks.
/// `x` holds at least `m * k` values and `out` at least `m * n`.
pub fn matmul(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &Packed,
    out: &mut [f32],
    acc: Option<f32>,
    threads: usize,
) {
    let (n, k, kp) = (w.n, w.k, w.kp);
    assert!(x.len() >= m * k && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if acc.is_none() {
            out[..m * n].fill(0.0);
        }
        return;
    }
    let amx = kernel == Kernel::Amx && m > AMX_MIN_ROWS;
    let kernel = match kernel {
        Kernel::Amx if !amx => Kernel::Avx512Bf16,
        k => k,
    };
    // AMX reads whole 16-row tiles: pad the rows with zeros.
    let mp = if amx { m.next_multiple_of(16) } else { m };
    let per_row = row_lines(kp);
    super::with_scratch(&ACT, mp * per_row, |a| {
        product(kernel, x, m, mp, k, w, out, acc, threads, a)
    });
}

/// [`matmul`] once the kernel and the padded row count `mp` are chosen; `a` is scratch
/// for the rounded activations (`mp` rows of [`row_lines`] lines).
#[allow(clippy::too_many_arguments)]
fn product(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    mp: usize,
    k: usize,
    w: &Packed,
    out: &mut [f32],
    acc: Option<f32>,
    threads: usize,
    a: &mut [Line],
) {
    let (n, kp) = (w.n, w.kp);
    let per_row = row_lines(kp);
    let parallel = m >= 64 && threads > 1;
    if parallel {
        a.par_chunks_mut(16 * per_row)
            .zip(x[..m * k].par_chunks(16 * k))
            .for_each(|(a, x)| round_rows(kernel, x, x.len() / k, k, a));
    } else {
        round_rows(kernel, &x[..m * k], m, k, a);
    }
    a[m * per_row..].fill(Line::default());

    let panels = w.panels();
    let pairs = panels.div_ceil(2);
    if pairs < threads && m >= 64 {
        // A narrow product (one 2-panel block, e.g. an unmerged LoRA adapter's A matrix of
        // rank 16) has fewer column tasks than threads: split its rows among them instead,
        // each task all panels of its rows (in whole 16-row tiles).
        let chunk = m.div_ceil(threads).next_multiple_of(16);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let a: &[Line] = a;
        (0..m.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let r0 = c * chunk;
            let rows = chunk.min(m - r0);
            // AMX runs whole tiles: the zero-padded rows up to `mp` belong to the last chunk.
            let rows_p = chunk.min(mp - r0);
            let dst = Dst {
                // SAFETY: r0 < m, so the offset lies inside `out`.
                ptr: SendPtr(unsafe { out_ptr.get().add(r0 * n) }),
                m: rows,
                n,
                acc,
            };
            let a = &a[r0 * per_row..(r0 + rows_p) * per_row];
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as below; each task writes only its own rows.
                Kernel::Amx => unsafe { amx::panels(a, rows_p, kp, w, 0..panels, &dst) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX512-BF16 was detected; each task writes only its own rows.
                Kernel::Avx512Bf16 => unsafe { dp::panels(a, rows, kp, w, 0..panels, &dst) },
                _ => portable_panels(a, rows, kp, w, 0..panels, &dst),
            }
        });
        return;
    }
    // Tasks own disjoint ranges of panels (output columns), in pairs for the 2-panel
    // blocks; a few per thread to even out the load.
    let tasks = (threads * 4).clamp(1, pairs);
    let per_task = pairs.div_ceil(tasks) * 2;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let a: &[Line] = a;
    let run = |t: usize| {
        let lo = t * per_task;
        let hi = ((t + 1) * per_task).min(panels);
        if lo >= hi {
            return;
        }
        let dst = Dst {
            ptr: out_ptr,
            m,
            n,
            acc,
        };
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::available` guarantees AMX (with the tile permission).
            Kernel::Amx => unsafe { amx::panels(a, mp, kp, w, lo..hi, &dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512-BF16 was detected.
            Kernel::Avx512Bf16 => unsafe { dp::panels(a, m, kp, w, lo..hi, &dst) },
            _ => portable_panels(a, m, kp, w, lo..hi, &dst),
        }
    };
    if tasks == 1 || (m <= 4 && n * kp < 1 << 16) {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Rounds rows `x (m, k)` into `a`: `m` rows of [`row_lines`] lines, zero-padded.
fn round_rows(kernel: Kernel, x: &[f32], m: usize, k: usize, a: &mut [Line]) {
    let per_row = row_lines(k.next_multiple_of(KBLOCK));
    let used = k.div_ceil(KBLOCK);
    for r in 0..m {
        let src = &x[r * k..(r + 1) * k];
        let (dst, pad) = a[r * per_row..(r + 1) * per_row].split_at_mut(used);
        pad.fill(Line::default());
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512-BF16 is present for both of these kernels.
            Kernel::Amx | Kernel::Avx512Bf16 => unsafe { dp::round_row(src, dst) },
            _ => {
                for (i, line) in dst.iter_mut().enumerate() {
                    for (j, v) in line.0.iter_mut().enumerate() {
                        *v = src.get(i * KBLOCK + j).map_or(0, |&v| round(v));
                    }
                }
            }
        }
    }
}

/// Where a kernel writes its results: `(m, n)` row-major f32, shared by tasks that each
/// write their own columns.
struct Dst {
    ptr: SendPtr,
    m: usize,
    n: usize,
    acc: Option<f32>,
}

impl Dst {
    /// Writes the block `vals` (`rows` rows of `stride` values) at `(r0, c0)`, clipped to
    /// the matrix.
    ///
    /// # Safety
    /// No other thread writes the block (its rows of its columns) of `out` meanwhile.
    #[inline]
    unsafe fn put(&self, r0: usize, c0: usize, vals: &[f32], rows: usize, stride: usize) {
        let rows = rows.min(self.m.saturating_sub(r0));
        let cols = stride.min(self.n.saturating_sub(c0));
        for r in 0..rows {
            let src = &vals[r * stride..][..cols];
            // SAFETY: (r0 + r, c0..c0 + cols) lies inside the (m, n) output.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.ptr.get().add((r0 + r) * self.n + c0), cols)
            };
            match self.acc {
                None => dst.copy_from_slice(src),
                Some(s) => dst.iter_mut().zip(src).for_each(|(d, v)| *d += s * v),
            }
        }
    }
}

/// The reference: one output at a time, the same rounding, f32 sums.
fn portable_panels(
    a: &[Line],
    m: usize,
    kp: usize,
    w: &Packed,
    panels: std::ops::Range<usize>,
    dst: &Dst,
) {
    let per_row = row_lines(kp);
    let mut block = [0f32; PANEL];
    for p in panels {
        let lines = &w.lines[p * (kp / 2)..][..kp / 2];
        for r in 0..m {
            let row = &a[r * per_row..][..per_row];
            for (c, o) in block.iter_mut().enumerate() {
                let mut s = 0f32;
                for (q, line) in lines.iter().enumerate() {
                    let x = &row[q / 16].0[(q % 16) * 2..][..2];
                    s +=
                        widen(x[0]) * widen(line.0[c * 2]) + widen(x[1]) * widen(line.0[c * 2 + 1]);
                }
                *o = s;
            }
            // SAFETY: this task owns panel p's columns.
            unsafe { dst.put(r, p * PANEL, &block, 1, PANEL) };
        }
    }
}

/// AVX512-BF16: register blocks of up to 8 rows × 32 columns (4 panels × up to 4 rows for
/// the matrix-vector products of decoding), one `VDPBF16PS` per weight line and row.
#[cfg(target_arch = "x86_64")]
mod dp {
    use super::*;

    /// Rounds `src` into `dst` (`dst` holds `src.len()` rounded up to 32 values).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_row(src: &[f32], dst: &mut [Line]) {
        debug_assert_eq!(dst.len(), src.len().div_ceil(KBLOCK));
        for (i, line) in dst.iter_mut().enumerate() {
            let lo = i * KBLOCK;
            let take = (src.len() - lo).min(KBLOCK);
            // SAFETY: the masks keep the loads inside `src`; `line` holds 64 bytes.
            unsafe {
                let m0 = mask(take.min(16));
                let m1 = mask(take.saturating_sub(16));
                let v0 = _mm512_maskz_loadu_ps(m0, src.as_ptr().add(lo));
                let v1 = if take > 16 {
                    _mm512_maskz_loadu_ps(m1, src.as_ptr().add(lo + 16))
                } else {
                    _mm512_setzero_ps()
                };
                let packed = _mm512_cvtne2ps_pbh(v1, v0);
                _mm512_store_si512(
                    line.0.as_mut_ptr().cast(),
                    std::mem::transmute::<__m512bh, __m512i>(packed),
                );
            }
        }
    }

    #[inline]
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// Block `R` rows × `P` panels from row `r0` and panel `p0`, written to `dst`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn block<const R: usize, const P: usize>(
        a: &[Line],
        r0: usize,
        kp: usize,
        w: &Packed,
        p0: usize,
        dst: &Dst,
    ) {
        let per_row = row_lines(kp);
        let pairs = kp / 2;
        let mut c = [[_mm512_setzero_ps(); P]; R];
        // SAFETY: rows r0..r0 + R of `a` and panels p0..p0 + P of `w` exist (checked by
        // the caller); each row holds kp / 2 pairs and each panel kp / 2 lines.
        unsafe {
            let arow: [*const u32; R] =
                std::array::from_fn(|i| a.as_ptr().add((r0 + i) * per_row).cast::<u32>());
            let bp: [*const Line; P] = std::array::from_fn(|j| w.panel(p0 + j));
            for q in 0..pairs {
                let b: [__m512bh; P] = std::array::from_fn(|j| {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(bp[j].add(q).cast()))
                });
                for i in 0..R {
                    let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        *arow[i].add(q) as i32,
                    ));
                    for j in 0..P {
                        c[i][j] = _mm512_dpbf16_ps(c[i][j], x, b[j]);
                    }
                }
            }
            let mut buf = [[0f32; 64]; 8];
            for (row, acc) in buf.iter_mut().zip(&c) {
                for (j, v) in acc.iter().enumerate() {
                    _mm512_storeu_ps(row.as_mut_ptr().add(j * PANEL), *v);
                }
            }
            for (i, row) in buf.iter().enumerate().take(R) {
                dst.put(r0 + i, p0 * PANEL, row, 1, P * PANEL);
            }
        }
    }

    /// Panels `panels` of the product for rows `0..m`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn panels(
        a: &[Line],
        m: usize,
        kp: usize,
        w: &Packed,
        panels: std::ops::Range<usize>,
        dst: &Dst,
    ) {
        // SAFETY (all calls below): row and panel ranges stay inside `a` and `w`.
        unsafe {
            if m <= 4 {
                // Decoding: every weight line is read once, for all rows.
                let mut p = panels.start;
                while p < panels.end {
                    let left = panels.end - p;
                    match (m, left >= 4) {
                        (1, true) => block::<1, 4>(a, 0, kp, w, p, dst),
                        (2, true) => block::<2, 4>(a, 0, kp, w, p, dst),
                        (3, true) => block::<3, 4>(a, 0, kp, w, p, dst),
                        (4, true) => block::<4, 4>(a, 0, kp, w, p, dst),
                        (1, false) => block::<1, 1>(a, 0, kp, w, p, dst),
                        (2, false) => block::<2, 1>(a, 0, kp, w, p, dst),
                        (3, false) => block::<3, 1>(a, 0, kp, w, p, dst),
                        _ => block::<4, 1>(a, 0, kp, w, p, dst),
                    }
                    p += if left >= 4 { 4 } else { 1 };
                }
                return;
            }
            let mut p = panels.start;
            while p < panels.end {
                let two = panels.end - p >= 2;
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(8);
                    match (rows, two) {
                        (8, true) => block::<8, 2>(a, r, kp, w, p, dst),
                        (8, false) => block::<8, 1>(a, r, kp, w, p, dst),
                        (4..=7, true) => block::<4, 2>(a, r, kp, w, p, dst),
                        (4..=7, false) => block::<4, 1>(a, r, kp, w, p, dst),
                        (_, true) => block::<1, 2>(a, r, kp, w, p, dst),
                        (_, false) => block::<1, 1>(a, r, kp, w, p, dst),
                    }
                    r += match rows {
                        8 => 8,
                        4..=7 => 4,
                        _ => 1,
                    };
                }
                p += if two { 2 } else { 1 };
            }
        }
    }
}

/// AMX: blocks of 32 rows × 32 columns held in four accumulator tiles, the weights'
/// 16-line panel slices loaded as B tiles and the rounded activations as A tiles.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::*;
    use std::arch::asm;

    /// `LDTILECFG`'s 64-byte operand: palette 1, all eight tiles 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// tmm0..3 = A(rows a0, a1) · B(panels b0, b1) over `kblocks` blocks of 32 inputs;
    /// stored to `c` (32 × 32 f32, row stride `c_stride` floats).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_2x2(
        a0: *const Line,
        a1: *const Line,
        a_stride: usize,
        b0: *const Line,
        b1: *const Line,
        kblocks: usize,
        c: *mut f32,
        c_stride: usize,
    ) {
        // SAFETY: the caller passes tiles inside `a` and `w` and a 4 KiB `c`; the tile
        // configuration was loaded on this thread.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {as_}*1]",
                "tileloadd tmm6, [{b0} + {bs}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {bs}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {as_}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 64",
                "add {a1}, 64",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {kb}",
                "jnz 2b",
                "tilestored [{c} + {cs}*1], tmm0",
                "tilestored [{c} + {cs}*1 + 64], tmm1",
                "tilestored [{c2} + {cs}*1], tmm2",
                "tilestored [{c2} + {cs}*1 + 64], tmm3",
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a1 => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b1 => _,
                kb = inout(reg) kblocks => _,
                as_ = in(reg) a_stride,
                bs = in(reg) 64usize,
                c = in(reg) c,
                c2 = in(reg) c.add(16 * c_stride),
                cs = in(reg) c_stride * 4,
                options(nostack),
            );
        }
    }

    /// tmm0 = A(rows a0) · B(panel b0); stored to `c` (16 × 16 f32, row stride 64 bytes).
    #[inline]
    unsafe fn block_1x1(
        a0: *const Line,
        a_stride: usize,
        b0: *const Line,
        kblocks: usize,
        c: *mut f32,
    ) {
        // SAFETY: as for block_2x2.
        unsafe {
            asm!(
                "tilezero tmm0",
                "2:",
                "tileloadd tmm4, [{a0} + {as_}*1]",
                "tileloadd tmm6, [{b0} + {bs}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "add {a0}, 64",
                "add {b0}, 1024",
                "dec {kb}",
                "jnz 2b",
                "tilestored [{c} + {cs}*1], tmm0",
                a0 = inout(reg) a0 => _,
                b0 = inout(reg) b0 => _,
                kb = inout(reg) kblocks => _,
                as_ = in(reg) a_stride,
                bs = in(reg) 64usize,
                c = in(reg) c,
                cs = in(reg) 64usize,
                options(nostack),
            );
        }
    }

    /// Panels `panels` of the product for the `mp` (a multiple of 16) rows of `a`.
    ///
    /// # Safety
    /// AMX-BF16 present and permitted; `a` holds `mp` rows of [`row_lines`] lines.
    pub unsafe fn panels(
        a: &[Line],
        mp: usize,
        kp: usize,
        w: &Packed,
        panels: std::ops::Range<usize>,
        dst: &Dst,
    ) {
        let per_row = row_lines(kp);
        debug_assert!(mp.is_multiple_of(16) && a.len() >= mp * per_row);
        let a_stride = per_row * 64;
        let kblocks = kp / KBLOCK;
        let row = |r: usize| a[r * per_row..].as_ptr();
        let mut c = Block([0f32; 32 * 32]);
        // SAFETY: the configuration is a valid palette-1 layout; every tile below stays
        // inside `a` (rows < mp) and `w` (panels < w.panels()).
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            let mut p = panels.start;
            while p < panels.end {
                let two = panels.end - p >= 2;
                let mut r = 0;
                while r < mp {
                    if two && mp - r >= 32 {
                        let (a0, a1, b0, b1) = (row(r), row(r + 16), w.panel(p), w.panel(p + 1));
                        if dst.acc.is_none() && r + 32 <= dst.m && (p + 2) * PANEL <= dst.n {
                            // Inside the output: the tiles go straight there.
                            let out = dst.ptr.get().add(r * dst.n + p * PANEL);
                            block_2x2(a0, a1, a_stride, b0, b1, kblocks, out, dst.n);
                        } else {
                            block_2x2(a0, a1, a_stride, b0, b1, kblocks, c.0.as_mut_ptr(), 32);
                            dst.put(r, p * PANEL, &c.0, 32, 32);
                        }
                        r += 32;
                    } else {
                        for j in 0..if two { 2 } else { 1 } {
                            block_1x1(row(r), a_stride, w.panel(p + j), kblocks, c.0.as_mut_ptr());
                            dst.put(r, (p + j) * PANEL, &c.0[..256], 16, 16);
                        }
                        r += 16;
                    }
                }
                p += if two { 2 } else { 1 };
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }

    #[repr(C, align(64))]
    struct Block([f32; 32 * 32]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::tests::values;

    fn kernels() -> Vec<Kernel> {
        let all = [Kernel::Amx, Kernel::Avx512Bf16, Kernel::Portable];
        for k in all.iter().filter(|k| !k.available()) {
            eprintln!(
                "bf16 kernel {} SKIPPED: this machine (or PALR_CPU_ISA) does not offer it",
                k.name()
            );
        }
        all.into_iter().filter(|k| k.available()).collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        for v in values(10_000, 7) {
            let want = bf16::from_f32(v);
            assert_eq!(round(v), want.to_bits(), "{v}");
        }
        // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and goes to the even one.
        assert_eq!(round(1.0 + 1.0 / 256.0), bf16::from_f32(1.0).to_bits());
        assert_eq!(round(f32::MIN_POSITIVE / 2.0), 0);
        assert!(widen(round(f32::NAN)).is_nan());
    }

    #[test]
    fn packing_keeps_every_element() {
        for &(n, k) in &[(1usize, 1usize), (17, 33), (32, 64), (5, 100)] {
            let src: Vec<bf16> = values(n * k, 3).into_iter().map(bf16::from_f32).collect();
            let p = Packed::from_rows(&src, n, k);
            for r in 0..n {
                for c in 0..k {
                    assert_eq!(p.get(r, c), src[r * k + c], "{n}x{k} ({r}, {c})");
                }
            }
        }
    }

    /// Every kernel this machine has against an f64 product of the bf16-rounded inputs,
    /// on shapes off every block size: the only difference left is f32 summation order.
    #[test]
    fn every_kernel_matches_an_f64_reference() {
        for kernel in kernels() {
            for &(m, n, k) in &[
                (1usize, 16usize, 32usize),
                (1, 37, 300),
                (3, 70, 64),
                (4, 200, 576),
                (5, 33, 17),
                (16, 48, 64),
                (17, 16, 96),
                (40, 70, 600),
                (64, 64, 1536),
                (97, 50, 129),
                // Narrow (a LoRA A matrix of rank 16): rows split among the threads.
                (300, 16, 576),
                (130, 16, 32),
            ] {
                let wv = values(n * k, (n * 31 + k) as u64);
                let wb: Vec<bf16> = wv.iter().map(|&v| bf16::from_f32(v)).collect();
                let packed = Packed::from_rows(&wb, n, k);
                let x = values(m * k, m as u64 + 1);
                for acc in [None, Some(0.5f32)] {
                    let start = values(m * n, 99);
                    let mut got = start.clone();
                    matmul(kernel, &x, m, &packed, &mut got, acc, 3);
                    for r in 0..m {
                        for c in 0..n {
                            let dot: f64 = (0..k)
                                .map(|i| widen(round(x[r * k + i])) as f64 * wb[c * k + i].to_f64())
                                .sum();
                            let want = match acc {
                                None => dot,
                                Some(s) => start[r * n + c] as f64 + s as f64 * dot,
                            };
                            // Terms are below 1 in size: f32 sums of k of them are off
                            // by at most about k·2⁻²⁴ each.
                            let bound = 1e-6 * k as f64 + 1e-6;
                            let err = (got[r * n + c] as f64 - want).abs();
                            assert!(
                                err <= bound,
                                "{} {m}x{n}x{k} acc {acc:?} ({r}, {c}): {} vs {want} (error {err:e})",
                                kernel.name(),
                                got[r * n + c]
                            );
                        }
                    }
                }
            }
        }
    }

    /// Against the unrounded f32 inputs the error is the rounding of the activations and
    /// weights (relative 2⁻⁹ each), not more.
    #[test]
    fn rounding_error_stays_within_bf16_precision() {
        let (m, n, k) = (33, 40, 576);
        let w = values(n * k, 5);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let packed = Packed::from_rows(&wb, n, k);
        let x = values(m * k, 6);
        for kernel in kernels() {
            let mut got = vec![0f32; m * n];
            matmul(kernel, &x, m, &packed, &mut got, None, 2);
            for r in 0..m {
                for c in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                        .sum();
                    let abs: f64 = (0..k)
                        .map(|i| (x[r * k + i] as f64 * w[c * k + i] as f64).abs())
                        .sum();
                    let err = (got[r * n + c] as f64 - exact).abs();
                    assert!(
                        err <= abs * 2.0 * 2f64.powi(-8),
                        "{}: {err} of {abs}",
                        kernel.name()
                    );
                }
            }
        }
    }
}
