//! sd-scripts' DreamBooth-style folder dataset: `train_data_dir/N_name/` subfolders (N repeats, class tokens
//! `name`), images with caption files beside them (spec §9).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One image of a folder dataset (not decoded: decoding belongs to the caller, which has an image library).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetEntry {
    /// The image file.
    pub image: PathBuf,
    /// The caption: the caption file's first line, else the folder's class tokens, else "".
    pub caption: String,
    /// Repeats from the folder name.
    pub repeats: usize,
    /// The folder's name (for `ss_dataset_dirs`).
    pub folder: String,
}

/// Image extensions sd-scripts accepts (lowercase).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

/// Scans `dir` like sd-scripts: each subfolder `N_tokens` gives N repeats and class tokens `tokens`; folders
/// whose first `_`-separated part is not an integer are skipped (their names are returned as warnings).
/// Captions come from `stem + caption_extension` (first line).
pub fn scan_train_data_dir(
    dir: &Path,
    caption_extension: &str,
) -> Result<(Vec<DatasetEntry>, Vec<String>)> {
    let io = |e: std::io::Error, p: &Path| Error::InvalidArgument {
        what: format!("--train_data_dir {}", p.display()),
        msg: e.to_string(),
    };
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(e, dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for sub in subdirs {
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut parts = name.split('_');
        let Some(repeats) = parts.next().and_then(|n| n.parse::<usize>().ok()) else {
            warnings.push(format!(
                "ignoring folder {name:?}: its name does not start with a repeat count (N_name)"
            ));
            continue;
        };
        let class_tokens = parts.collect::<Vec<_>>().join("_");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sub)
            .map_err(|e| io(e, &sub))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .map(|x| {
                        IMAGE_EXTENSIONS
                            .contains(&x.to_string_lossy().to_ascii_lowercase().as_str())
                    })
                    .unwrap_or(false)
            })
            .collect();
        files.sort();
        for image in files {
            let ext = caption_extension.trim_start_matches('.');
            let cap_path = image.with_extension(ext);
            let caption = match std::fs::read_to_string(&cap_path) {
                Ok(s) => s.lines().next().unwrap_or("").trim().to_string(),
                Err(_) => class_tokens.clone(),
            };
            out.push(DatasetEntry {
                image,
                caption,
                repeats,
                folder: name.clone(),
            });
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument {
            what: format!("--train_data_dir {}", dir.display()),
            msg: format!(
                "no images found in N_name subfolders{}",
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", warnings.join("; "))
                }
            ),
        });
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_repeats_and_captions() {
        let dir = std::env::temp_dir().join(format!("copier-ds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("10_sks dog")).unwrap();
        std::fs::create_dir_all(dir.join("notes")).unwrap();
        std::fs::create_dir_all(dir.join("512")).unwrap();
        std::fs::write(dir.join("10_sks dog/a.png"), b"x").unwrap();
        std::fs::write(
            dir.join("10_sks dog/a.caption"),
            "red circle, large\nsecond line",
        )
        .unwrap();
        std::fs::write(dir.join("10_sks dog/b.PNG"), b"x").unwrap();
        std::fs::write(dir.join("512/c.jpg"), b"x").unwrap();
        let (e, w) = scan_train_data_dir(&dir, ".caption").unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(e.len(), 3);
        let a = e.iter().find(|x| x.image.ends_with("a.png")).unwrap();
        assert_eq!((a.caption.as_str(), a.repeats), ("red circle, large", 10));
        let b = e.iter().find(|x| x.image.ends_with("b.PNG")).unwrap();
        assert_eq!(b.caption, "sks dog");
        // A folder named 512 is 512 repeats with empty class tokens (spec §9).
        let c = e.iter().find(|x| x.image.ends_with("c.jpg")).unwrap();
        assert_eq!((c.caption.as_str(), c.repeats), ("", 512));
        assert!(scan_train_data_dir(&dir.join("notes"), ".caption").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
