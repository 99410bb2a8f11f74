//! Hugging Face safetensors checkpoints, memory-mapped.
//!
//! Reads `model.safetensors`, or the shards listed by `model.safetensors.index.json`
//! (format: <https://huggingface.co/docs/safetensors>). Files are mapped, never read
//! whole; a tensor is a typed window into its file's mapping, so a backend may keep
//! the mapping (zero copy) or widen/narrow it into memory of its own.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::SafeTensors;

use super::{ModelError, Result};

/// Element types a checkpoint tensor may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the file's mapping.
    start: usize,
    end: usize,
}

/// An opened checkpoint: every tensor of every shard, by name.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, Arc<Mmap>)>,
    tensors: HashMap<String, Entry>,
}

/// A tensor inside a mapped checkpoint file.
#[derive(Clone)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    map: &'a Arc<Mmap>,
    start: usize,
    end: usize,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors` or the shards named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_names: Vec<String> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
                path: index.clone(),
                source: e,
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                ModelError::Checkpoint(format!("{}: invalid JSON: {e}", index.display()))
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::Checkpoint(format!("{}: no `weight_map` object", index.display()))
                })?;
            let mut names = BTreeSet::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    ModelError::Checkpoint(format!(
                        "{}: weight_map[{tensor:?}] is not a file name",
                        index.display()
                    ))
                })?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(ModelError::Checkpoint(format!(
                        "{}: shard name {file:?} must be a plain file name in the model directory",
                        index.display()
                    )));
                }
                names.insert(file.to_string());
            }
            names.into_iter().collect()
        } else if single.exists() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(ModelError::Checkpoint(format!(
                "{}: neither model.safetensors nor model.safetensors.index.json found",
                dir.display()
            )));
        };

        Self::open_files(dir, &shard_names)
    }

    /// Opens the named safetensors files of `dir` as one checkpoint.
    pub fn open_files(dir: &Path, shard_names: &[String]) -> Result<Self> {
        let mut files = Vec::new();
        let mut tensors = HashMap::new();
        for (file_idx, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| ModelError::Io {
                path: path.clone(),
                source: e,
            })?;
            // SAFETY: the mapping is read-only; checkpoint files are not expected to be
            // modified while the server runs (the same contract every mmap loader has).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io {
                path: path.clone(),
                source: e,
            })?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::Checkpoint(format!(
                    "{}: not a valid safetensors file: {e}",
                    path.display()
                ))
            })?;
            for (tname, view) in st.tensors() {
                let dtype = match view.dtype() {
                    safetensors::Dtype::F32 => DType::F32,
                    safetensors::Dtype::F16 => DType::F16,
                    safetensors::Dtype::BF16 => DType::BF16,
                    other => {
                        return Err(ModelError::Checkpoint(format!(
                            "{}: tensor {tname:?} has dtype {other:?}; supported: F32, F16, BF16",
                            path.display()
                        )));
                    }
                };
                let data = view.data();
                let start = data.as_ptr() as usize - map.as_ptr() as usize;
                let entry = Entry {
                    file: file_idx,
                    dtype,
                    shape: view.shape().to_vec(),
                    start,
                    end: start + data.len(),
                };
                if tensors.insert(tname.clone(), entry).is_some() {
                    return Err(ModelError::Checkpoint(format!(
                        "tensor {tname:?} appears in more than one shard"
                    )));
                }
            }
            drop(st);
            files.push((path, Arc::new(map)));
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            tensors,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        let (key, e) =
            self.tensors
                .get_key_value(name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                    dir: self.dir.clone(),
                })?;
        Ok(TensorRef {
            name: key,
            dtype: e.dtype,
            shape: &e.shape,
            map: &self.files[e.file].1,
            start: e.start,
            end: e.end,
        })
    }

    /// The tensor called `name`, checked to have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<TensorRef<'_>> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.to_vec(),
            });
        }
        Ok(t)
    }
}

impl std::fmt::Debug for TensorRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TensorRef({:?}, {:?}, {:?})",
            self.name, self.dtype, self.shape
        )
    }
}

impl<'a> TensorRef<'a> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &'a [u8] {
        &self.map[self.start..self.end]
    }

    /// The mapping and byte offset, for backends that keep weights mapped (zero copy).
    pub fn mapping(&self) -> (&'a Arc<Mmap>, usize) {
        (self.map, self.start)
    }

    /// The elements as `f32`, if stored as `f32` and suitably aligned (zero copy).
    pub fn as_f32_slice(&self) -> Option<&'a [f32]> {
        (self.dtype == DType::F32)
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }

    /// The elements as `bf16`, if stored as `bf16` and suitably aligned (zero copy).
    pub fn as_bf16_slice(&self) -> Option<&'a [bf16]> {
        (self.dtype == DType::BF16)
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }

    /// Every element widened (or copied) to `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes();
        match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    /// Every element as `bf16` (round to nearest even from f32/f16).
    pub fn to_bf16(&self) -> Vec<bf16> {
        match self.dtype {
            DType::BF16 => self
                .bytes()
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
            _ => self.to_f32().into_iter().map(bf16::from_f32).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(dir: &Path, file: &str, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(file)).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("palr-weights-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_single_and_converts_dtypes() {
        let d = tmp("single");
        let f32s: Vec<u8> = [1.5f32, -2.0, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bf: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let hf: Vec<u8> = [0.5f32]
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        write(
            &d,
            "model.safetensors",
            &[
                ("a", safetensors::Dtype::F32, vec![3], f32s),
                ("b", safetensors::Dtype::BF16, vec![1, 2], bf),
                ("c", safetensors::Dtype::F16, vec![1], hf),
            ],
        );
        let ck = Checkpoint::open(&d).unwrap();
        assert_eq!(ck.get("a").unwrap().to_f32(), vec![1.5, -2.0, 3.25]);
        assert_eq!(
            ck.get_shaped("b", &[1, 2]).unwrap().to_f32(),
            vec![1.5, -2.0]
        );
        assert_eq!(ck.get("c").unwrap().to_bf16(), vec![bf16::from_f32(0.5)]);
        let err = ck.get_shaped("b", &[2, 1]).unwrap_err().to_string();
        assert!(err.contains("\"b\"") && err.contains("[2, 1]"), "{err}");
        let err = ck.get("nope").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn reads_sharded_index() {
        let d = tmp("sharded");
        let one = 1f32.to_le_bytes().to_vec();
        write(
            &d,
            "model-00001-of-00002.safetensors",
            &[("x", safetensors::Dtype::F32, vec![1], one.clone())],
        );
        write(
            &d,
            "model-00002-of-00002.safetensors",
            &[("y", safetensors::Dtype::F32, vec![1], one)],
        );
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let ck = Checkpoint::open(&d).unwrap();
        assert_eq!(ck.get("y").unwrap().to_f32(), vec![1.0]);
        assert_eq!(ck.names().count(), 2);
    }

    #[test]
    fn corrupt_files_are_errors() {
        let d = tmp("corrupt");
        let err = |d: &Path| Checkpoint::open(d).err().expect("should fail").to_string();
        assert!(err(&d).contains("neither model.safetensors"));
        // Header length far past the end of the file.
        std::fs::write(d.join("model.safetensors"), u64::MAX.to_le_bytes()).unwrap();
        assert!(err(&d).contains("not a valid safetensors"));
        // Truncated data.
        let f32s: Vec<u8> = [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write(
            &d,
            "model.safetensors",
            &[("a", safetensors::Dtype::F32, vec![2], f32s)],
        );
        let mut bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(d.join("model.safetensors"), &bytes).unwrap();
        assert!(err(&d).contains("not a valid safetensors"));
        // Garbage JSON header.
        let mut junk = 8u64.to_le_bytes().to_vec();
        junk.extend_from_slice(b"{not json");
        std::fs::write(d.join("model.safetensors"), &junk).unwrap();
        assert!(err(&d).contains("not a valid safetensors"));
        // An index naming a shard outside the directory.
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"../x"}}"#,
        )
        .unwrap();
        assert!(err(&d).contains("plain file name"));
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"gone.safetensors"}}"#,
        )
        .unwrap();
        assert!(err(&d).contains("gone.safetensors"));
        // Unsupported dtype.
        std::fs::remove_file(d.join("model.safetensors.index.json")).unwrap();
        write(
            &d,
            "model.safetensors",
            &[("i", safetensors::Dtype::I32, vec![1], vec![0; 4])],
        );
        assert!(err(&d).contains("I32"));
    }
}
