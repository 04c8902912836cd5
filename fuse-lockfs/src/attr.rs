//! Conversion of backing `stat` results into the attributes FUSE reports.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

/// The FUSE file type of a `st_mode`, or `None` for a type Linux does not define.
pub(crate) fn file_type(mode: u32) -> Option<FileType> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Some(FileType::RegularFile),
        libc::S_IFDIR => Some(FileType::Directory),
        libc::S_IFLNK => Some(FileType::Symlink),
        libc::S_IFIFO => Some(FileType::NamedPipe),
        libc::S_IFSOCK => Some(FileType::Socket),
        libc::S_IFCHR => Some(FileType::CharDevice),
        libc::S_IFBLK => Some(FileType::BlockDevice),
        _ => None,
    }
}

/// The file type encoded in a `d_type` of `getdents64`.
pub(crate) fn dirent_type(d_type: u8) -> Option<FileType> {
    match d_type {
        libc::DT_REG => Some(FileType::RegularFile),
        libc::DT_DIR => Some(FileType::Directory),
        libc::DT_LNK => Some(FileType::Symlink),
        libc::DT_FIFO => Some(FileType::NamedPipe),
        libc::DT_SOCK => Some(FileType::Socket),
        libc::DT_CHR => Some(FileType::CharDevice),
        libc::DT_BLK => Some(FileType::BlockDevice),
        _ => None,
    }
}

/// Seconds and nanoseconds since the epoch, including times before 1970.
pub(crate) fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    let base = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    base.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// `(seconds, nanoseconds)` since the epoch of a `SystemTime`.
pub(crate) fn timespec(t: SystemTime) -> (i64, i64) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            i64::from(d.subsec_nanos()),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - i64::from(d.subsec_nanos()))
            }
        }
    }
}

/// A device number in the kernel's 32-bit "new" encoding, as FUSE carries it.
pub(crate) fn encode_dev(dev: u64) -> u32 {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The inverse of [`encode_dev`].
pub(crate) fn decode_dev(rdev: u32) -> libc::dev_t {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// FUSE attributes for a backing file whose mount inode number is `ino`.
pub(crate) fn to_attr(ino: u64, st: &libc::stat) -> Option<FileAttr> {
    Some(FileAttr {
        ino: INodeNo(ino),
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode)?,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
        flags: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_before_and_after_epoch() {
        for (s, n) in [
            (0, 0),
            (1, 5),
            (1_700_000_000, 999_999_999),
            (-1, 0),
            (-5, 250),
        ] {
            assert_eq!(timespec(system_time(s, n)), (s, n), "{s}.{n}");
        }
    }

    #[test]
    fn device_numbers_round_trip() {
        for (ma, mi) in [(0, 0), (1, 3), (8, 17), (259, 65_537), (4095, 1_048_575)] {
            let dev = libc::makedev(ma, mi);
            assert_eq!(decode_dev(encode_dev(dev)), dev, "{ma}:{mi}");
        }
        // The well-known /dev/null encoding.
        assert_eq!(encode_dev(libc::makedev(1, 3)), 0x103);
    }

    #[test]
    fn unknown_file_type_is_rejected() {
        assert_eq!(file_type(0), None);
        assert_eq!(
            file_type(libc::S_IFREG | 0o644),
            Some(FileType::RegularFile)
        );
    }
}
