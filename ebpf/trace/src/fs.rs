//! The pseudo file systems the tracer needs: bpffs for pins, tracefs for
//! tracepoint formats. Both are mounted on demand when missing, as root can.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use crate::TraceError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const TRACEFS_MAGIC: i64 = 0x7472_6163;

/// Standard mount point of bpffs.
pub(crate) const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Standard mount point of tracefs.
pub(crate) const TRACEFS_ROOT: &str = "/sys/kernel/tracing";

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs only writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path, `st` a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64)
}

fn mount(fstype: &str, target: &Path) -> io::Result<()> {
    let src = CString::new(fstype).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let dst = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ensure(fstype: &str, magic: i64, root: &Path) -> Result<(), TraceError> {
    match fs_magic(root) {
        Ok(m) if m == magic => return Ok(()),
        Ok(_) | Err(_) => {}
    }
    tracing::info!(fstype, root = %root.display(), "mounting");
    mount(fstype, root).map_err(|source| {
        if source.raw_os_error() == Some(libc::EPERM) {
            TraceError::NoPrivilege {
                action: format!("mount {fstype} on {}", root.display()),
                source,
            }
        } else {
            TraceError::FeatureMissing {
                feature: fstype.to_owned(),
                detail: format!(
                    "{} is not {fstype} and mounting it failed: {source}",
                    root.display()
                ),
            }
        }
    })
}

/// Makes sure the bpffs that will hold `pin_dir` is mounted. Only the
/// standard root is mounted automatically; any other location must already be
/// on bpffs.
pub(crate) fn ensure_bpffs(pin_dir: &Path) -> Result<(), TraceError> {
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) {
        ensure("bpf", BPF_FS_MAGIC, root)?;
    }
    let parent = pin_dir.parent().unwrap_or(pin_dir);
    match fs_magic(parent) {
        Ok(m) if m == BPF_FS_MAGIC => Ok(()),
        _ => Err(TraceError::FeatureMissing {
            feature: "bpffs".to_owned(),
            detail: format!("{} is not on a bpf file system", parent.display()),
        }),
    }
}

/// Makes sure tracefs is mounted and returns its root.
pub(crate) fn ensure_tracefs() -> Result<&'static Path, TraceError> {
    let root = Path::new(TRACEFS_ROOT);
    ensure("tracefs", TRACEFS_MAGIC, root)?;
    Ok(root)
}
