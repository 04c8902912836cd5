//! Turns one received message into the action its transport must take, answering every
//! RPC-level error (RFC 5531) without involving the program.

use super::{CallContext, FileTail, ProcError, Reply, RpcProgram, SharedArgs, Transport};
use crate::rpc::{
    flavor, write_success_header, AcceptStatus, AuthStat, CallDecodeError, CallHeader, Credential,
    RejectStatus, ReplyHeader, ReplyStatus, RPC_VERSION, SUCCESS_HEADER_LEN,
};
use crate::xdr::Decoder;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::{debug, error};

/// What the transport must do after a call was handled.
pub(super) enum Action {
    Send(Vec<u8>),
    /// Send the message followed by the file's bytes, as one reply (a transport that
    /// cannot send from a file has them read in by [`Action::copied`]).
    SendFile(Vec<u8>, FileTail),
    Defer {
        xid: u32,
        rx: oneshot::Receiver<Result<Vec<u8>, ProcError>>,
    },
    Nothing,
}

impl Action {
    /// The action with a file's bytes read into the message. A file that shrank under
    /// its reply gets no reply at all: the client asks again, and is answered afresh.
    pub(super) fn copied(self) -> Action {
        match self {
            Action::SendFile(mut msg, tail) => match tail.read_into(&mut msg) {
                Ok(()) => Action::Send(msg),
                Err(e) => {
                    debug!(error = %e, "the file bytes of a reply could not be read");
                    Action::Nothing
                }
            },
            a => a,
        }
    }
}

fn reply_msg(xid: u32, status: ReplyStatus) -> Vec<u8> {
    ReplyHeader { xid, status }.to_message(&[])
}

fn error_status(e: ProcError) -> ReplyStatus {
    match e {
        ProcError::ProcUnavail => ReplyStatus::accepted(AcceptStatus::ProcUnavail),
        ProcError::GarbageArgs => ReplyStatus::accepted(AcceptStatus::GarbageArgs),
        ProcError::SystemErr => ReplyStatus::accepted(AcceptStatus::SystemErr),
        ProcError::Auth(s) => ReplyStatus::Denied(RejectStatus::AuthError(s)),
    }
}

pub(super) fn result_msg(xid: u32, r: Result<Vec<u8>, ProcError>) -> Vec<u8> {
    match r {
        Ok(body) => ReplyHeader {
            xid,
            status: ReplyStatus::accepted(AcceptStatus::Success),
        }
        .to_message(&body),
        Err(e) => reply_msg(xid, error_status(e)),
    }
}

/// Routes decoded calls to programs; shared by all listeners.
pub(super) struct Dispatcher {
    pub(super) programs: HashMap<u32, Arc<dyn RpcProgram>>,
}

impl Dispatcher {
    /// Decodes the call header, or says what to do with a message that has none.
    pub(super) fn parse(&self, msg: &[u8]) -> Result<(CallHeader, usize), Action> {
        let mut dec = Decoder::new(msg);
        match CallHeader::decode(&mut dec) {
            Ok(h) => Ok((h, dec.position())),
            Err(CallDecodeError::BadAuth { xid, source }) => {
                debug!(xid, error = %source, "malformed credential");
                Err(Action::Send(reply_msg(
                    xid,
                    ReplyStatus::Denied(RejectStatus::AuthError(AuthStat::BadCred)),
                )))
            }
            Err(e) => {
                debug!(error = %e, "dropping message that is not a valid call");
                Err(Action::Nothing)
            }
        }
    }

    pub(super) fn execute(
        &self,
        h: &CallHeader,
        args: Args<'_>,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
    ) -> Action {
        let xid = h.xid;
        let send = |status| Action::Send(reply_msg(xid, status));
        if h.rpcvers != RPC_VERSION {
            return send(ReplyStatus::Denied(RejectStatus::RpcMismatch {
                low: RPC_VERSION,
                high: RPC_VERSION,
            }));
        }
        let cred = match h.cred.flavor {
            flavor::AUTH_NONE | flavor::AUTH_SYS => match Credential::parse(&h.cred) {
                Ok(c) => c,
                Err(e) => {
                    debug!(xid, error = %e, "malformed AUTH_SYS credential");
                    return send(ReplyStatus::Denied(RejectStatus::AuthError(
                        AuthStat::BadCred,
                    )));
                }
            },
            other => {
                debug!(xid, flavor = other, "unsupported credential flavour");
                return send(ReplyStatus::Denied(RejectStatus::AuthError(
                    AuthStat::RejectedCred,
                )));
            }
        };
        // Calls carry an AUTH_NONE verifier with the credentials served here (RFC 5531
        // section 8.2; Linux checks the same); any other is a bad verifier.
        if h.verf.flavor != flavor::AUTH_NONE {
            debug!(xid, flavor = h.verf.flavor, "unsupported verifier flavour");
            return send(ReplyStatus::Denied(RejectStatus::AuthError(
                AuthStat::BadVerf,
            )));
        }
        let Some(prog) = self.programs.get(&h.prog) else {
            return send(ReplyStatus::accepted(AcceptStatus::ProgUnavail));
        };
        if !prog.has_version(h.vers) {
            let (low, high) = prog.versions();
            return send(ReplyStatus::accepted(AcceptStatus::ProgMismatch {
                low,
                high,
            }));
        }
        let ctx = CallContext {
            peer,
            local,
            transport,
            xid,
            prog: h.prog,
            vers: h.vers,
            proc_: h.proc_,
            cred,
            verf: h.verf.clone(),
            shared_args: match &args {
                Args::Borrowed(_) => None,
                Args::Shared(a) => Some(a.clone()),
            },
        };
        let mut dec = Decoder::new(match &args {
            Args::Borrowed(b) => b,
            Args::Shared(a) => a.bytes(),
        });
        // A handler bug must cost one call, not the listener that serves everyone.
        match catch_unwind(AssertUnwindSafe(|| prog.call(&ctx, &mut dec))) {
            Ok(Ok(Reply::Now(body))) => Action::Send(result_msg(xid, Ok(body))),
            Ok(Ok(Reply::NowAfterHeader(mut msg))) if msg.len() >= SUCCESS_HEADER_LEN => {
                write_success_header(&mut msg, xid);
                Action::Send(msg)
            }
            Ok(Ok(Reply::NowAfterHeaderWithFile(mut msg, tail)))
                if msg.len() >= SUCCESS_HEADER_LEN =>
            {
                write_success_header(&mut msg, xid);
                Action::SendFile(msg, tail)
            }
            Ok(Ok(Reply::NowAfterHeader(_) | Reply::NowAfterHeaderWithFile(..))) => {
                error!(
                    prog = h.prog,
                    proc_ = h.proc_,
                    "results without room for the header"
                );
                send(ReplyStatus::accepted(AcceptStatus::SystemErr))
            }
            Ok(Ok(Reply::None)) => Action::Nothing,
            Ok(Ok(Reply::Later(rx))) => Action::Defer { xid, rx },
            Ok(Err(e)) => send(error_status(e)),
            Err(_) => {
                error!(
                    prog = h.prog,
                    vers = h.vers,
                    proc_ = h.proc_,
                    "RPC handler panicked"
                );
                send(ReplyStatus::accepted(AcceptStatus::SystemErr))
            }
        }
    }
}

/// A call's arguments as the transport has them: borrowed from its buffer, or in a record
/// it gave up to be shared ([`SharedArgs`]).
pub(super) enum Args<'a> {
    Borrowed(&'a [u8]),
    Shared(SharedArgs),
}
