//! Run-time compilation of palr's kernels with NVRTC (NVIDIA's CUDA C++
//! run-time compiler, `nvrtc.h`).
//!
//! The kernel sources (`kernels/*.cu`) are embedded in the binary. They are
//! compiled for the device found at load time — CUBIN for `sm_XX` where NVRTC
//! knows the device's architecture, else PTX that the driver compiles — once per
//! process and architecture, and cached ([`images`]). NVRTC needs no GPU, so the
//! tests compile every kernel for sm_80 and sm_90 on machines without one.
//!
//! NVRTC is called through its C API directly (symbols looked up in the library
//! [`super::loader`] opened), so that a missing library is an error, not a panic.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use super::CudaError;
use super::kernels::{COMMON_HEADER, FILES, KernelFile};
use super::loader;

type Program = *mut c_void;

/// The NVRTC entry points palr uses.
struct Api {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    destroy: unsafe extern "C" fn(*mut Program) -> c_int,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    num_archs: unsafe extern "C" fn(*mut c_int) -> c_int,
    archs: unsafe extern "C" fn(*mut c_int) -> c_int,
}

fn api_slot() -> &'static Mutex<Option<&'static Api>> {
    static S: OnceLock<Mutex<Option<&'static Api>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(None))
}

/// Opens NVRTC (and its built-ins library) from the usual places ([`loader`]).
fn api() -> Result<&'static Api, CudaError> {
    let mut slot = api_slot().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = *slot {
        return Ok(a);
    }
    // NVRTC opens its built-ins by name during each compilation; loading them
    // first (by path) makes that lookup succeed wherever they were found.
    loader::load(loader::NVRTC_BUILTINS).map_err(|detail| CudaError::MissingLibrary {
        lib: loader::NVRTC_BUILTINS,
        detail,
    })?;
    let lib =
        loader::open_for_symbols(loader::NVRTC).map_err(|detail| CudaError::MissingLibrary {
            lib: loader::NVRTC,
            detail,
        })?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol is NVRTC's documented C function of this name, and the
            // field's type is its C signature (nvrtc.h, CUDA 13.0).
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| CudaError::Nvrtc(format!("{} lacks {}: {e}", loader::NVRTC, $name)))?
        };
    }
    let a = Api {
        version: sym!("nvrtcVersion"),
        error_string: sym!("nvrtcGetErrorString"),
        create: sym!("nvrtcCreateProgram"),
        destroy: sym!("nvrtcDestroyProgram"),
        compile: sym!("nvrtcCompileProgram"),
        log_size: sym!("nvrtcGetProgramLogSize"),
        log: sym!("nvrtcGetProgramLog"),
        ptx_size: sym!("nvrtcGetPTXSize"),
        ptx: sym!("nvrtcGetPTX"),
        cubin_size: sym!("nvrtcGetCUBINSize"),
        cubin: sym!("nvrtcGetCUBIN"),
        num_archs: sym!("nvrtcGetNumSupportedArchs"),
        archs: sym!("nvrtcGetSupportedArchs"),
    };
    let a: &'static Api = Box::leak(Box::new(a));
    *slot = Some(a);
    Ok(a)
}

/// Loads NVRTC from `dir` (a directory holding `libnvrtc.so.13` and its built-ins),
/// e.g. the Python wheel's `nvidia/cu13/lib` the compile tests fetch.
pub fn load_from_dir(dir: &Path) -> Result<(), CudaError> {
    let dirs = [dir.to_path_buf()];
    for lib in [loader::NVRTC_BUILTINS, loader::NVRTC] {
        loader::load_from(lib, &dirs)
            .map_err(|detail| CudaError::MissingLibrary { lib, detail })?;
    }
    api().map(|_| ())
}

fn check(a: &Api, rc: c_int, what: &str) -> Result<(), CudaError> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
    let msg = unsafe { CStr::from_ptr((a.error_string)(rc)) }.to_string_lossy();
    Err(CudaError::Nvrtc(format!("{what}: {msg} ({rc})")))
}

/// NVRTC's version, e.g. (13, 0).
pub fn version() -> Result<(i32, i32), CudaError> {
    let a = api()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    check(
        a,
        unsafe { (a.version)(&mut major, &mut minor) },
        "nvrtcVersion",
    )?;
    Ok((major, minor))
}

/// The `sm_XX` architectures this NVRTC compiles for (e.g. 75, 80, ..., 120).
pub fn supported_archs() -> Result<Vec<u32>, CudaError> {
    let a = api()?;
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer.
    check(
        a,
        unsafe { (a.num_archs)(&mut n) },
        "nvrtcGetNumSupportedArchs",
    )?;
    let mut v = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `v` holds the `n` elements NVRTC writes.
    check(
        a,
        unsafe { (a.archs)(v.as_mut_ptr()) },
        "nvrtcGetSupportedArchs",
    )?;
    Ok(v.into_iter().map(|x| x as u32).collect())
}

/// What a compilation produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// PTX for `compute_XX` (the driver or `ptxas` assembles it).
    Ptx,
    /// Machine code for `sm_XX`.
    Cubin,
}

/// A compiled kernel file.
#[derive(Debug, Clone)]
pub struct Image {
    pub file: &'static str,
    pub arch: u32,
    pub output: Output,
    /// PTX text (NUL-terminated, as the driver wants it) or CUBIN bytes.
    pub bytes: Vec<u8>,
    /// The compiler's messages (warnings), empty when there were none.
    pub log: String,
}

impl Image {
    /// The PTX text without its terminating NUL (for `ptxas`).
    pub fn ptx_text(&self) -> Option<&str> {
        match self.output {
            Output::Ptx => {
                std::str::from_utf8(self.bytes.strip_suffix(&[0]).unwrap_or(&self.bytes)).ok()
            }
            Output::Cubin => None,
        }
    }
}

/// The options every kernel is compiled with.
pub fn options(arch: u32, output: Output) -> Vec<String> {
    let target = match output {
        Output::Ptx => format!("--gpu-architecture=compute_{arch}"),
        Output::Cubin => format!("--gpu-architecture=sm_{arch}"),
    };
    vec![
        target,
        "-std=c++17".into(),
        // Source lines in the output, for profilers; no effect on the code.
        "--generate-line-info".into(),
    ]
}

/// Compiles one kernel file for `arch` (e.g. 90 for sm_90).
pub fn compile(file: &KernelFile, arch: u32, output: Output) -> Result<Image, CudaError> {
    let a = api()?;
    let src = CString::new(file.source)
        .map_err(|_| CudaError::Nvrtc(format!("{} holds a NUL byte", file.name)))?;
    let name = CString::new(file.name).expect("kernel file names hold no NUL");
    let hdr_src = CString::new(COMMON_HEADER.1).expect("header holds no NUL");
    let hdr_name = CString::new(COMMON_HEADER.0).expect("header name holds no NUL");
    let headers = [hdr_src.as_ptr()];
    let include_names = [hdr_name.as_ptr()];
    let opts: Vec<CString> = options(arch, output)
        .into_iter()
        .map(|o| CString::new(o).expect("options hold no NUL"))
        .collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();

    let mut prog: Program = std::ptr::null_mut();
    // SAFETY: every pointer is a live NUL-terminated string; one header with its name.
    check(
        a,
        unsafe {
            (a.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                1,
                headers.as_ptr(),
                include_names.as_ptr(),
            )
        },
        "nvrtcCreateProgram",
    )?;
    let result = (|| {
        // SAFETY: `prog` is a live program; the options outlive the call.
        let rc = unsafe { (a.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let log = program_log(a, prog)?;
        if rc != 0 {
            return Err(CudaError::Compile {
                file: file.name.to_string(),
                arch: format!("{output:?} {arch}"),
                log,
            });
        }
        let (size_fn, get_fn, what) = match output {
            Output::Ptx => (a.ptx_size, a.ptx, "PTX"),
            Output::Cubin => (a.cubin_size, a.cubin, "CUBIN"),
        };
        let mut n = 0usize;
        // SAFETY: live program, valid out-pointer.
        check(a, unsafe { size_fn(prog, &mut n) }, what)?;
        let mut bytes = vec![0u8; n];
        // SAFETY: `bytes` holds the `n` bytes NVRTC writes.
        check(a, unsafe { get_fn(prog, bytes.as_mut_ptr().cast()) }, what)?;
        if bytes.iter().all(|&b| b == 0) {
            return Err(CudaError::Nvrtc(format!(
                "NVRTC produced no {what} for {} ({arch})",
                file.name
            )));
        }
        Ok(Image {
            file: file.name,
            arch,
            output,
            bytes,
            log,
        })
    })();
    // SAFETY: `prog` was created above and is destroyed once.
    let _ = unsafe { (a.destroy)(&mut prog) };
    result
}

fn program_log(a: &Api, prog: Program) -> Result<String, CudaError> {
    let mut n = 0usize;
    // SAFETY: live program, valid out-pointer.
    check(
        a,
        unsafe { (a.log_size)(prog, &mut n) },
        "nvrtcGetProgramLogSize",
    )?;
    let mut buf = vec![0u8; n.max(1)];
    // SAFETY: `buf` holds the `n` bytes NVRTC writes.
    check(
        a,
        unsafe { (a.log)(prog, buf.as_mut_ptr().cast()) },
        "nvrtcGetProgramLog",
    )?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).trim().to_string())
}

/// Compiles every kernel file for `arch` (in parallel, one thread per file).
pub fn compile_all(arch: u32, output: Output) -> Result<Vec<Image>, CudaError> {
    std::thread::scope(|s| {
        let handles: Vec<_> = FILES
            .iter()
            .map(|f| s.spawn(move || compile(f, arch, output)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// How the kernels are built for a device of compute capability `cc` (e.g. 90):
/// CUBIN for `sm_cc` if NVRTC knows it, else PTX for the newest architecture
/// NVRTC knows below it (the driver finishes the compilation).
pub fn target_for(cc: u32) -> Result<(u32, Output), CudaError> {
    let archs = supported_archs()?;
    if archs.contains(&cc) {
        return Ok((cc, Output::Cubin));
    }
    archs
        .iter()
        .copied()
        .filter(|&a| a <= cc)
        .max()
        .map(|a| (a, Output::Ptx))
        .ok_or_else(|| {
            CudaError::Unsupported(format!(
                "NVRTC compiles for {archs:?}, none at or below the device's sm_{cc}"
            ))
        })
}

type Cache = Mutex<HashMap<(u32, Output), Arc<Vec<Image>>>>;

/// Every kernel compiled for (`arch`, `output`): compiled on first use, then cached
/// for the life of the process.
pub fn images(arch: u32, output: Output) -> Result<Arc<Vec<Image>>, CudaError> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // Held across the compilation so two backends created at once compile once.
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = c.get(&(arch, output)) {
        return Ok(v.clone());
    }
    let v = Arc::new(compile_all(arch, output)?);
    c.insert((arch, output), v.clone());
    Ok(v)
}
