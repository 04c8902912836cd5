//! Finding lockd: rpcbind registration, a built-in portmapper, and a probe.
//!
//! NFS clients look NLM and NSM up through the portmapper on port 111 (PMAP version 2,
//! RFC 1833 section 3) or rpcbind (versions 3 and 4, RFC 1833 section 2). When an rpcbind
//! runs, lockfs registers with it ([`register`], [`unregister`]); when none answers
//! ([`rpcbind_answers`]), the daemon serves [`Portmapper`] itself so clients still find it.
//!
//! The built-in portmapper keeps one table for all versions. Version 2 sees the `tcp` and
//! `udp` entries as (protocol, port) pairs; versions 3 and 4 see netids and universal
//! addresses. Changes are accepted only from loopback peers, as rpcbind does.

use std::net::{IpAddr, SocketAddr};

mod builtin;
mod client;

pub use builtin::Portmapper;
pub use client::{
    local_rpcbind, lookup, register, rpcbind_answers, unregister, PortmapError, RpcbindClient,
};

/// Portmapper/rpcbind program number.
pub const PMAP_PROG: u32 = 100_000;
/// Portmapper protocol version.
pub const PMAP_VERS: u32 = 2;
/// rpcbind protocol versions.
pub const RPCBVERS: u32 = 3;
pub const RPCBVERS4: u32 = 4;
/// The well-known portmapper port.
pub const PMAP_PORT: u16 = 111;
/// IP protocol numbers used by portmapper version 2.
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
/// Longest netid, universal address or owner string accepted.
pub const RPCB_MAXSTRLEN: usize = 1024;
/// Most entries accepted when decoding a DUMP reply.
pub const MAX_DUMP_ENTRIES: usize = 65_536;

/// Procedure numbers of portmapper version 2.
pub mod pmap_proc {
    pub const NULL: u32 = 0;
    pub const SET: u32 = 1;
    pub const UNSET: u32 = 2;
    pub const GETPORT: u32 = 3;
    pub const DUMP: u32 = 4;
    pub const CALLIT: u32 = 5;
}

/// Procedure numbers of rpcbind versions 3 and 4.
pub mod rpcb_proc {
    pub const NULL: u32 = 0;
    pub const SET: u32 = 1;
    pub const UNSET: u32 = 2;
    pub const GETADDR: u32 = 3;
    pub const DUMP: u32 = 4;
    pub const GETTIME: u32 = 6;
    /// Version 4 only.
    pub const GETVERSADDR: u32 = 9;
}

crate::xdr_struct! {
    /// A portmapper version 2 mapping.
    pub struct Mapping {
        pub prog: u32 [xdr],
        pub vers: u32 [xdr],
        pub prot: u32 [xdr],
        pub port: u32 [xdr],
    }
}

crate::xdr_struct! {
    /// An rpcbind version 3/4 mapping.
    pub struct Rpcb {
        pub r_prog: u32 [xdr],
        pub r_vers: u32 [xdr],
        pub r_netid: String [string RPCB_MAXSTRLEN],
        pub r_addr: String [string RPCB_MAXSTRLEN],
        pub r_owner: String [string RPCB_MAXSTRLEN],
    }
}

/// Formats a socket address as an rpcbind universal address (`h1.h2.h3.h4.p1.p2`).
pub fn to_uaddr(addr: SocketAddr) -> String {
    let port = addr.port();
    format!("{}.{}.{}", addr.ip(), port >> 8, port & 0xff)
}

/// Parses a universal address; `None` when it is not an IPv4 or IPv6 one.
pub fn from_uaddr(s: &str) -> Option<SocketAddr> {
    let (rest, lo) = s.rsplit_once('.')?;
    let (host, hi) = rest.rsplit_once('.')?;
    let hi: u8 = hi.parse().ok()?;
    let lo: u8 = lo.parse().ok()?;
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, u16::from(hi) << 8 | u16::from(lo)))
}

pub(crate) fn netid_of(prot: u32) -> Option<&'static str> {
    match prot {
        IPPROTO_TCP => Some("tcp"),
        IPPROTO_UDP => Some("udp"),
        _ => None,
    }
}

pub(crate) fn prot_of(netid: &str) -> Option<u32> {
    match netid {
        "tcp" => Some(IPPROTO_TCP),
        "udp" => Some(IPPROTO_UDP),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uaddr_round_trip() {
        let a: SocketAddr = "127.0.0.1:2049".parse().unwrap();
        assert_eq!(to_uaddr(a), "127.0.0.1.8.1");
        assert_eq!(from_uaddr("127.0.0.1.8.1"), Some(a));
        let b: SocketAddr = "[::1]:111".parse().unwrap();
        assert_eq!(to_uaddr(b), "::1.0.111");
        assert_eq!(from_uaddr("::1.0.111"), Some(b));
        for bad in ["", "1.2.3.4", "1.2.3.4.256.1", "x.y", "1.2.3.4.a.1", "..."] {
            assert_eq!(from_uaddr(bad), None, "{bad}");
        }
    }
}
