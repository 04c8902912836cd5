//! The built-in portmapper: one registration table answered through portmapper version 2
//! and rpcbind versions 3 and 4, for hosts where no rpcbind runs.

use super::{
    from_uaddr, netid_of, pmap_proc, prot_of, rpcb_proc, to_uaddr, Mapping, Rpcb, PMAP_PROG,
    PMAP_VERS, RPCBVERS, RPCBVERS4,
};
use crate::server::{decode_args, CallContext, ProcError, Reply, RpcProgram, Transport};
use crate::xdr::{Decoder, Encoder, XdrEncode};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use tracing::debug;

/// The portmapper program served by lockfs when no rpcbind answers on the host.
#[derive(Debug, Default)]
pub struct Portmapper {
    table: Mutex<Vec<Rpcb>>,
}

impl Portmapper {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Rpcb>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a mapping unless one exists for the same program, version and netid (rpcbind
    /// semantics: the first registration wins until it is removed).
    pub fn set(&self, m: Rpcb) -> bool {
        let mut t = self.lock();
        if t.iter()
            .any(|e| e.r_prog == m.r_prog && e.r_vers == m.r_vers && e.r_netid == m.r_netid)
        {
            return false;
        }
        t.push(m);
        true
    }

    /// Registers a program served on a local socket address (the typical daemon call).
    pub fn set_local(&self, prog: u32, vers: u32, transport: Transport, addr: SocketAddr) -> bool {
        self.set(Rpcb {
            r_prog: prog,
            r_vers: vers,
            r_netid: transport.netid(addr.is_ipv6()).into(),
            r_addr: to_uaddr(addr),
            r_owner: "lockfs".into(),
        })
    }

    /// Lists the portmapper itself (versions 2, 3 and 4) at the addresses it serves on, as
    /// rpcbind does, so `rpcinfo -p` shows it and rpcbind-style lookups of it succeed.
    pub fn register_self(&self, udp: Option<SocketAddr>, tcp: Option<SocketAddr>) {
        for vers in [PMAP_VERS, RPCBVERS, RPCBVERS4] {
            if let Some(a) = udp {
                self.set_local(PMAP_PROG, vers, Transport::Udp, a);
            }
            if let Some(a) = tcp {
                self.set_local(PMAP_PROG, vers, Transport::Tcp, a);
            }
        }
    }

    /// Removes mappings for a program and version; an empty netid removes all netids.
    pub fn unset(&self, prog: u32, vers: u32, netid: &str) -> bool {
        let mut t = self.lock();
        let before = t.len();
        t.retain(|e| {
            !(e.r_prog == prog && e.r_vers == vers && (netid.is_empty() || e.r_netid == netid))
        });
        t.len() != before
    }

    /// A copy of the table.
    pub fn entries(&self) -> Vec<Rpcb> {
        self.lock().clone()
    }

    /// Like rpcbind, falls back to another version of the program on the same protocol, so
    /// the caller reaches the server and learns the supported versions from PROG_MISMATCH.
    fn getport(&self, m: &Mapping) -> u32 {
        let Some(netid) = netid_of(m.prot) else {
            return 0;
        };
        let t = self.lock();
        let same = |e: &&Rpcb| e.r_prog == m.prog && e.r_netid == netid;
        t.iter()
            .filter(same)
            .find(|e| e.r_vers == m.vers)
            .or_else(|| t.iter().find(same))
            .and_then(|e| from_uaddr(&e.r_addr))
            .map_or(0, |a| u32::from(a.port()))
    }

    fn dump_v2(&self) -> Vec<Mapping> {
        self.lock()
            .iter()
            .filter_map(|e| {
                Some(Mapping {
                    prog: e.r_prog,
                    vers: e.r_vers,
                    prot: prot_of(&e.r_netid)?,
                    port: u32::from(from_uaddr(&e.r_addr)?.port()),
                })
            })
            .collect()
    }

    /// Looks up the universal address of a program version on `netid`, as seen from
    /// `local` (the address the question arrived on): a wildcard host is replaced by it as
    /// rpcbind does. With `exact_version` false, another version of the program on the same
    /// netid will do, so the client can learn the supported versions from the server itself.
    fn getaddr(&self, q: &Rpcb, netid: &str, local: SocketAddr, exact_version: bool) -> String {
        let t = self.lock();
        let netid_ok = |e: &Rpcb| e.r_netid == netid;
        let found = t
            .iter()
            .find(|e| e.r_prog == q.r_prog && e.r_vers == q.r_vers && netid_ok(e))
            .or_else(|| {
                (!exact_version)
                    .then(|| t.iter().find(|e| e.r_prog == q.r_prog && netid_ok(e)))
                    .flatten()
            });
        match found {
            None => String::new(),
            Some(e) => match from_uaddr(&e.r_addr) {
                Some(a) if a.ip().is_unspecified() => {
                    to_uaddr(SocketAddr::new(local.ip(), a.port()))
                }
                _ => e.r_addr.clone(),
            },
        }
    }

    fn call_v2(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        match ctx.proc_ {
            pmap_proc::NULL => Ok(Reply::Now(Vec::new())),
            pmap_proc::SET => {
                let m: Mapping = decode_args(args)?;
                let ok = may_change(ctx)
                    && match (netid_of(m.prot), u16::try_from(m.port)) {
                        (Some(netid), Ok(port)) => self.set(Rpcb {
                            r_prog: m.prog,
                            r_vers: m.vers,
                            r_netid: netid.into(),
                            r_addr: to_uaddr(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)),
                            r_owner: "unknown".into(),
                        }),
                        _ => false,
                    };
                Ok(Reply::encode(&ok))
            }
            pmap_proc::UNSET => {
                let m: Mapping = decode_args(args)?;
                let ok = may_change(ctx)
                    && (self.unset(m.prog, m.vers, "tcp") | self.unset(m.prog, m.vers, "udp"));
                Ok(Reply::encode(&ok))
            }
            pmap_proc::GETPORT => {
                let m: Mapping = decode_args(args)?;
                Ok(Reply::encode(&self.getport(&m)))
            }
            pmap_proc::DUMP => {
                let mut enc = Encoder::new();
                for m in self.dump_v2() {
                    enc.put_bool(true);
                    m.encode(&mut enc);
                }
                enc.put_bool(false);
                Ok(Reply::Now(enc.into_inner()))
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }

    fn call_rpcb(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        match ctx.proc_ {
            rpcb_proc::NULL => Ok(Reply::Now(Vec::new())),
            rpcb_proc::SET => {
                let m: Rpcb = decode_args(args)?;
                let ok = may_change(ctx) && from_uaddr(&m.r_addr).is_some() && self.set(m);
                Ok(Reply::encode(&ok))
            }
            rpcb_proc::UNSET => {
                let m: Rpcb = decode_args(args)?;
                let ok = may_change(ctx) && self.unset(m.r_prog, m.r_vers, &m.r_netid);
                Ok(Reply::encode(&ok))
            }
            // RFC 1833: GETADDR ignores r_netid and answers for the transport the question
            // came on; GETVERSADDR uses r_netid and wants the exact version.
            rpcb_proc::GETADDR => {
                let q: Rpcb = decode_args(args)?;
                let netid = ctx.transport.netid(ctx.local.is_ipv6());
                Ok(Reply::Now(string_body(
                    &self.getaddr(&q, netid, ctx.local, false),
                )))
            }
            rpcb_proc::GETVERSADDR if ctx.vers == RPCBVERS4 => {
                let q: Rpcb = decode_args(args)?;
                Ok(Reply::Now(string_body(
                    &self.getaddr(&q, &q.r_netid, ctx.local, true),
                )))
            }
            rpcb_proc::DUMP => {
                let mut enc = Encoder::new();
                for m in self.entries() {
                    enc.put_bool(true);
                    m.encode(&mut enc);
                }
                enc.put_bool(false);
                Ok(Reply::Now(enc.into_inner()))
            }
            rpcb_proc::GETTIME => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as u32);
                Ok(Reply::encode(&now))
            }
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

fn string_body(s: &str) -> Vec<u8> {
    let mut enc = Encoder::new();
    enc.put_string(s);
    enc.into_inner()
}

fn may_change(ctx: &CallContext) -> bool {
    let ok = ctx.peer.ip().is_loopback();
    if !ok {
        debug!(peer = %ctx.peer, "refusing portmapper change from a remote peer");
    }
    ok
}

impl RpcProgram for Portmapper {
    fn program(&self) -> u32 {
        PMAP_PROG
    }

    fn versions(&self) -> (u32, u32) {
        (PMAP_VERS, RPCBVERS4)
    }

    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        if ctx.vers == PMAP_VERS {
            self.call_v2(ctx, args)
        } else {
            self.call_rpcb(ctx, args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::{IPPROTO_TCP, IPPROTO_UDP};

    #[test]
    fn table_semantics() {
        let pm = Portmapper::new();
        let local: SocketAddr = "0.0.0.0:4045".parse().unwrap();
        assert!(pm.set_local(100_021, 4, Transport::Tcp, local));
        assert!(
            !pm.set_local(100_021, 4, Transport::Tcp, local),
            "first one wins"
        );
        assert!(pm.set_local(100_021, 4, Transport::Udp, local));
        assert!(pm.set_local(
            100_021,
            1,
            Transport::Udp,
            "127.0.0.1:4046".parse().unwrap()
        ));
        let q = |vers, prot| Mapping {
            prog: 100_021,
            vers,
            prot,
            port: 0,
        };
        assert_eq!(pm.getport(&q(4, IPPROTO_TCP)), 4045);
        assert_eq!(pm.getport(&q(1, IPPROTO_UDP)), 4046);
        assert_eq!(pm.getport(&q(3, IPPROTO_TCP)), 4045, "any version will do");
        assert_eq!(
            pm.getport(&Mapping {
                prog: 7,
                ..q(1, IPPROTO_TCP)
            }),
            0
        );
        assert_eq!(pm.getport(&q(4, 99)), 0);
        assert_eq!(pm.dump_v2().len(), 3);
        let here: SocketAddr = "127.0.0.1:111".parse().unwrap();
        let rq = |vers| Rpcb {
            r_prog: 100_021,
            r_vers: vers,
            r_netid: String::new(),
            r_addr: String::new(),
            r_owner: String::new(),
        };
        assert_eq!(pm.getaddr(&rq(4), "tcp", here, true), "127.0.0.1.15.205");
        assert_eq!(pm.getaddr(&rq(3), "tcp", here, true), "");
        assert_eq!(pm.getaddr(&rq(3), "tcp", here, false), "127.0.0.1.15.205");
        assert_eq!(pm.getaddr(&rq(1), "udp", here, true), "127.0.0.1.15.206");
        assert_eq!(pm.getaddr(&rq(1), "tcp", here, true), "");
        assert!(pm.unset(100_021, 4, ""));
        assert_eq!(pm.getport(&q(4, IPPROTO_TCP)), 0);
        assert_eq!(
            pm.getport(&q(4, IPPROTO_UDP)),
            4046,
            "falls back to version 1"
        );
        assert!(!pm.unset(100_021, 4, ""));
    }
}
