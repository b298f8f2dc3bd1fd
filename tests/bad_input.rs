//! Bad input gets a clear, typed error naming the offending values, and nothing else.
//! (CLI and .npy cases live at the end of this file once the CLI exists.)

use attnkit::{AttnArgs, AttnError, DType, Problem, Window, backend, backend_names, merge_partials};

fn err_of(p: &Problem) -> AttnError {
    p.validate().expect_err(&format!("{p} should be rejected"))
}

#[test]
fn problem_validation_names_the_values() {
    let table: Vec<(Problem, &str)> = vec![
        (Problem::new(0, 1, 4, 8), "batch must be ≥ 1"),
        (Problem::new(1, 0, 4, 8), "heads must be ≥ 1"),
        (Problem::new(1, 2, 0, 8), "seq_q must be ≥ 1"),
        (Problem::new(1, 2, 4, 8).with_seq_k(0), "seq_k must be ≥ 1"),
        (Problem::new(1, 2, 4, 0), "head_dim must be ≥ 1"),
        (Problem::new(1, 2, 4, 8).with_kv_heads(0), "kv_heads must be ≥ 1"),
        (Problem::new(1, 6, 4, 8).with_kv_heads(4), "heads (6) must be a multiple of kv_heads (4)"),
        (Problem::new(1, 1, 4, 8).with_scale(-1.0), "scale must be finite and > 0, got -1"),
        (Problem::new(1, 1, 4, 8).with_scale(f32::INFINITY), "got inf"),
        (Problem::new(1, 1, 4, 8).with_window(Window::new(-5, 0)), "got (-5, 0)"),
        (Problem::new(1, 1, 4, 5000), "head_dim=5000"),
        (Problem::new(usize::MAX / 2, 1 << 20, 1 << 20, 64), "overflows"),
    ];
    for (p, needle) in table {
        let e = err_of(&p);
        assert!(e.to_string().contains(needle), "error for {p}: `{e}` should contain `{needle}`");
        assert!(matches!(e, AttnError::Shape(_) | AttnError::InvalidArgument(_)), "{e:?}");
    }
}

#[test]
fn tensors_must_match_the_problem() {
    let p = Problem::new(1, 2, 5, 4).with_kv_heads(1);
    let q = vec![0f32; p.q_len()];
    let kv = vec![0f32; p.kv_len()];
    let e = AttnArgs::new(&p, &q[1..], &kv, &kv).unwrap_err();
    assert!(e.to_string().contains("q has 39 elements, expected 40"), "{e}");
    let e = AttnArgs::new(&p, &q, &q, &kv).unwrap_err();
    assert!(e.to_string().contains("k has 40 elements, expected 20"), "{e}");
    let vh: Vec<half::bf16> = vec![half::bf16::ZERO; p.kv_len()];
    let e = AttnArgs::new(&p, &q, &kv, &vh).unwrap_err();
    assert!(e.to_string().contains("v has dtype bf16 but the problem says f32"), "{e}");
    let p16 = p.clone().with_dtype(DType::F16);
    let e = AttnArgs::new(&p16, &q, &kv, &kv).unwrap_err();
    assert!(matches!(e, AttnError::InvalidArgument(_)), "{e}");
}

#[test]
fn output_buffers_are_checked_by_every_backend() {
    let p = Problem::new(1, 1, 3, 4);
    let x = vec![0.1f32; p.q_len()];
    let args = AttnArgs::new(&p, &x, &x, &x).unwrap();
    for name in backend_names() {
        let b = backend(name).unwrap();
        let mut out = vec![0f32; p.out_len() + 1];
        let e = b.forward_into(&args, &mut out, None).unwrap_err();
        assert!(matches!(e, AttnError::Shape(_)), "{name}: {e}");
        let mut out = vec![0f32; p.out_len()];
        let mut lse = vec![0f32; 2];
        let e = b.forward_into(&args, &mut out, Some(&mut lse)).unwrap_err();
        assert!(e.to_string().contains("lse has 2 elements, expected 3"), "{name}: {e}");
    }
}

#[test]
fn unknown_backend_lists_the_known_ones() {
    let e = backend("flash-gpu").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown backend `flash-gpu`") && msg.contains("reference"), "{msg}");
}

#[test]
fn sdpa_refuses_a_score_matrix_over_the_budget_before_allocating() {
    // N = 65536: one f32 score matrix is 16 GiB, over the default 8 GiB budget.
    let n = 65536;
    let p = Problem::new(1, 1, n, 8);
    let x = vec![0.0f32; p.q_len()];
    let args = AttnArgs::new(&p, &x, &x, &x).unwrap();
    let e = backend("sdpa").unwrap().forward(&args, false).unwrap_err();
    match &e {
        AttnError::MemoryBudget { backend, needed_bytes, .. } => {
            assert_eq!(backend, "sdpa");
            assert!(*needed_bytes >= (n * n * 4) as u64);
        }
        other => panic!("expected MemoryBudget, got {other}"),
    }
    assert!(e.to_string().contains("GiB"), "{e}");
}

#[test]
fn merge_partials_rejects_inconsistent_lengths() {
    let mut a = vec![0f32; 6];
    let mut la = vec![0f32; 3];
    let e = merge_partials(&mut a, &mut la, &[0f32; 6], &[0f32; 2], 2).unwrap_err();
    assert!(matches!(e, AttnError::Shape(_)), "{e}");
    let e = merge_partials(&mut a, &mut la, &[0f32; 6], &[0f32; 3], 0).unwrap_err();
    assert!(e.to_string().contains("head_dim=0"), "{e}");
}

// ---- .npy files (the library side of `attnkit run`) ----

fn npy_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("attnkit-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A version-1 `.npy` with the given header dict and `data_len` zero bytes of payload.
fn raw_npy(dict: &str, data_len: usize) -> Vec<u8> {
    let mut text = dict.to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(text.len() as u16).to_le_bytes());
    b.extend_from_slice(text.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

#[test]
fn malformed_npy_files_are_clear_errors() {
    use attnkit::npy::read_tensor4;
    let good = raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 4), }", 24 * 4);
    assert!(read_tensor4(npy_file("good.npy", &good)).is_ok());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("f64.npy", raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2, 3, 4), }", 24 * 8), "dtype"),
        ("i4.npy", raw_npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2, 3, 4), }", 24 * 4), "dtype"),
        ("rank2.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), }", 24 * 4), "rank"),
        ("fortran.npy", raw_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2, 3, 4), }", 24 * 4), "ortran"),
        ("truncated.npy", good[..good.len() - 5].to_vec(), ""),
        ("header_only.npy", good[..20].to_vec(), ""),
        ("not_npy.npy", b"hello world, not an array".to_vec(), ""),
        ("empty.npy", Vec::new(), ""),
        // Fuzzing found npyz's literal parser backtracking for minutes on quote-heavy headers.
        ("triple_quotes.npy", raw_npy(&format!("{{'descr': {}'<f4', }}", "'''".repeat(60)), 4), "triple-quoted"),
        // The fuzzer's hang: unclosed `[[[[…` runs made npyz's parser backtrack for minutes.
        ("bracket_hang.npy", include_bytes!("data/npy_bracket_hang.npy").to_vec(), "unexpected byte 0x5b"),
        (
            "deep_parens.npy",
            raw_npy(&format!("{{'descr': '<f4', 'shape': {}1{}, }}", "(".repeat(40), ")".repeat(40)), 4),
            "nested",
        ),
        (
            "escapes.npy",
            raw_npy("{'descr': '<f4\\x00', 'fortran_order': False, 'shape': (1,1,1,1), }", 4),
            "unexpected byte",
        ),
        (
            "huge_shape.npy",
            raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2, 2), }", 16),
            "",
        ),
    ];
    for (name, bytes, needle) in cases {
        let e = read_tensor4(npy_file(name, &bytes)).expect_err(name);
        let msg = e.to_string();
        assert!(matches!(e, AttnError::Npy { .. }), "{name}: expected an Npy error, got {e:?}");
        assert!(msg.contains(name), "{name}: the message should name the file: {msg}");
        assert!(msg.to_lowercase().contains(&needle.to_lowercase()), "{name}: `{msg}` should mention `{needle}`");
    }
    let e = read_tensor4("/definitely/not/here.npy").unwrap_err();
    assert!(e.to_string().contains("/definitely/not/here.npy"), "{e}");
}
