//! ggml tensor types: every type code a GGUF file may name, with its block size and bytes per
//! block (ggml's `type_traits` table), and dequantizers to `f32` for the types palr supports.
//!
//! Block layouts (ggml `ggml-common.h`, all little-endian, `QK = 32` weights per block):
//! - `Q8_0`: `f16 d; i8 qs[32]` (34 bytes); `x[j] = d * qs[j]`.
//! - `Q4_0`: `f16 d; u8 qs[16]` (18 bytes); element `j < 16` is the low nibble of `qs[j]`,
//!   element `j + 16` its high nibble; `x = d * (nibble - 8)`.
//! - `Q4_1`: `f16 d; f16 m; u8 qs[16]` (20 bytes); same nibble order; `x = d * nibble + m`.
//!
//! Arithmetic is done exactly as ggml's reference `dequantize_row_*` (and the `gguf` Python
//! package) do it in `f32`: a product then a sum, each rounded, never fused.

use std::fmt;

use half::{bf16, f16};

/// A ggml tensor type, as stored in a GGUF tensor info (`ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// `(type, code, name, weights per block, bytes per block)`, from ggml's type traits.
const TABLE: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
];

impl GgmlType {
    fn row(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        // Every variant has exactly one row (checked by a unit test); the fallback keeps this
        // total without a panic path.
        TABLE.iter().find(|r| r.0 == self).unwrap_or(&TABLE[0])
    }

    /// The type for an on-disk code; `None` for codes ggml never assigned or has removed.
    pub fn from_code(code: u32) -> Option<Self> {
        TABLE.iter().find(|r| r.1 == code).map(|r| r.0)
    }

    /// The on-disk code.
    pub fn code(self) -> u32 {
        self.row().1
    }

    /// ggml's name for the type (`Q4_1`).
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Weights per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.row().4
    }

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// Why [`dequantize`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DequantError {
    Unsupported(GgmlType),
    /// `bytes.len()` is not the encoded size of `out.len()` weights.
    SizeMismatch {
        bytes: usize,
        expected: u64,
    },
}

/// The encoded size of `n_elements` weights of type `ty`, or `None` when `n_elements` is not a
/// whole number of blocks or the size overflows.
pub fn encoded_size(ty: GgmlType, n_elements: u64) -> Option<u64> {
    if !n_elements.is_multiple_of(ty.block_size()) {
        return None;
    }
    (n_elements / ty.block_size()).checked_mul(ty.type_size())
}

/// Dequantizes `bytes` (the encoded tensor data of `out.len()` weights of type `ty`) into
/// `out`. Checks the size first, so it never reads out of bounds or leaves `out` partly
/// written on error.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    let expected = encoded_size(ty, out.len() as u64);
    if expected != Some(bytes.len() as u64) {
        return Err(DequantError::SizeMismatch {
            bytes: bytes.len(),
            expected: expected.unwrap_or(u64::MAX),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                dequant_q8_0_block(blk, o);
            }
        }
        GgmlType::Q4_0 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                dequant_q4_0_block(blk, o);
            }
        }
        GgmlType::Q4_1 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                dequant_q4_1_block(blk, o);
            }
        }
        _ => return Err(DequantError::Unsupported(ty)),
    }
    Ok(())
}

/// `f16 d; i8 qs[32]`.
fn dequant_q8_0_block(blk: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
        *o = d * f32::from(q as i8);
    }
}

/// `f16 d; u8 qs[16]`: low nibbles are elements 0..16, high nibbles 16..32.
fn dequant_q4_0_block(blk: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let (lo, hi) = out.split_at_mut(16);
    for (j, &q) in blk[2..18].iter().enumerate() {
        lo[j] = d * f32::from((q & 0x0F) as i8 - 8);
        hi[j] = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// `f16 d; f16 m; u8 qs[16]`: low nibbles are elements 0..16, high nibbles 16..32.
fn dequant_q4_1_block(blk: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
    let (lo, hi) = out.split_at_mut(16);
    for (j, &q) in blk[4..20].iter().enumerate() {
        lo[j] = d * f32::from(q & 0x0F) + m;
        hi[j] = d * f32::from(q >> 4) + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn table_is_consistent() {
        let all = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q8_1,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_K,
            GgmlType::IQ2_XXS,
            GgmlType::IQ2_XS,
            GgmlType::IQ3_XXS,
            GgmlType::IQ1_S,
            GgmlType::IQ4_NL,
            GgmlType::IQ3_S,
            GgmlType::IQ2_S,
            GgmlType::IQ4_XS,
            GgmlType::I8,
            GgmlType::I16,
            GgmlType::I32,
            GgmlType::I64,
            GgmlType::F64,
            GgmlType::IQ1_M,
            GgmlType::BF16,
            GgmlType::TQ1_0,
            GgmlType::TQ2_0,
            GgmlType::MXFP4,
            GgmlType::NVFP4,
            GgmlType::Q1_0,
        ];
        assert_eq!(all.len(), TABLE.len());
        for t in all {
            assert_eq!(TABLE.iter().filter(|r| r.0 == t).count(), 1, "{t:?}");
            assert_eq!(GgmlType::from_code(t.code()), Some(t));
        }
        // Codes ggml removed (Q4_2, Q4_3, the 4x4 repacks) and never-assigned codes.
        for code in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000] {
            assert_eq!(GgmlType::from_code(code), None, "{code}");
        }
        assert_eq!(GgmlType::Q4_1.to_string(), "Q4_1 (3)");
    }

    #[test]
    fn q8_0_hand_computed_block() {
        // d = 0.5; qs = -16, -15, ..., 15 -> x = qs / 2.
        let mut blk = Vec::from(h(0.5));
        blk.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &blk, &mut out).unwrap();
        for (j, &x) in out.iter().enumerate() {
            assert_eq!(x, (j as f32 - 16.0) * 0.5, "element {j}");
        }
        // Extremes of i8.
        blk[2] = 0x80; // -128
        blk[3] = 0x7F; // 127
        dequantize(GgmlType::Q8_0, &blk, &mut out).unwrap();
        assert_eq!(out[0], -64.0);
        assert_eq!(out[1], 63.5);
    }

    #[test]
    fn q4_1_hand_computed_block() {
        // d = 0.25, m = -1.0; qs[j] = low nibble j % 16, high nibble 15 - j % 16.
        let mut blk = Vec::from(h(0.25));
        blk.extend(h(-1.0));
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &blk, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 0.25 * j as f32 - 1.0, "low nibble -> element {j}");
            assert_eq!(
                out[j + 16],
                0.25 * (15 - j) as f32 - 1.0,
                "high nibble -> element {}",
                j + 16
            );
        }
        // A concrete byte: 0xA3 at position 2 -> element 2 = 3*d+m, element 18 = 10*d+m.
        blk[4 + 2] = 0xA3;
        dequantize(GgmlType::Q4_1, &blk, &mut out).unwrap();
        assert_eq!(out[2], -0.25);
        assert_eq!(out[18], 1.5);
    }

    #[test]
    fn q4_0_hand_computed_block() {
        let mut blk = Vec::from(h(2.0));
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_0, &blk, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 2.0 * (7.0 - j as f32));
        }
    }

    #[test]
    fn plain_float_types() {
        let vals = [1.5f32, -0.0, 65504.0, 6.1035156e-5, -2.0];
        let f16_bytes: Vec<u8> = vals.iter().flat_map(|&v| h(v)).collect();
        let mut out = [0f32; 5];
        dequantize(GgmlType::F16, &f16_bytes, &mut out).unwrap();
        assert_eq!(out, vals);
        assert!(out[1].is_sign_negative());
        // F16 bit patterns written by hand: 0x3C00 = 1.0, 0xC000 = -2.0, 0x7BFF = 65504.
        let mut out3 = [0f32; 3];
        dequantize(
            GgmlType::F16,
            &[0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B],
            &mut out3,
        )
        .unwrap();
        assert_eq!(out3, [1.0, -2.0, 65504.0]);
        // BF16 is the top half of an f32: 0x3F80 = 1.0, 0xC040 = -3.0.
        dequantize(GgmlType::BF16, &[0x80, 0x3F, 0x40, 0xC0, 0, 0], &mut out3).unwrap();
        assert_eq!(out3, [1.0, -3.0, 0.0]);
        let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        dequantize(GgmlType::F32, &f32_bytes, &mut out).unwrap();
        assert_eq!(out, vals);
    }

    #[test]
    fn refuses_bad_sizes_and_types() {
        let mut out = [0f32; 32];
        assert_eq!(
            dequantize(GgmlType::Q4_1, &[0; 19], &mut out),
            Err(DequantError::SizeMismatch {
                bytes: 19,
                expected: 20
            })
        );
        // 33 weights are not a whole number of Q8_0 blocks.
        let mut out33 = [0f32; 33];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], &mut out33),
            Err(DequantError::SizeMismatch { .. })
        ));
        assert_eq!(
            dequantize(GgmlType::Q4_K, &[0; 144], &mut [0f32; 256]),
            Err(DequantError::Unsupported(GgmlType::Q4_K))
        );
        assert_eq!(encoded_size(GgmlType::Q4_1, 64), Some(40));
        assert_eq!(encoded_size(GgmlType::Q4_1, 48), None);
        assert_eq!(encoded_size(GgmlType::F32, u64::MAX), None);
    }
}
