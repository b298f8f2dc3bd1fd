//! Every repository path the READMEs name exists: a reader who follows `src/…`, `tests/…` or
//! `examples/…` (and `benches/`, `python/`, `kernels/`, `reports/`, `fuzz/`, `scripts/`, `.ci/`) lands on a
//! file or folder, not on one that was renamed or moved (README.md once named
//! `src/modifiers.rs` after it moved to `src/problem/modifiers.rs`).

use std::path::Path;

/// The documents checked, relative to the repository root (paths in them are root-relative too).
const DOCS: [&str; 2] = ["README.md", "kernels/README.md"];
/// The top-level folders whose paths are checked.
const ROOTS: [&str; 10] =
    ["src/", "tests/", "examples/", "benches/", "python/", "kernels/", "reports/", "fuzz/", "scripts/", ".ci/"];

/// Characters a path may contain; anything else ends it.
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The paths under [`ROOTS`] named in `text`: each starts where a root begins after a character
/// that cannot be part of a path (so `foo/src/x` is not taken for `src/x`). Trailing dots (end of
/// sentence) are dropped; names with glob or brace patterns end at the pattern and are skipped.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.char_indices() {
        if text[..i].chars().next_back().is_some_and(path_char) {
            continue;
        }
        if !ROOTS.iter().any(|r| text[i..].starts_with(r)) {
            continue;
        }
        let end = text[i..].find(|c: char| !path_char(c)).map_or(text.len(), |e| i + e);
        if text[end..].starts_with(['*', '{', '<']) {
            continue;
        }
        out.push(text[i..end].trim_end_matches('.').to_string());
    }
    out
}

#[test]
fn every_path_the_readmes_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        for path in named_paths(&text) {
            checked += 1;
            if !root.join(&path).exists() {
                missing.push(format!("{doc} names {path}"));
            }
        }
    }
    assert!(checked >= 30, "only {checked} paths found: the scan is broken");
    assert!(missing.is_empty(), "paths that do not exist:\n{}", missing.join("\n"));
}

/// The scanner itself, on the cases the READMEs have: code spans, sentence ends, folders,
/// globs, and a root inside a longer path.
#[test]
fn the_scanner_finds_paths_and_only_paths() {
    let cases: [(&str, &[&str]); 6] = [
        ("see `src/problem/modifiers.rs`, then", &["src/problem/modifiers.rs"]),
        ("in tests/numerics.rs.", &["tests/numerics.rs"]),
        ("the folder `reports/` holds", &["reports/"]),
        ("all of `tests/*.rs` and benches/{a,b}.rs", &[]),
        ("python/ci.sh and my/src/x.rs and .ci/run", &["python/ci.sh", ".ci/run"]),
        ("kernels/README.md", &["kernels/README.md"]),
    ];
    for (text, want) in cases {
        assert_eq!(named_paths(text), want, "in {text:?}");
    }
}

/// The READMEs name no issue numbers: a reader outside the tracker cannot tell what "issue 11's
/// targets" were, so the text says what the target is instead.
#[test]
fn the_readmes_name_no_issue_numbers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let lower = text.to_lowercase();
        for (at, _) in lower.match_indices("issue ") {
            let after = &lower[at + "issue ".len()..];
            assert!(
                !after.starts_with(|c: char| c.is_ascii_digit()),
                "{doc} names an issue number: issue {}…",
                after.chars().take(12).collect::<String>()
            );
        }
    }
}
