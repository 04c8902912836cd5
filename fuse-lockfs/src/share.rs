//! Share reservations of opens on the mount, and the two ways to ask for one.
//!
//! Every open of a regular file takes a reservation owned by its open file:
//! access from `O_ACCMODE`, deny none. A later open whose access meets a held deny,
//! or whose deny meets a held access, fails with **`EBUSY`** (the errno the Linux
//! CIFS client gives a Windows sharing violation). Reservations go with the last
//! close of the open file.
//!
//! An explicit access/deny pair is asked for in one of two ways:
//! - **ioctl** [`LOCKFS_IOC_SET_SHARE`] on the open descriptor, with
//!   `struct lockfs_share { uint32_t access; uint32_t deny; }` (published in
//!   `include/lockfs.h`; [`set_share`] is the Rust helper). It replaces the open's
//!   reservation atomically, or fails `EBUSY` and changes nothing. The access is
//!   widened to at least what the open itself may do, so a writer cannot hide
//!   behind a read-only reservation. Values: 0 none, 1 read, 2 write, 3 both.
//! - **at open time**, for programs that cannot issue ioctls: reading the xattr
//!   [`SHARE_OPEN_XATTR`]`.<access>.<deny>` of the file (e.g.
//!   `user.lockfs.share-open.r.w`; letters `-`, `r`, `w`, `rw`) registers a
//!   request for the calling thread (the process, for a single-threaded program)
//!   that its next open of that file consumes (within 30 seconds). That open is
//!   refused `EBUSY` if the pair conflicts, so the reservation is part of the
//!   open. Reading the xattr needs read permission on the file. `lockfs
//!   share-open` wraps this.
//!
//! Any user who may open a file may deny others access to it while it is open,
//! as on Windows and with NFSv4 share modes; `lockfs locks` shows who does.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use share_reservations::{ShareAccess, ShareDeny, ShareMode};

/// `_IOW('S', 1, struct lockfs_share)`.
pub const LOCKFS_IOC_SET_SHARE: u32 = ioc_write(b'S', 1, 8);

/// Prefix of the xattr name that registers a share-open request.
pub const SHARE_OPEN_XATTR: &str = "user.lockfs.share-open";

/// The errno of an open or ioctl refused by a share reservation.
pub const SHARE_ERRNO: i32 = libc::EBUSY;

const fn ioc_write(ty: u8, nr: u8, size: u32) -> u32 {
    // Linux asm-generic ioctl encoding: dir(2) size(14) type(8) nr(8).
    (1 << 30) | (size << 16) | ((ty as u32) << 8) | nr as u32
}

/// Replaces the share reservation of the open file behind `fd` (a file on a
/// lockfs mount) with `access`/`deny`; fails with `EBUSY` on conflict.
pub fn set_share(fd: BorrowedFd<'_>, access: ShareAccess, deny: ShareDeny) -> io::Result<()> {
    let arg: [u32; 2] = [access.to_wire(), deny.to_wire()];
    // SAFETY: `arg` is a valid 8-byte buffer the kernel only reads, matching the
    // size encoded in the request code.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            LOCKFS_IOC_SET_SHARE as libc::c_ulong,
            arg.as_ptr(),
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Parses the ioctl argument.
pub(crate) fn parse_ioctl(data: &[u8]) -> Option<ShareMode> {
    let a = u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?);
    let d = u32::from_ne_bytes(data.get(4..8)?.try_into().ok()?);
    Some(ShareMode::new(
        ShareAccess::from_wire(a)?,
        ShareDeny::from_wire(d)?,
    ))
}

/// Parses one of `-`, `r`, `w`, `rw` into wire bits.
fn letters(s: &str) -> Option<u32> {
    match s {
        "-" | "none" => Some(0),
        "r" => Some(1),
        "w" => Some(2),
        "rw" => Some(3),
        _ => None,
    }
}

/// Parses an access/deny pair written as letters (`r`, `w`, `rw`, `-`).
pub fn parse_mode(access: &str, deny: &str) -> Option<ShareMode> {
    Some(ShareMode::new(
        ShareAccess::from_wire(letters(access)?)?,
        ShareDeny::from_wire(letters(deny)?)?,
    ))
}

/// The xattr name that asks for `mode` at the next open.
pub fn share_open_xattr(mode: ShareMode) -> String {
    format!("{SHARE_OPEN_XATTR}.{}.{}", mode.access, mode.deny).to_lowercase()
}

/// `Some(Some(mode))` for a well-formed share-open xattr name, `Some(None)` for a
/// malformed one in our namespace, `None` for any other name.
pub(crate) fn parse_xattr(name: &[u8]) -> Option<Option<ShareMode>> {
    let rest = name.strip_prefix(SHARE_OPEN_XATTR.as_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?;
    let Some(rest) = rest.strip_prefix('.') else {
        return Some(None);
    };
    let mut parts = rest.split('.');
    let (Some(a), Some(d), None) = (parts.next(), parts.next(), parts.next()) else {
        return Some(None);
    };
    Some(parse_mode(a, d))
}

/// The reservation a plain open with `flags` takes.
pub(crate) fn open_mode(flags: i32) -> ShareMode {
    ShareMode::new(ShareAccess::from_open_flags(flags), ShareDeny::NONE)
}

/// `mode` with its access widened to what an open with `flags` may do.
pub(crate) fn widen(mode: ShareMode, flags: i32) -> ShareMode {
    let bits = mode.access.to_wire() | ShareAccess::from_open_flags(flags).to_wire();
    ShareMode::new(
        ShareAccess::from_wire(bits).unwrap_or(mode.access),
        mode.deny,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_code_matches_the_c_macro() {
        // _IOW('S', 1, struct { uint32_t; uint32_t; }) on Linux.
        assert_eq!(LOCKFS_IOC_SET_SHARE, 0x4008_5301);
    }

    #[test]
    fn ioctl_arguments_parse_and_reject_garbage() {
        let mut d = Vec::new();
        d.extend_from_slice(&1u32.to_ne_bytes());
        d.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(
            parse_ioctl(&d),
            Some(ShareMode::new(ShareAccess::READ, ShareDeny::WRITE))
        );
        assert_eq!(parse_ioctl(&d[..7]), None);
        d[0] = 9;
        assert_eq!(parse_ioctl(&d), None);
    }

    #[test]
    fn xattr_names_round_trip() {
        let m = ShareMode::new(ShareAccess::READ, ShareDeny::WRITE);
        let name = share_open_xattr(m);
        assert_eq!(name, "user.lockfs.share-open.r.w");
        assert_eq!(parse_xattr(name.as_bytes()), Some(Some(m)));
        let n = ShareMode::new(ShareAccess::READ_WRITE, ShareDeny::NONE);
        assert_eq!(parse_xattr(share_open_xattr(n).as_bytes()), Some(Some(n)));
        assert_eq!(parse_xattr(b"user.lockfs.share-open.x.w"), Some(None));
        assert_eq!(parse_xattr(b"user.lockfs.share-open"), Some(None));
        assert_eq!(parse_xattr(b"user.other"), None);
    }

    #[test]
    fn open_modes_and_widening() {
        assert_eq!(open_mode(libc::O_RDONLY).access, ShareAccess::READ);
        assert_eq!(open_mode(libc::O_WRONLY).access, ShareAccess::WRITE);
        let m = ShareMode::new(ShareAccess::READ, ShareDeny::WRITE);
        assert_eq!(widen(m, libc::O_RDWR).access, ShareAccess::READ_WRITE);
        assert_eq!(widen(m, libc::O_RDONLY), m);
    }
}
