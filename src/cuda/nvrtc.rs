//! NVRTC, loaded by this crate (not through cudarc) so that CUDA 12 and 13 both work and a test
//! can load several in one process.
//!
//! cudarc 0.19 built for CUDA 12 never tries `libnvrtc.so.13`, and its one process-wide handle
//! cannot hold two versions. NVRTC's C API (create, compile, get PTX/CUBIN/log, destroy) is the
//! same in 11, 12 and 13, so [`Nvrtc`] binds those few functions from any library file.
//!
//! Search order of [`nvrtc`]: `ATTNKIT_NVRTC` (a file path; nothing else is tried when set), then
//! the loader's search (`LD_LIBRARY_PATH`, ld.so cache) for `libnvrtc.so.13`, `.so.12`,
//! `libnvrtc.so`, then `$CUDA_HOME`/`$CUDA_PATH`/`/usr/local/cuda*` lib folders. A library
//! newer than the driver found (CUDA 13 NVRTC, driver 12.x) is passed over: its CUBIN would not load.

use super::validate_arch;
use crate::error::{AttnError, Result};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

type Prog = *mut c_void;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Prog) -> c_int;
type ErrStrFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// One loaded libnvrtc with the functions the kernel build needs.
pub struct Nvrtc {
    path: PathBuf,
    version: (i32, i32),
    create: CreateFn,
    compile: CompileFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    cubin_size: SizeFn,
    cubin: GetFn,
    log_size: SizeFn,
    log: GetFn,
    destroy: DestroyFn,
    err_str: ErrStrFn,
    // Keep the function pointers above valid; never unloaded before them.
    _lib: libloading::Library,
    _builtins: Vec<libloading::Library>,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nvrtc({} {}.{})", self.path.display(), self.version.0, self.version.1)
    }
}

/// Output of one NVRTC compile.
pub struct Compiled {
    pub ptx: String,
    /// SASS for the real arch (loaded on the GPU: a CUBIN does not need a driver new enough to
    /// JIT this NVRTC's PTX version).
    pub cubin: Option<Vec<u8>>,
}

impl Nvrtc {
    /// Loads libnvrtc from `path` (a file path, or a bare name for the loader's search).
    pub fn load(path: impl AsRef<Path>) -> std::result::Result<Nvrtc, String> {
        let path = path.as_ref();
        let builtins = preload_builtins(path);
        // SAFETY: loading libnvrtc runs only its own initializers.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: each symbol is declared with its type from nvrtc.h (unchanged from CUDA 11 to 13).
        let (version, f) = unsafe {
            let sym = |n: &[u8]| -> std::result::Result<*const c_void, String> {
                lib.get::<*const c_void>(n).map(|s| *s).map_err(|e| format!("{}: {e}", path.display()))
            };
            let version: VersionFn = std::mem::transmute(sym(b"nvrtcVersion")?);
            let f = (
                std::mem::transmute::<*const c_void, CreateFn>(sym(b"nvrtcCreateProgram")?),
                std::mem::transmute::<*const c_void, CompileFn>(sym(b"nvrtcCompileProgram")?),
                std::mem::transmute::<*const c_void, SizeFn>(sym(b"nvrtcGetPTXSize")?),
                std::mem::transmute::<*const c_void, GetFn>(sym(b"nvrtcGetPTX")?),
                std::mem::transmute::<*const c_void, SizeFn>(sym(b"nvrtcGetCUBINSize")?),
                std::mem::transmute::<*const c_void, GetFn>(sym(b"nvrtcGetCUBIN")?),
                std::mem::transmute::<*const c_void, SizeFn>(sym(b"nvrtcGetProgramLogSize")?),
                std::mem::transmute::<*const c_void, GetFn>(sym(b"nvrtcGetProgramLog")?),
                std::mem::transmute::<*const c_void, DestroyFn>(sym(b"nvrtcDestroyProgram")?),
                std::mem::transmute::<*const c_void, ErrStrFn>(sym(b"nvrtcGetErrorString")?),
            );
            (version, f)
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both are valid out-pointers.
        let rc = unsafe { version(&mut major, &mut minor) };
        if rc != 0 {
            return Err(format!("{}: nvrtcVersion failed ({rc})", path.display()));
        }
        let file = super::driver::file_of(f.0 as *const c_void).unwrap_or_else(|| path.to_path_buf());
        Ok(Nvrtc {
            path: file,
            version: (major, minor),
            create: f.0,
            compile: f.1,
            ptx_size: f.2,
            ptx: f.3,
            cubin_size: f.4,
            cubin: f.5,
            log_size: f.6,
            log: f.7,
            destroy: f.8,
            err_str: f.9,
            _lib: lib,
            _builtins: builtins,
        })
    }

    /// The library file that was loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    fn err(&self, rc: c_int) -> String {
        // SAFETY: nvrtcGetErrorString returns a static string for any code.
        let s = unsafe { (self.err_str)(rc) };
        if s.is_null() {
            format!("NVRTC error {rc}")
        } else {
            // SAFETY: non-null, NUL-terminated and static (NVRTC owns it).
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        }
    }

    /// Compiles `src` for `arch` with extra `-D` options; the error carries NVRTC's log.
    pub fn compile(&self, src: &str, arch: &str, defines: &[String]) -> Result<Compiled> {
        validate_arch(arch)?;
        let cuda = |m: String| AttnError::Cuda(m);
        let c_src = CString::new(src).map_err(|_| cuda("kernel source contains a NUL byte".into()))?;
        let mut opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".to_string()];
        opts.extend(include_paths().into_iter().map(|p| format!("--include-path={p}")));
        opts.extend(defines.iter().cloned());
        let c_opts = opts.iter().map(|o| CString::new(o.as_str())).collect::<std::result::Result<Vec<_>, _>>();
        let c_opts = c_opts.map_err(|_| AttnError::invalid("an NVRTC option contains a NUL byte"))?;
        let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: c_src and the name are NUL-terminated and outlive the call; no headers.
        let rc = unsafe {
            (self.create)(&mut prog, c_src.as_ptr(), c"flash_fwd.cu".as_ptr(), 0, std::ptr::null(), std::ptr::null())
        };
        if rc != 0 {
            return Err(cuda(format!("nvrtcCreateProgram: {}", self.err(rc))));
        }
        let prog = Program { nvrtc: self, prog };
        // SAFETY: prog is live; opt_ptrs holds opts.len() NUL-terminated strings that outlive the call.
        let rc = unsafe { (self.compile)(prog.prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        if rc != 0 {
            let log = prog.get(self.log_size, self.log).map(|b| bytes_to_string(&b)).unwrap_or_default();
            return Err(cuda(format!(
                "NVRTC {}.{} ({}) failed for {arch} ({}), options {opts:?}:\n{log}",
                self.version.0,
                self.version.1,
                self.path.display(),
                self.err(rc)
            )));
        }
        let ptx = prog.get(self.ptx_size, self.ptx).ok_or_else(|| cuda("nvrtcGetPTX failed".into()))?;
        Ok(Compiled {
            ptx: bytes_to_string(&ptx),
            cubin: prog.get(self.cubin_size, self.cubin).filter(|c| !c.is_empty()),
        })
    }
}

/// NVRTC dlopens `libnvrtc-builtins.so.M.m` by bare name while compiling, which fails when the
/// library was loaded by path from a folder not on `LD_LIBRARY_PATH`. Loading the builtins beside
/// it first makes that lookup find them (the loader matches an already loaded SONAME).
fn preload_builtins(nvrtc: &Path) -> Vec<libloading::Library> {
    let Some(dir) = nvrtc.parent().filter(|d| !d.as_os_str().is_empty()) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc-builtins.so.")))
        // SAFETY: the builtins library has no initializers with preconditions.
        .filter_map(|p| unsafe { libloading::Library::new(&p) }.ok())
        .collect()
}

/// A created program, destroyed on drop.
struct Program<'a> {
    nvrtc: &'a Nvrtc,
    prog: Prog,
}

impl Program<'_> {
    /// One of the program's outputs (PTX, CUBIN, log) through its size/get pair.
    fn get(&self, size_fn: SizeFn, get_fn: GetFn) -> Option<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: prog is live; size is a valid out-pointer.
        if unsafe { size_fn(self.prog, &mut size) } != 0 {
            return None;
        }
        let mut buf = vec![0u8; size];
        // SAFETY: buf has exactly the size NVRTC reported.
        (unsafe { get_fn(self.prog, buf.as_mut_ptr().cast()) } == 0).then_some(buf)
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: prog came from nvrtcCreateProgram and is destroyed exactly once, here.
        let _ = unsafe { (self.nvrtc.destroy)(&mut self.prog) };
    }
}

fn bytes_to_string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Library names tried in order, newest first.
const NAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// Folders searched after the loader's own search.
fn search_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> =
        ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(std::env::var_os).map(PathBuf::from).collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/local")
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("/cuda-")).collect())
        .unwrap_or_default();
    versioned.sort();
    roots.extend(versioned.into_iter().rev());
    let arch = std::env::consts::ARCH;
    roots.iter().flat_map(|r| [r.join("lib64"), r.join(format!("targets/{arch}-linux/lib")), r.join("lib")]).collect()
}

/// Finds an NVRTC as described in the module docs; `max_major` skips newer libraries.
pub fn find_nvrtc(max_major: Option<i32>) -> std::result::Result<Nvrtc, String> {
    if let Some(p) = std::env::var_os("ATTNKIT_NVRTC").filter(|p| !p.is_empty()) {
        return Nvrtc::load(&p).map_err(|e| format!("ATTNKIT_NVRTC: {e}"));
    }
    let mut tried = Vec::new();
    let candidates =
        NAMES.iter().map(PathBuf::from).chain(search_dirs().into_iter().flat_map(|d| NAMES.map(|n| d.join(n))));
    for c in candidates {
        if c.is_absolute() && !c.exists() {
            continue;
        }
        match Nvrtc::load(&c) {
            Ok(n) if max_major.is_some_and(|m| n.version.0 > m) => tried.push(format!(
                "{} is NVRTC {}.{}, newer than the driver (CUDA {})",
                n.path.display(),
                n.version.0,
                n.version.1,
                max_major.unwrap_or_default()
            )),
            Ok(n) => return Ok(n),
            Err(e) if c.is_absolute() => tried.push(e),
            Err(_) => tried.push(format!("{} not found", c.display())),
        }
    }
    Err(format!(
        "libnvrtc not found (tried {}). Install a CUDA toolkit or the nvidia-cuda-nvrtc wheel, or set ATTNKIT_NVRTC=/path/to/libnvrtc.so.N",
        tried.join("; ")
    ))
}

/// The process-wide NVRTC, found once.
pub fn nvrtc() -> std::result::Result<&'static Nvrtc, String> {
    static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    NVRTC.get_or_init(|| find_nvrtc(super::driver::driver_major())).as_ref().map_err(Clone::clone)
}

/// `Ok` when an NVRTC library loads.
pub fn nvrtc_available() -> std::result::Result<(), String> {
    nvrtc().map(|_| ())
}

/// Compiles with the process-wide NVRTC.
pub fn compile(src: &str, arch: &str, defines: &[String]) -> Result<Compiled> {
    nvrtc().map_err(AttnError::Cuda)?.compile(src, arch, defines)
}

/// Extra include dirs from `ATTNKIT_CUDA_INCLUDE` (colon-separated). The kernel includes no
/// header, so these are only passed through (for local experiments that add some).
pub fn include_paths() -> Vec<String> {
    std::env::var("ATTNKIT_CUDA_INCLUDE")
        .map(|s| s.split(':').filter(|p| !p.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_nvrtc_is_an_error_naming_it() {
        let e = Nvrtc::load("/nonexistent/libnvrtc.so.99").unwrap_err();
        assert!(e.contains("/nonexistent/libnvrtc.so.99"), "{e}");
    }
}
