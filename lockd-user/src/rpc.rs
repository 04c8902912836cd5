//! ONC RPC version 2 messages (RFC 5531): call headers, credentials and replies.
//!
//! The server decodes call headers and encodes replies with these types; the client does the
//! reverse. Argument and result bodies stay opaque bytes here: they belong to the programs.

use crate::xdr::{Decoder, Encoder, XdrDecode, XdrEncode, XdrError};
use thiserror::Error;

/// The only RPC protocol version (RFC 5531 section 8).
pub const RPC_VERSION: u32 = 2;
/// Largest credential or verifier body (RFC 5531 section 8.2).
pub const MAX_AUTH_BYTES: usize = 400;
/// Largest AUTH_SYS machine name (RFC 5531 appendix A).
pub const AUTH_SYS_MAX_MACHINENAME: usize = 255;
/// Largest AUTH_SYS supplementary group list (RFC 5531 appendix A).
pub const AUTH_SYS_MAX_GIDS: usize = 16;

/// Authentication flavour numbers (RFC 5531 section 8.2); the set is open-ended, so these
/// are plain constants rather than an enum.
pub mod flavor {
    pub const AUTH_NONE: u32 = 0;
    pub const AUTH_SYS: u32 = 1;
    pub const AUTH_SHORT: u32 = 2;
    pub const AUTH_DH: u32 = 3;
    pub const RPCSEC_GSS: u32 = 6;
}

const MSG_CALL: u32 = 0;
const MSG_REPLY: u32 = 1;
const REPLY_ACCEPTED: u32 = 0;
const REPLY_DENIED: u32 = 1;

crate::xdr_enum! {
    /// Why a server refused a credential or verifier (`auth_stat`).
    pub enum AuthStat {
        Ok = 0,
        BadCred = 1,
        RejectedCred = 2,
        BadVerf = 3,
        RejectedVerf = 4,
        TooWeak = 5,
        InvalidResp = 6,
        Failed = 7,
        GssCredProblem = 13,
        GssCtxProblem = 14,
    }
}

/// A credential or verifier as sent: flavour and undecoded body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpaqueAuth {
    pub flavor: u32,
    pub body: Vec<u8>,
}

impl OpaqueAuth {
    /// AUTH_NONE with an empty body.
    pub fn none() -> Self {
        Self::default()
    }
}

impl XdrEncode for OpaqueAuth {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_u32(self.flavor);
        enc.put_opaque(&self.body);
    }
}

impl XdrDecode for OpaqueAuth {
    fn decode(dec: &mut Decoder<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            flavor: dec.get_u32()?,
            body: dec.get_opaque(MAX_AUTH_BYTES)?,
        })
    }
}

/// The body of an AUTH_SYS credential (`authsys_parms`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthSys {
    pub stamp: u32,
    pub machinename: String,
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl XdrEncode for AuthSys {
    fn encode(&self, enc: &mut Encoder) {
        enc.put_u32(self.stamp);
        enc.put_string(&self.machinename);
        enc.put_u32(self.uid);
        enc.put_u32(self.gid);
        enc.put_array(&self.gids);
    }
}

impl XdrDecode for AuthSys {
    fn decode(dec: &mut Decoder<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            stamp: dec.get_u32()?,
            machinename: dec.get_string(AUTH_SYS_MAX_MACHINENAME)?,
            uid: dec.get_u32()?,
            gid: dec.get_u32()?,
            gids: dec.get_array(AUTH_SYS_MAX_GIDS)?,
        })
    }
}

impl AuthSys {
    /// Wraps this body in an AUTH_SYS credential.
    pub fn to_opaque(&self) -> OpaqueAuth {
        OpaqueAuth {
            flavor: flavor::AUTH_SYS,
            body: crate::xdr::to_bytes(self),
        }
    }
}

/// A credential after the flavours lockd-user understands have been parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    Sys(AuthSys),
    /// A flavour this crate does not parse; the server rejects it, a program never sees it.
    Other(OpaqueAuth),
}

impl Credential {
    /// Parses the body of a known flavour. A malformed AUTH_SYS body is an error: the server
    /// answers it with AUTH_BADCRED.
    pub fn parse(auth: &OpaqueAuth) -> Result<Self, XdrError> {
        match auth.flavor {
            flavor::AUTH_NONE => Ok(Credential::None),
            flavor::AUTH_SYS => crate::xdr::from_bytes(&auth.body).map(Credential::Sys),
            _ => Ok(Credential::Other(auth.clone())),
        }
    }

    /// The AUTH_SYS machine name, if any.
    pub fn machinename(&self) -> Option<&str> {
        match self {
            Credential::Sys(s) => Some(&s.machinename),
            _ => None,
        }
    }
}

/// The fixed part of a call message (`call_body` plus xid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader {
    pub xid: u32,
    pub rpcvers: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred: OpaqueAuth,
    pub verf: OpaqueAuth,
}

/// Why a received message could not be taken as a call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CallDecodeError {
    /// Too short or malformed before the credential: nothing can be answered.
    #[error("malformed RPC call header: {0}")]
    Header(XdrError),
    /// The message is a reply, or of an unknown type.
    #[error("RPC message type {0} is not a call")]
    NotACall(u32),
    /// The header is fine but the credential or verifier is malformed: answer AUTH_BADCRED.
    #[error("malformed RPC credential or verifier in call {xid:#x}: {source}")]
    BadAuth { xid: u32, source: XdrError },
}

impl CallHeader {
    /// A version-2 call with the given credential and an AUTH_NONE verifier.
    pub fn new(xid: u32, prog: u32, vers: u32, proc_: u32, cred: OpaqueAuth) -> Self {
        Self {
            xid,
            rpcvers: RPC_VERSION,
            prog,
            vers,
            proc_,
            cred,
            verf: OpaqueAuth::none(),
        }
    }

    /// Decodes a call header; the decoder is left at the start of the arguments.
    pub fn decode(dec: &mut Decoder<'_>) -> Result<Self, CallDecodeError> {
        let h = CallDecodeError::Header;
        let xid = dec.get_u32().map_err(h)?;
        let mtype = dec.get_u32().map_err(h)?;
        if mtype != MSG_CALL {
            return Err(CallDecodeError::NotACall(mtype));
        }
        let rpcvers = dec.get_u32().map_err(h)?;
        let prog = dec.get_u32().map_err(h)?;
        let vers = dec.get_u32().map_err(h)?;
        let proc_ = dec.get_u32().map_err(h)?;
        let bad = |source| CallDecodeError::BadAuth { xid, source };
        let cred = OpaqueAuth::decode(dec).map_err(bad)?;
        let verf = OpaqueAuth::decode(dec).map_err(bad)?;
        Ok(Self {
            xid,
            rpcvers,
            prog,
            vers,
            proc_,
            cred,
            verf,
        })
    }

    /// Encodes the header; the arguments follow.
    pub fn encode(&self, enc: &mut Encoder) {
        enc.put_u32(self.xid);
        enc.put_u32(MSG_CALL);
        enc.put_u32(self.rpcvers);
        enc.put_u32(self.prog);
        enc.put_u32(self.vers);
        enc.put_u32(self.proc_);
        self.cred.encode(enc);
        self.verf.encode(enc);
    }

    /// A whole call message: header then the already-encoded arguments.
    pub fn to_message(&self, args: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::with_capacity(40 + self.cred.body.len() + args.len());
        self.encode(&mut enc);
        enc.put_raw(args);
        enc.into_inner()
    }
}

/// Outcome of an accepted call (`accept_stat` with its arms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStatus {
    /// Results follow the header.
    Success,
    ProgUnavail,
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
}

/// Why a call was denied (`rejected_reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectStatus {
    RpcMismatch { low: u32, high: u32 },
    AuthError(AuthStat),
}

/// The status part of a reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStatus {
    Accepted {
        verf: OpaqueAuth,
        stat: AcceptStatus,
    },
    Denied(RejectStatus),
}

impl ReplyStatus {
    /// An accepted reply with an AUTH_NONE verifier.
    pub fn accepted(stat: AcceptStatus) -> Self {
        ReplyStatus::Accepted {
            verf: OpaqueAuth::none(),
            stat,
        }
    }
}

/// A reply message without its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeader {
    pub xid: u32,
    pub status: ReplyStatus,
}

impl ReplyHeader {
    pub fn encode(&self, enc: &mut Encoder) {
        enc.put_u32(self.xid);
        enc.put_u32(MSG_REPLY);
        match &self.status {
            ReplyStatus::Accepted { verf, stat } => {
                enc.put_u32(REPLY_ACCEPTED);
                verf.encode(enc);
                match *stat {
                    AcceptStatus::Success => enc.put_u32(0),
                    AcceptStatus::ProgUnavail => enc.put_u32(1),
                    AcceptStatus::ProgMismatch { low, high } => {
                        enc.put_u32(2);
                        enc.put_u32(low);
                        enc.put_u32(high);
                    }
                    AcceptStatus::ProcUnavail => enc.put_u32(3),
                    AcceptStatus::GarbageArgs => enc.put_u32(4),
                    AcceptStatus::SystemErr => enc.put_u32(5),
                }
            }
            ReplyStatus::Denied(rej) => {
                enc.put_u32(REPLY_DENIED);
                match *rej {
                    RejectStatus::RpcMismatch { low, high } => {
                        enc.put_u32(0);
                        enc.put_u32(low);
                        enc.put_u32(high);
                    }
                    RejectStatus::AuthError(stat) => {
                        enc.put_u32(1);
                        stat.encode(enc);
                    }
                }
            }
        }
    }

    /// Decodes a reply header; on success the decoder is left at the results (which are
    /// present only for [`AcceptStatus::Success`]).
    pub fn decode(dec: &mut Decoder<'_>) -> Result<Self, XdrError> {
        let xid = dec.get_u32()?;
        let mtype = dec.get_u32()?;
        if mtype != MSG_REPLY {
            return Err(XdrError::InvalidEnum {
                name: "msg_type (expected REPLY)",
                value: i64::from(mtype),
            });
        }
        let status = match dec.get_u32()? {
            REPLY_ACCEPTED => {
                let verf = OpaqueAuth::decode(dec)?;
                let stat = match dec.get_u32()? {
                    0 => AcceptStatus::Success,
                    1 => AcceptStatus::ProgUnavail,
                    2 => AcceptStatus::ProgMismatch {
                        low: dec.get_u32()?,
                        high: dec.get_u32()?,
                    },
                    3 => AcceptStatus::ProcUnavail,
                    4 => AcceptStatus::GarbageArgs,
                    5 => AcceptStatus::SystemErr,
                    v => {
                        return Err(XdrError::InvalidEnum {
                            name: "accept_stat",
                            value: i64::from(v),
                        })
                    }
                };
                ReplyStatus::Accepted { verf, stat }
            }
            REPLY_DENIED => ReplyStatus::Denied(match dec.get_u32()? {
                0 => RejectStatus::RpcMismatch {
                    low: dec.get_u32()?,
                    high: dec.get_u32()?,
                },
                1 => RejectStatus::AuthError(AuthStat::decode(dec)?),
                v => {
                    return Err(XdrError::InvalidEnum {
                        name: "reject_stat",
                        value: i64::from(v),
                    })
                }
            }),
            v => {
                return Err(XdrError::InvalidEnum {
                    name: "reply_stat",
                    value: i64::from(v),
                })
            }
        };
        Ok(Self { xid, status })
    }

    /// A whole reply message: header then the already-encoded results.
    pub fn to_message(&self, results: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::with_capacity(24 + results.len());
        self.encode(&mut enc);
        enc.put_raw(results);
        enc.into_inner()
    }
}

/// The length of a successful reply's header with the empty verifier this server sends:
/// xid, message type, reply status, verifier flavour and length, accept status.
pub const SUCCESS_HEADER_LEN: usize = 24;

/// Writes the header of a successful reply to `xid` into the first
/// [`SUCCESS_HEADER_LEN`] bytes of `msg`, which the results follow: a large reply then
/// needs no copy behind its header.
///
/// # Panics
/// If `msg` is shorter than the header, a bug of the caller's.
pub fn write_success_header(msg: &mut [u8], xid: u32) {
    let mut enc = Encoder::with_capacity(SUCCESS_HEADER_LEN);
    ReplyHeader {
        xid,
        status: ReplyStatus::accepted(AcceptStatus::Success),
    }
    .encode(&mut enc);
    debug_assert_eq!(enc.len(), SUCCESS_HEADER_LEN);
    msg[..SUCCESS_HEADER_LEN].copy_from_slice(enc.as_slice());
}

/// Reads the xid and message type without decoding further, so a transport can route a
/// message (a reply to a waiting call, a call to the dispatcher) cheaply.
pub fn peek_xid_and_type(msg: &[u8]) -> Option<(u32, bool)> {
    let mut d = Decoder::new(msg);
    let xid = d.get_u32().ok()?;
    match d.get_u32().ok()? {
        MSG_CALL => Some((xid, true)),
        MSG_REPLY => Some((xid, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::{from_bytes, to_bytes};

    #[test]
    fn call_round_trip_with_auth_sys() {
        let sys = AuthSys {
            stamp: 7,
            machinename: "client.example".into(),
            uid: 1000,
            gid: 100,
            gids: vec![4, 24, 27],
        };
        let call = CallHeader::new(0xdead_beef, 100021, 4, 2, sys.to_opaque());
        // A success header written in place is the one `to_message` puts in front.
        let mut framed = vec![0u8; SUCCESS_HEADER_LEN];
        framed.extend_from_slice(&[1, 2, 3, 4]);
        write_success_header(&mut framed, 77);
        let whole = ReplyHeader {
            xid: 77,
            status: ReplyStatus::accepted(AcceptStatus::Success),
        }
        .to_message(&[1, 2, 3, 4]);
        assert_eq!(framed, whole);
        let msg = call.to_message(&[0, 0, 0, 9]);
        let mut d = Decoder::new(&msg);
        let back = CallHeader::decode(&mut d).unwrap();
        assert_eq!(back, call);
        assert_eq!(d.rest(), &[0, 0, 0, 9]);
        assert_eq!(Credential::parse(&back.cred).unwrap(), Credential::Sys(sys));
        assert_eq!(peek_xid_and_type(&msg), Some((0xdead_beef, true)));
    }

    #[test]
    fn auth_sys_limits() {
        let mut sys = AuthSys {
            machinename: "h".repeat(256),
            ..Default::default()
        };
        assert!(matches!(
            from_bytes::<AuthSys>(&to_bytes(&sys)),
            Err(XdrError::TooLong { len: 256, max: 255 })
        ));
        sys.machinename = "h".into();
        sys.gids = (0..17).collect();
        assert!(matches!(
            from_bytes::<AuthSys>(&to_bytes(&sys)),
            Err(XdrError::TooLong { len: 17, max: 16 })
        ));
        let oversized = OpaqueAuth {
            flavor: flavor::AUTH_SYS,
            body: vec![0; 401],
        };
        let call = CallHeader::new(5, 1, 1, 1, oversized);
        let msg = call.to_message(&[]);
        assert!(matches!(
            CallHeader::decode(&mut Decoder::new(&msg)),
            Err(CallDecodeError::BadAuth { xid: 5, .. })
        ));
    }

    #[test]
    fn every_reply_status_round_trips() {
        let statuses = [
            ReplyStatus::accepted(AcceptStatus::Success),
            ReplyStatus::accepted(AcceptStatus::ProgUnavail),
            ReplyStatus::accepted(AcceptStatus::ProgMismatch { low: 1, high: 4 }),
            ReplyStatus::accepted(AcceptStatus::ProcUnavail),
            ReplyStatus::accepted(AcceptStatus::GarbageArgs),
            ReplyStatus::accepted(AcceptStatus::SystemErr),
            ReplyStatus::Denied(RejectStatus::RpcMismatch { low: 2, high: 2 }),
            ReplyStatus::Denied(RejectStatus::AuthError(AuthStat::TooWeak)),
        ];
        for (i, status) in statuses.into_iter().enumerate() {
            let h = ReplyHeader {
                xid: i as u32,
                status,
            };
            let msg = h.to_message(&[1, 2, 3, 4]);
            let mut d = Decoder::new(&msg);
            assert_eq!(ReplyHeader::decode(&mut d).unwrap(), h);
            assert_eq!(d.rest(), &[1, 2, 3, 4]);
        }
    }

    #[test]
    fn known_reply_bytes() {
        // PROG_MISMATCH 1..4 for xid 1, checked byte by byte against RFC 5531's layout.
        let h = ReplyHeader {
            xid: 1,
            status: ReplyStatus::accepted(AcceptStatus::ProgMismatch { low: 1, high: 4 }),
        };
        let words: Vec<u32> = to_bytes_words(&h.to_message(&[]));
        assert_eq!(words, vec![1, 1, 0, 0, 0, 2, 1, 4]);
        let h = ReplyHeader {
            xid: 2,
            status: ReplyStatus::Denied(RejectStatus::AuthError(AuthStat::RejectedCred)),
        };
        assert_eq!(to_bytes_words(&h.to_message(&[])), vec![2, 1, 1, 1, 2]);
    }

    fn to_bytes_words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            CallHeader::decode(&mut Decoder::new(&[0, 0, 0, 1, 0, 0])),
            Err(CallDecodeError::Header(_))
        ));
        assert!(matches!(
            CallHeader::decode(&mut Decoder::new(&[0, 0, 0, 1, 0, 0, 0, 1])),
            Err(CallDecodeError::NotACall(1))
        ));
        assert!(
            ReplyHeader::decode(&mut Decoder::new(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9])).is_err()
        );
        let _ = to_bytes(&OpaqueAuth::none());
    }
}
