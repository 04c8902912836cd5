//! Talking to an rpcbind or portmapper: registration, lookups and a liveness probe.

use super::{pmap_proc, rpcb_proc};
use super::{
    to_uaddr, Mapping, Rpcb, MAX_DUMP_ENTRIES, PMAP_PORT, PMAP_PROG, PMAP_VERS, RPCBVERS4,
    RPCB_MAXSTRLEN,
};
use crate::client::{ClientConfig, ClientError, RpcClient};
use crate::server::Transport;
use crate::xdr::Decoder;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use thiserror::Error;

/// Why registration with rpcbind failed.
#[derive(Debug, Error)]
pub enum PortmapError {
    #[error("rpcbind call failed: {0}")]
    Rpc(#[from] ClientError),
    #[error("rpcbind refused to register program {prog} version {vers} on {netid}")]
    Refused { prog: u32, vers: u32, netid: String },
}

/// The local rpcbind address.
pub fn local_rpcbind() -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PMAP_PORT)
}

fn short_config(timeout: Duration) -> ClientConfig {
    ClientConfig {
        retransmit: (timeout / 4).max(Duration::from_millis(10)),
        total_timeout: timeout,
        ..ClientConfig::default()
    }
}

/// True when something at `rpcbind` answers a portmapper NULL call within `timeout`.
pub async fn rpcbind_answers(rpcbind: SocketAddr, timeout: Duration) -> bool {
    let Ok(c) = RpcClient::udp(rpcbind, short_config(timeout)).await else {
        return false;
    };
    c.call_raw(PMAP_PROG, PMAP_VERS, pmap_proc::NULL, &[])
        .await
        .is_ok()
}

/// A client for an rpcbind or portmapper.
pub struct RpcbindClient {
    client: RpcClient,
}

impl RpcbindClient {
    /// Talks to the rpcbind at `addr` over UDP.
    pub async fn new(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        Ok(Self {
            client: RpcClient::udp(addr, short_config(timeout)).await?,
        })
    }

    /// Wraps an existing client (for example a TCP one).
    pub fn from_client(client: RpcClient) -> Self {
        Self { client }
    }

    pub async fn pmap_set(&self, m: &Mapping) -> Result<bool, ClientError> {
        self.client
            .call(PMAP_PROG, PMAP_VERS, pmap_proc::SET, m)
            .await
    }

    pub async fn pmap_unset(&self, m: &Mapping) -> Result<bool, ClientError> {
        self.client
            .call(PMAP_PROG, PMAP_VERS, pmap_proc::UNSET, m)
            .await
    }

    pub async fn pmap_getport(&self, m: &Mapping) -> Result<u32, ClientError> {
        self.client
            .call(PMAP_PROG, PMAP_VERS, pmap_proc::GETPORT, m)
            .await
    }

    pub async fn pmap_dump(&self) -> Result<Vec<Mapping>, ClientError> {
        let body = self
            .client
            .call_raw(PMAP_PROG, PMAP_VERS, pmap_proc::DUMP, &[])
            .await?;
        Ok(Decoder::new(&body).get_list(MAX_DUMP_ENTRIES)?)
    }

    pub async fn rpcb_set(&self, vers: u32, m: &Rpcb) -> Result<bool, ClientError> {
        self.client.call(PMAP_PROG, vers, rpcb_proc::SET, m).await
    }

    pub async fn rpcb_unset(&self, vers: u32, m: &Rpcb) -> Result<bool, ClientError> {
        self.client.call(PMAP_PROG, vers, rpcb_proc::UNSET, m).await
    }

    /// rpcbind answers for the transport this client uses, whatever `q.r_netid` says.
    pub async fn rpcb_getaddr(&self, vers: u32, q: &Rpcb) -> Result<String, ClientError> {
        let body = self
            .client
            .call_raw(
                PMAP_PROG,
                vers,
                rpcb_proc::GETADDR,
                &crate::xdr::to_bytes(q),
            )
            .await?;
        Ok(Decoder::new(&body).get_string(RPCB_MAXSTRLEN)?)
    }

    pub async fn rpcb_dump(&self, vers: u32) -> Result<Vec<Rpcb>, ClientError> {
        let body = self
            .client
            .call_raw(PMAP_PROG, vers, rpcb_proc::DUMP, &[])
            .await?;
        Ok(Decoder::new(&body).get_list(MAX_DUMP_ENTRIES)?)
    }
}

/// Asks the portmapper of `host` (port 111, version 2 GETPORT over UDP) where a program
/// version listens on `transport`; `None` when it is not registered. Used to find a
/// client's NLM for GRANTED callbacks and a peer's NSM for SM_NOTIFY.
pub async fn lookup(
    host: IpAddr,
    prog: u32,
    vers: u32,
    transport: Transport,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ClientError> {
    let c = RpcbindClient::new(SocketAddr::new(host, PMAP_PORT), timeout).await?;
    let port = c
        .pmap_getport(&Mapping {
            prog,
            vers,
            prot: transport.ipproto(),
            port: 0,
        })
        .await?;
    Ok(u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .map(|p| SocketAddr::new(host, p)))
}

/// Registers a program served at `addr` with the rpcbind at `rpcbind`: rpcbind version 4
/// SET, falling back to portmapper version 2 when only a portmapper answers.
pub async fn register(
    rpcbind: SocketAddr,
    prog: u32,
    vers: u32,
    transport: Transport,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), PortmapError> {
    let c = RpcbindClient::new(rpcbind, timeout).await?;
    let netid = transport.netid(addr.is_ipv6());
    let ok = match c
        .rpcb_set(
            RPCBVERS4,
            &Rpcb {
                r_prog: prog,
                r_vers: vers,
                r_netid: netid.into(),
                r_addr: to_uaddr(addr),
                r_owner: "lockfs".into(),
            },
        )
        .await
    {
        Ok(ok) => ok,
        Err(ClientError::ProgMismatch { .. } | ClientError::ProgUnavail) if addr.is_ipv4() => {
            c.pmap_set(&Mapping {
                prog,
                vers,
                prot: transport.ipproto(),
                port: u32::from(addr.port()),
            })
            .await?
        }
        Err(e) => return Err(e.into()),
    };
    if ok {
        Ok(())
    } else {
        Err(PortmapError::Refused {
            prog,
            vers,
            netid: netid.into(),
        })
    }
}

/// Removes every registration of a program version (all netids). Returns whether anything
/// was removed.
pub async fn unregister(
    rpcbind: SocketAddr,
    prog: u32,
    vers: u32,
    timeout: Duration,
) -> Result<bool, PortmapError> {
    let c = RpcbindClient::new(rpcbind, timeout).await?;
    let q = Rpcb {
        r_prog: prog,
        r_vers: vers,
        r_netid: String::new(),
        r_addr: String::new(),
        r_owner: "lockfs".into(),
    };
    match c.rpcb_unset(RPCBVERS4, &q).await {
        Ok(ok) => Ok(ok),
        Err(ClientError::ProgMismatch { .. } | ClientError::ProgUnavail) => Ok(c
            .pmap_unset(&Mapping {
                prog,
                vers,
                prot: 0,
                port: 0,
            })
            .await?),
        Err(e) => Err(e.into()),
    }
}
