//! The server against a toy program on 127.0.0.1, over UDP and TCP: every RPC-level error
//! reply, deferred and absent replies, record marking limits, the connection limits, the
//! verifier check, the duplicate request cache and shutdown.

use lockd_user::record::{encode_record, read_record};
use lockd_user::rpc::{
    flavor, AcceptStatus, AuthStat, AuthSys, CallHeader, OpaqueAuth, ReplyHeader, ReplyStatus,
};
use lockd_user::xdr::{to_bytes, Decoder};
use lockd_user::{
    decode_args, handle, handle_silent, CallContext, ClientConfig, ClientError, ProcError, Reply,
    RpcClient, RpcProgram, RpcServer, ServerConfig, Transport,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const TOY: u32 = 0x2000_0101;
const NULL: u32 = 0;
const ECHO: u32 = 1;
const WHOAMI: u32 = 2;
const DEFER: u32 = 3;
const SILENT: u32 = 4;
const PANIC: u32 = 5;
const SYSERR: u32 = 6;
const SLOW: u32 = 7;
const BIG: u32 = 8;
const NEED_SYS: u32 = 9;
const PEER_PORT: u32 = 10;

/// A test step that hangs fails instead.
const STEP: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Toy {
    echo_calls: AtomicUsize,
    silent_calls: AtomicUsize,
    slow_calls: AtomicUsize,
}

impl RpcProgram for Toy {
    fn program(&self) -> u32 {
        TOY
    }

    fn versions(&self) -> (u32, u32) {
        (1, 3)
    }

    fn has_version(&self, vers: u32) -> bool {
        vers == 1 || vers == 3
    }

    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        match ctx.proc_ {
            NULL => Ok(Reply::Now(Vec::new())),
            ECHO => handle(args, |v: u32| {
                self.echo_calls.fetch_add(1, Ordering::SeqCst);
                v.wrapping_add(1)
            }),
            PEER_PORT => Ok(Reply::encode(&u32::from(ctx.peer.port()))),
            WHOAMI => {
                let mut e = lockd_user::Encoder::new();
                e.put_string(ctx.cred.machinename().unwrap_or(""));
                e.put_u32(match &ctx.cred {
                    lockd_user::rpc::Credential::Sys(s) => s.uid,
                    _ => u32::MAX,
                });
                e.put_u32(ctx.vers);
                e.put_bool(ctx.transport == Transport::Tcp);
                Ok(Reply::Now(e.into_inner()))
            }
            DEFER => {
                let v: u32 = decode_args(args)?;
                let (reply, sender) = Reply::deferred();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    sender.send_encoded(&(v * 2));
                });
                Ok(reply)
            }
            SILENT => handle_silent(args, |()| {
                self.silent_calls.fetch_add(1, Ordering::SeqCst);
            }),
            PANIC => panic!("toy handler panics on purpose"),
            SYSERR => Err(ProcError::SystemErr),
            SLOW => {
                self.slow_calls.fetch_add(1, Ordering::SeqCst);
                let (reply, sender) = Reply::deferred();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    sender.send_encoded(&7u32);
                });
                Ok(reply)
            }
            BIG => {
                let n: u32 = decode_args(args)?;
                let mut e = lockd_user::Encoder::new();
                e.put_opaque(&vec![0x5a; n as usize]);
                Ok(Reply::Now(e.into_inner()))
            }
            NEED_SYS => match ctx.cred {
                lockd_user::rpc::Credential::Sys(_) => Ok(Reply::Now(Vec::new())),
                _ => Err(ProcError::Auth(AuthStat::TooWeak)),
            },
            _ => Err(ProcError::ProcUnavail),
        }
    }
}

async fn start(config: ServerConfig) -> (RpcServer, Arc<Toy>) {
    let toy = Arc::new(Toy::default());
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = RpcServer::builder(config)
        .program(toy.clone())
        .udp(lo)
        .tcp(lo)
        .start()
        .await
        .unwrap();
    (server, toy)
}

fn client_config(cred: OpaqueAuth) -> ClientConfig {
    ClientConfig {
        retransmit: Duration::from_millis(200),
        total_timeout: Duration::from_secs(5),
        cred,
        ..ClientConfig::default()
    }
}

async fn client(server: &RpcServer, t: Transport, cred: OpaqueAuth) -> RpcClient {
    let addr = match t {
        Transport::Udp => server.udp_addrs()[0],
        Transport::Tcp => server.tcp_addrs()[0],
    };
    RpcClient::new(t, addr, client_config(cred)).await.unwrap()
}

fn auth_sys() -> OpaqueAuth {
    AuthSys {
        stamp: 1,
        machinename: "toyhost".into(),
        uid: 1234,
        gid: 100,
        gids: vec![100, 27],
    }
    .to_opaque()
}

#[tokio::test]
async fn every_rpc_level_reply_over_udp_and_tcp() {
    let (server, toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(30), async {
        for t in [Transport::Udp, Transport::Tcp] {
            let c = client(&server, t, OpaqueAuth::none()).await;
            // Success, both supported versions.
            c.call_raw(TOY, 1, NULL, &[]).await.unwrap();
            let r: u32 = c.call(TOY, 3, ECHO, &41u32).await.unwrap();
            assert_eq!(r, 42, "{t:?}");
            // PROG_UNAVAIL.
            assert!(matches!(
                c.call_raw(TOY + 1, 1, NULL, &[]).await,
                Err(ClientError::ProgUnavail)
            ));
            // PROG_MISMATCH, for a gap inside the range and outside it.
            for vers in [2, 4, 0] {
                assert!(
                    matches!(
                        c.call_raw(TOY, vers, NULL, &[]).await,
                        Err(ClientError::ProgMismatch { low: 1, high: 3 })
                    ),
                    "{t:?} version {vers}"
                );
            }
            // PROC_UNAVAIL.
            assert!(matches!(
                c.call_raw(TOY, 1, 77, &[]).await,
                Err(ClientError::ProcUnavail)
            ));
            // GARBAGE_ARGS: ECHO needs four bytes.
            assert!(matches!(
                c.call_raw(TOY, 1, ECHO, &[1, 2]).await,
                Err(ClientError::GarbageArgs)
            ));
            // SYSTEM_ERR, from an error and from a panic; the listener survives the panic.
            assert!(matches!(
                c.call_raw(TOY, 1, SYSERR, &[]).await,
                Err(ClientError::SystemErr)
            ));
            assert!(matches!(
                c.call_raw(TOY, 1, PANIC, &[]).await,
                Err(ClientError::SystemErr)
            ));
            c.call_raw(TOY, 1, NULL, &[]).await.unwrap();
            // AUTH_ERROR chosen by the program.
            assert!(matches!(
                c.call_raw(TOY, 1, NEED_SYS, &[]).await,
                Err(ClientError::Auth(AuthStat::TooWeak))
            ));

            // RPC_MISMATCH: a call claiming RPC version 3.
            let mut h = CallHeader::new(c.next_xid(), TOY, 1, NULL, OpaqueAuth::none());
            h.rpcvers = 3;
            let reply = c.exchange(h.xid, &h.to_message(&[])).await.unwrap();
            let rh = ReplyHeader::decode(&mut Decoder::new(&reply)).unwrap();
            assert_eq!(
                ClientError::from_status(&rh.status).map(|e| e.to_string()),
                Some(ClientError::RpcMismatch { low: 2, high: 2 }.to_string())
            );

            // AUTH_BADCRED: an AUTH_SYS credential whose body is not authsys_parms.
            let bad = OpaqueAuth {
                flavor: flavor::AUTH_SYS,
                body: vec![0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
            };
            let bc = client(&server, t, bad).await;
            assert!(matches!(
                bc.call_raw(TOY, 1, NULL, &[]).await,
                Err(ClientError::Auth(AuthStat::BadCred))
            ));
            // AUTH_REJECTEDCRED: a flavour the server does not support (AUTH_DH).
            let dh = OpaqueAuth {
                flavor: flavor::AUTH_DH,
                body: vec![1, 2, 3, 4],
            };
            let dc = client(&server, t, dh).await;
            assert!(matches!(
                dc.call_raw(TOY, 1, NULL, &[]).await,
                Err(ClientError::Auth(AuthStat::RejectedCred))
            ));

            // AUTH_SYS reaches the program.
            let sc = client(&server, t, auth_sys()).await;
            let body = sc.call_raw(TOY, 3, WHOAMI, &[]).await.unwrap();
            let mut d = Decoder::new(&body);
            assert_eq!(d.get_string(255).unwrap(), "toyhost");
            assert_eq!(d.get_u32().unwrap(), 1234);
            assert_eq!(d.get_u32().unwrap(), 3);
            assert_eq!(d.get_bool().unwrap(), t == Transport::Tcp);
            sc.call_raw(TOY, 1, NEED_SYS, &[]).await.unwrap();

            // A deferred reply arrives.
            let r: u32 = c.call(TOY, 1, DEFER, &21u32).await.unwrap();
            assert_eq!(r, 42);
            // Large results (still within one datagram on UDP).
            let body = c
                .call_raw(TOY, 1, BIG, &to_bytes(&60_000u32))
                .await
                .unwrap();
            assert_eq!(body.len(), 4 + 60_000);
        }
        assert_eq!(toy.echo_calls.load(Ordering::SeqCst), 2);
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn silent_procedures_send_nothing() {
    let (server, toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(20), async {
        for t in [Transport::Udp, Transport::Tcp] {
            let c = RpcClient::new(
                t,
                match t {
                    Transport::Udp => server.udp_addrs()[0],
                    Transport::Tcp => server.tcp_addrs()[0],
                },
                ClientConfig {
                    retransmit: Duration::from_millis(100),
                    total_timeout: Duration::from_millis(400),
                    ..ClientConfig::default()
                },
            )
            .await
            .unwrap();
            assert!(matches!(
                c.call_raw(TOY, 1, SILENT, &[]).await,
                Err(ClientError::Timeout)
            ));
            // One-way sends are what message-passing peers do.
            c.send_oneway(TOY, 1, SILENT, &[]).await.unwrap();
        }
        // Give the last one-way message time to arrive.
        for _ in 0..100 {
            if toy.silent_calls.load(Ordering::SeqCst) >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // UDP: retransmissions of the silent call hit the duplicate cache, so the handler
        // ran once for the call, once for the TCP call and once per one-way send.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(toy.silent_calls.load(Ordering::SeqCst), 4);
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn udp_retransmissions_are_answered_from_the_cache() {
    let (server, toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(20), async {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(server.udp_addrs()[0]).await.unwrap();
        let call =
            CallHeader::new(0x1234_5678, TOY, 1, ECHO, auth_sys()).to_message(&to_bytes(&9u32));
        let mut buf = vec![0u8; 65_536];
        let mut replies = Vec::new();
        for _ in 0..3 {
            sock.send(&call).await.unwrap();
            let n = timeout(STEP, sock.recv(&mut buf)).await.unwrap().unwrap();
            replies.push(buf[..n].to_vec());
        }
        assert_eq!(toy.echo_calls.load(Ordering::SeqCst), 1, "handler ran once");
        assert!(
            replies.iter().all(|r| r == &replies[0]),
            "identical replies"
        );
        let mut d = Decoder::new(&replies[0]);
        let h = ReplyHeader::decode(&mut d).unwrap();
        assert_eq!(h.xid, 0x1234_5678);
        assert_eq!(h.status, ReplyStatus::accepted(AcceptStatus::Success));
        assert_eq!(d.get_u32().unwrap(), 10);

        // Same xid with other arguments is a new request.
        let other =
            CallHeader::new(0x1234_5678, TOY, 1, ECHO, auth_sys()).to_message(&to_bytes(&10u32));
        sock.send(&other).await.unwrap();
        let n = timeout(STEP, sock.recv(&mut buf)).await.unwrap().unwrap();
        let mut d = Decoder::new(&buf[..n]);
        ReplyHeader::decode(&mut d).unwrap();
        assert_eq!(d.get_u32().unwrap(), 11);
        assert_eq!(toy.echo_calls.load(Ordering::SeqCst), 2);

        // A duplicate that arrives while the original is in progress is dropped; once the
        // deferred reply is out, a retransmission gets it from the cache.
        let slow = CallHeader::new(77, TOY, 1, SLOW, OpaqueAuth::none()).to_message(&[]);
        sock.send(&slow).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        sock.send(&slow).await.unwrap();
        let n = timeout(STEP, sock.recv(&mut buf)).await.unwrap().unwrap();
        let first = buf[..n].to_vec();
        assert!(
            timeout(Duration::from_millis(300), sock.recv(&mut buf))
                .await
                .is_err(),
            "the in-progress duplicate must not be answered"
        );
        sock.send(&slow).await.unwrap();
        let n = timeout(STEP, sock.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], &first[..]);
        assert_eq!(toy.slow_calls.load(Ordering::SeqCst), 1);
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn tcp_multi_fragment_records_and_pipelining() {
    let (server, toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(20), async {
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        let mut wire = Vec::new();
        for (i, frag) in [1usize, 3, 5, 1000].into_iter().enumerate() {
            let call = CallHeader::new(100 + i as u32, TOY, 1, ECHO, auth_sys())
                .to_message(&to_bytes(&(i as u32)));
            wire.extend(encode_record(&call, frag));
        }
        // Write one byte at a time so fragments and headers straddle reads.
        for b in &wire {
            s.write_all(std::slice::from_ref(b)).await.unwrap();
        }
        for i in 0..4u32 {
            let rec = timeout(STEP, read_record(&mut s, 1 << 16))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let mut d = Decoder::new(&rec);
            let h = ReplyHeader::decode(&mut d).unwrap();
            assert_eq!(h.xid, 100 + i);
            assert_eq!(d.get_u32().unwrap(), i + 1);
        }
        assert_eq!(toy.echo_calls.load(Ordering::SeqCst), 4);
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

/// Reads until the peer closes; true if it did within the timeout.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match timeout(STEP, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn over_limit_record_closes_the_connection() {
    let config = ServerConfig {
        max_record_size: 1024,
        ..ServerConfig::default()
    };
    let (server, _toy) = start(config).await;
    timeout(Duration::from_secs(20), async {
        // One fragment announcing 2 GiB.
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4])
            .await
            .unwrap();
        assert!(closed_by_peer(&mut s).await);
        // Small fragments adding up past the limit.
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        let call = CallHeader::new(1, TOY, 1, NULL, OpaqueAuth::none()).to_message(&[0; 2000]);
        s.write_all(&encode_record(&call, 100)).await.unwrap();
        assert!(closed_by_peer(&mut s).await);
        // A record at the limit is fine.
        let c = client(&server, Transport::Tcp, OpaqueAuth::none()).await;
        let header_len = CallHeader::new(1, TOY, 1, NULL, OpaqueAuth::none())
            .to_message(&[])
            .len();
        c.call_raw(TOY, 1, NULL, &vec![0; 1024 - header_len])
            .await
            .unwrap();
        assert!(c
            .call_raw(TOY, 1, NULL, &vec![0; 1024 - header_len + 4])
            .await
            .is_err());
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

/// A raw TCP connection to the toy program from `from` (any port).
async fn raw_from(server: &RpcServer, from: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(server.tcp_addrs()[0]).await.unwrap()
}

/// Calls ECHO on a raw connection; true if it was answered.
async fn echo_on(s: &mut TcpStream, xid: u32) -> bool {
    let call = CallHeader::new(xid, TOY, 1, ECHO, OpaqueAuth::none()).to_message(&to_bytes(&7u32));
    if s.write_all(&encode_record(&call, 1 << 20)).await.is_err() {
        return false;
    }
    match timeout(STEP, read_record(s, 1 << 16)).await {
        Ok(Ok(Some(rec))) => {
            let h = ReplyHeader::decode(&mut Decoder::new(&rec)).unwrap();
            h.xid == xid
        }
        _ => false,
    }
}

#[tokio::test]
async fn a_full_connection_table_closes_its_idlest_connection() {
    let config = ServerConfig {
        max_tcp_connections: 2,
        ..ServerConfig::default()
    };
    let (server, _toy) = start(config).await;
    timeout(Duration::from_secs(30), async {
        let mut a = raw_from(&server, "127.0.0.1").await;
        let mut b = raw_from(&server, "127.0.0.2").await;
        assert!(echo_on(&mut b, 1).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(echo_on(&mut a, 2).await);
        // The table is full; b has been idle longest and makes room for c.
        let mut c = raw_from(&server, "127.0.0.3").await;
        assert!(echo_on(&mut c, 3).await, "a new connection is served");
        assert!(
            closed_by_peer(&mut b).await,
            "the idlest connection is closed"
        );
        assert!(echo_on(&mut a, 4).await, "the busier connection stays");
        assert!(echo_on(&mut c, 5).await);
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_per_address_are_limited() {
    let config = ServerConfig {
        max_tcp_connections_per_peer: 2,
        ..ServerConfig::default()
    };
    let (server, _toy) = start(config).await;
    timeout(Duration::from_secs(30), async {
        let mut a = raw_from(&server, "127.0.0.1").await;
        let mut b = raw_from(&server, "127.0.0.1").await;
        assert!(echo_on(&mut a, 1).await && echo_on(&mut b, 2).await);
        let mut extra = raw_from(&server, "127.0.0.1").await;
        assert!(!echo_on(&mut extra, 3).await);
        assert!(
            closed_by_peer(&mut extra).await,
            "a third one from 127.0.0.1 is closed"
        );
        // Other addresses are not affected, nor are the first two.
        let mut other = raw_from(&server, "127.0.0.2").await;
        assert!(echo_on(&mut other, 4).await);
        assert!(echo_on(&mut a, 5).await);
        // A closed connection frees its address's place once the server notices.
        drop(b);
        let mut ok = false;
        for i in 0..50 {
            let mut c = raw_from(&server, "127.0.0.1").await;
            if echo_on(&mut c, 100 + i).await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "a place freed by a closed connection is reused");
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn an_unknown_verifier_flavour_gets_auth_badverf() {
    let (server, toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(20), async {
        for t in [Transport::Udp, Transport::Tcp] {
            let c = client(&server, t, OpaqueAuth::none()).await;
            for (xid, cred, verf) in [
                (41, OpaqueAuth::none(), 7u32),
                (42, auth_sys(), 7),
                (43, auth_sys(), flavor::AUTH_SYS),
                (44, OpaqueAuth::none(), flavor::RPCSEC_GSS),
            ] {
                let mut h = CallHeader::new(xid, TOY, 1, ECHO, cred);
                h.verf = OpaqueAuth {
                    flavor: verf,
                    body: vec![1, 2, 3, 4],
                };
                let reply = c
                    .exchange(xid, &h.to_message(&to_bytes(&1u32)))
                    .await
                    .unwrap();
                let r = ReplyHeader::decode(&mut Decoder::new(&reply)).unwrap();
                assert_eq!(r.xid, xid);
                // MSG_DENIED, AUTH_ERROR, AUTH_BADVERF.
                assert_eq!(
                    r.status,
                    ReplyStatus::Denied(lockd_user::rpc::RejectStatus::AuthError(
                        AuthStat::BadVerf
                    )),
                    "{t:?} verifier flavour {verf}"
                );
                assert_eq!(&reply[4..8], &1u32.to_be_bytes(), "REPLY");
                assert_eq!(&reply[8..12], &1u32.to_be_bytes(), "MSG_DENIED");
                assert_eq!(&reply[12..16], &1u32.to_be_bytes(), "AUTH_ERROR");
                assert_eq!(&reply[16..20], &3u32.to_be_bytes(), "AUTH_BADVERF");
            }
        }
        assert_eq!(toy.echo_calls.load(Ordering::SeqCst), 0, "no call ran");
        // An AUTH_NONE verifier is still accepted.
        let c = client(&server, Transport::Udp, auth_sys()).await;
        c.call_raw(TOY, 1, ECHO, &to_bytes(&1u32)).await.unwrap();
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_is_dropped_and_the_server_keeps_serving() {
    let (server, _toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(20), async {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(server.udp_addrs()[0]).await.unwrap();
        for junk in [
            &[][..],
            &[1][..],
            &[0, 0, 0, 1, 0, 0, 0, 1][..],
            &[0xff; 64][..],
        ] {
            sock.send(junk).await.unwrap();
        }
        let mut buf = [0u8; 512];
        assert!(
            timeout(Duration::from_millis(200), sock.recv(&mut buf))
                .await
                .is_err(),
            "garbage without a call header gets no reply"
        );
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        s.write_all(&encode_record(&[0xff; 64], 64)).await.unwrap();
        let c = client(&server, Transport::Udp, OpaqueAuth::none()).await;
        c.call_raw(TOY, 1, NULL, &[]).await.unwrap();
        let t = client(&server, Transport::Tcp, OpaqueAuth::none()).await;
        t.call_raw(TOY, 1, NULL, &[]).await.unwrap();
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_listeners_and_connections() {
    let (server, _toy) = start(ServerConfig::default()).await;
    let tcp = server.tcp_addrs()[0];
    let mut open = timeout(STEP, TcpStream::connect(tcp))
        .await
        .unwrap()
        .unwrap();
    let c = client(&server, Transport::Tcp, OpaqueAuth::none()).await;
    c.call_raw(TOY, 1, NULL, &[]).await.unwrap();
    timeout(STEP, server.shutdown())
        .await
        .expect("shutdown hangs");
    assert!(closed_by_peer(&mut open).await);
    let again = timeout(STEP, TcpStream::connect(tcp)).await.unwrap();
    assert!(again.is_err(), "listener is closed");
}

#[tokio::test]
async fn duplicate_program_is_refused() {
    let r = RpcServer::builder(ServerConfig::default())
        .program(Arc::new(Toy::default()))
        .program(Arc::new(Toy::default()))
        .start()
        .await;
    assert!(matches!(
        r,
        Err(lockd_user::server::ServerError::DuplicateProgram(TOY))
    ));
}

#[tokio::test]
async fn client_can_call_from_a_chosen_local_port() {
    let (server, _toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(20), async {
        for t in [Transport::Udp, Transport::Tcp] {
            // A free reserved port, as NLM callbacks to picky clients need (tests run as root;
            // without the privilege, an unreserved free port is used instead).
            let port = (600..1024u16)
                .chain(40_000..41_000)
                .find(|p| {
                    let a = SocketAddr::from(([127, 0, 0, 1], *p));
                    std::net::UdpSocket::bind(a).is_ok() && std::net::TcpListener::bind(a).is_ok()
                })
                .expect("no free port");
            let mut cfg = client_config(OpaqueAuth::none());
            cfg.local_addr = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            let peer = match t {
                Transport::Udp => server.udp_addrs()[0],
                Transport::Tcp => server.tcp_addrs()[0],
            };
            let c = RpcClient::new(t, peer, cfg).await.unwrap();
            let seen: u32 = c.call(TOY, 1, PEER_PORT, &()).await.unwrap();
            assert_eq!(seen, u32::from(port), "{t:?}");
        }
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn lost_udp_reply_is_recovered_by_retransmission_without_rerunning_the_handler() {
    let (server, toy) = start(ServerConfig::default()).await;
    timeout(Duration::from_secs(20), async {
        // A relay between client and server that loses the first reply.
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        upstream.connect(server.udp_addrs()[0]).await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let forwarded = Arc::new(AtomicUsize::new(0));
        let count = forwarded.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            let mut first = true;
            loop {
                let (n, client) = relay.recv_from(&mut buf).await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                upstream.send(&buf[..n]).await.unwrap();
                let m = upstream.recv(&mut buf).await.unwrap();
                if !std::mem::take(&mut first) {
                    relay.send_to(&buf[..m], client).await.unwrap();
                }
            }
        });
        let c = RpcClient::udp(
            relay_addr,
            ClientConfig {
                retransmit: Duration::from_millis(100),
                total_timeout: Duration::from_secs(5),
                ..ClientConfig::default()
            },
        )
        .await
        .unwrap();
        let r: u32 = c.call(TOY, 1, ECHO, &1u32).await.unwrap();
        assert_eq!(r, 2);
        assert!(
            forwarded.load(Ordering::SeqCst) >= 2,
            "the call was retransmitted"
        );
        assert_eq!(
            toy.echo_calls.load(Ordering::SeqCst),
            1,
            "answered from the cache"
        );
        task.abort();
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let config = ServerConfig {
        tcp_idle_timeout: Some(Duration::from_millis(200)),
        ..ServerConfig::default()
    };
    let (server, _toy) = start(config).await;
    timeout(Duration::from_secs(20), async {
        let mut s = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        let started = std::time::Instant::now();
        assert!(closed_by_peer(&mut s).await);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "closed too early"
        );
        // A connection that keeps calling stays open past the idle timeout.
        let c = client(&server, Transport::Tcp, OpaqueAuth::none()).await;
        for _ in 0..5 {
            c.call_raw(TOY, 1, NULL, &[]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("test timed out");
    server.shutdown().await;
}
