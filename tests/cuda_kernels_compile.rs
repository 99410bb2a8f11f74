//! Every CUDA kernel compiles with NVRTC 13.0 for sm_80 (A100) and sm_90 (H100,
//! H200) to PTX, which `ptxas` then assembles with its resource report (and, for
//! sm_90, to CUBIN, the path the backend takes at run time), and no kernel spills
//! registers or uses a stack frame. Needs no GPU: NVRTC and ptxas run anywhere.
//!
//! The compilers come from NVIDIA's Python wheels, which `scripts/setup/fetch-cuda-tools.sh`
//! (run by `scripts/test.sh`) puts in `.cache/cuda-tools`; without them this test
//! fails and says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use palr::engine::cuda::FILES;
use palr::engine::cuda::nvrtc::{self, Output};

const ARCHS: [u32; 2] = [80, 90];

fn tools() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/cuda-tools/nvidia/cu13");
    assert!(
        dir.join("lib/libnvrtc.so.13").exists() && dir.join("bin/ptxas").exists(),
        "NVRTC 13.0 and ptxas not found under {}: run scripts/setup/fetch-cuda-tools.sh \
         (scripts/test.sh runs it) to fetch them",
        dir.display()
    );
    dir
}

/// One kernel's line of `ptxas -v`.
#[derive(Debug, Default, Clone)]
struct Resources {
    registers: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
}

/// Parses `ptxas -v` output into per-entry resources.
fn parse_ptxas(text: &str) -> BTreeMap<String, Resources> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let num_before = |line: &str, what: &str| -> Option<u32> {
        let i = line.find(what)?;
        line[..i]
            .split(|c: char| !c.is_ascii_digit())
            .rev()
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    for line in text.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.insert(name.clone(), Resources::default());
            current = Some(name);
            continue;
        }
        let Some(name) = &current else { continue };
        let r = out.get_mut(name).unwrap();
        if line.contains("bytes stack frame") {
            r.stack = num_before(line, "bytes stack frame").unwrap_or(u32::MAX);
            r.spill_stores = num_before(line, "bytes spill stores").unwrap_or(u32::MAX);
            r.spill_loads = num_before(line, "bytes spill loads").unwrap_or(u32::MAX);
        }
        if line.contains("Used ") && line.contains("registers") {
            r.registers = num_before(line, "registers").unwrap_or(u32::MAX);
            r.smem = num_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[test]
fn ptxas_report_is_parsed() {
    let sample = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'add_f32' for 'sm_90'\n\
        ptxas info    : Function properties for add_f32\n\
        \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
        ptxas info    : Used 10 registers, used 1 barriers, 35840 bytes smem, 376 bytes cmem[0]\n";
    let r = &parse_ptxas(sample)["add_f32"];
    assert_eq!(
        (r.registers, r.stack, r.spill_stores, r.spill_loads, r.smem),
        (10, 8, 4, 12, 35840)
    );
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    let dir = tools();
    nvrtc::load_from_dir(&dir.join("lib")).expect("load NVRTC from the fetched wheel");
    let (major, minor) = nvrtc::version().unwrap();
    assert_eq!(
        (major, minor),
        (13, 0),
        "NVRTC must be 13.0 (what the 580 drivers load)"
    );
    let archs = nvrtc::supported_archs().unwrap();
    for a in ARCHS {
        assert!(
            archs.contains(&a),
            "NVRTC {major}.{minor} lacks sm_{a}: {archs:?}"
        );
    }

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda-kernels");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut table = String::new();
    let mut failures = Vec::new();
    for arch in ARCHS {
        let t = std::time::Instant::now();
        let ptx = nvrtc::compile_all(arch, Output::Ptx).unwrap_or_else(|e| panic!("{e}"));
        // The run-time path (CUBIN straight from NVRTC), for the GPUs we run on.
        if arch == 90 {
            for bin in nvrtc::compile_all(arch, Output::Cubin).unwrap_or_else(|e| panic!("{e}")) {
                assert!(
                    bin.bytes.starts_with(b"\x7fELF"),
                    "{} (sm_{arch}): CUBIN is not an ELF image",
                    bin.file
                );
            }
        }
        eprintln!(
            "sm_{arch}: NVRTC compiled {} files in {:.1?}",
            FILES.len(),
            t.elapsed()
        );
        for img in &ptx {
            assert!(
                img.log.is_empty(),
                "{} (sm_{arch}) compiled with warnings:\n{}",
                img.file,
                img.log
            );
            let text = img.ptx_text().expect("PTX is text");
            let file = FILES.iter().find(|f| f.name == img.file).unwrap();
            for e in file.entries {
                assert!(
                    text.contains(&format!(".entry {e}(")),
                    "{} (sm_{arch}): the PTX lacks entry {e}",
                    img.file
                );
            }
            let path = out_dir.join(format!("{}.sm_{arch}.ptx", img.file));
            std::fs::write(&path, text).unwrap();
            let res = Command::new(dir.join("bin/ptxas"))
                .arg(format!("-arch=sm_{arch}"))
                .arg("-v")
                .arg(&path)
                .arg("-o")
                .arg(out_dir.join(format!("{}.sm_{arch}.cubin", img.file)))
                .output()
                .expect("run ptxas");
            let report = String::from_utf8_lossy(&res.stderr).to_string()
                + &String::from_utf8_lossy(&res.stdout);
            assert!(
                res.status.success(),
                "ptxas failed on {}:\n{report}",
                path.display()
            );
            let parsed = parse_ptxas(&report);
            for e in file.entries {
                let r = parsed
                    .get(*e)
                    .unwrap_or_else(|| panic!("ptxas said nothing about {e}:\n{report}"));
                table += &format!(
                    "sm_{arch}  {:<32} {:>4} regs {:>6} B smem {:>4} B stack {:>4}/{:<4} B spill st/ld\n",
                    e, r.registers, r.smem, r.stack, r.spill_stores, r.spill_loads
                );
                if r.stack != 0 || r.spill_stores != 0 || r.spill_loads != 0 {
                    failures.push(format!("sm_{arch} {e}: {r:?}"));
                }
                if r.registers == u32::MAX {
                    failures.push(format!("sm_{arch} {e}: no register count in\n{report}"));
                }
            }
        }
    }
    eprintln!("{table}");
    std::fs::write(out_dir.join("resources.txt"), &table).unwrap();
    assert!(
        failures.is_empty(),
        "kernels with local memory (stack frame or spills):\n{}",
        failures.join("\n")
    );
}
