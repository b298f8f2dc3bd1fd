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

/// Moves `tmp` to `target`, replacing it; the old folder is removed only after the swap.
pub fn replace_dir(tmp: &Path, target: &Path) -> Result<(), AttnError> {
    if target.exists() {
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
}
