//! What a program sees of a call and how it answers: the interface between the transport
//! below and procedure logic above.

use super::Transport;
use crate::rpc::{AuthStat, Credential, OpaqueAuth};
use crate::xdr::{to_bytes, Decoder, XdrDecode, XdrEncode, XdrError};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::debug;

/// Everything a program may want to know about a call besides its arguments.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub transport: Transport,
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred: Credential,
    pub verf: OpaqueAuth,
    /// The call's arguments (the decoder's bytes) in the record they came in, when the
    /// transport can share it: a procedure finished on another thread takes them from
    /// here instead of copying them (a WRITE's data).
    pub shared_args: Option<SharedArgs>,
}

/// A call's arguments kept in the record that brought them, shared rather than copied.
#[derive(Clone)]
pub struct SharedArgs {
    record: Arc<Vec<u8>>,
    start: usize,
}

/// Their length, not their bytes: a context in a log line must not print a megabyte.
impl std::fmt::Debug for SharedArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArgs")
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl SharedArgs {
    /// The arguments at `start..` of `record` (none when `start` is past its end).
    pub fn new(record: Arc<Vec<u8>>, start: usize) -> Self {
        let start = start.min(record.len());
        Self { record, start }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.record[self.start..]
    }
}

/// Errors a program returns instead of a result; the server turns them into RPC replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProcError {
    #[error("procedure unavailable")]
    ProcUnavail,
    #[error("arguments could not be decoded")]
    GarbageArgs,
    #[error("system error")]
    SystemErr,
    /// Reject the caller's credential (for example AUTH_TOOWEAK when AUTH_SYS is required).
    #[error("authentication error: {0:?}")]
    Auth(AuthStat),
}

impl From<XdrError> for ProcError {
    fn from(_: XdrError) -> Self {
        ProcError::GarbageArgs
    }
}

/// Decodes a procedure's arguments, mapping failure to GARBAGE_ARGS. Trailing bytes after
/// the arguments are tolerated, as most RPC implementations do.
pub fn decode_args<T: XdrDecode>(args: &mut Decoder<'_>) -> Result<T, ProcError> {
    T::decode(args).map_err(|e| {
        debug!(error = %e, "garbage arguments");
        ProcError::GarbageArgs
    })
}

/// Runs a procedure written as a plain function from decoded arguments to results:
/// undecodable arguments become GARBAGE_ARGS, the result is encoded and sent now.
pub fn handle<A: XdrDecode, R: XdrEncode>(
    args: &mut Decoder<'_>,
    f: impl FnOnce(A) -> R,
) -> Result<Reply, ProcError> {
    let a = decode_args(args)?;
    Ok(Reply::encode(&f(a)))
}

/// Runs a message-passing procedure (one that sends no reply, such as NLM `*_MSG`).
pub fn handle_silent<A: XdrDecode>(
    args: &mut Decoder<'_>,
    f: impl FnOnce(A),
) -> Result<Reply, ProcError> {
    let a = decode_args(args)?;
    f(a);
    Ok(Reply::None)
}

/// How a program answers a call.
#[derive(Debug)]
pub enum Reply {
    /// Send these already-encoded results now.
    Now(Vec<u8>),
    /// Send now the results that follow [`crate::rpc::SUCCESS_HEADER_LEN`] bytes of room
    /// for the reply's header, which is written there instead of copying the results
    /// behind it (for large results: a READ's megabyte).
    NowAfterHeader(Vec<u8>),
    /// As [`Reply::NowAfterHeader`], the results ending with the length of an opaque whose
    /// bytes are those of a file: the transport sends them from the page cache (on TCP by
    /// `sendfile`) rather than have them copied into the reply and again into the socket.
    NowAfterHeaderWithFile(Vec<u8>, FileTail),
    /// Send nothing (message-passing procedures such as NLM `*_MSG` and `*_RES`).
    None,
    /// The answer comes later through the matching [`ReplySender`].
    Later(oneshot::Receiver<Result<Vec<u8>, ProcError>>),
}

/// The bytes of an open file that end a reply, with the XDR padding after them.
#[derive(Debug)]
pub struct FileTail {
    pub fd: Arc<OwnedFd>,
    pub offset: u64,
    pub len: usize,
}

impl FileTail {
    /// Zero bytes after the data, to a multiple of four.
    pub fn pad(&self) -> usize {
        (4 - self.len % 4) % 4
    }

    /// Appends the bytes and their padding to `out`, for a transport that cannot send
    /// from a file; an error if the file no longer has them all.
    pub fn read_into(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        out.resize(start + self.len, 0);
        let mut done = 0;
        while done < self.len {
            let buf = &mut out[start + done..];
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::pread(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    (self.offset + done as u64) as libc::off_t,
                )
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                n => done += n as usize,
            }
        }
        out.resize(out.len() + self.pad(), 0);
        Ok(())
    }
}

impl Reply {
    /// Encodes `v` as the results to send now.
    pub fn encode<T: XdrEncode + ?Sized>(v: &T) -> Self {
        Reply::Now(to_bytes(v))
    }

    /// A reply to be given later, and the handle that gives it.
    pub fn deferred() -> (Self, ReplySender) {
        let (tx, rx) = oneshot::channel();
        (Reply::Later(rx), ReplySender { tx })
    }
}

/// Sends a deferred reply. Dropping it without sending means no reply at all (and, on UDP,
/// a retransmission of the call is handled afresh).
#[derive(Debug)]
pub struct ReplySender {
    tx: oneshot::Sender<Result<Vec<u8>, ProcError>>,
}

impl ReplySender {
    /// Sends already-encoded results; false if the server or connection is gone.
    pub fn send(self, results: Vec<u8>) -> bool {
        self.tx.send(Ok(results)).is_ok()
    }

    /// Encodes and sends results.
    pub fn send_encoded<T: XdrEncode + ?Sized>(self, v: &T) -> bool {
        self.send(to_bytes(v))
    }

    /// Answers with an RPC-level error.
    pub fn fail(self, e: ProcError) -> bool {
        self.tx.send(Err(e)).is_ok()
    }

    /// True once nobody waits for the reply any more.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// An RPC program served by the server.
pub trait RpcProgram: Send + Sync + 'static {
    /// The program number.
    fn program(&self) -> u32;
    /// Lowest and highest supported versions, as reported in PROG_MISMATCH.
    fn versions(&self) -> (u32, u32);
    /// Whether a version inside the range is really served (NLM serves 1, 3 and 4, not 2).
    fn has_version(&self, vers: u32) -> bool {
        let (low, high) = self.versions();
        (low..=high).contains(&vers)
    }
    /// Handles one call; `ctx.vers` is a supported version. Unknown procedures must return
    /// [`ProcError::ProcUnavail`], undecodable arguments [`ProcError::GarbageArgs`].
    fn call(&self, ctx: &CallContext, args: &mut Decoder<'_>) -> Result<Reply, ProcError>;
}
