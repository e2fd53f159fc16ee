//! The output folder: a manifest of every file the pipeline wrote (SHA-256 and size), so that a run that
//! stopped resumes by skipping the steps whose outputs exist and verify, and so that a folder holding files the
//! pipeline did not write is refused before any work.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The manifest's file name inside the output folder.
pub const MANIFEST: &str = "manifest.json";

/// One file the pipeline wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// The step that wrote it.
    pub step: String,
}

/// An output folder with its manifest.
#[derive(Debug)]
pub struct OutDir {
    dir: PathBuf,
    pipeline: String,
    options: String,
    files: BTreeMap<String, FileEntry>,
    step_seconds: BTreeMap<String, f64>,
}

fn is_stale_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| Error::io(&p, e))?;
        if ft.is_dir() {
            walk(&p, base, out)?;
        } else {
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('\\', "/");
            out.push(rel);
        }
    }
    Ok(())
}

impl OutDir {
    /// Opens (or creates) `dir` for `pipeline` run with `options` (a canonical text of every setting that
    /// changes the outputs). Refuses, touching nothing, a folder that holds files not in its manifest, a
    /// manifest of another pipeline, or a run with other options. Removes the pipeline's own stale temporary
    /// files (`.name.tmp`) left by a killed run.
    pub fn open(dir: &Path, pipeline: &str, options: &str) -> Result<OutDir> {
        let mut od = OutDir {
            dir: dir.to_path_buf(),
            pipeline: pipeline.into(),
            options: options.into(),
            files: BTreeMap::new(),
            step_seconds: BTreeMap::new(),
        };
        if dir.exists() && !dir.is_dir() {
            return Err(Error::OutDir {
                dir: dir.into(),
                msg: "exists and is not a folder".into(),
            });
        }
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            return Ok(od);
        }
        let mut present = Vec::new();
        walk(dir, dir, &mut present)?;
        let manifest_path = dir.join(MANIFEST);
        if manifest_path.is_file() {
            let text =
                fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| Error::OutDir { dir: dir.into(), msg: format!("{MANIFEST} is not valid JSON ({e}); this folder was not written by this pipeline") })?;
            let their = v.get("pipeline").and_then(Value::as_str).unwrap_or("");
            if their != pipeline {
                return Err(Error::OutDir {
                    dir: dir.into(),
                    msg: format!("holds a `{their}` run, not `{pipeline}`; choose another --out"),
                });
            }
            let their_opts = v.get("options").and_then(Value::as_str).unwrap_or("");
            if their_opts != options {
                let diff: Vec<String> = their_opts
                    .lines()
                    .zip(options.lines())
                    .filter(|(a, b)| a != b)
                    .take(4)
                    .map(|(a, b)| format!("`{a}` → `{b}`"))
                    .collect();
                return Err(Error::OutDir {
                    dir: dir.into(),
                    msg: format!("holds a run with other settings ({}); resume with the same settings or choose another --out", diff.join(", ")),
                });
            }
            if let Some(files) = v.get("files").and_then(Value::as_object) {
                for (k, e) in files {
                    od.files.insert(
                        k.clone(),
                        FileEntry {
                            sha256: e.get("sha256").and_then(Value::as_str).unwrap_or("").into(),
                            bytes: e.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                            step: e.get("step").and_then(Value::as_str).unwrap_or("").into(),
                        },
                    );
                }
            }
            if let Some(st) = v.get("step_seconds").and_then(Value::as_object) {
                for (k, s) in st {
                    od.step_seconds.insert(k.clone(), s.as_f64().unwrap_or(0.0));
                }
            }
        }
        let has_manifest = manifest_path.is_file();
        let foreign: Vec<&String> = present
            .iter()
            .filter(|rel| rel.as_str() != MANIFEST && !od.files.contains_key(rel.as_str()))
            .filter(|rel| !(has_manifest && is_stale_temp(rel.rsplit('/').next().unwrap_or(rel))))
            .collect();
        if !foreign.is_empty() {
            let shown: Vec<&str> = foreign.iter().take(5).map(|s| s.as_str()).collect();
            return Err(Error::OutDir {
                dir: dir.into(),
                msg: format!(
                    "holds {} file(s) this pipeline did not write ({}{}); nothing was touched: choose an empty or new --out",
                    foreign.len(),
                    shown.join(", "),
                    if foreign.len() > 5 { ", ..." } else { "" }
                ),
            });
        }
        for rel in &present {
            if is_stale_temp(rel.rsplit('/').next().unwrap_or(rel)) && !od.files.contains_key(rel) {
                let _ = fs::remove_file(dir.join(rel));
            }
        }
        Ok(od)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `dir/rel`, creating its parent folder.
    pub fn path(&self, rel: &str) -> Result<PathBuf> {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        Ok(p)
    }

    /// True when `rel` was written by this pipeline and its content still has the recorded hash.
    pub fn verified(&self, rel: &str) -> bool {
        let Some(e) = self.files.get(rel) else {
            return false;
        };
        let p = self.dir.join(rel);
        match fs::metadata(&p) {
            Ok(m) if m.len() == e.bytes => lora_core::sha256_file(&p)
                .map(|h| h == e.sha256)
                .unwrap_or(false),
            _ => false,
        }
    }

    /// True when every file in `rels` verifies.
    pub fn all_verified(&self, rels: &[String]) -> bool {
        rels.iter().all(|r| self.verified(r))
    }

    /// Records `rel` (already written, atomically) as the output of `step` and saves the manifest.
    pub fn record(&mut self, rel: &str, step: &str) -> Result<()> {
        let p = self.dir.join(rel);
        let bytes = fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
        let sha256 = lora_core::sha256_file(&p)?;
        self.files.insert(
            rel.into(),
            FileEntry {
                sha256,
                bytes,
                step: step.into(),
            },
        );
        self.save()
    }

    /// Records how long `step` took when it ran (kept across resumes).
    pub fn record_time(&mut self, step: &str, seconds: f64) -> Result<()> {
        self.step_seconds.insert(step.into(), seconds);
        self.save()
    }

    /// The recorded seconds per step.
    pub fn step_seconds(&self) -> &BTreeMap<String, f64> {
        &self.step_seconds
    }

    /// The recorded files.
    pub fn files(&self) -> &BTreeMap<String, FileEntry> {
        &self.files
    }

    fn save(&self) -> Result<()> {
        let files: serde_json::Map<String, Value> = self
            .files
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    json!({"sha256": e.sha256, "bytes": e.bytes, "step": e.step}),
                )
            })
            .collect();
        let v = json!({"pipeline": self.pipeline, "options": self.options, "files": files, "step_seconds": self.step_seconds});
        let text = serde_json::to_string_pretty(&v)
            .map_err(|e| Error::option("manifest", e.to_string()))?;
        write_atomic(&self.dir.join(MANIFEST), text.as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_files_are_refused_and_recorded_files_verify() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("out");
        let mut od = OutDir::open(&d, "copier", "a=1").unwrap();
        fs::write(d.join("x.txt"), b"hello").unwrap();
        od.record("x.txt", "s1").unwrap();
        assert!(od.verified("x.txt"));
        let od2 = OutDir::open(&d, "copier", "a=1").unwrap();
        assert!(od2.verified("x.txt"));
        fs::write(d.join("x.txt"), b"changed").unwrap();
        assert!(!od2.verified("x.txt"));
        // Another pipeline's or another setting's folder is refused.
        assert!(matches!(
            OutDir::open(&d, "diff_extract", "a=1"),
            Err(Error::OutDir { .. })
        ));
        let e = OutDir::open(&d, "copier", "a=2").unwrap_err().to_string();
        assert!(e.contains("other settings"), "{e}");
        // A file nobody recorded is refused, and left in place.
        fs::write(d.join("mine.png"), b"user data").unwrap();
        let e = OutDir::open(&d, "copier", "a=1").unwrap_err().to_string();
        assert!(e.contains("mine.png"), "{e}");
        assert_eq!(fs::read(d.join("mine.png")).unwrap(), b"user data");
    }

    #[test]
    fn stale_temporary_files_are_removed_only_in_our_folders() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("out");
        let mut od = OutDir::open(&d, "copier", "o").unwrap();
        fs::write(d.join("a.bin"), b"1").unwrap();
        od.record("a.bin", "s").unwrap();
        fs::write(d.join(".b.bin.123.tmp"), b"partial").unwrap();
        OutDir::open(&d, "copier", "o").unwrap();
        assert!(!d.join(".b.bin.123.tmp").exists());
        // Without a manifest, a temp-looking file is someone else's.
        let d2 = t.path().join("other");
        fs::create_dir_all(&d2).unwrap();
        fs::write(d2.join(".c.tmp"), b"x").unwrap();
        assert!(OutDir::open(&d2, "copier", "o").is_err());
        assert!(d2.join(".c.tmp").exists());
    }
}
