//! The built-in portmapper (program 100000, versions 2, 3, 4) as served: a sequence of
//! calls with arbitrary arguments from loopback and remote peers over UDP and TCP. Remote
//! peers never change the table; a change is reported as one; every reply decodes; DUMP
//! lists the table; universal addresses survive a round trip; accepted mappings re-encode
//! to the bytes they came from.
#![no_main]

mod common;

use common::canonical;
use libfuzzer_sys::fuzz_target;
use lockd_user::portmap::{from_uaddr, to_uaddr, Mapping, Portmapper, Rpcb, MAX_DUMP_ENTRIES};
use lockd_user::rpc::{Credential, OpaqueAuth};
use lockd_user::server::{CallContext, Reply, RpcProgram, Transport};
use lockd_user::xdr::{from_bytes, Decoder};
use std::net::SocketAddr;

fn ctx(vers: u32, proc_: u32, remote: bool, tcp: bool) -> CallContext {
    let peer: SocketAddr = if remote {
        "192.0.2.7:700".parse().unwrap()
    } else {
        "127.0.0.1:700".parse().unwrap()
    };
    CallContext {
        peer,
        local: "0.0.0.0:111".parse().unwrap(),
        transport: if tcp { Transport::Tcp } else { Transport::Udp },
        xid: 1,
        prog: 100_000,
        vers,
        proc_,
        cred: Credential::None,
        verf: OpaqueAuth::none(),
        shared_args: None,
    }
}

fn check_uaddr(s: &str) {
    if let Some(a) = from_uaddr(s) {
        assert_eq!(from_uaddr(&to_uaddr(a)), Some(a), "{s}");
    }
}

fuzz_target!(|data: &[u8]| {
    let pm = Portmapper::new();
    pm.register_self(
        Some("0.0.0.0:111".parse().unwrap()),
        Some("0.0.0.0:111".parse().unwrap()),
    );
    let mut rest = data;
    while rest.len() >= 3 {
        let (h, p, n) = (rest[0], rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let args = &rest[..n.min(rest.len())];
        rest = &rest[args.len()..];

        let vers = [2, 3, 4, 4][usize::from(h & 3)];
        let remote = h & 4 != 0;
        let tcp = h & 8 != 0;
        let proc_ = u32::from(p % 12);
        canonical::<Mapping>(args);
        if let Some(r) = canonical::<Rpcb>(args) {
            check_uaddr(&r.r_addr);
        }
        if let Ok(s) = std::str::from_utf8(args) {
            check_uaddr(s);
        }

        let before = pm.entries();
        let reply = pm.call(&ctx(vers, proc_, remote, tcp), &mut Decoder::new(args));
        let after = pm.entries();
        let body = match reply {
            Ok(Reply::Now(b)) => b,
            Ok(Reply::None)
            | Ok(Reply::Later(_))
            | Ok(Reply::NowAfterHeader(_))
            | Ok(Reply::NowAfterHeaderWithFile(..)) => {
                panic!("the portmapper always answers now, with plain results")
            }
            Err(_) => {
                assert_eq!(before, after, "a refused call changed the table");
                continue;
            }
        };
        let changes = matches!(proc_, 1 | 2);
        if !changes || remote {
            assert_eq!(
                before, after,
                "proc {proc_} remote={remote} changed the table"
            );
        }
        let mut d = Decoder::new(&body);
        match (vers, proc_) {
            (_, 0) => assert!(body.is_empty()),
            (_, 1 | 2) => {
                let ok: bool = from_bytes(&body).expect("SET/UNSET answer a bool");
                assert_eq!(ok, before != after, "SET/UNSET reported {ok}");
                if proc_ == 1 && ok {
                    assert_eq!(after.len(), before.len() + 1);
                }
            }
            (2, 3) => {
                let port: u32 = from_bytes(&body).expect("GETPORT answers a port");
                assert!(port <= 65_535);
            }
            (2, 4) => {
                let l = d
                    .get_list::<Mapping>(MAX_DUMP_ENTRIES)
                    .expect("DUMP v2 decodes");
                assert!(l.len() <= after.len());
            }
            (_, 4) => {
                let l = d.get_list::<Rpcb>(MAX_DUMP_ENTRIES).expect("DUMP decodes");
                assert_eq!(l, after, "DUMP lists the table");
            }
            (_, 3 | 9) => {
                let s = d.get_string(1024).expect("GETADDR answers a string");
                assert!(
                    s.is_empty() || from_uaddr(&s).is_some(),
                    "GETADDR answered {s:?}"
                );
            }
            (_, 6) => drop(from_bytes::<u32>(&body).expect("GETTIME answers a time")),
            _ => panic!("v{vers} proc {proc_} answered without being a procedure"),
        }
    }
});
