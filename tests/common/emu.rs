//! Builds and loads the CUDA emulation harnesses (kernels/emu/*.cpp) for the emulator tests.

use attnkit::Tensor;
use std::path::PathBuf;

/// Builds `driver` (relative to the crate root; it includes the emulator and the kernel source)
/// into a shared library named after `stem` and the hash of `sources`, once per source version,
/// and loads it. `Err` says why it cannot (the caller skips); a compiler that rejects the source
/// panics (a failure, not a skip).
pub fn build_and_load(driver: &str, sources: &[&str], stem: &str) -> Result<libloading::Library, String> {
    if !cfg!(target_os = "linux") {
        return Err("the emulation harness is built for Linux only".into());
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sources.hash(&mut h);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let lib_path = dir.join(format!("{stem}_{:016x}.so", h.finish()));
    if !lib_path.exists() {
        let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let compiler = cc::Build::new()
            .cpp(true)
            .target(&target)
            .host(&target)
            .opt_level(2)
            .cargo_metadata(false)
            .cargo_warnings(false)
            .try_get_compiler()
            .map_err(|e| format!("no C++ compiler: {e}"))?;
        let tmp = lib_path.with_extension(format!("tmp{}", std::process::id()));
        let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(driver);
        let mut cmd = compiler.to_command();
        cmd.args([
            "-std=c++20",
            "-pthread",
            "-O2",
            "-fPIC",
            "-shared",
            "-Wall",
            "-Wextra",
            "-Wno-unknown-pragmas",
            "-Werror",
            "-o",
        ])
        .arg(&tmp)
        .arg(&driver);
        let out = cmd.output().map_err(|e| format!("could not run the C++ compiler ({:?}): {e}", compiler.path()))?;
        if !out.status.success() {
            // A compiler that exists but rejects the source is a failure, not a skip.
            panic!("emulator build failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::rename(&tmp, &lib_path).map_err(|e| e.to_string())?;
    }
    // SAFETY: the library is the driver we just built; loading it runs no initializers beyond
    // C++ static constructors of that driver (none with side effects).
    unsafe { libloading::Library::new(&lib_path) }.map_err(|e| format!("dlopen {}: {e}", lib_path.display()))
}

/// The bits of a 16-bit tensor, as the kernels read them (emulated cases are never f32).
pub fn half_bits(t: &Tensor) -> Vec<u16> {
    match t {
        Tensor::F16(x) => x.iter().map(|e| e.to_bits()).collect(),
        Tensor::BF16(x) => x.iter().map(|e| e.to_bits()).collect(),
        Tensor::F32(_) => unreachable!("emulated cases are 16-bit"),
    }
}
