//! The NLM program (100021, versions 1, 3 and 4): decoding, version conversion and the
//! message-passing procedures. What each procedure does lives in `ops`.
//!
//! Versions 1 and 3 are served by widening their 32-bit values to the version 4 shapes, so
//! every procedure is written once. On the way back, version 4 statuses that versions 1/3
//! lack become DENIED (DEADLCK, ROFS, STALE_FH, FBIG, FAILED), as Linux does; a conflicting
//! holder that lies beyond the 32-bit space is reported at offset `u32::MAX`, and one whose
//! end lies beyond it with length 0 (to end of file), since a 32-bit client cannot name it.
//!
//! `*_MSG` calls get no reply; their result goes back as the matching `*_RES` call to the
//! client's NLM service, sent by the callback worker. `*_RES` calls are accepted; a
//! GRANTED_RES completes the GRANTED_MSG callback it answers.

pub(crate) mod ops;

use crate::callbacks::{token_of_cookie, CallbackJob};
use crate::lockd::Lockd;
use crate::proto::nlm::{proc_, v3, v4, NLM4_VERS, NLM_PROG, NLM_VERS, NLM_VERSX};
use crate::server::{decode_args, CallContext, ProcError, Reply, RpcProgram};
use crate::xdr::{to_bytes, Decoder};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::debug;

/// Who called, and in which version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub peer: SocketAddr,
    pub vers: u32,
}

/// The NLM program served by lockd.
#[derive(Debug, Clone)]
pub struct NlmProgram {
    lockd: Arc<Lockd>,
}

impl NlmProgram {
    pub fn new(lockd: Arc<Lockd>) -> Self {
        Self { lockd }
    }
}

pub(crate) fn stat_to_v3(s: v4::Stats) -> v3::Stats {
    use v4::Stats as S;
    match s {
        S::Granted => v3::Stats::Granted,
        S::Denied => v3::Stats::Denied,
        S::DeniedNolocks => v3::Stats::DeniedNolocks,
        S::Blocked => v3::Stats::Blocked,
        S::DeniedGracePeriod => v3::Stats::DeniedGracePeriod,
        S::Deadlck | S::Rofs | S::StaleFh | S::Fbig | S::Failed => v3::Stats::Denied,
    }
}

fn stat_to_v4(s: v3::Stats) -> v4::Stats {
    use v3::Stats as S;
    match s {
        S::Granted => v4::Stats::Granted,
        S::Denied => v4::Stats::Denied,
        S::DeniedNolocks => v4::Stats::DeniedNolocks,
        S::Blocked => v4::Stats::Blocked,
        S::DeniedGracePeriod => v4::Stats::DeniedGracePeriod,
        S::Deadlck => v4::Stats::Deadlck,
    }
}

fn lock_to_v4(l: v3::Lock) -> v4::Lock {
    v4::Lock {
        caller_name: l.caller_name,
        fh: l.fh,
        oh: l.oh,
        svid: l.svid,
        l_offset: u64::from(l.l_offset),
        l_len: u64::from(l.l_len),
    }
}

/// A lock received in version 1/3 and widened, narrowed back for a callback. Values that
/// do not fit (they cannot, for a lock that came in as version 1/3) are clamped.
pub(crate) fn lock_to_v3(l: &v4::Lock) -> v3::Lock {
    v3::Lock {
        caller_name: l.caller_name.clone(),
        fh: l.fh.clone(),
        oh: l.oh.clone(),
        svid: l.svid,
        l_offset: u32::try_from(l.l_offset).unwrap_or(u32::MAX),
        l_len: u32::try_from(l.l_len).unwrap_or(0),
    }
}

fn holder_to_v3(h: v4::Holder) -> v3::Holder {
    let start = h.l_offset;
    let l_offset = u32::try_from(start).unwrap_or(u32::MAX);
    let l_len = match h.l_len {
        0 => 0,
        len => {
            let end = start.saturating_add(len - 1);
            if start > u64::from(u32::MAX) || end > u64::from(u32::MAX) {
                0
            } else {
                len as u32
            }
        }
    };
    v3::Holder {
        exclusive: h.exclusive,
        svid: h.svid,
        oh: h.oh,
        l_offset,
        l_len,
    }
}

fn v4_vers(vers: u32) -> bool {
    vers == NLM4_VERS
}

fn dec_test(vers: u32, args: &mut Decoder<'_>) -> Result<v4::TestArgs, ProcError> {
    if v4_vers(vers) {
        return decode_args(args);
    }
    let a: v3::TestArgs = decode_args(args)?;
    Ok(v4::TestArgs {
        cookie: a.cookie,
        exclusive: a.exclusive,
        alock: lock_to_v4(a.alock),
    })
}

fn dec_lock(vers: u32, args: &mut Decoder<'_>) -> Result<v4::LockArgs, ProcError> {
    if v4_vers(vers) {
        return decode_args(args);
    }
    let a: v3::LockArgs = decode_args(args)?;
    Ok(v4::LockArgs {
        cookie: a.cookie,
        block: a.block,
        exclusive: a.exclusive,
        alock: lock_to_v4(a.alock),
        reclaim: a.reclaim,
        state: a.state,
    })
}

fn dec_canc(vers: u32, args: &mut Decoder<'_>) -> Result<v4::CancArgs, ProcError> {
    if v4_vers(vers) {
        return decode_args(args);
    }
    let a: v3::CancArgs = decode_args(args)?;
    Ok(v4::CancArgs {
        cookie: a.cookie,
        block: a.block,
        exclusive: a.exclusive,
        alock: lock_to_v4(a.alock),
    })
}

fn dec_unlock(vers: u32, args: &mut Decoder<'_>) -> Result<v4::UnlockArgs, ProcError> {
    if v4_vers(vers) {
        return decode_args(args);
    }
    let a: v3::UnlockArgs = decode_args(args)?;
    Ok(v4::UnlockArgs {
        cookie: a.cookie,
        alock: lock_to_v4(a.alock),
    })
}

fn dec_share(vers: u32, args: &mut Decoder<'_>) -> Result<v4::ShareArgs, ProcError> {
    if v4_vers(vers) {
        return decode_args(args);
    }
    let a: v3::ShareArgs = decode_args(args)?;
    Ok(v4::ShareArgs {
        cookie: a.cookie,
        share: v4::Share {
            caller_name: a.share.caller_name,
            fh: a.share.fh,
            oh: a.share.oh,
            mode: a.share.mode,
            access: a.share.access,
        },
        reclaim: a.reclaim,
    })
}

fn dec_res(vers: u32, args: &mut Decoder<'_>) -> Result<v4::Res, ProcError> {
    if v4_vers(vers) {
        return decode_args(args);
    }
    let a: v3::Res = decode_args(args)?;
    Ok(v4::Res {
        cookie: a.cookie,
        stat: stat_to_v4(a.stat),
    })
}

fn enc_res(vers: u32, cookie: Vec<u8>, stat: v4::Stats) -> Vec<u8> {
    if v4_vers(vers) {
        to_bytes(&v4::Res { cookie, stat })
    } else {
        to_bytes(&v3::Res {
            cookie,
            stat: stat_to_v3(stat),
        })
    }
}

fn enc_test_res(vers: u32, cookie: Vec<u8>, r: v4::TestReply) -> Vec<u8> {
    if v4_vers(vers) {
        return to_bytes(&v4::TestRes { cookie, stat: r });
    }
    let stat = match r {
        v4::TestReply::Denied(h) => v3::TestReply::Denied(holder_to_v3(h)),
        v4::TestReply::Other(s) => v3::TestReply::Other(stat_to_v3(s)),
    };
    to_bytes(&v3::TestRes { cookie, stat })
}

fn enc_share_res(vers: u32, cookie: Vec<u8>, stat: v4::Stats) -> Vec<u8> {
    if v4_vers(vers) {
        to_bytes(&v4::ShareRes {
            cookie,
            stat,
            sequence: 0,
        })
    } else {
        to_bytes(&v3::ShareRes {
            cookie,
            stat: stat_to_v3(stat),
            sequence: 0,
        })
    }
}

/// The arguments of one NLM call as [`NlmProgram`] decodes them, widened to the version 4
/// shapes (the fuzzing entry point: every argument decoder of every version, no lock taken).
#[cfg(feature = "fuzzing")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedArgs {
    Nothing,
    Test(v4::TestArgs),
    Lock(v4::LockArgs),
    Cancel(v4::CancArgs),
    Unlock(v4::UnlockArgs),
    Share(v4::ShareArgs),
    Res(v4::Res),
    TestRes,
    Notify(v4::Notify),
}

/// Decodes the arguments of procedure `proc_` of version `vers` with the decoders and
/// widening the program uses; `ProcUnavail` where the program has no such procedure.
#[cfg(feature = "fuzzing")]
pub fn decode_call(
    vers: u32,
    proc_: u32,
    args: &mut Decoder<'_>,
) -> Result<DecodedArgs, ProcError> {
    use proc_::*;
    let v = vers;
    let old = v == NLM_VERS;
    Ok(match proc_ {
        NULL => DecodedArgs::Nothing,
        TEST | TEST_MSG | GRANTED | GRANTED_MSG => DecodedArgs::Test(dec_test(v, args)?),
        LOCK | LOCK_MSG => DecodedArgs::Lock(dec_lock(v, args)?),
        NM_LOCK if !old => DecodedArgs::Lock(dec_lock(v, args)?),
        CANCEL | CANCEL_MSG => DecodedArgs::Cancel(dec_canc(v, args)?),
        UNLOCK | UNLOCK_MSG => DecodedArgs::Unlock(dec_unlock(v, args)?),
        TEST_RES if v4_vers(v) => decode_args::<v4::TestRes>(args).map(|_| DecodedArgs::TestRes)?,
        TEST_RES => decode_args::<v3::TestRes>(args).map(|_| DecodedArgs::TestRes)?,
        LOCK_RES | CANCEL_RES | UNLOCK_RES | GRANTED_RES => DecodedArgs::Res(dec_res(v, args)?),
        SHARE | UNSHARE if !old => DecodedArgs::Share(dec_share(v, args)?),
        FREE_ALL if v4_vers(v) => DecodedArgs::Notify(decode_args(args)?),
        FREE_ALL if !old => {
            let n: v3::Notify = decode_args(args)?;
            DecodedArgs::Notify(v4::Notify {
                name: n.name,
                state: n.state,
            })
        }
        _ => return Err(ProcError::ProcUnavail),
    })
}

/// How a widened version 1/3 lock goes back to a 32-bit client (for the fuzz targets'
/// round-trip check).
#[cfg(feature = "fuzzing")]
pub fn narrow_lock(l: &v4::Lock) -> v3::Lock {
    lock_to_v3(l)
}

impl NlmProgram {
    /// The result of a TEST, LOCK, CANCEL, UNLOCK or GRANTED request, encoded in `vers`.
    fn run(&self, call: &Call, proc_: u32, args: &mut Decoder<'_>) -> Result<Vec<u8>, ProcError> {
        let l = &self.lockd;
        let v = call.vers;
        Ok(match proc_ {
            proc_::TEST | proc_::TEST_MSG => {
                let a = dec_test(v, args)?;
                let r = l.nlm_test(call, &a);
                enc_test_res(v, a.cookie, r)
            }
            proc_::LOCK | proc_::LOCK_MSG => {
                let a = dec_lock(v, args)?;
                let s = l.nlm_lock(call, &a, true, proc_ == proc_::LOCK_MSG);
                enc_res(v, a.cookie, s)
            }
            proc_::CANCEL | proc_::CANCEL_MSG => {
                let a = dec_canc(v, args)?;
                let s = l.nlm_cancel(call, &a);
                enc_res(v, a.cookie, s)
            }
            proc_::UNLOCK | proc_::UNLOCK_MSG => {
                let a = dec_unlock(v, args)?;
                let s = l.nlm_unlock(call, &a);
                enc_res(v, a.cookie, s)
            }
            proc_::GRANTED | proc_::GRANTED_MSG => {
                let a = dec_test(v, args)?;
                debug!(peer = %call.peer, "GRANTED received by a server; denied");
                enc_res(v, a.cookie, v4::Stats::Denied)
            }
            _ => return Err(ProcError::ProcUnavail),
        })
    }
}

impl RpcProgram for NlmProgram {
    fn program(&self) -> u32 {
        NLM_PROG
    }

    fn versions(&self) -> (u32, u32) {
        (NLM_VERS, NLM4_VERS)
    }

    fn has_version(&self, vers: u32) -> bool {
        matches!(vers, NLM_VERS | NLM_VERSX | NLM4_VERS)
    }

    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        let call = Call {
            peer: ctx.peer,
            vers: ctx.vers,
        };
        let v = ctx.vers;
        let l = &self.lockd;
        match ctx.proc_ {
            proc_::NULL => Ok(Reply::Now(Vec::new())),
            p @ (proc_::TEST | proc_::LOCK | proc_::CANCEL | proc_::UNLOCK | proc_::GRANTED) => {
                Ok(Reply::Now(self.run(&call, p, args)?))
            }
            p @ (proc_::TEST_MSG
            | proc_::LOCK_MSG
            | proc_::CANCEL_MSG
            | proc_::UNLOCK_MSG
            | proc_::GRANTED_MSG) => {
                let body = self.run(&call, p, args)?;
                // Each *_RES procedure is its *_MSG number plus 5.
                let _ = l.jobs.send(CallbackJob::Res {
                    peer: ctx.peer.ip(),
                    vers: v,
                    proc_: p + 5,
                    body,
                });
                Ok(Reply::None)
            }
            proc_::TEST_RES => {
                if v4_vers(v) {
                    decode_args::<v4::TestRes>(args)?;
                } else {
                    decode_args::<v3::TestRes>(args)?;
                }
                Ok(Reply::None)
            }
            proc_::LOCK_RES | proc_::CANCEL_RES | proc_::UNLOCK_RES => {
                dec_res(v, args)?;
                Ok(Reply::None)
            }
            proc_::GRANTED_RES => {
                let r = dec_res(v, args)?;
                if let Some(token) = token_of_cookie(&r.cookie) {
                    if let Some(tx) = l.grant_replies().remove(&token) {
                        let _ = tx.send(r.stat);
                    }
                }
                Ok(Reply::None)
            }
            proc_::SHARE | proc_::UNSHARE if v != NLM_VERS => {
                let a = dec_share(v, args)?;
                let s = if ctx.proc_ == proc_::SHARE {
                    l.nlm_share(&call, &a)
                } else {
                    l.nlm_unshare(&call, &a)
                };
                Ok(Reply::Now(enc_share_res(v, a.cookie, s)))
            }
            proc_::NM_LOCK if v != NLM_VERS => {
                let a = dec_lock(v, args)?;
                let s = l.nlm_lock(&call, &a, false, false);
                Ok(Reply::Now(enc_res(v, a.cookie, s)))
            }
            proc_::FREE_ALL if v != NLM_VERS => {
                let n = if v4_vers(v) {
                    decode_args::<v4::Notify>(args)?
                } else {
                    let n: v3::Notify = decode_args(args)?;
                    v4::Notify {
                        name: n.name,
                        state: n.state,
                    }
                };
                l.free_all(&n.name, ctx.peer.ip());
                Ok(Reply::Now(Vec::new()))
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_beyond_32_bits() {
        let h = |off, len| v4::Holder {
            exclusive: true,
            svid: 1,
            oh: vec![],
            l_offset: off,
            l_len: len,
        };
        let r = holder_to_v3(h(10, 5));
        assert_eq!((r.l_offset, r.l_len), (10, 5));
        let r = holder_to_v3(h(10, 0));
        assert_eq!((r.l_offset, r.l_len), (10, 0));
        let r = holder_to_v3(h(0xFFFF_FFF0, 0x100));
        assert_eq!((r.l_offset, r.l_len), (0xFFFF_FFF0, 0));
        let r = holder_to_v3(h(1 << 40, 1));
        assert_eq!((r.l_offset, r.l_len), (u32::MAX, 0));
    }

    #[test]
    fn v4_only_statuses_become_denied() {
        for s in v4::Stats::ALL {
            let v3s = stat_to_v3(*s);
            if s.to_wire() > 4 {
                assert_eq!(v3s, v3::Stats::Denied);
            } else {
                assert_eq!(v3s.to_wire(), s.to_wire());
            }
        }
    }
}
