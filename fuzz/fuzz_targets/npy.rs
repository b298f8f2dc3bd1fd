//! Fuzzes `.npy` parsing (what `attnkit run` reads): arbitrary bytes must parse or give an
//! error, never panic, abort or allocate without bound. Parsed arrays go through the rank-4
//! shape check and, when small, back through the writer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok((tensor, shape)) = attnkit::npy::parse_tensor_bytes(bytes) {
        let _ = attnkit::npy::shape4(&shape);
        if shape.iter().product::<usize>() <= 1 << 16 {
            let round = attnkit::npy::tensor_to_bytes(&shape, &tensor).expect("a parsed array re-encodes");
            let (_, shape2) = attnkit::npy::parse_tensor_bytes(&round).expect("a re-encoded array parses");
            assert_eq!(shape, shape2);
        }
    }
});
