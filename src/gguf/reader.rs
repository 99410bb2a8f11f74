//! Parses a GGUF file (spec: ggml `docs/gguf.md`, versions 2 and 3, little-endian):
//!
//! ```text
//! u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//! kv_count  x { string key | u32 value_type | value }
//! tensor_count x { string name | u32 n_dims | u64 ne[n_dims] (innermost first) | u32 ggml_type
//!                  | u64 offset (relative to the data section, a multiple of the alignment) }
//! padding to general.alignment (default 32) | data section
//! string = u64 length | UTF-8 bytes (no NUL); array = u32 elem_type | u64 count | elements
//! ```
//!
//! The file is memory-mapped and tensor data is handed out as slices of the map. Parsing
//! validates the whole layout up front: each count against the bytes left, each tensor's
//! element count against its type's block size, its byte range against the file, its offset
//! against the alignment, and tensors against each other (no overlap).

use std::collections::HashMap;
use std::path::Path;

use super::types::{self, DequantError, GgmlType};
use super::value::{Value, ValueType};
use super::{GgufError, Result};

/// The four magic bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Deepest array nesting accepted (the spec allows nesting; real files use at most 1 level).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// One tensor's header entry, validated against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions innermost first, as GGUF stores them (`ne[0]` = number of columns).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Encoded size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of weights (product of `dims`; checked not to overflow at parse time).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in row-major order (outermost first), as PyTorch / safetensors write it:
    /// GGUF `ne = [in, out]` becomes `[out, in]`.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file.
pub struct GgufFile {
    backing: Backing,
    version: u32,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        // SAFETY: the map is read-only and private to this process. Model files are not
        // modified while palr runs; if one were truncated underneath us, reads could fault
        // (SIGBUS) — the usual contract of read-only file mappings, shared by every mmap-based
        // model loader.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Self::parse(Backing::Mmap(mmap))
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<Self> {
        let buf = backing.bytes();
        let mut c = Cursor { buf, pos: 0 };

        let magic: [u8; 4] = c.array("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(GgufError::UnsupportedVersion {
                    version,
                    hint: "GGUF v1 (32-bit counts) is obsolete; re-convert the model with a \
                           current llama.cpp",
                });
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(GgufError::UnsupportedVersion {
                    version,
                    hint: "this looks like a big-endian GGUF file; palr reads little-endian \
                           files only",
                });
            }
            _ => {
                return Err(GgufError::UnsupportedVersion {
                    version,
                    hint: "palr reads GGUF versions 2 and 3",
                });
            }
        }
        let tensor_count = c.u64("tensor count")?;
        let kv_count = c.u64("metadata key/value count")?;

        // Minimum sizes: a kv is key (8) + type (4) + at least 1 byte of value; a tensor info
        // is name (8) + n_dims (4) + type (4) + offset (8).
        c.check_count("metadata key/value count", kv_count, 13)?;
        let mut metadata = Vec::with_capacity(kv_count as usize);
        let mut metadata_index = HashMap::with_capacity(kv_count as usize);
        for i in 0..kv_count {
            let key = c.string(&format!("key of metadata entry #{i}"))?;
            let code = c.u32(&format!("value type of metadata key {key:?}"))?;
            let value = c.value(code, &format!("metadata key {key:?}"), 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey { key });
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let v = &metadata[i].1;
                let a = v.as_u64().ok_or_else(|| GgufError::WrongKeyType {
                    key: "general.alignment".into(),
                    expected: "unsigned integer",
                    found: v.type_description(),
                })?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
        };

        c.check_count("tensor count", tensor_count, 24)?;
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut tensor_index = HashMap::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            let name = c.string(&format!("name of tensor #{i}"))?;
            let info = c.tensor_info(name)?;
            if tensor_index
                .insert(info.name.clone(), tensors.len())
                .is_some()
            {
                return Err(GgufError::DuplicateTensor { name: info.name });
            }
            tensors.push(info);
        }

        let file_len = buf.len() as u64;
        let header_end = c.pos as u64;
        let data_start = header_end.next_multiple_of(alignment);
        let data_len = file_len.saturating_sub(data_start);
        check_tensor_layout(&tensors, alignment, data_start, data_len, file_len)?;

        Ok(GgufFile {
            backing,
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            alignment,
            data_start,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The whole file image.
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| GgufError::WrongKeyType {
                key: key.into(),
                expected,
                found: v.type_description(),
            }),
        }
    }

    /// An optional non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "non-negative integer", Value::as_u64)
    }

    /// An optional float of either width.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "float", Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "bool", Value::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "string", Value::as_str)
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, "array", Value::as_array)
    }

    /// A required non-negative integer.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?.ok_or_else(|| missing(key))
    }

    /// A required float.
    pub fn require_f64(&self, key: &str) -> Result<f64> {
        self.get_f64(key)?.ok_or_else(|| missing(key))
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?.ok_or_else(|| missing(key))
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The encoded bytes of a tensor of this file (bounds were checked at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_start + info.offset) as usize;
        let end = start + info.n_bytes as usize;
        self.backing.bytes().get(start..end).unwrap_or(&[])
    }

    /// Dequantizes a tensor into `out`, which must hold exactly its element count.
    pub fn dequantize_into(&self, info: &TensorInfo, out: &mut [f32]) -> Result<()> {
        types::dequantize(info.ggml_type, self.tensor_data(info), out).map_err(|e| match e {
            DequantError::Unsupported(ty) => GgufError::UnsupportedTensorType {
                name: info.name.clone(),
                ty,
            },
            DequantError::SizeMismatch { bytes, expected } => GgufError::BadTensor {
                name: info.name.clone(),
                reason: format!(
                    "{bytes} bytes of {} data do not hold {} weights ({expected} bytes); the \
                     output buffer or the tensor info is wrong",
                    info.ggml_type,
                    out.len()
                ),
            },
        })
    }

    /// Dequantizes a tensor to a new `f32` vector (row-major, outermost dimension first).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedTensorType {
                name: info.name.clone(),
                ty: info.ggml_type,
            });
        }
        // Every dequantizable type spends at least half a byte per weight and the data was
        // bounds-checked against the file, so this allocation is at most 2x the file size.
        let mut out = vec![0f32; info.n_elements() as usize];
        self.dequantize_into(info, &mut out)?;
        Ok(out)
    }
}

fn missing(key: &str) -> GgufError {
    GgufError::MissingKey { key: key.into() }
}

/// Checks each tensor's byte range against the file and the alignment, and that no two
/// tensors overlap.
fn check_tensor_layout(
    tensors: &[TensorInfo],
    alignment: u64,
    data_start: u64,
    data_len: u64,
    file_len: u64,
) -> Result<()> {
    let bad = |t: &TensorInfo, reason: String| GgufError::BadTensor {
        name: t.name.clone(),
        reason,
    };
    for t in tensors {
        if t.offset % alignment != 0 {
            return Err(bad(
                t,
                format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                ),
            ));
        }
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len) {
            return Err(GgufError::Truncated {
                what: format!(
                    "data of tensor {:?} ({} bytes of {} at data offset {})",
                    t.name, t.n_bytes, t.ggml_type, t.offset
                ),
                offset: data_start.saturating_add(t.offset),
                need: t.n_bytes,
                file_len,
            });
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.offset + a.n_bytes > b.offset {
            return Err(bad(
                b,
                format!(
                    "data [{}, {}) overlaps the data of tensor {:?} [{}, {})",
                    b.offset,
                    b.offset + b.n_bytes,
                    a.name,
                    a.offset,
                    a.offset + a.n_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// A bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                need: n,
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Rejects a count whose entries (each at least `min_entry_size` bytes) cannot fit in the
    /// rest of the file — before anything is allocated for them.
    fn check_count(&self, what: &str, count: u64, min_entry_size: u64) -> Result<()> {
        if count.saturating_mul(min_entry_size) > self.remaining() {
            return Err(GgufError::CountTooLarge {
                what: what.to_string(),
                count,
                remaining: self.remaining(),
                min_entry_size,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(&format!("length of {what}"))?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|source| GgufError::InvalidUtf8 {
                what: what.to_string(),
                source,
            })
    }

    fn value(&mut self, code: u32, what: &str, depth: usize) -> Result<Value> {
        let ty = ValueType::from_code(code).ok_or_else(|| GgufError::UnknownValueType {
            what: what.to_string(),
            code,
        })?;
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => {
                    return Err(GgufError::InvalidBool {
                        what: what.to_string(),
                        byte,
                    });
                }
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep {
                        what: what.to_string(),
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                let elem_code = self.u32(&format!("element type of {what}"))?;
                let elem_type =
                    ValueType::from_code(elem_code).ok_or_else(|| GgufError::UnknownValueType {
                        what: format!("element type of {what}"),
                        code: elem_code,
                    })?;
                let count = self.u64(&format!("element count of {what}"))?;
                self.check_count(
                    &format!("array {what} (of {elem_type})"),
                    count,
                    elem_type.min_encoded_size(),
                )?;
                let mut values = Vec::with_capacity(count as usize);
                for i in 0..count {
                    // Element descriptions are only formatted when an error needs them.
                    let v = self
                        .value(elem_code, what, depth + 1)
                        .map_err(|e| with_element(e, what, i))?;
                    values.push(v);
                }
                Value::Array { elem_type, values }
            }
        })
    }

    fn tensor_info(&mut self, name: String) -> Result<TensorInfo> {
        let what = |field: &str| format!("{field} of tensor {name:?}");
        let bad = |reason: String| GgufError::BadTensor {
            name: name.clone(),
            reason,
        };
        let n_dims = self.u32(&what("dimension count"))?;
        if n_dims > MAX_DIMS {
            return Err(bad(format!(
                "has {n_dims} dimensions, ggml allows at most {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&what("dimensions"))?);
        }
        let code = self.u32(&what("type"))?;
        let offset = self.u64(&what("data offset"))?;
        let ggml_type = GgmlType::from_code(code).ok_or_else(|| GgufError::UnknownTensorType {
            name: name.clone(),
            code,
        })?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow the element count")))?;
        if dims
            .first()
            .is_some_and(|&ne0| ne0 % ggml_type.block_size() != 0)
        {
            return Err(bad(format!(
                "row length ne[0] = {} is not a multiple of the {} block size {}",
                dims[0],
                ggml_type,
                ggml_type.block_size()
            )));
        }
        // Rows are whole blocks (checked above), so only an overflow can fail here.
        let n_bytes = types::encoded_size(ggml_type, n_elements).ok_or_else(|| {
            bad(format!(
                "the byte size of {n_elements} weights of {ggml_type} overflows"
            ))
        })?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        })
    }
}

/// Adds "element #i of" context to errors raised inside an array.
fn with_element(e: GgufError, what: &str, i: u64) -> GgufError {
    let ctx = |w: String| {
        if w.starts_with("element #") {
            w
        } else {
            format!("element #{i} of {what}")
        }
    };
    match e {
        GgufError::Truncated {
            what: w,
            offset,
            need,
            file_len,
        } => GgufError::Truncated {
            what: ctx(w),
            offset,
            need,
            file_len,
        },
        GgufError::InvalidUtf8 { what: w, source } => GgufError::InvalidUtf8 {
            what: ctx(w),
            source,
        },
        GgufError::InvalidBool { what: w, byte } => GgufError::InvalidBool { what: ctx(w), byte },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::{GgufWriter, encode_value, string_array};

    fn err(bytes: Vec<u8>) -> GgufError {
        match GgufFile::from_bytes(bytes) {
            Ok(f) => panic!("expected an error, parsed {f:?}"),
            Err(e) => e,
        }
    }

    /// A valid small file: several value kinds and two tensors.
    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add("general.architecture", Value::String("llama".into()))
            .add("a.u8", Value::U8(7))
            .add("a.i8", Value::I8(-7))
            .add("a.u16", Value::U16(65535))
            .add("a.i16", Value::I16(-300))
            .add("a.u32", Value::U32(4_000_000_000))
            .add("a.i32", Value::I32(-5))
            .add("a.f32", Value::F32(1.5))
            .add("a.bool", Value::Bool(true))
            .add("a.u64", Value::U64(1 << 40))
            .add("a.i64", Value::I64(-(1 << 40)))
            .add("a.f64", Value::F64(-2.25))
            .add("a.strs", string_array(["x", "", "ünï"]))
            .add(
                "a.nested",
                Value::Array {
                    elem_type: ValueType::Array,
                    values: vec![
                        Value::Array {
                            elem_type: ValueType::U8,
                            values: vec![Value::U8(1), Value::U8(2)],
                        },
                        Value::Array {
                            elem_type: ValueType::F64,
                            values: vec![],
                        },
                    ],
                },
            );
        w.add_f32("t.a", &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut q = Vec::from(half::f16::from_f32(1.0).to_le_bytes());
        q.extend((0..32).map(|j| j as u8));
        w.add_tensor("t.q", &[32], GgmlType::Q8_0, q);
        w
    }

    #[test]
    fn round_trips_every_value_type_and_tensors() {
        let f = GgufFile::from_bytes(sample().to_bytes()).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_start() % 32, 0);
        assert_eq!(f.metadata().count(), 14);
        assert_eq!(f.require_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get("a.u8"), Some(&Value::U8(7)));
        assert_eq!(f.get("a.i8"), Some(&Value::I8(-7)));
        assert_eq!(f.get("a.u16"), Some(&Value::U16(65535)));
        assert_eq!(f.get("a.i16"), Some(&Value::I16(-300)));
        assert_eq!(f.require_u64("a.u32").unwrap(), 4_000_000_000);
        assert_eq!(f.get("a.i32"), Some(&Value::I32(-5)));
        assert_eq!(f.require_f64("a.f32").unwrap(), 1.5);
        assert_eq!(f.get_bool("a.bool").unwrap(), Some(true));
        assert_eq!(f.require_u64("a.u64").unwrap(), 1 << 40);
        assert_eq!(f.get("a.i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(f.require_f64("a.f64").unwrap(), -2.25);
        let strs = f.get_array("a.strs").unwrap().unwrap();
        assert_eq!(
            strs.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
            ["x", "", "ünï"]
        );
        let nested = f.get_array("a.nested").unwrap().unwrap();
        assert_eq!(nested[0].as_array().unwrap(), [Value::U8(1), Value::U8(2)]);
        assert_eq!(nested[1].type_description(), "array<float64>");
        // Typed accessors name the mismatch.
        let e = f.require_u64("a.strs").unwrap_err();
        assert!(e.to_string().contains("array<string>"), "{e}");
        assert!(matches!(
            f.require_str("nope"),
            Err(GgufError::MissingKey { .. })
        ));
        assert_eq!(
            f.get_u64("a.i32").unwrap_err().to_string(),
            "metadata key \"a.i32\" has type int32, expected non-negative integer"
        );

        let a = f.tensor("t.a").unwrap();
        assert_eq!(a.dims, [3, 2]);
        assert_eq!(a.shape(), [2, 3]);
        assert_eq!(f.dequantize(a).unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let q = f.tensor("t.q").unwrap();
        assert_eq!(
            q.offset, 32,
            "second tensor starts at the next aligned offset"
        );
        let qv = f.dequantize(q).unwrap();
        assert_eq!(qv[31], 31.0);
        assert_eq!(f.tensors().len(), 2);
    }

    #[test]
    fn version_2_and_custom_alignment() {
        let mut w = sample();
        w.set_version(2).add("general.alignment", Value::U32(64));
        let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(f.version(), 2);
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_start() % 64, 0);
        assert_eq!(f.tensor("t.q").unwrap().offset, 64);
        assert_eq!(f.dequantize(f.tensor("t.q").unwrap()).unwrap()[5], 5.0);
    }

    #[test]
    fn opens_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        sample().write(&p).unwrap();
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.tensors().len(), 2);
        let e = GgufFile::open(dir.path().join("missing.gguf")).unwrap_err();
        assert!(e.to_string().contains("missing.gguf"), "{e}");
    }

    #[test]
    fn bad_magic() {
        let mut b = sample().to_bytes();
        b[..4].copy_from_slice(b"GGJT");
        assert!(matches!(err(b), GgufError::BadMagic { found } if &found == b"GGJT"));
        assert!(matches!(
            err(b"{\"a\"".to_vec()),
            GgufError::BadMagic { .. }
        ));
        assert!(matches!(err(vec![]), GgufError::Truncated { .. }));
    }

    #[test]
    fn unsupported_versions() {
        for (v, needle) in [
            (1u32, "v1"),
            (4, "versions 2 and 3"),
            (3u32.swap_bytes(), "big-endian"),
        ] {
            let mut w = sample();
            w.set_version(v);
            let e = err(w.to_bytes());
            assert!(matches!(e, GgufError::UnsupportedVersion { version, .. } if version == v));
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    /// Every truncation of a valid file is an error, never a panic; cuts inside the header say
    /// which field they hit, cuts in the data name the tensor.
    #[test]
    fn every_truncation_is_an_error() {
        let full = sample().to_bytes();
        let f = GgufFile::from_bytes(full.clone()).unwrap();
        let data_start = f.data_start() as usize;
        // The writer pads after the last tensor; cutting that padding is harmless.
        let data_end = f
            .tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes)
            .max()
            .unwrap();
        for len in 0..data_start + data_end as usize {
            let e = err(full[..len].to_vec());
            assert!(
                matches!(
                    e,
                    GgufError::Truncated { .. } | GgufError::CountTooLarge { .. }
                ),
                "cut at {len}: {e}"
            );
            if len >= data_start {
                assert!(
                    e.to_string().contains("data of tensor"),
                    "cut at {len}: {e}"
                );
            }
        }
    }

    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = Vec::from(MAGIC);
        b.extend(version.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b
    }

    fn tensor_info(b: &mut Vec<u8>, name: &str, dims: &[u64], ty: u32, offset: u64) {
        encode_value(&Value::String(name.into()), b);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }

    fn pad_to(b: &mut Vec<u8>, align: usize) {
        b.resize(b.len().next_multiple_of(align), 0);
    }

    #[test]
    fn absurd_counts_are_rejected_before_allocating() {
        // 2^60 metadata entries in a 24-byte file.
        let e = err(header(3, 0, 1 << 60));
        assert!(
            matches!(e, GgufError::CountTooLarge { count, .. } if count == 1 << 60),
            "{e}"
        );
        // 2^60 tensors.
        assert!(matches!(
            err(header(3, 1 << 60, 0)),
            GgufError::CountTooLarge { .. }
        ));
        // u64::MAX tensors (count * size overflows).
        assert!(matches!(
            err(header(3, u64::MAX, 0)),
            GgufError::CountTooLarge { .. }
        ));
        // An array of 2^60 strings.
        let mut b = header(3, 0, 1);
        encode_value(&Value::String("tokenizer.ggml.tokens".into()), &mut b);
        b.extend(ValueType::Array.code().to_le_bytes());
        b.extend(ValueType::String.code().to_le_bytes());
        b.extend((1u64 << 60).to_le_bytes());
        b.extend([0u8; 64]);
        let e = err(b);
        assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("tokenizer.ggml.tokens"), "{e}");
        // A 2^60-byte string.
        let mut b = header(3, 0, 1);
        b.extend(4u64.to_le_bytes());
        b.extend(b"key!");
        b.extend(ValueType::String.code().to_le_bytes());
        b.extend((1u64 << 60).to_le_bytes());
        b.extend(b"short");
        let e = err(b);
        assert!(
            matches!(e, GgufError::Truncated { need, .. } if need == 1 << 60),
            "{e}"
        );
        assert!(e.to_string().contains("key!"), "{e}");
        // A key length of u64::MAX.
        let mut b = header(3, 0, 1);
        b.extend(u64::MAX.to_le_bytes());
        b.extend([0u8; 16]);
        assert!(matches!(err(b), GgufError::Truncated { .. }));
    }

    #[test]
    fn corrupt_values() {
        let one = |key: &str, code: u32, payload: &[u8]| {
            let mut b = header(3, 0, 1);
            encode_value(&Value::String(key.into()), &mut b);
            b.extend(code.to_le_bytes());
            b.extend(payload);
            b
        };
        assert!(matches!(
            err(one("k", 13, &[0; 8])),
            GgufError::UnknownValueType { code: 13, .. }
        ));
        assert!(matches!(
            err(one("k", 7, &[2])),
            GgufError::InvalidBool { byte: 2, .. }
        ));
        let mut bad_utf8 = 2u64.to_le_bytes().to_vec();
        bad_utf8.extend([0xC3, 0x28]);
        let e = err(one("k", 8, &bad_utf8));
        assert!(matches!(e, GgufError::InvalidUtf8 { .. }), "{e}");
        // Array with an unknown element type.
        let mut arr = 99u32.to_le_bytes().to_vec();
        arr.extend(1u64.to_le_bytes());
        arr.extend([0u8; 8]);
        assert!(matches!(
            err(one("k", 9, &arr)),
            GgufError::UnknownValueType { code: 99, .. }
        ));
        // Arrays nested past the limit.
        let mut nested = Vec::new();
        for _ in 0..MAX_ARRAY_DEPTH + 1 {
            nested.extend(ValueType::Array.code().to_le_bytes());
            nested.extend(1u64.to_le_bytes());
        }
        nested.extend([0u8; 16]);
        assert!(matches!(
            err(one("k", 9, &nested)),
            GgufError::NestingTooDeep { .. }
        ));
        // Invalid UTF-8 inside an array names the element.
        let mut arr = ValueType::String.code().to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        encode_value(&Value::String("ok".into()), &mut arr);
        arr.extend(1u64.to_le_bytes());
        arr.push(0xFF);
        let e = err(one("tokens", 9, &arr));
        assert!(
            e.to_string()
                .contains("element #1 of metadata key \"tokens\""),
            "{e}"
        );
        // Invalid UTF-8 key.
        let mut b = header(3, 0, 1);
        b.extend(1u64.to_le_bytes());
        b.push(0xFF);
        b.extend(4u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        assert!(matches!(err(b), GgufError::InvalidUtf8 { .. }));
    }

    #[test]
    fn duplicates_and_alignment() {
        let mut w = GgufWriter::new();
        w.add("k", Value::U8(1)).add("k", Value::U8(2));
        assert!(matches!(err(w.to_bytes()), GgufError::DuplicateKey { key } if key == "k"));
        let mut w = GgufWriter::new();
        w.add_f32("t", &[1], &[1.0]).add_f32("t", &[1], &[2.0]);
        assert!(matches!(err(w.to_bytes()), GgufError::DuplicateTensor { name } if name == "t"));
        for a in [0u32, 3, 48] {
            let mut w = GgufWriter::new();
            w.add("general.alignment", Value::U32(a));
            assert!(matches!(err(w.to_bytes()), GgufError::BadAlignment(x) if x == u64::from(a)));
        }
        let mut w = GgufWriter::new();
        w.add("general.alignment", Value::String("32".into()));
        assert!(matches!(err(w.to_bytes()), GgufError::WrongKeyType { .. }));
    }

    /// Builds a file with the given tensor infos followed by `data_len` bytes of data.
    fn with_tensors(infos: &[(&str, &[u64], u32, u64)], data_len: usize) -> Vec<u8> {
        let mut b = header(3, infos.len() as u64, 0);
        for (name, dims, ty, off) in infos {
            tensor_info(&mut b, name, dims, *ty, *off);
        }
        pad_to(&mut b, 32);
        b.resize(b.len() + data_len, 0);
        b
    }

    #[test]
    fn tensor_layout_errors() {
        // Sanity: a valid layout parses.
        GgufFile::from_bytes(with_tensors(&[("a", &[8], 0, 0), ("b", &[8], 0, 32)], 64)).unwrap();
        // Offset past the end of the file.
        let e = err(with_tensors(&[("a", &[8], 0, 1 << 40)], 64));
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("\"a\""), "{e}");
        // Offset + size overflows u64.
        assert!(matches!(
            err(with_tensors(&[("a", &[8], 0, u64::MAX - 7)], 64)),
            GgufError::BadTensor { .. } | GgufError::Truncated { .. }
        ));
        // Data truncated: needs 32 bytes, 16 present.
        let e = err(with_tensors(&[("a", &[8], 0, 0)], 16));
        assert!(matches!(e, GgufError::Truncated { need: 32, .. }), "{e}");
        // Misaligned offset.
        let e = err(with_tensors(&[("a", &[2], 0, 4)], 64));
        assert!(
            e.to_string().contains("not a multiple of the alignment 32"),
            "{e}"
        );
        // Overlapping tensors.
        let e = err(with_tensors(&[("a", &[16], 0, 0), ("b", &[8], 0, 32)], 96));
        assert!(
            e.to_string().contains("overlaps the data of tensor \"a\""),
            "{e}"
        );
        // Unknown tensor type.
        let e = err(with_tensors(&[("a", &[8], 99, 0)], 64));
        assert!(
            matches!(e, GgufError::UnknownTensorType { code: 99, ref name } if name == "a"),
            "{e}"
        );
        // Wrong element count for the block size: 33 weights of Q8_0.
        let e = err(with_tensors(&[("a", &[33, 2], 8, 0)], 256));
        assert!(
            e.to_string()
                .contains("not a multiple of the Q8_0 (8) block size 32"),
            "{e}"
        );
        // Too many dimensions; dimensions whose product overflows.
        assert!(matches!(
            err(with_tensors(&[("a", &[1, 1, 1, 1, 1], 0, 0)], 64)),
            GgufError::BadTensor { .. }
        ));
        let e = err(with_tensors(&[("a", &[1 << 32, 1 << 32], 0, 0)], 64));
        assert!(e.to_string().contains("overflow"), "{e}");
        // 2^31 x 2^31 F32 weights: the count fits, the byte size does not.
        let e = err(with_tensors(&[("a", &[1 << 31, 1 << 31], 0, 0)], 64));
        assert!(e.to_string().contains("byte size"), "{e}");
        // 2^20 x 2^20 F32 weights fit u64 but not the file.
        let e = err(with_tensors(&[("a", &[1 << 20, 1 << 20], 0, 0)], 64));
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    }

    #[test]
    fn unsupported_type_is_readable_but_not_dequantizable() {
        let mut w = GgufWriter::new();
        w.add_tensor(
            "blk.0.ffn_down.weight",
            &[256],
            GgmlType::Q4_K,
            vec![0; 144],
        );
        let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
        let t = f.tensor("blk.0.ffn_down.weight").unwrap();
        assert_eq!(t.n_bytes, 144);
        let e = f.dequantize(t).unwrap_err();
        assert!(e.to_string().contains("Q4_K (12)"), "{e}");
        assert!(e.to_string().contains("blk.0.ffn_down.weight"), "{e}");
        let e = f.dequantize_into(f.tensor("blk.0.ffn_down.weight").unwrap(), &mut [0.0; 3]);
        assert!(e.is_err());
    }

    /// Flipping any single header byte to several values never panics.
    #[test]
    fn header_byte_corruption_never_panics() {
        let full = sample().to_bytes();
        let data_start = GgufFile::from_bytes(full.clone()).unwrap().data_start() as usize;
        for pos in 0..data_start {
            for v in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                let mut b = full.clone();
                b[pos] = v;
                let _ = GgufFile::from_bytes(b);
            }
        }
    }
}
