//! The arguments of the 22 NFS version 3 procedures (RFC 1813), decoded from the wire
//! before any of them is served.
//!
//! It exists so that all of a call's arguments are decoded, and garbage refused with
//! GARBAGE_ARGS, before the procedure has any effect, and so that the decoders can be
//! exercised on their own (the `nfs3_args` fuzz target) without a file system behind
//! them. Limits: a handle is at most 64 bytes, a name, path or link target at most
//! [`MAX_NAME`], WRITE data at most the caller's limit; an enum value outside its
//! definition is garbage.

use super::proto::{ftype, get_dirop, get_fh, proc_, stable, Sattr, Time, MAX_NAME};
use crate::server::ProcError;
use crate::xdr::{Decoder, XdrError};

/// A directory handle and a name in it (`diropargs3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirOp {
    pub dir: Vec<u8>,
    pub name: Vec<u8>,
}

impl DirOp {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        let (dir, name) = get_dirop(d)?;
        Ok(Self { dir, name })
    }
}

/// `createhow3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateHow {
    Unchecked(Sattr),
    Guarded(Sattr),
    Exclusive([u8; 8]),
}

/// The file type of a MKNOD and what comes with it. Types MKNOD cannot make (regular
/// files, directories, links) decode with nothing after them and are answered BADTYPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MknodWhat {
    Device {
        block: bool,
        sattr: Sattr,
        major: u32,
        minor: u32,
    },
    Socket(Sattr),
    Fifo(Sattr),
    BadType(u32),
}

/// One call's decoded arguments; data borrows from the call's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args<'a> {
    Null,
    GetAttr(Vec<u8>),
    SetAttr {
        fh: Vec<u8>,
        sattr: Sattr,
        guard: Option<Time>,
    },
    Lookup(DirOp),
    Access {
        fh: Vec<u8>,
        want: u32,
    },
    ReadLink(Vec<u8>),
    Read {
        fh: Vec<u8>,
        offset: u64,
        count: u32,
    },
    Write {
        fh: Vec<u8>,
        offset: u64,
        /// The data, cut to the `count` the call gives when that is shorter.
        data: &'a [u8],
        stable: u32,
    },
    Create {
        at: DirOp,
        how: CreateHow,
    },
    Mkdir {
        at: DirOp,
        sattr: Sattr,
    },
    Symlink {
        at: DirOp,
        sattr: Sattr,
        target: Vec<u8>,
    },
    Mknod {
        at: DirOp,
        what: MknodWhat,
    },
    Remove(DirOp),
    Rmdir(DirOp),
    Rename {
        from: DirOp,
        to: DirOp,
    },
    Link {
        fh: Vec<u8>,
        at: DirOp,
    },
    /// READDIR (`plus` false: `dircount` and `maxcount` are both its `count`) and
    /// READDIRPLUS.
    ReadDir {
        fh: Vec<u8>,
        cookie: u64,
        verf: [u8; 8],
        dircount: u32,
        maxcount: u32,
        plus: bool,
    },
    FsStat(Vec<u8>),
    FsInfo(Vec<u8>),
    PathConf(Vec<u8>),
    Commit {
        fh: Vec<u8>,
        offset: u64,
        count: u32,
    },
}

fn enum_err(name: &'static str, v: u32) -> XdrError {
    XdrError::InvalidEnum {
        name,
        value: i64::from(v),
    }
}

/// Decodes the arguments of procedure `proc`; WRITE data longer than `max_data` is
/// garbage. `ProcUnavail` for a procedure version 3 does not have, `GarbageArgs` for
/// arguments that do not decode. Bytes after the arguments are ignored, as RPC servers do.
pub fn decode<'a>(proc: u32, d: &mut Decoder<'a>, max_data: usize) -> Result<Args<'a>, ProcError> {
    decode_known(proc, d, max_data)?.ok_or(ProcError::ProcUnavail)
}

fn decode_known<'a>(
    proc: u32,
    d: &mut Decoder<'a>,
    max_data: usize,
) -> Result<Option<Args<'a>>, XdrError> {
    use proc_::*;
    Ok(Some(match proc {
        NULL => Args::Null,
        GETATTR => Args::GetAttr(get_fh(d)?),
        SETATTR => Args::SetAttr {
            fh: get_fh(d)?,
            sattr: Sattr::decode(d)?,
            guard: if d.get_bool()? {
                Some(Time::decode(d)?)
            } else {
                None
            },
        },
        LOOKUP => Args::Lookup(DirOp::decode(d)?),
        ACCESS => Args::Access {
            fh: get_fh(d)?,
            want: d.get_u32()?,
        },
        READLINK => Args::ReadLink(get_fh(d)?),
        READ => Args::Read {
            fh: get_fh(d)?,
            offset: d.get_u64()?,
            count: d.get_u32()?,
        },
        WRITE => {
            let fh = get_fh(d)?;
            let offset = d.get_u64()?;
            let count = d.get_u32()?;
            let how = d.get_u32()?;
            if how > stable::FILE_SYNC {
                return Err(enum_err("stable_how", how));
            }
            let data = d.get_opaque_ref(max_data)?;
            Args::Write {
                fh,
                offset,
                data: &data[..data.len().min(count as usize)],
                stable: how,
            }
        }
        CREATE => {
            let at = DirOp::decode(d)?;
            let how = match d.get_u32()? {
                0 => CreateHow::Unchecked(Sattr::decode(d)?),
                1 => CreateHow::Guarded(Sattr::decode(d)?),
                2 => CreateHow::Exclusive(d.get_fixed_array::<8>()?),
                v => return Err(enum_err("createmode3", v)),
            };
            Args::Create { at, how }
        }
        MKDIR => Args::Mkdir {
            at: DirOp::decode(d)?,
            sattr: Sattr::decode(d)?,
        },
        SYMLINK => Args::Symlink {
            at: DirOp::decode(d)?,
            sattr: Sattr::decode(d)?,
            target: d.get_opaque(MAX_NAME)?,
        },
        MKNOD => {
            let at = DirOp::decode(d)?;
            let what = match d.get_u32()? {
                t @ (ftype::CHR | ftype::BLK) => MknodWhat::Device {
                    block: t == ftype::BLK,
                    sattr: Sattr::decode(d)?,
                    major: d.get_u32()?,
                    minor: d.get_u32()?,
                },
                ftype::SOCK => MknodWhat::Socket(Sattr::decode(d)?),
                ftype::FIFO => MknodWhat::Fifo(Sattr::decode(d)?),
                t @ 1..=7 => MknodWhat::BadType(t),
                v => return Err(enum_err("ftype3", v)),
            };
            Args::Mknod { at, what }
        }
        REMOVE => Args::Remove(DirOp::decode(d)?),
        RMDIR => Args::Rmdir(DirOp::decode(d)?),
        RENAME => Args::Rename {
            from: DirOp::decode(d)?,
            to: DirOp::decode(d)?,
        },
        LINK => Args::Link {
            fh: get_fh(d)?,
            at: DirOp::decode(d)?,
        },
        READDIR | READDIRPLUS => {
            let fh = get_fh(d)?;
            let cookie = d.get_u64()?;
            let verf = d.get_fixed_array::<8>()?;
            let plus = proc == READDIRPLUS;
            let (dircount, maxcount) = if plus {
                (d.get_u32()?, d.get_u32()?)
            } else {
                let n = d.get_u32()?;
                (n, n)
            };
            Args::ReadDir {
                fh,
                cookie,
                verf,
                dircount,
                maxcount,
                plus,
            }
        }
        FSSTAT => Args::FsStat(get_fh(d)?),
        FSINFO => Args::FsInfo(get_fh(d)?),
        PATHCONF => Args::PathConf(get_fh(d)?),
        COMMIT => Args::Commit {
            fh: get_fh(d)?,
            offset: d.get_u64()?,
            count: d.get_u32()?,
        },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::Encoder;

    #[test]
    fn write_data_is_cut_to_count_and_bounded() {
        let mut e = Encoder::new();
        e.put_opaque(&[1; 8]);
        e.put_u64(5);
        e.put_u32(3);
        e.put_u32(stable::DATA_SYNC);
        e.put_opaque(b"abcdef");
        let b = e.into_inner();
        let a = decode(proc_::WRITE, &mut Decoder::new(&b), 6).unwrap();
        assert!(matches!(
            a,
            Args::Write {
                data: b"abc",
                stable: 1,
                offset: 5,
                ..
            }
        ));
        assert_eq!(
            decode(proc_::WRITE, &mut Decoder::new(&b), 5),
            Err(ProcError::GarbageArgs),
            "more data than the limit"
        );
    }

    #[test]
    fn unknown_procedures_and_enum_values() {
        assert_eq!(
            decode(22, &mut Decoder::new(&[]), 0),
            Err(ProcError::ProcUnavail)
        );
        let mut e = Encoder::new();
        e.put_opaque(&[1; 8]);
        e.put_opaque(b"n");
        e.put_u32(3);
        let b = e.into_inner();
        assert_eq!(
            decode(proc_::CREATE, &mut Decoder::new(&b), 0),
            Err(ProcError::GarbageArgs)
        );
        assert_eq!(
            decode(proc_::MKNOD, &mut Decoder::new(&b), 0),
            Err(ProcError::GarbageArgs),
            "a block device without its attributes"
        );
        let mut e = Encoder::new();
        e.put_opaque(&[1; 8]);
        e.put_opaque(b"n");
        e.put_u32(ftype::DIR);
        assert_eq!(
            decode(proc_::MKNOD, &mut Decoder::new(e.as_slice()), 0),
            Ok(Args::Mknod {
                at: DirOp {
                    dir: vec![1; 8],
                    name: b"n".to_vec()
                },
                what: MknodWhat::BadType(ftype::DIR)
            })
        );
        e.put_u32(0);
        let mut bad = e.into_inner();
        let n = bad.len();
        bad[n - 8..n - 4].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(
            decode(proc_::MKNOD, &mut Decoder::new(&bad), 0),
            Err(ProcError::GarbageArgs),
            "a type outside ftype3"
        );
    }
}
