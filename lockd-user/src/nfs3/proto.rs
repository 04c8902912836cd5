//! NFS version 3 wire types (RFC 1813): the numbers, the attribute structures every
//! procedure shares, and their XDR encoding. Procedure arguments are decoded where each
//! procedure is served ([`super::ops`]); what is here is what several of them have in common.

use crate::xdr::{Decoder, Encoder, XdrError};

pub const NFS_PROG: u32 = 100_003;
pub const NFS_V3: u32 = 3;
/// Largest file handle of version 3 (`NFS3_FHSIZE`).
pub const FHSIZE3: usize = 64;
/// Longest name or path accepted in arguments; longer ones are refused before any system
/// call sees them (names longer than the file system's limit get NAMETOOLONG from it).
pub const MAX_NAME: usize = 4096;

/// Procedure numbers.
pub mod proc_ {
    pub const NULL: u32 = 0;
    pub const GETATTR: u32 = 1;
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const ACCESS: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 6;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIR: u32 = 16;
    pub const READDIRPLUS: u32 = 17;
    pub const FSSTAT: u32 = 18;
    pub const FSINFO: u32 = 19;
    pub const PATHCONF: u32 = 20;
    pub const COMMIT: u32 = 21;
}

/// Whether running a procedure twice could give another answer than running it once: those
/// are answered from the duplicate request cache when a client retransmits.
pub fn non_idempotent(p: u32) -> bool {
    use proc_::*;
    matches!(
        p,
        SETATTR
            | WRITE
            | CREATE
            | MKDIR
            | SYMLINK
            | MKNOD
            | REMOVE
            | RMDIR
            | RENAME
            | LINK
            | COMMIT
    )
}

/// `nfsstat3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stat {
    Ok = 0,
    Perm = 1,
    NoEnt = 2,
    Io = 5,
    Nxio = 6,
    Acces = 13,
    Exist = 17,
    Xdev = 18,
    NoDev = 19,
    NotDir = 20,
    IsDir = 21,
    Inval = 22,
    Fbig = 27,
    NoSpc = 28,
    Rofs = 30,
    Mlink = 31,
    NameTooLong = 63,
    NotEmpty = 66,
    Dquot = 69,
    Stale = 70,
    Remote = 71,
    BadHandle = 10001,
    NotSync = 10002,
    BadCookie = 10003,
    NotSupp = 10004,
    TooSmall = 10005,
    ServerFault = 10006,
    BadType = 10007,
    Jukebox = 10008,
}

impl Stat {
    /// The status of a failed system call. Anything without a closer meaning is an I/O
    /// error, as RFC 1813 prescribes for errors it does not name.
    pub fn from_errno(e: i32) -> Stat {
        match e {
            libc::EPERM => Stat::Perm,
            libc::ENOENT => Stat::NoEnt,
            libc::ENXIO => Stat::Nxio,
            libc::EACCES | libc::ETXTBSY => Stat::Acces,
            libc::EEXIST => Stat::Exist,
            libc::EXDEV => Stat::Xdev,
            libc::ENODEV => Stat::NoDev,
            libc::ENOTDIR => Stat::NotDir,
            libc::EISDIR => Stat::IsDir,
            // ELOOP: a symbolic link met where the server never follows one.
            libc::EINVAL | libc::ELOOP | libc::EOVERFLOW => Stat::Inval,
            libc::EFBIG => Stat::Fbig,
            libc::ENOSPC => Stat::NoSpc,
            libc::EROFS => Stat::Rofs,
            libc::EMLINK => Stat::Mlink,
            libc::ENAMETOOLONG => Stat::NameTooLong,
            libc::ENOTEMPTY => Stat::NotEmpty,
            libc::EDQUOT => Stat::Dquot,
            libc::ESTALE => Stat::Stale,
            libc::EOPNOTSUPP => Stat::NotSupp,
            libc::EAGAIN | libc::EBUSY => Stat::Jukebox,
            libc::EBADF => Stat::BadHandle,
            _ => Stat::Io,
        }
    }

    pub fn from_io(e: &std::io::Error) -> Stat {
        e.raw_os_error().map_or(Stat::ServerFault, Stat::from_errno)
    }
}

/// `ftype3`.
pub mod ftype {
    pub const REG: u32 = 1;
    pub const DIR: u32 = 2;
    pub const BLK: u32 = 3;
    pub const CHR: u32 = 4;
    pub const LNK: u32 = 5;
    pub const SOCK: u32 = 6;
    pub const FIFO: u32 = 7;
}

/// ACCESS bits.
pub mod access {
    pub const READ: u32 = 0x01;
    pub const LOOKUP: u32 = 0x02;
    pub const MODIFY: u32 = 0x04;
    pub const EXTEND: u32 = 0x08;
    pub const DELETE: u32 = 0x10;
    pub const EXECUTE: u32 = 0x20;
}

/// `stable_how`.
pub mod stable {
    pub const UNSTABLE: u32 = 0;
    pub const DATA_SYNC: u32 = 1;
    pub const FILE_SYNC: u32 = 2;
}

/// `nfstime3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub sec: u32,
    pub nsec: u32,
}

impl Time {
    pub fn encode(&self, e: &mut Encoder) {
        e.put_u32(self.sec);
        e.put_u32(self.nsec);
    }
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            sec: d.get_u32()?,
            nsec: d.get_u32()?,
        })
    }
    fn from_stat(sec: i64, nsec: i64) -> Self {
        // Times before 1970 or after 2106 do not fit nfstime3; clamp them.
        Self {
            sec: sec.clamp(0, i64::from(u32::MAX)) as u32,
            nsec: nsec.clamp(0, 999_999_999) as u32,
        }
    }
}

/// The encoded length of a `fattr3`: it has no variable part.
pub const FATTR_LEN: usize = 84;

/// `fattr3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fattr {
    pub ftype: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub rdev: (u32, u32),
    pub fsid: u64,
    pub fileid: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

impl Fattr {
    pub fn from_stat(st: &libc::stat) -> Self {
        let ftype = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => ftype::DIR,
            libc::S_IFBLK => ftype::BLK,
            libc::S_IFCHR => ftype::CHR,
            libc::S_IFLNK => ftype::LNK,
            libc::S_IFSOCK => ftype::SOCK,
            libc::S_IFIFO => ftype::FIFO,
            _ => ftype::REG,
        };
        Self {
            ftype,
            mode: st.st_mode & 0o7777,
            nlink: st.st_nlink.min(u64::from(u32::MAX)) as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            used: (st.st_blocks.max(0) as u64).saturating_mul(512),
            rdev: (libc::major(st.st_rdev), libc::minor(st.st_rdev)),
            fsid: st.st_dev,
            fileid: st.st_ino,
            atime: Time::from_stat(st.st_atime, st.st_atime_nsec),
            mtime: Time::from_stat(st.st_mtime, st.st_mtime_nsec),
            ctime: Time::from_stat(st.st_ctime, st.st_ctime_nsec),
        }
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.put_u32(self.ftype);
        e.put_u32(self.mode);
        e.put_u32(self.nlink);
        e.put_u32(self.uid);
        e.put_u32(self.gid);
        e.put_u64(self.size);
        e.put_u64(self.used);
        e.put_u32(self.rdev.0);
        e.put_u32(self.rdev.1);
        e.put_u64(self.fsid);
        e.put_u64(self.fileid);
        self.atime.encode(e);
        self.mtime.encode(e);
        self.ctime.encode(e);
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            ftype: d.get_u32()?,
            mode: d.get_u32()?,
            nlink: d.get_u32()?,
            uid: d.get_u32()?,
            gid: d.get_u32()?,
            size: d.get_u64()?,
            used: d.get_u64()?,
            rdev: (d.get_u32()?, d.get_u32()?),
            fsid: d.get_u64()?,
            fileid: d.get_u64()?,
            atime: Time::decode(d)?,
            mtime: Time::decode(d)?,
            ctime: Time::decode(d)?,
        })
    }

    /// The `wcc_attr` part (size, mtime, ctime), for pre-operation attributes.
    pub fn wcc(&self) -> WccAttr {
        WccAttr {
            size: self.size,
            mtime: self.mtime,
            ctime: self.ctime,
        }
    }
}

/// `wcc_attr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WccAttr {
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
}

/// `post_op_attr`.
pub fn put_post_attr(e: &mut Encoder, a: Option<&Fattr>) {
    match a {
        Some(a) => {
            e.put_bool(true);
            a.encode(e);
        }
        None => e.put_bool(false),
    }
}

/// `wcc_data`: pre-operation attributes, then post-operation attributes.
pub fn put_wcc(e: &mut Encoder, pre: Option<&WccAttr>, post: Option<&Fattr>) {
    match pre {
        Some(p) => {
            e.put_bool(true);
            e.put_u64(p.size);
            p.mtime.encode(e);
            p.ctime.encode(e);
        }
        None => e.put_bool(false),
    }
    put_post_attr(e, post);
}

/// `post_op_fh3`.
pub fn put_post_fh(e: &mut Encoder, fh: Option<&[u8]>) {
    match fh {
        Some(fh) => {
            e.put_bool(true);
            e.put_opaque(fh);
        }
        None => e.put_bool(false),
    }
}

/// `set_atime` / `set_mtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetTime {
    #[default]
    DontChange,
    ServerTime,
    ClientTime(Time),
}

/// `sattr3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sattr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

fn get_opt_u32(d: &mut Decoder<'_>) -> Result<Option<u32>, XdrError> {
    Ok(if d.get_bool()? {
        Some(d.get_u32()?)
    } else {
        None
    })
}

fn get_set_time(d: &mut Decoder<'_>) -> Result<SetTime, XdrError> {
    match d.get_u32()? {
        0 => Ok(SetTime::DontChange),
        1 => Ok(SetTime::ServerTime),
        2 => Ok(SetTime::ClientTime(Time::decode(d)?)),
        v => Err(XdrError::InvalidEnum {
            name: "time_how",
            value: i64::from(v),
        }),
    }
}

fn put_set_time(e: &mut Encoder, t: &SetTime) {
    match t {
        SetTime::DontChange => e.put_u32(0),
        SetTime::ServerTime => e.put_u32(1),
        SetTime::ClientTime(t) => {
            e.put_u32(2);
            t.encode(e);
        }
    }
}

impl Sattr {
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            mode: get_opt_u32(d)?,
            uid: get_opt_u32(d)?,
            gid: get_opt_u32(d)?,
            size: if d.get_bool()? {
                Some(d.get_u64()?)
            } else {
                None
            },
            atime: get_set_time(d)?,
            mtime: get_set_time(d)?,
        })
    }

    pub fn encode(&self, e: &mut Encoder) {
        for v in [self.mode, self.uid, self.gid] {
            e.put_bool(v.is_some());
            if let Some(v) = v {
                e.put_u32(v);
            }
        }
        e.put_bool(self.size.is_some());
        if let Some(s) = self.size {
            e.put_u64(s);
        }
        put_set_time(e, &self.atime);
        put_set_time(e, &self.mtime);
    }
}

/// A file handle argument (`nfs_fh3`): at most 64 bytes, longer is garbage.
pub fn get_fh(d: &mut Decoder<'_>) -> Result<Vec<u8>, XdrError> {
    d.get_opaque(FHSIZE3)
}

/// `diropargs3`.
pub fn get_dirop(d: &mut Decoder<'_>) -> Result<(Vec<u8>, Vec<u8>), XdrError> {
    let fh = get_fh(d)?;
    let name = d.get_opaque(MAX_NAME)?;
    Ok((fh, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sattr_round_trips() {
        let s = Sattr {
            mode: Some(0o644),
            uid: None,
            gid: Some(7),
            size: Some(1 << 40),
            atime: SetTime::ServerTime,
            mtime: SetTime::ClientTime(Time { sec: 5, nsec: 6 }),
        };
        let mut e = Encoder::new();
        s.encode(&mut e);
        let b = e.into_inner();
        assert_eq!(Sattr::decode(&mut Decoder::new(&b)).unwrap(), s);
        // A time discriminant outside the enum is garbage.
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 12..n - 8].copy_from_slice(&9u32.to_be_bytes());
        assert!(Sattr::decode(&mut Decoder::new(&bad)).is_err());
    }

    #[test]
    fn fattr_has_its_fixed_length() {
        // SAFETY: stat is plain data; all zeroes is a valid value.
        let st: libc::stat = unsafe { std::mem::zeroed() };
        let mut e = Encoder::new();
        Fattr::from_stat(&st).encode(&mut e);
        assert_eq!(e.len(), FATTR_LEN);
        assert_eq!(
            Fattr::decode(&mut Decoder::new(e.as_slice())).unwrap(),
            Fattr::from_stat(&st)
        );
    }

    #[test]
    fn errnos_map_to_their_statuses() {
        assert_eq!(Stat::from_errno(libc::ENOTEMPTY), Stat::NotEmpty);
        assert_eq!(Stat::from_errno(libc::ENAMETOOLONG), Stat::NameTooLong);
        assert_eq!(Stat::from_errno(libc::EDQUOT), Stat::Dquot);
        assert_eq!(Stat::from_errno(libc::EROFS), Stat::Rofs);
        assert_eq!(Stat::from_errno(libc::ENOMEM), Stat::Io);
    }
}
