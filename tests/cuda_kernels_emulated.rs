//! The CUDA kernels, exactly as embedded in the binary, run on CPU threads
//! against double-precision references — no GPU needed, so every CI run checks
//! their indexing, masking, synchronisation and arithmetic (not their speed).
//!
//! `tests/kernel_emu/` holds a host stand-in for `kernels/common.cuh` and a small
//! CUDA execution model (a block's threads are OS threads, `__syncthreads` a
//! barrier, warp shuffles and `mma.sync` exchanges between a warp's lanes, the
//! mma fragment map the one common.cuh states). The sources come from
//! [`palr::engine::cuda::FILES`]; the only edit is that dynamic shared memory
//! becomes a pointer. Built with AddressSanitizer, so an out-of-bounds access
//! aborts the run. Needs a C++20 compiler (`CXX`, else `c++`); without one the
//! test prints `skipped: ...`.

use std::path::PathBuf;
use std::process::Command;

use palr::engine::cuda::FILES;

fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let ok = Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(cxx)
}

#[test]
fn kernels_compute_the_right_thing_on_an_emulated_gpu() {
    let Some(cxx) = compiler() else {
        eprintln!("skipped: no C++ compiler (set CXX)");
        return;
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-emu");
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = String::new();
    for f in FILES {
        let src = f.source.replace(
            "extern __shared__ float smem[];",
            "float* smem = emu_dyn_smem();",
        );
        all += &format!("// ---- {}\n{src}\n", f.name);
    }
    std::fs::write(dir.join("kernels_all.inc"), all).unwrap();
    let exe = dir.join("kernel_emu");
    let t = std::time::Instant::now();
    let build = |sanitize: bool| {
        let mut c = Command::new(&cxx);
        c.args([
            "-std=c++20",
            "-O1",
            "-g",
            "-pthread",
            "-Wno-unknown-pragmas",
        ]);
        if sanitize {
            c.arg("-fsanitize=address");
        }
        c.arg("-I")
            .arg(repo.join("tests/kernel_emu"))
            .arg("-I")
            .arg(&dir)
            .arg(repo.join("tests/kernel_emu/main.cpp"))
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("run the C++ compiler")
    };
    let mut out = build(true);
    if !out.status.success() {
        // A compiler without the AddressSanitizer runtime: the checks still run.
        eprintln!(
            "note: building with AddressSanitizer failed, building without:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out = build(false);
    }
    assert!(
        out.status.success(),
        "{cxx} could not build the kernel emulation:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("built in {:.1?}", t.elapsed());
    let t = std::time::Instant::now();
    let run = Command::new(&exe)
        .output()
        .expect("run the kernel emulation");
    let report =
        String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    eprintln!("{report}ran in {:.1?}", t.elapsed());
    assert!(
        run.status.success(),
        "the emulated kernels failed (FAIL lines above, or an AddressSanitizer report)"
    );
    assert!(
        report.contains("0 failure(s)"),
        "the emulation did not finish:\n{report}"
    );
}

/// Kernels the emulation does not run yet, each with the reason. A new kernel entry in
/// [`FILES`] must either be exercised by `tests/kernel_emu/main.cpp` or be listed here, so
/// the emulated coverage never shrinks silently.
const NOT_EMULATED: &[(&str, &str)] = &[
    ("add_f32", "one-line element-wise add"),
    ("bias_add_f32", "one-line element-wise add"),
    ("cast_f32_bf16", "one-line conversion"),
    ("cast_bf16_f32", "one-line conversion"),
    ("fill_f32", "one-line fill"),
    ("fill_bf16", "one-line fill"),
    (
        "fill_uniform_bf16",
        "benchmark weights only; its f32 twin is emulated",
    ),
    (
        "kv_store_bf16_bf16",
        "the bf16-input twin of kv_store_f32_bf16 (emulated)",
    ),
    (
        "attn_decode_hd32_bf16",
        "bf16-query twin of attn_decode_hd32_f32 (emulated): not yet",
    ),
    (
        "attn_decode_hd64_bf16",
        "bf16-query twin of attn_decode_hd64_f32 (emulated): not yet",
    ),
    (
        "attn_decode_hd128_bf16",
        "bf16-query twin of attn_decode_hd128_f32 (emulated): not yet",
    ),
    (
        "attn_decode_hd256_bf16",
        "bf16-query twin of attn_decode_hd256_f32 (emulated): not yet",
    ),
    (
        "mma_selftest",
        "a GPU self-check of the mma fragment map the emulation itself models",
    ),
];

/// Every kernel entry point is either run by the emulation (named in
/// `tests/kernel_emu/main.cpp`) or listed in [`NOT_EMULATED`] with a reason — and nothing
/// is listed there that is emulated or no longer exists.
#[test]
fn every_kernel_is_emulated_or_listed_with_a_reason() {
    let main = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kernel_emu/main.cpp"),
    )
    .unwrap();
    let named = |entry: &str| {
        main.match_indices(entry).any(|(i, _)| {
            let before = main[..i].chars().next_back();
            let after = main[i + entry.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            !ident(before) && !ident(after)
        })
    };
    let entries: Vec<&str> = FILES
        .iter()
        .flat_map(|f| f.entries.iter().copied())
        .collect();
    let listed = |e: &str| NOT_EMULATED.iter().any(|(n, _)| *n == e);
    let missing: Vec<&str> = entries
        .iter()
        .copied()
        .filter(|e| !named(e) && !listed(e))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels neither emulated (tests/kernel_emu/main.cpp) nor listed in NOT_EMULATED: {missing:?}"
    );
    for (name, why) in NOT_EMULATED {
        assert!(
            entries.contains(name),
            "NOT_EMULATED lists {name}, which no kernel file defines"
        );
        assert!(
            !named(name),
            "NOT_EMULATED lists {name} ({why}), but main.cpp runs it: drop it"
        );
    }
    eprintln!(
        "{} of {} kernels emulated; not emulated: {}",
        entries.len() - NOT_EMULATED.len(),
        entries.len(),
        NOT_EMULATED
            .iter()
            .map(|(n, w)| format!("{n} ({w})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
