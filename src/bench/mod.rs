//! Benchmarks: the measuring code behind `palr bench engine|gpu|recommend|retrieve`.
//!
//! Each benchmark takes plain options and returns a report that serialises to JSON and prints
//! as a table; flags, `anyhow` and the exit status are the command line's (`cli::bench`), so
//! this module, like the rest of the library, knows nothing of clap.
//!
//! - [`engine`]: prefill and decode throughput of one model, peak RSS;
//! - [`gpu`]: CUDA timings next to their physical floors;
//! - [`recommend`]: a running server (or several) from a client: latency, throughput, and
//!   every call's outcome by status code, with deadlines and open-loop load;
//! - [`retrieve`]: per-call latency of retriever plugins and fusions through the host;
//! - [`stats`]: the one median and the nearest-rank percentiles every table uses.
//!
//! Here: [`BenchError`], and what every report says of the machine ([`cpu_description`],
//! [`peak_rss_mib`], [`loadavg`]).

pub mod engine;
pub mod gpu;
pub mod recommend;
pub mod retrieve;
pub mod stats;

/// Why a benchmark could not run (an outcome it measures, such as a refused call, is not
/// an error: it is counted in the report).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting that cannot work; the message names the option to change.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Cuda(#[from] crate::engine::cuda::CudaError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("retriever {name}: {source}")]
    Retriever {
        name: String,
        #[source]
        source: crate::retrieval::RetrievalError,
    },
    #[error(transparent)]
    Client(#[from] crate::service::client::ClientError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the benchmarks.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// `Err(BenchError::Invalid(message))` unless `ok`.
fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(BenchError::Invalid(message()))
    }
}

/// This machine's CPU for benchmark tables: its model name, the cores this process may use and
/// the vector extensions the kernels may use (from `/proc/cpuinfo`; "unknown CPU" elsewhere).
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let have: Vec<&str> = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "amx_bf16",
        "amx_tile",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|x| x == *f))
    .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores, ISA: {}", have.join(" "))
}

/// The process's peak resident set size in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The machine's 1-, 5- and 15-minute load averages ("unknown" off Linux): other work on
/// the machine skews latency, so reports record it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
