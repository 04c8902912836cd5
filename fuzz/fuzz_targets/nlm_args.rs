//! NLM (program 100021) arguments of every procedure of versions 1, 3 and 4, decoded and
//! widened exactly as the served program does. Accepted arguments re-encode to exactly
//! the bytes they came from, and a version 1/3 lock widened to 64 bits narrows back to
//! itself (what the GRANTED callback sends the client).
#![no_main]

mod common;

use common::{canonical, split};
use libfuzzer_sys::fuzz_target;
use lockd_user::nlm::{decode_call, narrow_lock, DecodedArgs};
use lockd_user::proto::nlm::{v3, v4, NLM3_FH_MAX, NLM4_FH_MAX};
use lockd_user::server::ProcError;
use lockd_user::xdr::Decoder;

const VERSIONS: [u32; 4] = [1, 3, 4, 2];

fn lock_of(a: &DecodedArgs) -> Option<&v4::Lock> {
    match a {
        DecodedArgs::Test(a) => Some(&a.alock),
        DecodedArgs::Lock(a) => Some(&a.alock),
        DecodedArgs::Cancel(a) => Some(&a.alock),
        DecodedArgs::Unlock(a) => Some(&a.alock),
        _ => None,
    }
}

/// The same bytes through the version's own wire type, where the procedure has one.
fn check_wire(vers: u32, proc_: u32, bytes: &[u8]) {
    let v4 = vers == 4;
    match (proc_, v4) {
        (1 | 6 | 5 | 10, true) => drop(canonical::<v4::TestArgs>(bytes)),
        (1 | 6 | 5 | 10, false) => drop(canonical::<v3::TestArgs>(bytes)),
        (2 | 7 | 22, true) => drop(canonical::<v4::LockArgs>(bytes)),
        (2 | 7 | 22, false) => drop(canonical::<v3::LockArgs>(bytes)),
        (3 | 8, true) => drop(canonical::<v4::CancArgs>(bytes)),
        (3 | 8, false) => drop(canonical::<v3::CancArgs>(bytes)),
        (4 | 9, true) => drop(canonical::<v4::UnlockArgs>(bytes)),
        (4 | 9, false) => drop(canonical::<v3::UnlockArgs>(bytes)),
        (11, true) => drop(canonical::<v4::TestRes>(bytes)),
        (11, false) => drop(canonical::<v3::TestRes>(bytes)),
        (12..=15, true) => drop(canonical::<v4::Res>(bytes)),
        (12..=15, false) => drop(canonical::<v3::Res>(bytes)),
        (20 | 21, true) => drop(canonical::<v4::ShareArgs>(bytes)),
        (20 | 21, false) => drop(canonical::<v3::ShareArgs>(bytes)),
        (23, true) => drop(canonical::<v4::Notify>(bytes)),
        (23, false) => drop(canonical::<v3::Notify>(bytes)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = split(data) else {
        return;
    };
    let vers = VERSIONS[usize::from(sel >> 6)];
    // Procedures 0..=23 and a few numbers beyond.
    let proc_ = u32::from(sel & 0x3f) % 26;
    check_wire(vers, proc_, bytes);

    let mut d = Decoder::new(bytes);
    let r = decode_call(vers, proc_, &mut d);
    let known = match proc_ {
        0..=15 => true,
        20..=23 => vers != 1,
        _ => false,
    };
    match &r {
        Err(ProcError::ProcUnavail) => assert!(!known, "procedure {proc_} v{vers} refused"),
        Err(e) => assert_eq!(*e, ProcError::GarbageArgs),
        Ok(_) => assert!(known, "procedure {proc_} v{vers} accepted"),
    }
    let Ok(args) = r else { return };
    if let Some(l) = lock_of(&args) {
        if vers == 4 {
            assert!(l.fh.len() <= NLM4_FH_MAX);
        } else {
            assert!(l.fh.len() <= NLM3_FH_MAX);
            assert!(l.l_offset <= u64::from(u32::MAX) && l.l_len <= u64::from(u32::MAX));
            let narrow = narrow_lock(l);
            assert_eq!(u64::from(narrow.l_offset), l.l_offset);
            assert_eq!(u64::from(narrow.l_len), l.l_len);
            assert_eq!(
                (&narrow.fh, &narrow.oh, &narrow.caller_name, narrow.svid),
                (&l.fh, &l.oh, &l.caller_name, l.svid)
            );
        }
    }
});
