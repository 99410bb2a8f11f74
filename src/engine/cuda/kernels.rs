//! The kernel sources embedded in the binary (`kernels/*.cu`, one file per family
//! of ops, one entry point per element type) and the loaded entry points.
//!
//! Each file lists the entry points it defines; loading checks that every one is
//! present, and the compile tests check the list against the PTX, so a renamed
//! kernel fails at once instead of at its first launch.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::Ptx;

use super::CudaError;
use super::nvrtc::{Image, Output};

/// One `.cu` file.
#[derive(Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    /// The `extern "C" __global__` functions it defines.
    pub entries: &'static [&'static str],
}

/// The header every kernel includes, handed to NVRTC in memory.
pub const COMMON_HEADER: (&str, &str) = (
    "palr_common.cuh",
    include_str!("../../../kernels/common.cuh"),
);

pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "elementwise.cu",
        source: include_str!("../../../kernels/elementwise.cu"),
        entries: &[
            "embed_bf16_f32",
            "add_f32",
            "cast_f32_bf16",
            "cast_bf16_f32",
            "bias_add_f32",
            "silu_mul_f32_bf16",
            "kv_store_f32_bf16",
            "kv_store_bf16_bf16",
            "fill_f32",
            "fill_bf16",
            "fill_uniform_bf16",
            "fill_uniform_f32",
        ],
    },
    KernelFile {
        name: "rmsnorm.cu",
        source: include_str!("../../../kernels/rmsnorm.cu"),
        entries: &["rmsnorm_f32_bf16", "add_rmsnorm_f32_bf16"],
    },
    KernelFile {
        name: "rope.cu",
        source: include_str!("../../../kernels/rope.cu"),
        entries: &["rope_f32"],
    },
    KernelFile {
        name: "softmax.cu",
        source: include_str!("../../../kernels/softmax.cu"),
        entries: &["log_softmax_f32", "token_logprob_f32", "argmax_f32"],
    },
    KernelFile {
        name: "attention_prefill.cu",
        source: include_str!("../../../kernels/attention_prefill.cu"),
        entries: &[
            "attn_prefill_hd64_f32_bf16",
            "attn_prefill_hd128_f32_bf16",
            "attn_prefill_hd64_bf16_bf16",
            "attn_prefill_hd128_bf16_bf16",
            "mma_selftest",
        ],
    },
    KernelFile {
        name: "attention_decode.cu",
        source: include_str!("../../../kernels/attention_decode.cu"),
        entries: &[
            "attn_decode_hd32_f32",
            "attn_decode_hd64_f32",
            "attn_decode_hd128_f32",
            "attn_decode_hd256_f32",
            "attn_decode_hd32_bf16",
            "attn_decode_hd64_bf16",
            "attn_decode_hd128_bf16",
            "attn_decode_hd256_bf16",
            "attn_merge_bf16",
        ],
    },
    KernelFile {
        name: "lora.cu",
        source: include_str!("../../../kernels/lora.cu"),
        entries: &["lora_merge_bf16", "lora_shrink_bf16", "lora_expand_f32"],
    },
];

/// Head sizes of the tensor-core prefill kernel (`attn_prefill_hd{64,128}_*`).
pub const PREFILL_HEAD_DIMS: &[usize] = &[64, 128];
/// Head sizes of the split-sequence kernel (`attn_decode_hd*_*`), which serves all
/// other cases too.
pub const DECODE_HEAD_DIMS: &[usize] = &[32, 64, 128, 256];
/// Most query heads per KV head the split-sequence kernel handles.
pub const DECODE_MAX_GROUP: usize = 16;

/// Every entry point, loaded into one context.
pub struct Kernels {
    funcs: HashMap<&'static str, CudaFunction>,
}

impl Kernels {
    /// Loads `images` (one per file of [`FILES`], in order) into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>, images: &[Image]) -> Result<Self, CudaError> {
        let mut funcs = HashMap::new();
        for (file, img) in FILES.iter().zip(images) {
            debug_assert_eq!(file.name, img.file);
            let ptx = match img.output {
                Output::Ptx => Ptx::from_src(img.ptx_text().unwrap_or_default()),
                Output::Cubin => Ptx::from_binary(img.bytes.clone()),
            };
            let module = ctx.load_module(ptx).map_err(|e| CudaError::Driver {
                context: format!("loading {} (sm_{} {:?})", file.name, img.arch, img.output),
                source: e,
            })?;
            for &entry in file.entries {
                let f = module.load_function(entry).map_err(|e| CudaError::Driver {
                    context: format!("finding kernel {entry} in {}", file.name),
                    source: e,
                })?;
                funcs.insert(entry, f);
            }
        }
        Ok(Kernels { funcs })
    }

    /// The entry point `name` (one of the names in [`FILES`]).
    pub fn get(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.funcs
            .get(name)
            .ok_or_else(|| CudaError::Invalid(format!("no kernel named {name}")))
    }
}
