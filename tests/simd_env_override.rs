//! `ATTNKIT_SIMD` forces the SIMD path process-wide (its own test binary: the choice is cached
//! once per process).

use attnkit::backends::flash_cpu::FlashCpu;
use attnkit::backends::local::Local;
use attnkit::simd::Isa;
use attnkit::{Attention, AttnArgs, Problem};

#[test]
fn env_override_forces_the_scalar_path() {
    // SAFETY: this binary has a single test and nothing else has started threads that read
    // the environment yet.
    unsafe { std::env::set_var("ATTNKIT_SIMD", "Scalar") };
    assert_eq!(Isa::selected(), Ok(Isa::Scalar));
    assert_eq!(FlashCpu::new().isa(), Ok(Isa::Scalar));
    assert_eq!(Local::new().isa(), Ok(Isa::Scalar));
    // A forced constructor still wins over the environment.
    assert_eq!(FlashCpu::with_isa(Isa::best()).unwrap().isa(), Ok(Isa::best()));
    let p = Problem::new(1, 1, 5, 8);
    let x = vec![0.25f32; p.q_len()];
    let out = FlashCpu::new().forward(&AttnArgs::new(&p, &x, &x, &x).unwrap(), false).unwrap();
    assert!(out.out.iter().all(|&o| (o - 0.25).abs() < 1e-6));
    assert_eq!(Isa::parse("AVX512"), Some(Isa::Avx512));
    assert_eq!(Isa::parse("sse9"), None);
}
