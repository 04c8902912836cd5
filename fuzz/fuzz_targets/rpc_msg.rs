//! RPC messages (RFC 5531): a call header with its credential and verifier, an AUTH_SYS
//! body, and a reply header. Whatever is accepted re-encodes to exactly the bytes it came
//! from; the cheap routing peek agrees with the full decoders.
#![no_main]

mod common;

use common::canonical;
use libfuzzer_sys::fuzz_target;
use lockd_user::rpc::{
    peek_xid_and_type, AuthSys, CallDecodeError, CallHeader, Credential, OpaqueAuth, ReplyHeader,
};
use lockd_user::xdr::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let peek = peek_xid_and_type(data);

    let mut d = Decoder::new(data);
    match CallHeader::decode(&mut d) {
        Ok(h) => {
            assert_eq!(peek, Some((h.xid, true)));
            let mut enc = Encoder::new();
            h.encode(&mut enc);
            assert_eq!(
                enc.as_slice(),
                &data[..d.position()],
                "call header re-encodes"
            );
            assert_eq!(
                h.to_message(d.rest()),
                data,
                "header plus arguments rebuild the call"
            );
            match Credential::parse(&h.cred) {
                Ok(Credential::Sys(s)) => {
                    assert_eq!(canonical::<AuthSys>(&h.cred.body).as_ref(), Some(&s));
                    assert_eq!(s.to_opaque(), h.cred, "AUTH_SYS body carries nothing else");
                }
                Ok(Credential::None) => assert_eq!(h.cred.flavor, 0),
                Ok(Credential::Other(o)) => assert_eq!(o, h.cred),
                Err(_) => assert_eq!(h.cred.flavor, 1, "only AUTH_SYS bodies are parsed"),
            }
        }
        Err(CallDecodeError::NotACall(t)) => {
            assert_eq!(peek.map(|p| p.1), if t == 1 { Some(false) } else { None });
        }
        Err(CallDecodeError::BadAuth { xid, .. }) => assert_eq!(peek, Some((xid, true))),
        Err(CallDecodeError::Header(_)) => {
            assert!(data.len() < 24, "a 24-byte prefix is always a header");
        }
    }

    let mut d = Decoder::new(data);
    if let Ok(r) = ReplyHeader::decode(&mut d) {
        assert_eq!(peek, Some((r.xid, false)));
        let mut enc = Encoder::new();
        r.encode(&mut enc);
        assert_eq!(
            enc.as_slice(),
            &data[..d.position()],
            "reply header re-encodes"
        );
    }

    canonical::<OpaqueAuth>(data);
    canonical::<AuthSys>(data);
});
