//! The UDP listener: one receive loop per socket, with the duplicate request cache in
//! front of the dispatcher because datagram clients retransmit. Like TCP connections, the
//! loop may busy-poll briefly after each call (see [`super::ServerConfig::busy_poll`]).
//!
//! A socket bound to a wildcard address asks the kernel for each datagram's destination
//! address (IP_PKTINFO, IPV6_PKTINFO) and hands it to the programs as the call's local
//! address: a service group is known by the address a client reached it at (its server
//! ID), and that is where a reboot notification must be routed.

use super::dispatch::{result_msg, Action, Args, Dispatcher};
use super::{stopped, Transport};
use crate::drc::{DrcLookup, DuplicateCache};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Largest UDP datagram the server reads.
const MAX_DATAGRAM: usize = 65_536;

pub(super) async fn serve_udp(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    dispatcher: Arc<Dispatcher>,
    drc: Option<Arc<DuplicateCache>>,
    busy_poll: Option<Duration>,
    stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut deferred = JoinSet::new();
    let pktinfo = local.ip().is_unspecified() && ask_destinations(&sock, local.ip());
    // One stop future for the life of the socket, not one per datagram.
    let mut stop_rx = stop.clone();
    let stop_flag = stop.clone();
    let stop_signal = stopped(&mut stop_rx);
    tokio::pin!(stop_signal);
    // Whether a datagram was handled since the socket last waited.
    let mut served = false;
    loop {
        let polled = match busy_poll.filter(|_| served) {
            Some(window) => poll_datagram(&sock, &mut buf, pktinfo, window, &stop_flag).await,
            None => None,
        };
        served = false;
        let (n, peer, dst) = if let Some(v) = polled {
            v
        } else {
            tokio::select! {
                biased;
                _ = &mut stop_signal => break,
                Some(_) = deferred.join_next(), if !deferred.is_empty() => continue,
                r = recv_datagram(&sock, &mut buf, pktinfo) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on Linux; keep serving.
                        debug!(error = %e, "UDP receive error");
                        continue;
                    }
                },
            }
        };
        served = true;
        let local = dst.map_or(local, |ip| SocketAddr::new(ip, local.port()));
        let msg = &buf[..n];
        let (h, off) = match dispatcher.parse(msg) {
            Ok(v) => v,
            Err(action) => {
                if let Action::Send(out) = action {
                    udp_send(&sock, &out, peer, dst).await;
                }
                continue;
            }
        };
        let args = &msg[off..];
        let key = drc
            .as_ref()
            .map(|c| c.key(peer, h.xid, h.prog, h.vers, h.proc_, args));
        if let (Some(c), Some(k)) = (&drc, &key) {
            match c.begin(k) {
                DrcLookup::New => {}
                DrcLookup::InProgress => {
                    debug!(xid = h.xid, %peer, "dropping duplicate of a call in progress");
                    continue;
                }
                DrcLookup::Replay(reply) => {
                    debug!(xid = h.xid, %peer, "answering retransmission from cache");
                    if let Some(out) = reply {
                        udp_send(&sock, &out, peer, dst).await;
                    }
                    continue;
                }
            }
        }
        match dispatcher
            .execute(&h, Args::Borrowed(args), peer, local, Transport::Udp)
            .copied()
        {
            Action::Send(out) => {
                if let (Some(c), Some(k)) = (&drc, &key) {
                    c.complete(k, Some(Arc::from(&out[..])));
                }
                udp_send(&sock, &out, peer, dst).await;
            }
            // `copied` read a file's bytes in: none is left to send from here.
            Action::Nothing | Action::SendFile(..) => {
                if let (Some(c), Some(k)) = (&drc, &key) {
                    c.complete(k, None);
                }
            }
            Action::Defer { xid, rx } => {
                let sock = sock.clone();
                let drc = drc.clone();
                let mut stop = stop.clone();
                deferred.spawn(async move {
                    tokio::select! {
                        _ = stopped(&mut stop) => {}
                        r = rx => match r {
                            Ok(res) => {
                                let out = result_msg(xid, res);
                                if let (Some(c), Some(k)) = (&drc, &key) {
                                    c.complete(k, Some(Arc::from(&out[..])));
                                }
                                udp_send(&sock, &out, peer, dst).await;
                            }
                            Err(_) => {
                                if let (Some(c), Some(k)) = (&drc, &key) {
                                    c.abandon(k);
                                }
                            }
                        }
                    }
                });
            }
        }
    }
    deferred.shutdown().await;
}

/// Looks for the next datagram for up to `window` instead of sleeping at once (see
/// [`super::ServerConfig::busy_poll`]); yields between tries so the runtime keeps serving
/// everything else.
async fn poll_datagram(
    sock: &UdpSocket,
    buf: &mut [u8],
    pktinfo: bool,
    window: Duration,
    stop: &watch::Receiver<bool>,
) -> Option<Datagram> {
    let until = Instant::now() + window;
    loop {
        tokio::task::yield_now().await;
        if *stop.borrow() {
            return None;
        }
        let got = if pktinfo {
            sock.try_io(Interest::READABLE, || recv_with_destination(sock, buf))
        } else {
            sock.try_recv_from(buf).map(|(n, peer)| (n, peer, None))
        };
        match got {
            Ok(v) => return Some(v),
            // Receive errors (ICMP reports) are left to the regular receive path.
            Err(_) if Instant::now() >= until => return None,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

/// A datagram's length, sender and, when known, the local address it was sent to.
type Datagram = (usize, SocketAddr, Option<IpAddr>);

/// Waits for the next datagram (with its destination when `pktinfo` is on).
async fn recv_datagram(
    sock: &UdpSocket,
    buf: &mut [u8],
    pktinfo: bool,
) -> std::io::Result<Datagram> {
    if pktinfo {
        sock.async_io(Interest::READABLE, || recv_with_destination(sock, buf))
            .await
    } else {
        sock.recv_from(buf).await.map(|(n, peer)| (n, peer, None))
    }
}

/// Turns on destination reports for a wildcard socket; false when the kernel refuses
/// (calls then carry the wildcard address, as before).
fn ask_destinations(sock: &UdpSocket, bound: IpAddr) -> bool {
    let (level, opt) = match bound {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    };
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot ask for datagram destinations; calls to a wildcard address reach every group");
    }
    r == 0
}

/// One non-blocking recvmsg: the datagram, its sender and its destination address.
fn recv_with_destination(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Datagram> {
    // Room for one in6_pktinfo (the larger of the two) control message.
    let mut control = [0u64; 8];
    // SAFETY: all-zero bytes are a valid sockaddr_storage and msghdr.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points to live buffers of the lengths given, which
    // outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let peer = sockaddr_to(&from)
        .ok_or_else(|| std::io::Error::other("datagram from an unknown address family"))?;
    let mut dst = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // msg_controllen; each payload is read unaligned at the size of its type.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, peer, dst))
}

fn sockaddr_to(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends a reply; from `from` (the address the call reached, on a wildcard socket), so a
/// client that called a group's server ID hears back from it and not from whichever
/// address the kernel would pick.
async fn udp_send(sock: &UdpSocket, msg: &[u8], peer: SocketAddr, from: Option<IpAddr>) {
    let r = match from {
        Some(src) => {
            sock.async_io(Interest::WRITABLE, || send_from(sock, msg, peer, src))
                .await
        }
        None => sock.send_to(msg, peer).await,
    };
    if let Err(e) = r {
        warn!(%peer, error = %e, len = msg.len(), "UDP reply not sent");
    }
}

/// One non-blocking sendmsg to `peer` with `src` as the source address (IP_PKTINFO or
/// IPV6_PKTINFO); a source of the other family than the socket's is left to the kernel.
fn send_from(
    sock: &UdpSocket,
    msg: &[u8],
    peer: SocketAddr,
    src: IpAddr,
) -> std::io::Result<usize> {
    let mut control = [0u64; 8];
    // SAFETY: all-zero bytes are a valid msghdr and sockaddr_storage.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut to: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    let namelen = match peer {
        SocketAddr::V4(p) => {
            // SAFETY: sockaddr_storage is large enough and aligned for a sockaddr_in.
            let a: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut to as *mut libc::sockaddr_storage).cast() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = p.port().to_be();
            a.sin_addr.s_addr = u32::from(*p.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(p) => {
            // SAFETY: sockaddr_storage is large enough and aligned for a sockaddr_in6.
            let a: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut to as *mut libc::sockaddr_storage).cast() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = p.port().to_be();
            a.sin6_addr.s6_addr = p.ip().octets();
            a.sin6_flowinfo = p.flowinfo();
            a.sin6_scope_id = p.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    m.msg_name = (&mut to as *mut libc::sockaddr_storage).cast();
    m.msg_namelen = namelen as libc::socklen_t;
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    let same_family = matches!(
        (sock.local_addr().map(|a| a.ip()), src),
        (Ok(IpAddr::V4(_)), IpAddr::V4(_)) | (Ok(IpAddr::V6(_)), IpAddr::V6(_))
    );
    if same_family {
        m.msg_control = control.as_mut_ptr().cast();
        m.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: the control buffer is aligned and large enough for one in6_pktinfo
        // message (the larger kind), so CMSG_FIRSTHDR is not null; the payload is written
        // unaligned at the size its header declares.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&m);
            match src {
                IpAddr::V4(a) => {
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(a).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                    m.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                }
                IpAddr::V6(a) => {
                    (*c).cmsg_level = libc::IPPROTO_IPV6;
                    (*c).cmsg_type = libc::IPV6_PKTINFO;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::in6_pktinfo>() as u32) as _;
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: a.octets(),
                        },
                        ipi6_ifindex: 0,
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                    m.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32) as _;
                }
            }
        }
    }
    // SAFETY: every pointer in `m` points to live buffers of the lengths given.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &m, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use crate::rpc::{CallHeader, OpaqueAuth, ReplyHeader};
    use crate::server::{
        decode_args, CallContext, ProcError, Reply, RpcProgram, RpcServer, ServerConfig,
    };
    use crate::xdr::{to_bytes, Decoder};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::UdpSocket;
    use tokio::time::timeout;

    const PROG: u32 = 0x2000_0178;

    struct Echo;

    impl RpcProgram for Echo {
        fn program(&self) -> u32 {
            PROG
        }
        fn versions(&self) -> (u32, u32) {
            (1, 1)
        }
        fn call(&self, _: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
            let v: u32 = decode_args(args)?;
            Ok(Reply::encode(&v))
        }
    }

    async fn call(s: &UdpSocket, to: std::net::SocketAddr, xid: u32, v: u32) -> (u32, u32) {
        let msg = CallHeader::new(xid, PROG, 1, 0, OpaqueAuth::none()).to_message(&to_bytes(&v));
        s.send_to(&msg, to).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = timeout(Duration::from_secs(2), s.recv_from(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        let mut d = Decoder::new(&buf[..n]);
        let h = ReplyHeader::decode(&mut d).unwrap();
        (h.xid, d.get_u32().unwrap())
    }

    const WHERE: u32 = 0x2000_0179;

    /// Answers with the IPv4 address the call was sent to.
    struct Where;

    impl RpcProgram for Where {
        fn program(&self) -> u32 {
            WHERE
        }
        fn versions(&self) -> (u32, u32) {
            (1, 1)
        }
        fn call(&self, ctx: &CallContext, _: &mut Decoder<'_>) -> Result<Reply, ProcError> {
            let ip = match ctx.local.ip() {
                std::net::IpAddr::V4(a) => u32::from(a),
                std::net::IpAddr::V6(_) => 0,
            };
            Ok(Reply::encode(&ip))
        }
    }

    #[tokio::test]
    async fn a_wildcard_socket_tells_each_call_where_it_was_sent() {
        for busy_poll in [None, Some(Duration::from_millis(50))] {
            let config = ServerConfig {
                busy_poll,
                ..ServerConfig::default()
            };
            let server = RpcServer::builder(config)
                .program(Arc::new(Where))
                .udp("0.0.0.0:0".parse().unwrap())
                .start()
                .await
                .unwrap();
            let port = server.udp_addrs()[0].port();
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for (xid, to) in [
                (1u32, [127, 0, 0, 1]),
                (2, [127, 0, 0, 7]),
                (3, [127, 0, 0, 1]),
            ] {
                let msg = CallHeader::new(xid, WHERE, 1, 0, OpaqueAuth::none()).to_message(&[]);
                let called = std::net::SocketAddr::from((to, port));
                c.send_to(&msg, called).await.unwrap();
                let mut buf = [0u8; 512];
                let (n, from) = timeout(Duration::from_secs(2), c.recv_from(&mut buf))
                    .await
                    .expect("reply in time")
                    .unwrap();
                assert_eq!(from, called, "the reply comes from the address called");
                let mut d = Decoder::new(&buf[..n]);
                assert_eq!(ReplyHeader::decode(&mut d).unwrap().xid, xid);
                assert_eq!(
                    std::net::Ipv4Addr::from(d.get_u32().unwrap()),
                    std::net::Ipv4Addr::from(to),
                    "busy_poll {busy_poll:?}"
                );
            }
            timeout(Duration::from_secs(2), server.shutdown())
                .await
                .expect("shutdown");
        }
    }

    #[tokio::test]
    async fn a_busy_polling_socket_serves_every_sender_and_stops_promptly() {
        // A window far longer than the step limits: a poller that missed datagrams or held
        // the runtime would make a step wait for the whole window.
        let config = ServerConfig {
            busy_poll: Some(Duration::from_secs(5)),
            ..ServerConfig::default()
        };
        let server = RpcServer::builder(config)
            .program(Arc::new(Echo))
            .udp("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let to = server.udp_addrs()[0];
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(call(&a, to, 1, 10).await, (1, 10));
        assert_eq!(call(&b, to, 2, 20).await, (2, 20));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(call(&a, to, 3, 30).await, (3, 30));
        // Shutdown does not wait for the window in progress.
        timeout(Duration::from_secs(2), server.shutdown())
            .await
            .expect("shutdown");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
