//! lockd-user: the NLM/NSM front door of lockfs, from the socket up to decoded arguments.
//!
//! Layering, bottom to top:
//!
//! - [`xdr`]: RFC 4506 encoding and bounds-checked decoding.
//! - [`rpc`]: RFC 5531 call and reply messages and credentials.
//! - [`record`]: TCP record marking with a bounded record size.
//! - [`server`]: UDP and TCP listeners dispatching calls to registered [`server::RpcProgram`]s,
//!   answering every RPC-level error itself; [`drc`] keeps UDP retransmissions from running a
//!   procedure twice.
//! - [`client`]: outgoing calls (NLM callbacks, SM_NOTIFY, rpcbind registration).
//! - [`portmap`]: registration with rpcbind, a built-in portmapper, and a probe.
//! - [`proto`]: NLM v1/v3/v4 and NSM wire types.
//!
//! The lock service on top of it:
//!
//! - [`exports`]: exported directories, their service groups and allowed clients.
//! - [`fh`]: unforgeable NLM file handles that survive restarts.
//! - [`nlm`]: the NLM program (versions 1, 3, 4) over the shared lock and share tables.
//! - [`nsm`]: the status program and the durable state (state number, client lists).
//! - [`callbacks`] and [`recovery`]: GRANTED and `*_RES` callbacks, grace periods,
//!   SM_NOTIFY in both directions, host release; [`notify`]: a restart's paced round of
//!   SM_NOTIFY.
//! - [`nfs3`] and [`mountd`]: NFS version 3 and MOUNT on the same exports and handles.
//! - [`service`]: starts all of it; [`lockd::Lockd`] is the state its programs share.
//!
//! Procedure logic sits above this crate's transport layer and is written as plain functions
//! from decoded arguments to results. Nothing in the transport decides a lock: conflicts,
//! grace periods and owners belong to the lock table.
//!
//! A program is a [`server::RpcProgram`]; each procedure decodes its arguments with the
//! [`proto`] types and answers now ([`server::handle`]), never ([`server::handle_silent`]), or
//! later ([`server::Reply::deferred`]):
//!
//! ```no_run
//! use lockd_user::proto::nlm::{proc_, v4, NLM4_VERS, NLM_PROG};
//! use lockd_user::server::{handle, handle_silent, CallContext, ProcError, Reply, RpcProgram};
//! use lockd_user::{Decoder, RpcServer, ServerConfig};
//! use std::sync::Arc;
//!
//! struct Nlm4;
//!
//! impl RpcProgram for Nlm4 {
//!     fn program(&self) -> u32 { NLM_PROG }
//!     fn versions(&self) -> (u32, u32) { (NLM4_VERS, NLM4_VERS) }
//!     fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError> {
//!         match ctx.proc_ {
//!             proc_::NULL => Ok(Reply::Now(Vec::new())),
//!             proc_::UNLOCK => handle(args, |a: v4::UnlockArgs| v4::Res {
//!                 cookie: a.cookie,
//!                 stat: v4::Stats::Granted,
//!             }),
//!             proc_::UNLOCK_MSG => handle_silent(args, |_a: v4::UnlockArgs| {}),
//!             _ => Err(ProcError::ProcUnavail),
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RpcServer::builder(ServerConfig::default())
//!     .program(Arc::new(Nlm4))
//!     .udp("0.0.0.0:0".parse()?)
//!     .tcp("0.0.0.0:0".parse()?)
//!     .start()
//!     .await?;
//! println!("NLM on {:?} {:?}", server.udp_addrs(), server.tcp_addrs());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod callbacks;
pub mod client;
pub mod drc;
pub mod exports;
pub mod fh;
pub mod group_state;
pub mod group_threads;
mod liveness;
pub mod lockd;
pub mod mountd;
pub mod nfs3;
pub mod nlm;
pub mod notify;
pub mod nsm;
pub mod portmap;
pub mod proto;
pub mod record;
pub mod recovery;
pub mod rpc;
pub mod server;
pub mod service;
pub mod xdr;

pub use client::{ClientConfig, ClientError, RpcClient};
pub use exports::{Cidr, Export};
pub use fh::{fh_for_path, make_fh, FhKey};
pub use lockd::{CallbackPolicy, EventQueue, EventSink, HostReleased, Limits, Lockd};
pub use server::{
    decode_args, handle, handle_silent, CallContext, ProcError, Reply, ReplySender, RpcProgram,
    RpcServer, ServerBuilder, ServerConfig, Transport,
};
pub use service::{LockdConfig, LockdService, PortmapMode};
pub use xdr::{Decoder, Encoder, XdrDecode, XdrEncode, XdrError};
