//! Mount options and the per-file I/O policy hook.
//!
//! These are the knobs the lockfs binary and the tests turn: who may use the mount,
//! how many request loops serve it, and whether a file's reads and writes go straight
//! from the kernel to the backing file (passthrough) or through the daemon
//! (direct I/O), which is where mandatory lock checks will run.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use fuser::FileAttr;

use crate::context::LockContext;

/// Which files get mandatory locking (`mandatory=off|file|all`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mandatory {
    /// Locks are advisory only; every file may use kernel passthrough.
    #[default]
    Off,
    /// The System V convention Linux followed before 5.15: a regular file with the
    /// set-group-ID bit set and group-execute clear is mandatory.
    File,
    /// Every regular file is mandatory.
    All,
}

impl Mandatory {
    /// Whether a file with permission bits `perm` (and the given type) is mandatory.
    pub fn applies(self, attr: &FileAttr) -> bool {
        if attr.kind != fuser::FileType::RegularFile {
            return false;
        }
        match self {
            Mandatory::Off => false,
            Mandatory::All => true,
            Mandatory::File => is_mandatory_mode(u32::from(attr.perm)),
        }
    }
}

/// The System V mark: set-group-ID without group execute.
pub fn is_mandatory_mode(mode: u32) -> bool {
    mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID
}

impl Mandatory {
    /// Every word `mandatory=` accepts, in the configuration file and in `-o`
    /// alike, with the policy it names.
    pub const WORDS: &'static [(&'static str, Mandatory)] = &[
        ("off", Mandatory::Off),
        ("file", Mandatory::File),
        ("all", Mandatory::All),
    ];
}

impl FromStr for Mandatory {
    type Err = OptionValueError;
    fn from_str(s: &str) -> Result<Self, OptionValueError> {
        lookup("mandatory", Self::WORDS, s)
    }
}

impl fmt::Display for Mandatory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(word_of(Self::WORDS, *self))
    }
}

impl<'de> serde::Deserialize<'de> for Mandatory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_word(d)
    }
}

/// Where flock(2) locks live in the lock table (`flock=separate|shared`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FlockMode {
    /// Their own namespace, as on native Linux: flock and POSIX locks never
    /// conflict. The table keys them by the file's identity in its flock
    /// namespace (`lock_table::Namespace::Flock`).
    #[default]
    Separate,
    /// Whole-file locks on the real file (as NFS clients emulate flock), so POSIX,
    /// OFD and remote NLM locks meet local flock holders.
    Shared,
}

impl FlockMode {
    /// Every word `flock=` accepts, in the configuration file and in `-o`
    /// alike. `local` is an older name of `separate`, kept so that
    /// configurations written with it still load.
    pub const WORDS: &'static [(&'static str, FlockMode)] = &[
        ("separate", FlockMode::Separate),
        ("shared", FlockMode::Shared),
        ("local", FlockMode::Separate),
    ];
}

impl FromStr for FlockMode {
    type Err = OptionValueError;
    fn from_str(s: &str) -> Result<Self, OptionValueError> {
        lookup("flock", Self::WORDS, s)
    }
}

impl fmt::Display for FlockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(word_of(Self::WORDS, *self))
    }
}

impl<'de> serde::Deserialize<'de> for FlockMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_word(d)
    }
}

/// A value a mount option does not accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{option}={value:?}: expected one of {}", .accepted.join(", "))]
pub struct OptionValueError {
    /// The option (`mandatory`, `flock`).
    pub option: &'static str,
    /// The value given.
    pub value: String,
    /// Every word the option accepts.
    pub accepted: Vec<&'static str>,
}

fn lookup<T: Copy>(
    option: &'static str,
    words: &[(&'static str, T)],
    value: &str,
) -> Result<T, OptionValueError> {
    words
        .iter()
        .find(|(w, _)| *w == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| OptionValueError {
            option,
            value: value.to_string(),
            accepted: words.iter().map(|(w, _)| *w).collect(),
        })
}

/// The canonical word of a value: the first one the table gives for it.
fn word_of<T: Copy + PartialEq>(words: &[(&'static str, T)], value: T) -> &'static str {
    words
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(w, _)| *w)
}

/// Reads a word through the same `FromStr` as `-o`, so that the configuration
/// file can never accept a word the command line refuses or the reverse.
fn deserialize_word<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = OptionValueError>,
{
    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// How reads and writes of one open file are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoMode {
    /// The kernel reads and writes the backing file itself (FUSE passthrough);
    /// the daemon never sees the data.
    Passthrough,
    /// Every read and write reaches the daemon (`FOPEN_DIRECT_IO`), which performs
    /// it with `pread`/`pwrite` on the backing file.
    DirectIo,
}

/// Chooses the I/O mode of a regular file when it is opened.
///
/// The kernel allows one mode per inode while it is open: the policy is asked at the
/// first open of an inode, and later opens reuse that mode until the last one is
/// released. Mandatory-locked files will answer [`IoMode::DirectIo`] so that every
/// read, write and truncate can be checked against the lock table.
pub trait IoPolicy: Send + Sync + 'static {
    /// The mode for inode `ino` (the number the mount reports) with attributes `attr`.
    fn io_mode(&self, ino: u64, attr: &FileAttr) -> IoMode;
}

impl<F> IoPolicy for F
where
    F: Fn(u64, &FileAttr) -> IoMode + Send + Sync + 'static,
{
    fn io_mode(&self, ino: u64, attr: &FileAttr) -> IoMode {
        self(ino, attr)
    }
}

/// Options of one lockfs mount.
#[derive(Clone)]
pub struct MountOptions {
    /// Let users other than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    /// Let the kernel check permission bits (`default_permissions`). Keep this on:
    /// without it only `access(2)` is checked (by the daemon), while opens and
    /// changes run with the root daemon's rights for every caller.
    pub default_permissions: bool,
    /// Mount read-only.
    pub read_only: bool,
    /// Number of request loops, each with its own cloned `/dev/fuse` descriptor.
    pub n_threads: usize,
    /// Source name shown in the mount table.
    pub fsname: String,
    /// File system subtype: the mount shows as `fuse.<subtype>`.
    pub subtype: String,
    /// How long the kernel may cache attributes and names.
    pub ttl: Duration,
    /// Try FUSE kernel passthrough for files the policy puts in passthrough mode.
    /// When it is unavailable (not root, kernel without it) files fall back to
    /// direct I/O and this is logged once.
    pub passthrough: bool,
    /// Ask the kernel to send POSIX and flock lock requests to the daemon
    /// (`FUSE_POSIX_LOCKS`, `FUSE_FLOCK_LOCKS`), which keeps them in the lock table
    /// of [`MountOptions::locks`] (a private one when that is `None`). Off by
    /// default: the kernel then keeps locks locally and share reservations and
    /// mandatory locking are off too.
    pub forward_locks: bool,
    /// The lock table, share table and wake-up router this mount serves. Several
    /// mounts (and the NLM server) share one by cloning it. Setting it implies
    /// [`MountOptions::forward_locks`].
    pub locks: Option<LockContext>,
    /// Which files get mandatory locking; needs locks to be forwarded.
    pub mandatory: Mandatory,
    /// Where flock locks live.
    pub flock: FlockMode,
    /// Chooses passthrough or direct I/O per file; `None` means passthrough (or,
    /// with mandatory locking, direct I/O exactly for mandatory files).
    pub io_policy: Option<Arc<dyn IoPolicy>>,
    /// Answer reads of direct-I/O files by splicing from the backing file into
    /// the FUSE device rather than copying through the daemon. On by default:
    /// on a quiet machine a mandatory file's 1 MiB sequential reads ran at
    /// 0.43x native with splicing against 0.30x copying (BENCHMARKS.md); the
    /// copy is kept for files that cannot be spliced and for `nosplice`.
    pub splice_read: bool,
    /// The largest read the kernel sends the daemon in one request (the
    /// `max_read` mount option); `None` leaves the kernel's own limit (1 MiB
    /// with its default `max_pages_limit`).
    pub max_read: Option<u32>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: true,
            default_permissions: true,
            read_only: false,
            n_threads: 2,
            fsname: "lockfs".to_string(),
            subtype: "lockfs".to_string(),
            ttl: Duration::from_secs(1),
            passthrough: true,
            forward_locks: false,
            locks: None,
            mandatory: Mandatory::Off,
            flock: FlockMode::Separate,
            io_policy: None,
            splice_read: true,
            max_read: None,
        }
    }
}

impl fmt::Debug for MountOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountOptions")
            .field("allow_other", &self.allow_other)
            .field("default_permissions", &self.default_permissions)
            .field("read_only", &self.read_only)
            .field("n_threads", &self.n_threads)
            .field("fsname", &self.fsname)
            .field("subtype", &self.subtype)
            .field("ttl", &self.ttl)
            .field("passthrough", &self.passthrough)
            .field("forward_locks", &self.forward_locks)
            .field("locks", &self.locks.is_some())
            .field("mandatory", &self.mandatory)
            .field("flock", &self.flock)
            .field("io_policy", &self.io_policy.as_ref().map(|_| "custom"))
            .field("splice_read", &self.splice_read)
            .field("max_read", &self.max_read)
            .finish()
    }
}
