//! Checks shared by the targets (each target uses some of them).
#![allow(dead_code)]

use lockd_user::xdr::{from_bytes, to_bytes, Decoder, XdrDecode, XdrEncode};
use std::fmt::Debug;

/// Decodes a `T` from the front of `bytes` as a server does (trailing bytes allowed). When it
/// is accepted, XDR being canonical (zero padding, strict booleans and enums), encoding the
/// value again must give exactly the bytes that were consumed, and those bytes alone must
/// decode to the same value.
pub fn canonical<T: XdrDecode + XdrEncode + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let mut d = Decoder::new(bytes);
    let v = T::decode(&mut d).ok()?;
    let used = d.position();
    let again = to_bytes(&v);
    assert_eq!(
        again,
        &bytes[..used],
        "re-encoding {v:?} differs from the bytes accepted"
    );
    assert_eq!(again.len() % 4, 0, "XDR is four-byte aligned");
    assert_eq!(from_bytes::<T>(&again).ok().as_ref(), Some(&v));
    if !again.is_empty() {
        assert!(
            from_bytes::<T>(&again[..again.len() - 1]).is_err(),
            "a truncated {v:?} was accepted"
        );
    }
    Some(v)
}

/// A selector byte and the rest of the input.
pub fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(a, b)| (*a, b))
}
