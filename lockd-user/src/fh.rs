//! NLM file handles: which file of which export a client means, in a form the client cannot
//! forge and the server can resolve after a restart.
//!
//! Layout (all of it opaque to clients):
//!
//! ```text
//! export id (u32, big endian) | kernel handle type (u8) | kernel handle | MAC (16 bytes)
//! ```
//!
//! The kernel handle comes from `name_to_handle_at` and is resolved with
//! `open_by_handle_at(export root, O_PATH)`, so it stays valid across daemon restarts (which
//! reclaims need) and goes stale when the file is deleted. The MAC is HMAC-SHA256 over
//! everything before it, truncated to 16 bytes, keyed with 32 random bytes kept in the
//! state directory (created mode 0600 on first start and reused). A handle whose length,
//! export or MAC does not check out is refused before any system call names a file, so a
//! forged handle cannot reach files outside the exports. The MAC is compared in constant
//! time.
//!
//! An ext4 handle takes 29 bytes, which fits the 32 bytes of NLM versions 1 and 3;
//! filesystems with longer kernel handles (tmpfs, btrfs) are reachable through version 4
//! only.
//!
//! Resolved handles are cached by their exact bytes; a cached handle is not checked against
//! the filesystem again, so a file deleted after its first lock keeps its identity until the
//! cache is cleared (it is bounded and cleared wholesale when full).

use crate::exports::{Exports, OpenExport};
use hmac::{Hmac, Mac};
use lock_table::FileId;
use sha2::Sha256;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Bytes of the MAC at the end of a handle.
pub const MAC_LEN: usize = 16;
/// Bytes of the key.
pub const KEY_LEN: usize = 32;
/// The fixed size of an NFS version 2 file handle (MOUNT version 1 answers one): a
/// shorter handle is zero-padded to it.
pub const V2_FHSIZE: usize = 32;

/// A handle as MOUNT version 1 hands it out: zero-padded to [`V2_FHSIZE`] bytes, or
/// `None` when it is longer (a file system whose kernel handles are long, such as tmpfs
/// or btrfs, cannot be reached through NFS version 2 sizes).
pub fn v2_handle(fh: &[u8]) -> Option<[u8; V2_FHSIZE]> {
    let mut out = [0u8; V2_FHSIZE];
    out.get_mut(..fh.len())?.copy_from_slice(fh);
    Some(out)
}
/// Name of the key file in the state directory.
pub const KEY_FILE: &str = "fh.key";
/// Longest kernel handle accepted (`MAX_HANDLE_SZ`).
const MAX_KERNEL_HANDLE: usize = 128;
const HEADER: usize = 5;
const CACHE_MAX: usize = 65_536;

/// Why a handle could not be made or resolved.
#[derive(Debug, Error)]
pub enum FhError {
    #[error("file handle has an impossible length {0}")]
    Malformed(usize),
    #[error("file handle names export {0}, which is not exported")]
    UnknownExport(u32),
    #[error("file handle does not carry this server's MAC")]
    BadMac,
    #[error("file handle no longer names a file")]
    Stale,
    #[error("{path} is not inside export {export} (0: any configured export)")]
    OutsideExport { path: PathBuf, export: u32 },
    #[error("the filesystem of {0} gives handles this server cannot carry")]
    Unsupported(PathBuf),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The secret that makes handles unforgeable.
///
/// Kept with the HMAC state that has already absorbed it: keying HMAC-SHA256 costs two
/// of the four SHA-256 blocks of a handle's MAC, and every NFS call checks a handle.
/// Shared, so that the copies the doors take are cheap.
#[derive(Clone)]
pub struct FhKey(Arc<Hmac<Sha256>>);

impl std::fmt::Debug for FhKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FhKey(..)")
    }
}

impl FhKey {
    /// A key from bytes (tests).
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        // HMAC takes keys of any length; this cannot fail for 32 bytes.
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&b)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        Self(Arc::new(keyed))
    }

    /// Reads the key of `state_dir`, creating it (random, mode 0600, synced) on first use.
    pub fn load_or_create(state_dir: &Path) -> io::Result<Self> {
        let path = state_dir.join(KEY_FILE);
        match File::open(&path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                let key: [u8; KEY_LEN] = buf.try_into().map_err(|b: Vec<u8>| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} holds {} bytes, expected {KEY_LEN}",
                            path.display(),
                            b.len()
                        ),
                    )
                })?;
                Ok(Self::from_bytes(key))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                fill_random(&mut key)?;
                let tmp = state_dir.join(format!("{KEY_FILE}.tmp"));
                let _ = std::fs::remove_file(&tmp);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                File::open(state_dir)?.sync_all()?;
                Ok(Self::from_bytes(key))
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut m = (*self.0).clone();
        m.update(body);
        m
    }

    /// Builds a handle from its parts.
    pub fn seal(&self, export: u32, handle_type: u8, kernel: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + kernel.len() + MAC_LEN);
        out.extend_from_slice(&export.to_be_bytes());
        out.push(handle_type);
        out.extend_from_slice(kernel);
        let tag = self.mac(&out).finalize().into_bytes();
        out.extend_from_slice(&tag[..MAC_LEN]);
        out
    }

    /// Checks a handle's length and MAC; returns (export id, handle type, kernel handle).
    /// A handle of NFS version 2's fixed [`V2_FHSIZE`] bytes may be a shorter handle
    /// zero-padded (as MOUNT version 1 hands them out): it opens as that handle.
    pub fn open<'a>(&self, fh: &'a [u8]) -> Result<(u32, u8, &'a [u8]), FhError> {
        let exact = self.open_exact(fh);
        if exact.is_ok() || fh.len() != V2_FHSIZE {
            return exact;
        }
        let mut n = fh.len();
        while n > HEADER + 1 + MAC_LEN && fh[n - 1] == 0 {
            n -= 1;
            if let Ok(parts) = self.open_exact(&fh[..n]) {
                return Ok(parts);
            }
        }
        exact
    }

    fn open_exact<'a>(&self, fh: &'a [u8]) -> Result<(u32, u8, &'a [u8]), FhError> {
        if fh.len() < HEADER + 1 + MAC_LEN || fh.len() > HEADER + MAX_KERNEL_HANDLE + MAC_LEN {
            return Err(FhError::Malformed(fh.len()));
        }
        let (body, tag) = fh.split_at(fh.len() - MAC_LEN);
        self.mac(body)
            .verify_truncated_left(tag)
            .map_err(|_| FhError::BadMac)?;
        let export = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        Ok((export, body[4], &body[HEADER..]))
    }
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which stays
        // borrowed mutably for the duration of the call.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// `struct file_handle` with room for the largest kernel handle.
#[repr(C)]
struct KernelHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_KERNEL_HANDLE],
}

impl KernelHandle {
    fn empty() -> Self {
        Self {
            handle_bytes: MAX_KERNEL_HANDLE as libc::c_uint,
            handle_type: 0,
            f_handle: [0; MAX_KERNEL_HANDLE],
        }
    }
}

/// The kernel handle (type, bytes) of `name` in `dir`, by `name_to_handle_at` with
/// `flags` (`AT_EMPTY_PATH` and an empty name: `dir` itself). A handle this format cannot
/// carry (a type over 255, no bytes, more than it has room for) is an error of kind
/// `Unsupported` without an OS error code.
pub fn kernel_handle_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<(u8, Vec<u8>)> {
    let mut h = KernelHandle::empty();
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `name` is NUL-terminated; `h` is a file_handle header followed by
    // MAX_KERNEL_HANDLE bytes, as its handle_bytes says; mount_id is a valid out pointer.
    let r = unsafe {
        libc::name_to_handle_at(
            dir,
            name.as_ptr(),
            (&mut h as *mut KernelHandle).cast(),
            &mut mount_id,
            flags,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = h.handle_bytes as usize;
    match u8::try_from(h.handle_type) {
        Ok(htype) if len > 0 && len <= MAX_KERNEL_HANDLE => Ok((htype, h.f_handle[..len].to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel file handle does not fit an NLM handle",
        )),
    }
}

/// Whether an error of [`open_kernel_handle`] means the handle names no file (any more):
/// deleted, never valid, or not decodable by the file system.
pub fn names_nothing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ESTALE) | Some(libc::ENOENT) | Some(libc::EINVAL)
    )
}

/// Opens the file a kernel handle names, relative to the export root `root`, as an
/// `O_PATH` descriptor (`open_by_handle_at`). Too many bytes is `EINVAL`, as the kernel
/// answers a handle it cannot decode.
pub fn open_kernel_handle(root: RawFd, htype: u8, kernel: &[u8]) -> io::Result<OwnedFd> {
    if kernel.len() > MAX_KERNEL_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = KernelHandle::empty();
    h.handle_bytes = kernel.len() as libc::c_uint;
    h.handle_type = libc::c_int::from(htype);
    h.f_handle[..kernel.len()].copy_from_slice(kernel);
    // SAFETY: the caller keeps `root` open during the call; `h` is a valid file_handle
    // whose handle_bytes does not exceed its buffer.
    let fd = unsafe {
        libc::open_by_handle_at(
            root,
            (&mut h as *mut KernelHandle).cast(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open_by_handle_at and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FhError + '_ {
    move |source| FhError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The NLM file handle of `path`, a file inside `export` (what `lockfs fh PATH` prints).
/// Symbolic links are resolved first; the result must still lie inside the export.
pub fn make_fh(key: &FhKey, export: &OpenExport, path: &Path) -> Result<Vec<u8>, FhError> {
    let real = path.canonicalize().map_err(io_err(path))?;
    let root = export
        .export
        .root
        .canonicalize()
        .map_err(io_err(&export.export.root))?;
    if !real.starts_with(&root) {
        return Err(FhError::OutsideExport {
            path: path.to_path_buf(),
            export: export.export.id,
        });
    }
    let c = CString::new(real.as_os_str().as_bytes())
        .map_err(|_| FhError::Unsupported(real.clone()))?;
    let (htype, kernel) = match kernel_handle_at(libc::AT_FDCWD, &c, 0) {
        Ok(h) => h,
        Err(e) if e.raw_os_error().is_none() => return Err(FhError::Unsupported(real)),
        Err(e) => return Err(io_err(&real)(e)),
    };
    Ok(key.seal(export.export.id, htype, &kernel))
}

/// `lockfs fh PATH` in one call: the handle of `path` under whichever configured export
/// contains it, with the key of `state_dir` (created if this is the first use).
pub fn fh_for_path(
    state_dir: &Path,
    exports: &[crate::exports::Export],
    path: &Path,
) -> Result<Vec<u8>, FhError> {
    let key = FhKey::load_or_create(state_dir).map_err(io_err(state_dir))?;
    let opened = Exports::open(exports.to_vec()).map_err(|e| FhError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    let real = path.canonicalize().map_err(io_err(path))?;
    let export = opened
        .iter()
        .filter(|o| {
            o.export
                .root
                .canonicalize()
                .is_ok_and(|r| real.starts_with(r))
        })
        .max_by_key(|o| o.export.root.components().count())
        .ok_or_else(|| FhError::OutsideExport {
            path: path.to_path_buf(),
            export: 0,
        })?;
    make_fh(&key, export, &real)
}

/// Resolves handles to exports and files, with a cache of handles already resolved.
#[derive(Debug)]
pub struct FileHandles {
    key: FhKey,
    /// Keys of the groups whose handles must stay valid when they move to another node:
    /// each is kept on the group's storage ([`crate::group_state`]).
    group_keys: Mutex<HashMap<lock_table::ScopeId, FhKey>>,
    cache: Mutex<HashMap<Box<[u8]>, FileId>>,
}

/// The export id a handle claims, unchecked (the MAC is checked with the key of that
/// export's group).
pub fn claimed_export(fh: &[u8]) -> Option<u32> {
    let b: [u8; 4] = fh.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

impl FileHandles {
    pub fn new(key: FhKey) -> Self {
        Self {
            key,
            group_keys: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(&self) -> &FhKey {
        &self.key
    }

    /// Handles of `scope`'s exports are made and checked with `key` from now on.
    pub fn set_group_key(&self, scope: lock_table::ScopeId, key: FhKey) {
        self.group_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(scope, key);
    }

    /// The key of a group's handles: its own, or the node's.
    pub fn key_of(&self, scope: lock_table::ScopeId) -> FhKey {
        self.group_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&scope)
            .cloned()
            .unwrap_or_else(|| self.key.clone())
    }

    /// The export and backing file a handle names. Nothing on disk is touched unless the
    /// length, export id and MAC check out.
    pub fn resolve<'e>(
        &self,
        exports: &'e Exports,
        fh: &[u8],
    ) -> Result<(&'e OpenExport, FileId), FhError> {
        let claimed = claimed_export(fh).ok_or(FhError::Malformed(fh.len()))?;
        let Some(export) = exports.get(claimed) else {
            // A handle this server did not seal is refused as such (length, MAC) before
            // its export is named.
            self.key.open(fh)?;
            return Err(FhError::UnknownExport(claimed));
        };
        let (_, htype, kernel) = self.key_of(export.export.scope).open(fh)?;
        if let Some(id) = self.lock_cache().get(fh) {
            return Ok((export, *id));
        }
        // An export whose group is offline has no root to resolve against.
        let root = export.root().ok_or(FhError::Stale)?;
        let fd = open_kernel_handle(root.as_raw_fd(), htype, kernel).map_err(|e| {
            if names_nothing(&e) {
                FhError::Stale
            } else {
                io_err(&export.export.root)(e)
            }
        })?;
        let meta = File::from(fd)
            .metadata()
            .map_err(io_err(&export.export.root))?;
        use std::os::unix::fs::MetadataExt;
        let id = FileId::new(meta.dev(), meta.ino());
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(fh.into(), id);
        Ok((export, id))
    }

    /// Where files some client named by handle are now (their paths as the kernel has
    /// them, under their exports' roots): each found through a handle of it among those
    /// resolved lately, opened again and read back from `/proc/self/fd`, so it follows
    /// renames. A file no recent handle names, a removed one, or one of an export whose
    /// group is offline here is left out. For the lock listing, which otherwise names only
    /// files a local mount has cached; one pass over the cache for all of them.
    pub fn source_paths(&self, exports: &Exports, files: &[FileId]) -> HashMap<FileId, PathBuf> {
        let wanted: std::collections::HashSet<FileId> = files.iter().copied().collect();
        let mut handles: HashMap<FileId, Box<[u8]>> = HashMap::new();
        for (fh, id) in self.lock_cache().iter() {
            if wanted.contains(id) {
                handles.entry(*id).or_insert_with(|| fh.clone());
            }
        }
        handles
            .into_iter()
            .filter_map(|(id, fh)| Some((id, self.source_path(exports, &fh)?)))
            .collect()
    }

    fn source_path(&self, exports: &Exports, fh: &[u8]) -> Option<PathBuf> {
        let export = exports.get(claimed_export(fh)?)?;
        let (_, htype, kernel) = self.key_of(export.export.scope).open(fh).ok()?;
        let root = export.root()?;
        let fd = open_kernel_handle(root.as_raw_fd(), htype, kernel).ok()?;
        let at = |fd: RawFd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
        let (path, root_path) = (at(fd.as_raw_fd())?, at(root.as_raw_fd())?);
        // A removed file's link ends so; its name is no longer a path to it.
        let removed = path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)");
        (path.starts_with(&root_path) && !removed).then_some(path)
    }

    /// Forgets every resolved handle (an export's storage was mounted anew).
    pub fn clear_cache(&self) {
        self.lock_cache().clear();
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, FileId>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::Export;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn setup() -> (tempfile::TempDir, Exports, FileHandles, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("export");
        std::fs::create_dir(&root).unwrap();
        let f = root.join("file");
        std::fs::write(&f, b"data").unwrap();
        let ex = Exports::open(vec![Export::new(3, &root)]).unwrap();
        let key = FhKey::load_or_create(d.path()).unwrap();
        (d, ex, FileHandles::new(key), f)
    }

    #[test]
    fn key_is_created_private_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let a = FhKey::load_or_create(d.path()).unwrap();
        let meta = std::fs::metadata(d.path().join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let b = FhKey::load_or_create(d.path()).unwrap();
        // The same key: it seals a handle the same way, which another key does not.
        assert_eq!(a.seal(1, 1, b"kernel"), b.seal(1, 1, b"kernel"));
        let other = FhKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(a.seal(1, 1, b"kernel"), other.seal(1, 1, b"kernel"));
        std::fs::write(d.path().join(KEY_FILE), b"short").unwrap();
        assert!(FhKey::load_or_create(d.path()).is_err());
    }

    #[test]
    fn handle_resolves_to_the_backing_file() {
        let (_d, ex, fhs, f) = setup();
        let fh = make_fh(fhs.key(), ex.get(3).unwrap(), &f).unwrap();
        let (e, id) = fhs.resolve(&ex, &fh).unwrap();
        assert_eq!(e.export.id, 3);
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!(id, FileId::new(m.dev(), m.ino()));
        // Again, from the cache.
        assert_eq!(fhs.resolve(&ex, &fh).unwrap().1, id);
        // A fresh resolver with the same key (a restart) resolves it too.
        let again = FileHandles::new(fhs.key().clone());
        assert_eq!(again.resolve(&ex, &fh).unwrap().1, id);
    }

    #[test]
    fn forged_foreign_and_unexported_handles_are_refused() {
        let (_d, ex, fhs, f) = setup();
        let fh = make_fh(fhs.key(), ex.get(3).unwrap(), &f).unwrap();
        for i in 0..fh.len() {
            let mut bad = fh.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(fhs.resolve(&ex, &bad), Err(FhError::BadMac)),
                "flipped byte {i}"
            );
        }
        assert!(matches!(
            fhs.resolve(&ex, &fh[..fh.len() - 1]),
            Err(FhError::BadMac)
        ));
        assert!(matches!(fhs.resolve(&ex, &[]), Err(FhError::Malformed(0))));
        assert!(matches!(
            fhs.resolve(&ex, &[0; 300]),
            Err(FhError::Malformed(300))
        ));
        let other = FhKey::from_bytes([9; KEY_LEN]);
        let foreign = make_fh(&other, ex.get(3).unwrap(), &f).unwrap();
        assert!(matches!(fhs.resolve(&ex, &foreign), Err(FhError::BadMac)));
        // Correctly sealed, but for an export that does not exist here.
        let (_, t, k) = fhs.key().open(&fh).unwrap();
        let unexported = fhs.key().seal(4, t, k);
        assert!(matches!(
            fhs.resolve(&ex, &unexported),
            Err(FhError::UnknownExport(4))
        ));
    }

    #[test]
    fn deleted_file_is_stale_and_outside_paths_are_refused() {
        let (d, ex, fhs, f) = setup();
        let fh = make_fh(fhs.key(), ex.get(3).unwrap(), &f).unwrap();
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(fhs.resolve(&ex, &fh), Err(FhError::Stale)));
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"").unwrap();
        assert!(matches!(
            make_fh(fhs.key(), ex.get(3).unwrap(), &outside),
            Err(FhError::OutsideExport { .. })
        ));
    }

    #[test]
    fn handle_for_a_path_picks_its_export() {
        let (d, ex, fhs, f) = setup();
        let exports: Vec<Export> = ex.iter().map(|o| o.export.clone()).collect();
        let fh = fh_for_path(d.path(), &exports, &f).unwrap();
        assert_eq!(fhs.resolve(&ex, &fh).unwrap().0.export.id, 3);
        assert!(matches!(
            fh_for_path(d.path(), &exports, d.path()),
            Err(FhError::OutsideExport { .. })
        ));
    }

    #[test]
    fn ext4_handles_fit_version_3() {
        let (_d, ex, fhs, f) = setup();
        let fh = make_fh(fhs.key(), ex.get(3).unwrap(), &f).unwrap();
        let fstype = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&f)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if fstype == "ext2/ext3" {
            assert!(fh.len() <= crate::proto::nlm::NLM3_FH_MAX, "{}", fh.len());
        }
        assert!(fh.len() <= crate::proto::nlm::NLM4_FH_MAX);
    }
}
