//! `lockfs share-open --access A --deny D FILE -- CMD ARGS...`: opens FILE on a
//! lockfs mount with a share reservation that is part of the open, then runs CMD
//! with the file open on descriptor 3 (or `--fd N`).
//!
//! It registers the request through the file's `user.lockfs.share-open.A.D` xattr,
//! which the daemon ties to this process, and then opens the file: the open
//! itself is refused (`EBUSY`) when the reservation conflicts, so no other
//! process can slip in between. The reservation belongs to the open file, so it
//! lasts while CMD (or anything it passes the descriptor to) keeps it open. The
//! file is opened read-only, write-only or read-write as the access says (read-only
//! for access `-`, whose reservation then counts as a read).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use fuse_lockfs::share::{parse_mode, share_open_xattr};

pub fn run(access: &str, deny: &str, fd: i32, file: &Path, cmd: &[OsString]) -> Result<()> {
    let Some(mode) = parse_mode(access, deny) else {
        bail!("access and deny take -, r, w or rw (got {access:?}, {deny:?})");
    };
    let Some((prog, args)) = cmd.split_first() else {
        bail!("no command to run");
    };
    if fd < 0 {
        bail!("--fd must not be negative");
    }
    let path = CString::new(file.as_os_str().as_bytes()).context("file name has a NUL")?;
    let name = CString::new(share_open_xattr(mode)).context("xattr name")?;
    // SAFETY: valid C strings; a NULL buffer of size 0 asks for the size only.
    let r = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "{}: cannot register the share reservation ({e}); is it on a lockfs mount?",
            file.display()
        );
    }
    let flags = match (mode.access.reads(), mode.access.writes()) {
        (_, false) => libc::O_RDONLY,
        (false, true) => libc::O_WRONLY,
        (true, true) => libc::O_RDWR,
    };
    // SAFETY: valid C string; the descriptor is handed to the command below.
    let opened = unsafe { libc::open(path.as_ptr(), flags) };
    if opened < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(fuse_lockfs::SHARE_ERRNO) {
            bail!(
                "{}: share reservation {mode} conflicts with another open",
                file.display()
            );
        }
        bail!("{}: {e}", file.display());
    }
    if opened != fd {
        // SAFETY: both are valid descriptor numbers; dup2 leaves FD_CLOEXEC clear.
        if unsafe { libc::dup2(opened, fd) } < 0 {
            bail!("dup2: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `opened` is ours and no longer needed.
        unsafe { libc::close(opened) };
    }
    let err = std::process::Command::new(prog).args(args).exec();
    bail!("cannot run {}: {err}", Path::new(prog).display())
}
