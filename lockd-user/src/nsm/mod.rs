//! The status monitor (program 100024 version 1), after X/Open XNFS chapter 11.
//!
//! lockd's own monitoring of the hosts that hold locks does not go through this program:
//! it is internal and durable ([`store`], per service group), so a host's first lock costs
//! one local fsync and no round trip. The program serves peers and tools:
//!
//! - SM_STAT: our state number (`res_stat` is always success: any name may be monitored).
//! - SM_MON, SM_UNMON, SM_UNMON_ALL are calls of a local lock manager, accepted only from a
//!   local caller, as Linux statd does: from 127.0.0.1 (or `::1`), from any port (statd
//!   checks no port). Others get `res_stat` fail (SM_MON) or our state with nothing
//!   changed, and a warning in the log.
//! - SM_MON: records, durably before replying, that the caller wants to hear when
//!   `mon_name` reboots; the `status` callback goes to `my_prog`/`my_vers`/`my_proc` through
//!   the local portmapper. Registrations are capped in total and per monitored host;
//!   beyond a cap, or when the registration cannot be written, `res_stat` is fail.
//! - SM_UNMON, SM_UNMON_ALL: remove registrations; reply with our state.
//! - SM_SIMU_CRASH: accepted from loopback callers only; behaves as a restart of lockd in
//!   place: every remote lock and share is released, the state number advances, every
//!   group online here enters grace and its clients are sent SM_NOTIFY so they reclaim
//!   (a group with storage under its server IDs, with its own advanced state number);
//!   offline groups are not touched.
//! - SM_NOTIFY: a peer rebooted. What its lockd held here (locks, waiters, shares) in the
//!   groups the notification reached is released, so other clients' waiters are granted,
//!   and it leaves those groups' lists: a notification sent to a group's server ID
//!   reaches that group, one sent to another address of this node the groups without
//!   server IDs (every group when the address is not known);
//!   callers that monitor it are called back. The host is found by `mon_name` (its NLM
//!   caller name) and believed only from an address on record for it; a name on no list is
//!   matched by its address only when exactly one host is on record there; a notification
//!   naming this server, or coming back from it, releases nothing
//!   (`recovery::judge_sender`).

pub mod store;

use crate::lockd::{off_the_workers, Lockd};
use crate::proto::nsm::{
    proc_, Mon, MonId, MyId, SmName, SmRes, SmStat, SmStatRes, StatChge, SM_PROG, SM_VERS,
};
use crate::server::{decode_args, CallContext, ProcError, Reply, RpcProgram};
use crate::xdr::Decoder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use store::Monitor;
use tracing::{info, warn};

/// The status program served by lockd.
#[derive(Debug, Clone)]
pub struct NsmProgram {
    lockd: Arc<Lockd>,
}

impl NsmProgram {
    pub fn new(lockd: Arc<Lockd>) -> Self {
        Self { lockd }
    }
}

/// Whether a call comes from this machine's local lock manager, as Linux statd decides it:
/// the loopback address 127.0.0.1 (or `::1`, or 127.0.0.1 mapped into IPv6).
pub fn local_caller(peer: SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(a) => a == Ipv4Addr::LOCALHOST,
        IpAddr::V6(a) => {
            a == Ipv6Addr::LOCALHOST || a.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    }
}

impl RpcProgram for NsmProgram {
    fn program(&self) -> u32 {
        SM_PROG
    }

    fn versions(&self) -> (u32, u32) {
        (SM_VERS, SM_VERS)
    }

    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        let l = &self.lockd;
        match ctx.proc_ {
            proc_::NULL => Ok(Reply::Now(Vec::new())),
            proc_::STAT => {
                let _a: SmName = decode_args(args)?;
                Ok(Reply::encode(&SmStatRes {
                    res_stat: SmRes::Succ,
                    state: l.state(),
                }))
            }
            proc_::MON => {
                let a: Mon = decode_args(args)?;
                if !local_caller(ctx.peer) {
                    warn!(peer = %ctx.peer, mon_name = %a.mon_id.mon_name, "SM_MON from a non-local caller refused");
                    return Ok(Reply::encode(&SmStatRes {
                        res_stat: SmRes::Fail,
                        state: l.state(),
                    }));
                }
                let m = Monitor {
                    mon_name: a.mon_id.mon_name,
                    my_name: a.mon_id.my_id.my_name,
                    my_prog: a.mon_id.my_id.my_prog,
                    my_vers: a.mon_id.my_id.my_vers,
                    my_proc: a.mon_id.my_id.my_proc,
                    priv_: a.priv_,
                    caller: ctx.peer.ip(),
                };
                let res_stat = match off_the_workers(|| l.store.monitor(m)) {
                    Ok(()) => SmRes::Succ,
                    Err(e) => {
                        warn!(peer = %ctx.peer, error = %e, "cannot record SM_MON");
                        SmRes::Fail
                    }
                };
                Ok(Reply::encode(&SmStatRes {
                    res_stat,
                    state: l.state(),
                }))
            }
            proc_::UNMON => {
                let a: MonId = decode_args(args)?;
                if !local_caller(ctx.peer) {
                    warn!(peer = %ctx.peer, mon_name = %a.mon_name, "SM_UNMON from a non-local caller refused");
                } else if let Err(e) = off_the_workers(|| l.store.unmonitor(&a.mon_name, &a.my_id))
                {
                    warn!(peer = %ctx.peer, error = %e, "cannot record SM_UNMON");
                }
                Ok(Reply::encode(&SmStat { state: l.state() }))
            }
            proc_::UNMON_ALL => {
                let a: MyId = decode_args(args)?;
                if !local_caller(ctx.peer) {
                    warn!(peer = %ctx.peer, my_name = %a.my_name, "SM_UNMON_ALL from a non-local caller refused");
                } else if let Err(e) = off_the_workers(|| l.store.unmonitor_all(&a)) {
                    warn!(peer = %ctx.peer, error = %e, "cannot record SM_UNMON_ALL");
                }
                Ok(Reply::encode(&SmStat { state: l.state() }))
            }
            proc_::SIMU_CRASH => {
                if ctx.peer.ip().is_loopback() {
                    info!(peer = %ctx.peer, "SM_SIMU_CRASH: restarting lock service in place");
                    if let Err(e) = crate::recovery::restart_in_place(l) {
                        warn!(error = %e, "simulated crash failed");
                    }
                } else {
                    warn!(peer = %ctx.peer, "SM_SIMU_CRASH from a remote host ignored");
                }
                Ok(Reply::Now(Vec::new()))
            }
            proc_::NOTIFY => {
                let a: StatChge = decode_args(args)?;
                crate::recovery::peer_rebooted(
                    l,
                    &a.mon_name,
                    a.state,
                    ctx.peer.ip(),
                    ctx.local.ip(),
                );
                Ok(Reply::Now(Vec::new()))
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}
