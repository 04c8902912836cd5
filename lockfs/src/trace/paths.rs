//! Names for files the probes know only by device and inode.
//!
//! Neither the kernel tracepoints nor the lock table carry a path, so the
//! view walks the directory given with `--path-prefix` and remembers the
//! `(st_dev, st_ino)` of every file below it. An unknown file triggers a new
//! walk at most every few seconds, so files created while tracing get names
//! too without rescanning a large tree on every event.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most entries one walk visits, so a huge tree cannot stall the view.
const WALK_LIMIT: usize = 200_000;
/// Least time between two walks.
const REWALK_AFTER: Duration = Duration::from_secs(5);

/// `(dev, ino)` to path under one directory.
#[derive(Debug, Default)]
pub struct PathIndex {
    root: Option<PathBuf>,
    names: HashMap<(u64, u64), String>,
    walked: Option<Instant>,
}

impl PathIndex {
    pub fn new(root: Option<PathBuf>) -> Self {
        let mut idx = PathIndex {
            root,
            ..Default::default()
        };
        idx.walk();
        idx
    }

    fn walk(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        self.walked = Some(Instant::now());
        let mut stack = vec![root];
        let mut visited = 0;
        while let Some(dir) = stack.pop() {
            self.note(&dir);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                visited += 1;
                if visited > WALK_LIMIT {
                    tracing::warn!(root = %dir.display(), "path index stopped after {WALK_LIMIT} entries");
                    return;
                }
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => stack.push(path),
                    Ok(_) => self.note(&path),
                    Err(_) => {}
                }
            }
        }
    }

    fn note(&mut self, path: &Path) {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            self.names
                .insert((m.dev(), m.ino()), path.to_string_lossy().into_owned());
        }
    }

    /// The path of `(dev, ino)` under the root, if it is there.
    pub fn lookup(&mut self, dev: u64, ino: u64) -> Option<String> {
        if let Some(p) = self.names.get(&(dev, ino)) {
            return Some(p.clone());
        }
        if self.root.is_some() && self.walked.is_none_or(|t| t.elapsed() >= REWALK_AFTER) {
            self.walk();
            return self.names.get(&(dev, ino)).cloned();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_files_below_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let f = sub.join("f");
        std::fs::write(&f, b"x").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let mut idx = PathIndex::new(Some(dir.path().to_path_buf()));
        assert_eq!(
            idx.lookup(m.dev(), m.ino()),
            Some(f.to_string_lossy().into_owned())
        );
        let outside = std::fs::metadata("/").unwrap();
        assert_eq!(idx.lookup(outside.dev(), outside.ino() + 12345678), None);
        let mut none = PathIndex::new(None);
        assert_eq!(none.lookup(m.dev(), m.ino()), None);
    }
}
