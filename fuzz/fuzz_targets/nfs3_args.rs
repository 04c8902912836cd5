//! NFS version 3 (program 100003) arguments of every procedure, and MOUNT (program 100005,
//! versions 1 and 3) arguments, decoded as the served programs decode them before running
//! a procedure. A procedure is refused exactly where the program has none, and any other
//! refusal is GARBAGE_ARGS; accepted arguments keep to the wire limits (handles of at most
//! 64 bytes, names and paths within their bounds, WRITE data within the limit and its
//! count), occupy whole XDR words, decode again from exactly the bytes they used, and
//! are refused when one byte of those is missing.
#![no_main]

mod common;

use common::split;
use libfuzzer_sys::fuzz_target;
use lockd_user::mountd::{self, MountArgs, MNTPATHLEN};
use lockd_user::nfs3::args::{self, Args, DirOp};
use lockd_user::nfs3::proto::{FHSIZE3, MAX_NAME};
use lockd_user::server::ProcError;
use lockd_user::xdr::Decoder;

/// The WRITE data limit the target decodes with (the door's is its largest I/O size).
const MAX_DATA: usize = 512;

fn check_dirop(at: &DirOp) {
    assert!(at.dir.len() <= FHSIZE3);
    assert!(at.name.len() <= MAX_NAME);
}

fn check_nfs(a: &Args<'_>) {
    let fh = |f: &Vec<u8>| assert!(f.len() <= FHSIZE3, "handle of {} bytes", f.len());
    match a {
        Args::Null => {}
        Args::GetAttr(f)
        | Args::ReadLink(f)
        | Args::FsStat(f)
        | Args::FsInfo(f)
        | Args::PathConf(f)
        | Args::SetAttr { fh: f, .. }
        | Args::Access { fh: f, .. }
        | Args::Read { fh: f, .. }
        | Args::Commit { fh: f, .. }
        | Args::ReadDir { fh: f, .. } => fh(f),
        Args::Write {
            fh: f,
            data,
            stable,
            ..
        } => {
            fh(f);
            assert!(data.len() <= MAX_DATA);
            assert!(*stable <= 2);
        }
        Args::Lookup(at) | Args::Remove(at) | Args::Rmdir(at) => check_dirop(at),
        Args::Create { at, .. } | Args::Mkdir { at, .. } | Args::Mknod { at, .. } => {
            check_dirop(at)
        }
        Args::Symlink { at, target, .. } => {
            check_dirop(at);
            assert!(target.len() <= MAX_NAME);
        }
        Args::Rename { from, to } => {
            check_dirop(from);
            check_dirop(to);
        }
        Args::Link { fh: f, at } => {
            fh(f);
            check_dirop(at);
        }
    }
}

/// An accepted decoding used whole words, decodes the same from exactly those bytes,
/// and is refused without the last of them.
fn check_prefix<'a, T: PartialEq + std::fmt::Debug>(
    bytes: &'a [u8],
    used: usize,
    v: &T,
    again: impl Fn(&'a [u8]) -> Result<T, ProcError>,
) {
    assert_eq!(used % 4, 0, "{v:?} used {used} bytes");
    assert_eq!(again(&bytes[..used]).as_ref(), Ok(v));
    if used > 0 {
        assert_eq!(
            again(&bytes[..used - 1]),
            Err(ProcError::GarbageArgs),
            "{v:?} truncated"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = split(data) else {
        return;
    };
    if sel & 0x80 == 0 {
        // NFS: procedures 0..=21 and a few numbers beyond.
        let proc_ = u32::from(sel) % 26;
        let mut d = Decoder::new(bytes);
        let r = args::decode(proc_, &mut d, MAX_DATA);
        match &r {
            Err(ProcError::ProcUnavail) => assert!(proc_ > 21, "procedure {proc_} refused"),
            Err(e) => assert_eq!(*e, ProcError::GarbageArgs),
            Ok(_) => assert!(proc_ <= 21, "procedure {proc_} accepted"),
        }
        let Ok(a) = r else { return };
        check_nfs(&a);
        check_prefix(bytes, d.position(), &a, |b| {
            args::decode(proc_, &mut Decoder::new(b), MAX_DATA)
        });
    } else {
        // MOUNT: procedures 0..=5 and a few beyond (versions 1 and 3 decode alike).
        let proc_ = u32::from(sel & 0x7f) % 8;
        let mut d = Decoder::new(bytes);
        let r = mountd::decode_args(proc_, &mut d);
        match &r {
            Err(ProcError::ProcUnavail) => assert!(proc_ > 5, "procedure {proc_} refused"),
            Err(e) => assert_eq!(*e, ProcError::GarbageArgs),
            Ok(_) => assert!(proc_ <= 5, "procedure {proc_} accepted"),
        }
        let Ok(a) = r else { return };
        if let MountArgs::Mnt(p) | MountArgs::Umnt(p) = &a {
            assert!(p.len() <= MNTPATHLEN);
        }
        check_prefix(bytes, d.position(), &a, |b| {
            mountd::decode_args(proc_, &mut Decoder::new(b))
        });
    }
});
