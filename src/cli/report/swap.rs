//! The report is written into a hidden folder beside its target and swapped into place at the
//! end, so an interrupted run leaves the previous report intact.

use attnkit::AttnError;
use std::path::{Path, PathBuf};

/// `<parent>/.<name>.<tag>-<pid>` beside `target`.
pub fn temp_sibling(target: &Path, tag: &str) -> Result<PathBuf, AttnError> {
    let name = target
        .file_name()
        .ok_or_else(|| AttnError::invalid(format!("--out `{}` has no folder name", target.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{tag}-{}", std::process::id())))
}

/// Entries of the report folder that `report` does not write and must survive a regeneration:
/// the GPU device check's results (`scripts/gpu-check`) and the ring cost model's table
/// (`attnkit ring --model`).
pub const KEPT: &[&str] = &["gpu", "beyond_one_machine.md"];

/// Moves `tmp` to `target`, replacing it; the old folder is removed only after the swap. The
/// [`KEPT`] entries of the old folder move into the new one first (unless it wrote its own).
pub fn replace_dir(tmp: &Path, target: &Path) -> Result<(), AttnError> {
    if target.exists() {
        for name in KEPT {
            let (from, to) = (target.join(name), tmp.join(name));
            if from.exists() && !to.exists() {
                std::fs::rename(&from, &to)?;
            }
        }
        let old = temp_sibling(target, "old")?;
        std::fs::rename(target, &old)?;
        if let Err(e) = std::fs::rename(tmp, target) {
            let _ = std::fs::rename(&old, target);
            return Err(e.into());
        }
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(tmp, target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_is_hidden_beside_the_target_and_root_is_refused() {
        let s = temp_sibling(Path::new("out/rep"), "tmp").unwrap();
        assert_eq!(s.parent(), Some(Path::new("out")));
        assert!(s.file_name().unwrap().to_string_lossy().starts_with(".rep.tmp-"));
        assert_eq!(temp_sibling(Path::new("rep"), "old").unwrap().parent(), Some(Path::new(".")));
        assert!(temp_sibling(Path::new("/"), "tmp").is_err());
    }

    #[test]
    fn regeneration_keeps_the_entries_report_does_not_write() {
        let root = std::env::temp_dir().join(format!("attnkit-swap-{}", std::process::id()));
        let (target, tmp) = (root.join("reports"), root.join(".reports.tmp"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(target.join("gpu")).unwrap();
        std::fs::write(target.join("gpu/summary.md"), "gpu").unwrap();
        std::fs::write(target.join("beyond_one_machine.md"), "model").unwrap();
        std::fs::write(target.join("stale.svg"), "old plot").unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("README.md"), "new").unwrap();
        replace_dir(&tmp, &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("gpu/summary.md")).unwrap(), "gpu");
        assert_eq!(std::fs::read_to_string(target.join("beyond_one_machine.md")).unwrap(), "model");
        assert_eq!(std::fs::read_to_string(target.join("README.md")).unwrap(), "new");
        assert!(!target.join("stale.svg").exists(), "what report no longer writes goes");
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
