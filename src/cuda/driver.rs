//! Finding the NVIDIA driver (`libcuda.so.1`) before cudarc touches it.
//!
//! cudarc dlopens the first of its candidate names that loads, and `libcuda.so` comes first: a
//! CUDA toolkit's `stubs/libcuda.so` on `LD_LIBRARY_PATH` would be taken for the driver, and every
//! call would then fail with CUDA_ERROR_STUB_LIBRARY. So the probe here loads the driver by its
//! real name, `libcuda.so.1`, reads its version, and refuses — naming the file — when the library
//! it or cudarc would use is a stub. Nothing here panics; errors are strings for `availability`.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// CUDA_ERROR_STUB_LIBRARY: what every call of the toolkit's stub libcuda returns.
const CUDA_ERROR_STUB_LIBRARY: c_int = 34;
/// CUDA_ERROR_NO_DEVICE.
const CUDA_ERROR_NO_DEVICE: c_int = 100;

/// The driver library that was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// The file `libcuda.so.1` resolved to.
    pub path: PathBuf,
    /// CUDA driver API version (`cuDriverGetVersion`), e.g. (13, 0) for driver 580.
    pub version: (i32, i32),
    /// `cuInit(0)`'s result: 0, or e.g. 100 (no device).
    pub init_status: i32,
}

impl std::fmt::Display for DriverInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (CUDA driver API {}.{})", self.path.display(), self.version.0, self.version.1)
    }
}

#[repr(C)]
struct DlInfo {
    fname: *const c_char,
    fbase: *mut c_void,
    sname: *const c_char,
    saddr: *mut c_void,
}

unsafe extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
}

/// The file a loaded symbol lives in (for libraries opened by bare name).
pub(crate) fn file_of(symbol: *const c_void) -> Option<PathBuf> {
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only inspects the loader's tables for `symbol` and writes `info`.
    let ok = unsafe { dladdr(symbol, &mut info) } != 0 && !info.fname.is_null();
    // SAFETY: on success dli_fname is a NUL-terminated path owned by the loader.
    ok.then(|| PathBuf::from(unsafe { CStr::from_ptr(info.fname) }.to_string_lossy().into_owned()))
}

/// Whether `path` sits in a toolkit `stubs` folder.
fn in_stubs_dir(path: &Path) -> bool {
    path.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "stubs")
}

type InitFn = unsafe extern "C" fn(std::ffi::c_uint) -> c_int;
type VersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;

/// A loaded libcuda: its file, `cuInit`'s result and the version. `None` when `name` does not load.
fn open(name: &str) -> Option<Result<(libloading::Library, DriverInfo), String>> {
    // SAFETY: loading libcuda runs only its initializers, which have no preconditions.
    let lib = unsafe { libloading::Library::new(name) }.ok()?;
    Some(inspect(lib, name))
}

fn inspect(lib: libloading::Library, name: &str) -> Result<(libloading::Library, DriverInfo), String> {
    // SAFETY: the symbol types are the driver API's: CUresult cuInit(unsigned), cuDriverGetVersion(int*).
    let syms = unsafe { (lib.get::<VersionFn>(b"cuDriverGetVersion"), lib.get::<InitFn>(b"cuInit")) };
    let (Ok(version), Ok(init)) = syms else {
        return Err(format!("{name} loaded but lacks cuDriverGetVersion/cuInit: not a CUDA driver"));
    };
    let (version, init) = (*version, *init);
    let path = file_of(version as *const c_void).unwrap_or_else(|| PathBuf::from(name));
    let mut v: c_int = 0;
    // SAFETY: v is a valid out-pointer; cuDriverGetVersion needs no prior cuInit.
    let rv = unsafe { version(&mut v) };
    // SAFETY: cuInit(0) is the documented first call; repeated calls are allowed.
    let init_status = unsafe { init(0) };
    if init_status == CUDA_ERROR_STUB_LIBRARY || in_stubs_dir(&path) {
        return Err(format!(
            "{name} resolves to the CUDA toolkit's stub {}, not the NVIDIA driver; remove its folder from LD_LIBRARY_PATH",
            path.display()
        ));
    }
    if rv != 0 {
        return Err(format!("{} (as {name}): cuDriverGetVersion failed with CUresult {rv}", path.display()));
    }
    Ok((lib, DriverInfo { path, version: (v / 1000, (v % 1000) / 10), init_status }))
}

/// The driver, probed once per process. `Err` says what was missing or wrong, naming files; `Ok`
/// still needs [`DriverInfo::ready`] (a driver without a device loads fine).
pub fn driver_info() -> Result<&'static DriverInfo, String> {
    static DRIVER: OnceLock<Result<(libloading::Library, DriverInfo), String>> = OnceLock::new();
    DRIVER.get_or_init(probe).as_ref().map(|(_, d)| d).map_err(Clone::clone)
}

fn probe() -> Result<(libloading::Library, DriverInfo), String> {
    let (lib, info) = open("libcuda.so.1")
        .unwrap_or_else(|| Err("no NVIDIA driver: libcuda.so.1 not found by the dynamic loader".to_string()))?;
    // cudarc takes the first of its candidates that loads; it must be this same driver.
    for name in cudarc::get_lib_name_candidates("cuda") {
        let Some(other) = open(&name) else { continue };
        let (_, other) =
            other.map_err(|e| format!("cudarc, which tries {name} first, would load the wrong library: {e}"))?;
        let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
        if !same(&other.path, &info.path) {
            return Err(format!(
                "cudarc would load {} (as {name}) instead of the driver {}; fix LD_LIBRARY_PATH",
                other.path.display(),
                info.path.display()
            ));
        }
        break;
    }
    Ok((lib, info))
}

impl DriverInfo {
    /// `Ok` when `cuInit` succeeded, i.e. the driver can run kernels.
    pub fn ready(&self) -> Result<(), String> {
        match self.init_status {
            0 => Ok(()),
            CUDA_ERROR_NO_DEVICE => {
                Err(format!("driver {self} found, but no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)"))
            }
            e => Err(format!("driver {self} found, but cuInit failed with CUresult {e}")),
        }
    }
}

/// The driver's CUDA major version when a driver loads (used to pick an NVRTC it can run).
pub(crate) fn driver_major() -> Option<i32> {
    driver_info().ok().map(|d| d.version.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_folders_are_recognized() {
        assert!(in_stubs_dir(Path::new("/usr/local/cuda/lib64/stubs/libcuda.so")));
        assert!(!in_stubs_dir(Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1")));
    }

    #[test]
    fn dladdr_names_the_file_of_a_libc_symbol() {
        let f = file_of(libc_strlen()).expect("dladdr");
        assert!(f.to_string_lossy().contains("libc"), "{}", f.display());
    }

    fn libc_strlen() -> *const c_void {
        unsafe extern "C" {
            fn strlen(s: *const c_char) -> usize;
        }
        strlen as *const c_void
    }
}
