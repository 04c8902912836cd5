//! Errors of the mount life cycle (request errors travel to the kernel as errno).

use std::io;
use std::path::PathBuf;

/// Why a mount could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source directory could not be opened.
    #[error("cannot open source directory {path}: {source}")]
    Source {
        /// The source directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The source is not a directory.
    #[error("source {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The options are inconsistent.
    #[error("invalid mount options: {0}")]
    Options(String),
    /// Mounting at the mount point failed.
    #[error("cannot mount at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The request loop ended with an error.
    #[error("FUSE session failed: {0}")]
    Session(io::Error),
}

/// Result of the mount life-cycle functions.
pub type Result<T> = std::result::Result<T, Error>;
