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

pub mod client;
pub mod drc;
pub mod portmap;
pub mod proto;
pub mod record;
pub mod rpc;
pub mod server;
pub mod xdr;

pub use client::{ClientConfig, ClientError, RpcClient};
pub use server::{
    decode_args, handle, handle_silent, CallContext, ProcError, Reply, ReplySender, RpcProgram,
    RpcServer, ServerBuilder, ServerConfig, Transport,
};
pub use xdr::{Decoder, Encoder, XdrDecode, XdrEncode, XdrError};
