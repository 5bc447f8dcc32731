//! Files generated from the function folders (`k8s/base/functions/`, `asyncapi.yaml`,
//! `schemas/`): written, or with `check` only compared, so that a test (and CI) fails when a
//! committed one is stale rather than letting it drift from the code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Writes `files` (paths under `root`) and removes any other file under the `owned` folders;
/// with `check`, changes nothing. Returns the paths that differ (written or removed, or stale).
pub fn write_or_check(
    root: &Path,
    files: &BTreeMap<PathBuf, String>,
    owned: &[&str],
    check: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut differ = Vec::new();
    for (path, body) in files {
        let full = root.join(path);
        if std::fs::read_to_string(&full).ok().as_deref() == Some(body.as_str()) {
            continue;
        }
        if !check {
            if let Some(dir) = full.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&full, body).with_context(|| format!("writing {}", full.display()))?;
        }
        differ.push(path.clone());
    }
    for dir in owned {
        for path in files_under(root, Path::new(dir))? {
            if !files.contains_key(&path) {
                if !check {
                    std::fs::remove_file(root.join(&path))?;
                }
                differ.push(path);
            }
        }
    }
    Ok(differ)
}

/// Every file under `root/dir`, as paths under `root`.
fn files_under(root: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return Ok(out);
    };
    for entry in entries {
        let path = dir.join(entry?.file_name());
        if root.join(&path).is_dir() {
            out.extend(files_under(root, &path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}
