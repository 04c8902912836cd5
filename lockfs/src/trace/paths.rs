//! Names for files the probes know only by device and inode.
//!
//! Neither the kernel tracepoints nor the lock table carry a path, so the
//! view walks the directory given with `--path-prefix` and remembers the
//! `(st_dev, st_ino)` of every file below it. An unknown file triggers a new
//! walk at most every few seconds, so files created while tracing get names
//! too without rescanning a large tree on every event.
//!
//! Between two walks an unknown file may still be below the directory (it
//! was created after the last walk): it is [`Name::Unnamed`] and the view
//! lists it by device and inode until a walk names it. Only a walk that
//! started after the file was first seen and did not find it, or a device
//! that no file below the directory lives on, puts it [`Name::Outside`].

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most entries one walk visits, so a huge tree cannot stall the view.
const WALK_LIMIT: usize = 200_000;
/// Least time between two walks.
const REWALK_AFTER: Duration = Duration::from_secs(5);

/// What the index knows about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    /// Below the directory, at this path.
    Path(String),
    /// Not named (yet): no directory was given, or the file appeared after
    /// the last walk. Shown by device and inode.
    Unnamed,
    /// Not below the directory.
    Outside,
}

/// `(dev, ino)` to path under one directory.
#[derive(Debug)]
pub struct PathIndex {
    root: Option<PathBuf>,
    names: HashMap<(u64, u64), String>,
    /// Every device a file below the root was found on by the last walk.
    devices: HashSet<u64>,
    /// When each file not (yet) found was first looked up.
    first_missed: HashMap<(u64, u64), Instant>,
    /// When the last walk started.
    walked: Option<Instant>,
    rewalk_after: Duration,
    /// The next miss may walk at once, whatever the rate limit says.
    walk_on_next_miss: bool,
}

impl PathIndex {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self::with_rewalk_interval(root, REWALK_AFTER)
    }

    fn with_rewalk_interval(root: Option<PathBuf>, rewalk_after: Duration) -> Self {
        let mut idx = PathIndex {
            root,
            names: HashMap::new(),
            devices: HashSet::new(),
            first_missed: HashMap::new(),
            walked: None,
            rewalk_after,
            walk_on_next_miss: false,
        };
        idx.walk();
        idx
    }

    fn walk(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        self.walked = Some(Instant::now());
        self.walk_on_next_miss = false;
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
            self.devices.insert(m.dev());
            self.names
                .insert((m.dev(), m.ino()), path.to_string_lossy().into_owned());
        }
    }

    /// Lets the next lookup of an unknown file walk at once: a one-shot
    /// snapshot then names files created since the last walk instead of
    /// listing them by number.
    pub fn walk_on_next_miss(&mut self) {
        self.walk_on_next_miss = true;
    }

    /// What is known of `(dev, ino)`; may walk the tree again (rate-limited).
    pub fn resolve(&mut self, dev: u64, ino: u64) -> Name {
        if self.root.is_none() {
            return Name::Unnamed;
        }
        let key = (dev, ino);
        if let Some(p) = self.names.get(&key) {
            return Name::Path(p.clone());
        }
        let first = *self.first_missed.entry(key).or_insert_with(Instant::now);
        if self.walk_on_next_miss || self.walked.is_none_or(|t| t.elapsed() >= self.rewalk_after) {
            self.walk();
            if let Some(p) = self.names.get(&key) {
                self.first_missed.remove(&key);
                return Name::Path(p.clone());
            }
        }
        if !self.devices.contains(&dev) || self.walked.is_some_and(|t| t >= first) {
            Name::Outside
        } else {
            Name::Unnamed
        }
    }

    /// The path of `(dev, ino)` under the root, if it is known.
    #[cfg(test)]
    pub fn lookup(&mut self, dev: u64, ino: u64) -> Option<String> {
        match self.resolve(dev, ino) {
            Name::Path(p) => Some(p),
            Name::Unnamed | Name::Outside => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &Path) -> (u64, u64) {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.dev(), m.ino())
    }

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

    #[test]
    fn a_file_created_after_the_walk_is_unnamed_until_the_next_walk_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = PathIndex::with_rewalk_interval(
            Some(dir.path().to_path_buf()),
            Duration::from_millis(300),
        );
        let late = dir.path().join("late");
        std::fs::write(&late, b"x").unwrap();
        let (dev, ino) = id(&late);
        // Within the rate limit no walk runs: listed by number, not dropped.
        assert_eq!(idx.resolve(dev, ino), Name::Unnamed);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(
            idx.resolve(dev, ino),
            Name::Path(late.to_string_lossy().into_owned())
        );
    }

    #[test]
    fn a_walk_after_the_first_miss_settles_files_outside() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("inside"), b"x").unwrap();
        let beside = parent.path().join("beside");
        std::fs::write(&beside, b"x").unwrap();
        let mut idx = PathIndex::with_rewalk_interval(Some(root), Duration::from_secs(3600));
        let (dev, ino) = id(&beside);
        // Same device as the root, not found since it was first seen: it
        // may be new, so it stays listed until a walk has looked for it.
        assert_eq!(idx.resolve(dev, ino), Name::Unnamed);
        idx.walk_on_next_miss();
        assert_eq!(idx.resolve(dev, ino), Name::Outside);
        assert_eq!(idx.resolve(dev, ino), Name::Outside);
        // A device no file below the root lives on is outside at once.
        let (pdev, pino) = id(Path::new("/proc/self/stat"));
        assert_ne!(pdev, dev);
        assert_eq!(idx.resolve(pdev, pino), Name::Outside);
    }

    #[test]
    fn without_a_root_every_file_is_unnamed() {
        let mut idx = PathIndex::new(None);
        assert_eq!(idx.resolve(1, 2), Name::Unnamed);
    }
}
