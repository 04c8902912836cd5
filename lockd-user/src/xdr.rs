//! XDR (RFC 4506) encoding and decoding.
//!
//! Every byte that reaches lockd-user from the network passes through [`Decoder`], so it is
//! written to fail cleanly: each read is bounds-checked, variable-length items carry a
//! caller-given maximum, and no read allocates more than the input that is actually left.
//! [`Encoder`] appends to a `Vec<u8>` and cannot fail; length limits are the decoder's job
//! (values that were decoded already respect them, values built locally are trusted).

use thiserror::Error;

/// Why a piece of XDR could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XdrError {
    /// The input ended before the item did.
    #[error("XDR input truncated: needed {needed} bytes, {remaining} left")]
    Truncated { needed: usize, remaining: usize },
    /// A variable-length item announced more than its maximum.
    #[error("XDR length {len} exceeds the maximum {max}")]
    TooLong { len: usize, max: usize },
    /// A boolean was neither 0 nor 1.
    #[error("XDR boolean has invalid value {0}")]
    InvalidBool(u32),
    /// An enum discriminant is not one of the declared values.
    #[error("XDR enum {name} has unknown value {value}")]
    InvalidEnum { name: &'static str, value: i64 },
    /// A string is not valid UTF-8.
    #[error("XDR string is not valid UTF-8")]
    InvalidUtf8,
    /// Padding bytes after an opaque or string were not zero.
    #[error("XDR padding is not zero")]
    NonZeroPadding,
    /// Bytes were left after a complete item where none were expected.
    #[error("{0} unexpected trailing bytes after XDR item")]
    TrailingBytes(usize),
}

/// Number of zero bytes that pad `len` up to a multiple of four.
#[inline]
pub const fn padding(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

/// Appends XDR items to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// A new, empty encoder.
    pub fn new() -> Self {
        Self { buf: Vec::new() }
    }

    /// A new encoder with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap),
        }
    }

    /// Continues encoding after the bytes already in `buf`.
    pub fn from_vec(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// The encoded bytes, borrowed.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    pub fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn put_i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn put_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn put_i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn put_bool(&mut self, v: bool) {
        self.put_u32(u32::from(v));
    }

    /// Fixed-length opaque: the bytes and their padding, no length word.
    pub fn put_fixed_opaque(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(&[0u8; 3][..padding(data.len())]);
    }

    /// Variable-length opaque: length word, bytes, padding.
    ///
    /// # Panics
    /// Never in practice: XDR cannot express more than `u32::MAX` bytes, and a caller that
    /// builds such a value has a bug that no peer can trigger.
    pub fn put_opaque(&mut self, data: &[u8]) {
        let len = u32::try_from(data.len()).expect("XDR opaque longer than 4 GiB");
        self.put_u32(len);
        self.put_fixed_opaque(data);
    }

    /// Variable-length opaque of at most `max` bytes that `fill` writes in place, so a large
    /// body (a READ's data) is produced where it is sent from, with no copy and no zeroing.
    /// `fill` returns how many bytes it wrote; on its error nothing is appended.
    ///
    /// # Safety
    /// `fill` must have initialised the first `n` bytes of the slice it is given when it
    /// returns `Ok(n)`, and `n` must not exceed the slice's length.
    pub unsafe fn put_opaque_in_place<E>(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [std::mem::MaybeUninit<u8>]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let at = self.buf.len();
        self.buf.reserve(4 + max + 3);
        self.put_u32(0);
        let n = match fill(&mut self.buf.spare_capacity_mut()[..max]) {
            Ok(n) => n.min(max),
            Err(e) => {
                self.buf.truncate(at);
                return Err(e);
            }
        };
        // SAFETY: the caller's contract: `fill` initialised the first `n <= max` spare
        // bytes, which `reserve` made part of the allocation.
        unsafe { self.buf.set_len(at + 4 + n) };
        self.buf[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
        self.buf.extend_from_slice(&[0u8; 3][..padding(n)]);
        Ok(n)
    }

    /// Drops everything written after the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// Replaces the `len` bytes at `at` with `with` (of any length): fills in a part whose
    /// content is known only after what follows it was written.
    ///
    /// # Panics
    /// If `at + len` is past the bytes written, a bug of the caller's.
    pub fn replace(&mut self, at: usize, len: usize, with: &[u8]) {
        if with.len() == len {
            self.buf[at..at + len].copy_from_slice(with);
        } else {
            self.buf.splice(at..at + len, with.iter().copied());
        }
    }

    /// A string is a variable-length opaque of its UTF-8 bytes.
    pub fn put_string(&mut self, s: &str) {
        self.put_opaque(s.as_bytes());
    }

    /// Raw bytes that are already XDR (for example a result body encoded elsewhere).
    pub fn put_raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Variable-length array: count word, then each element.
    pub fn put_array<T: XdrEncode>(&mut self, items: &[T]) {
        let len = u32::try_from(items.len()).expect("XDR array longer than 4 G elements");
        self.put_u32(len);
        for item in items {
            item.encode(self);
        }
    }

    /// Optional data (`T *`): a boolean, then the value when present.
    pub fn put_option<T: XdrEncode>(&mut self, item: Option<&T>) {
        match item {
            Some(v) => {
                self.put_bool(true);
                v.encode(self);
            }
            None => self.put_bool(false),
        }
    }

    /// Encodes any [`XdrEncode`] value.
    pub fn put<T: XdrEncode + ?Sized>(&mut self, v: &T) {
        v.encode(self);
    }
}

/// Reads XDR items from a byte slice, never past its end.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unconsumed bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Fails unless every byte has been consumed.
    pub fn finish(&self) -> Result<(), XdrError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(XdrError::TrailingBytes(n)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(XdrError::Truncated {
                needed: n,
                remaining,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn take4(&mut self) -> Result<[u8; 4], XdrError> {
        let s = self.take(4)?;
        Ok([s[0], s[1], s[2], s[3]])
    }

    pub fn get_u32(&mut self) -> Result<u32, XdrError> {
        Ok(u32::from_be_bytes(self.take4()?))
    }

    pub fn get_i32(&mut self) -> Result<i32, XdrError> {
        Ok(i32::from_be_bytes(self.take4()?))
    }

    pub fn get_u64(&mut self) -> Result<u64, XdrError> {
        let hi = u64::from(self.get_u32()?);
        let lo = u64::from(self.get_u32()?);
        Ok((hi << 32) | lo)
    }

    pub fn get_i64(&mut self) -> Result<i64, XdrError> {
        Ok(self.get_u64()? as i64)
    }

    pub fn get_bool(&mut self) -> Result<bool, XdrError> {
        match self.get_u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(XdrError::InvalidBool(v)),
        }
    }

    fn skip_padding(&mut self, len: usize) -> Result<(), XdrError> {
        let pad = self.take(padding(len))?;
        if pad.iter().any(|&b| b != 0) {
            return Err(XdrError::NonZeroPadding);
        }
        Ok(())
    }

    /// Fixed-length opaque of exactly `len` bytes (plus padding), borrowed from the input.
    pub fn get_fixed_opaque(&mut self, len: usize) -> Result<&'a [u8], XdrError> {
        let data = self.take(len)?;
        self.skip_padding(len)?;
        Ok(data)
    }

    /// Fixed-length opaque into an array, as in `opaque priv[16]`.
    pub fn get_fixed_array<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let data = self.get_fixed_opaque(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(data);
        Ok(out)
    }

    /// Variable-length opaque of at most `max` bytes, borrowed from the input.
    pub fn get_opaque_ref(&mut self, max: usize) -> Result<&'a [u8], XdrError> {
        let len = self.get_u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        self.get_fixed_opaque(len)
    }

    /// Variable-length opaque of at most `max` bytes, copied.
    pub fn get_opaque(&mut self, max: usize) -> Result<Vec<u8>, XdrError> {
        self.get_opaque_ref(max).map(<[u8]>::to_vec)
    }

    /// A string of at most `max` bytes that must be UTF-8.
    pub fn get_string(&mut self, max: usize) -> Result<String, XdrError> {
        let bytes = self.get_opaque_ref(max)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| XdrError::InvalidUtf8)
    }

    /// Variable-length array of at most `max` elements.
    pub fn get_array<T: XdrDecode>(&mut self, max: usize) -> Result<Vec<T>, XdrError> {
        let len = self.get_u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        // Every XDR item takes at least four bytes, so a count the input cannot hold is
        // rejected before anything is allocated for it.
        if len > self.remaining() / 4 {
            return Err(XdrError::Truncated {
                needed: len.saturating_mul(4),
                remaining: self.remaining(),
            });
        }
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(T::decode(self)?);
        }
        Ok(out)
    }

    /// Optional data (`T *`).
    pub fn get_option<T: XdrDecode>(&mut self) -> Result<Option<T>, XdrError> {
        if self.get_bool()? {
            Ok(Some(T::decode(self)?))
        } else {
            Ok(None)
        }
    }

    /// A linked list written as repeated optional data (as in `pmaplist`), at most `max` long.
    pub fn get_list<T: XdrDecode>(&mut self, max: usize) -> Result<Vec<T>, XdrError> {
        let mut out = Vec::new();
        while self.get_bool()? {
            if out.len() == max {
                return Err(XdrError::TooLong { len: max + 1, max });
            }
            out.push(T::decode(self)?);
        }
        Ok(out)
    }

    /// Decodes any [`XdrDecode`] value.
    pub fn get<T: XdrDecode>(&mut self) -> Result<T, XdrError> {
        T::decode(self)
    }
}

/// A value with an XDR form.
pub trait XdrEncode {
    fn encode(&self, enc: &mut Encoder);
}

/// A value that can be read from XDR; implementations apply the protocol's limits.
pub trait XdrDecode: Sized {
    fn decode(dec: &mut Decoder<'_>) -> Result<Self, XdrError>;
}

/// Encodes a value into a fresh vector.
pub fn to_bytes<T: XdrEncode + ?Sized>(v: &T) -> Vec<u8> {
    let mut enc = Encoder::new();
    v.encode(&mut enc);
    enc.into_inner()
}

/// Decodes a value that must span all of `bytes`.
pub fn from_bytes<T: XdrDecode>(bytes: &[u8]) -> Result<T, XdrError> {
    let mut dec = Decoder::new(bytes);
    let v = T::decode(&mut dec)?;
    dec.finish()?;
    Ok(v)
}

macro_rules! scalar {
    ($t:ty, $put:ident, $get:ident) => {
        impl XdrEncode for $t {
            fn encode(&self, enc: &mut Encoder) {
                enc.$put(*self);
            }
        }
        impl XdrDecode for $t {
            fn decode(dec: &mut Decoder<'_>) -> Result<Self, XdrError> {
                dec.$get()
            }
        }
    };
}

scalar!(u32, put_u32, get_u32);
scalar!(i32, put_i32, get_i32);
scalar!(u64, put_u64, get_u64);
scalar!(i64, put_i64, get_i64);
scalar!(bool, put_bool, get_bool);

/// `void`: encodes to nothing, so `()` can stand for procedures without arguments or results.
impl XdrEncode for () {
    fn encode(&self, _enc: &mut Encoder) {}
}

impl XdrDecode for () {
    fn decode(_dec: &mut Decoder<'_>) -> Result<Self, XdrError> {
        Ok(())
    }
}

impl<T: XdrEncode + ?Sized> XdrEncode for &T {
    fn encode(&self, enc: &mut Encoder) {
        (**self).encode(enc);
    }
}

/// Declares a C-like XDR enum: the Rust enum, its discriminants and both codec directions.
/// Unknown discriminants decode to [`XdrError::InvalidEnum`].
#[macro_export]
#[doc(hidden)]
macro_rules! xdr_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $var:ident = $val:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        $vis enum $name { $($(#[$vm])* $var = $val),+ }

        impl $name {
            /// Every declared value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The discriminant as sent on the wire.
            pub fn to_wire(self) -> i32 {
                self as i32
            }

            /// The variant for a wire value.
            pub fn from_wire(v: i32) -> Result<Self, $crate::xdr::XdrError> {
                match v {
                    $(x if x == $val => Ok($name::$var),)+
                    other => Err($crate::xdr::XdrError::InvalidEnum {
                        name: stringify!($name),
                        value: i64::from(other),
                    }),
                }
            }
        }

        impl $crate::xdr::XdrEncode for $name {
            fn encode(&self, enc: &mut $crate::xdr::Encoder) {
                enc.put_i32(*self as i32);
            }
        }

        impl $crate::xdr::XdrDecode for $name {
            fn decode(dec: &mut $crate::xdr::Decoder<'_>) -> Result<Self, $crate::xdr::XdrError> {
                Self::from_wire(dec.get_i32()?)
            }
        }
    };
}

/// Declares a struct whose XDR form is its fields in order, each with a codec:
/// `[xdr]` (the field's own [`XdrEncode`]/[`XdrDecode`]), `[opaque MAX]`, `[string MAX]`,
/// `[fixed N]` (an `[u8; N]`), or `[array MAX]` (a `Vec` of XDR items).
#[macro_export]
#[doc(hidden)]
macro_rules! xdr_struct {
    ($(#[$m:meta])* $vis:vis struct $name:ident {
        $($(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty [$($codec:tt)+]),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis struct $name { $($(#[$fm])* $fvis $field: $ty),* }

        impl $crate::xdr::XdrEncode for $name {
            fn encode(&self, enc: &mut $crate::xdr::Encoder) {
                $($crate::xdr_field_encode!(enc, &self.$field, $($codec)+);)*
            }
        }

        impl $crate::xdr::XdrDecode for $name {
            fn decode(dec: &mut $crate::xdr::Decoder<'_>) -> Result<Self, $crate::xdr::XdrError> {
                Ok(Self { $($field: $crate::xdr_field_decode!(dec, $($codec)+)?,)* })
            }
        }
    };
}

#[macro_export]
#[doc(hidden)]
macro_rules! xdr_field_encode {
    ($enc:ident, $v:expr, xdr) => {
        $crate::xdr::XdrEncode::encode($v, $enc)
    };
    ($enc:ident, $v:expr, opaque $max:expr) => {
        $enc.put_opaque($v)
    };
    ($enc:ident, $v:expr, string $max:expr) => {
        $enc.put_string($v)
    };
    ($enc:ident, $v:expr, fixed $n:expr) => {
        $enc.put_fixed_opaque(&$v[..])
    };
    ($enc:ident, $v:expr, array $max:expr) => {
        $enc.put_array($v)
    };
}

#[macro_export]
#[doc(hidden)]
macro_rules! xdr_field_decode {
    ($dec:ident, xdr) => {
        $crate::xdr::XdrDecode::decode($dec)
    };
    ($dec:ident, opaque $max:expr) => {
        $dec.get_opaque($max)
    };
    ($dec:ident, string $max:expr) => {
        $dec.get_string($max)
    };
    ($dec:ident, fixed $n:expr) => {
        $dec.get_fixed_array::<{ $n }>()
    };
    ($dec:ident, array $max:expr) => {
        $dec.get_array($max)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    xdr_enum! {
        enum Colour { Red = 0, Green = 1, Blue = 7 }
    }

    #[test]
    fn scalars_are_big_endian() {
        let mut e = Encoder::new();
        e.put_u32(0x0102_0304);
        e.put_i32(-2);
        e.put_u64(0x0102_0304_0506_0708);
        e.put_i64(-1);
        e.put_bool(true);
        let b = e.into_inner();
        assert_eq!(&b[0..4], &[1, 2, 3, 4]);
        assert_eq!(&b[4..8], &[0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[16..24], &[0xff; 8]);
        assert_eq!(&b[24..28], &[0, 0, 0, 1]);
        let mut d = Decoder::new(&b);
        assert_eq!(d.get_u32().unwrap(), 0x0102_0304);
        assert_eq!(d.get_i32().unwrap(), -2);
        assert_eq!(d.get_u64().unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(d.get_i64().unwrap(), -1);
        assert!(d.get_bool().unwrap());
        d.finish().unwrap();
    }

    #[test]
    fn opaque_written_in_place_is_framed_and_padded() {
        let mut e = Encoder::new();
        e.put_u32(7);
        // SAFETY: the closure initialises exactly the 5 bytes it reports.
        let n = unsafe {
            e.put_opaque_in_place(100, |buf| {
                for (i, b) in buf[..5].iter_mut().enumerate() {
                    b.write(b'a' + i as u8);
                }
                Ok::<_, ()>(5)
            })
        };
        assert_eq!(n, Ok(5));
        assert_eq!(e.as_slice(), b"\0\0\0\x07\0\0\0\x05abcde\0\0\0");
        // A failed fill leaves nothing behind.
        // SAFETY: the closure reports no bytes.
        let r = unsafe { e.put_opaque_in_place(100, |_| Err::<usize, _>("no")) };
        assert_eq!(r, Err("no"));
        assert_eq!(e.len(), 16);
        // A part filled in afterwards, of the same length or shorter.
        e.replace(0, 4, &9u32.to_be_bytes());
        assert_eq!(&e.as_slice()[..4], &[0, 0, 0, 9]);
        e.replace(0, 8, &[1, 2, 3, 4]);
        assert_eq!(e.as_slice(), b"\x01\x02\x03\x04abcde\0\0\0");
        e.truncate(4);
        assert_eq!(e.len(), 4);
    }

    #[test]
    fn opaque_is_padded_and_checked() {
        let mut e = Encoder::new();
        e.put_opaque(b"abcde");
        e.put_string("xy");
        e.put_fixed_opaque(b"z");
        let b = e.into_inner();
        assert_eq!(b.len(), 4 + 8 + 4 + 4 + 4);
        assert_eq!(
            &b[..12],
            &[0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]
        );
        let mut d = Decoder::new(&b);
        assert_eq!(d.get_opaque(5).unwrap(), b"abcde");
        assert_eq!(d.get_string(2).unwrap(), "xy");
        assert_eq!(d.get_fixed_opaque(1).unwrap(), b"z");
        d.finish().unwrap();

        let mut d = Decoder::new(&b);
        assert_eq!(d.get_opaque(4), Err(XdrError::TooLong { len: 5, max: 4 }));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            Decoder::new(&[0, 0, 1]).get_u32(),
            Err(XdrError::Truncated {
                needed: 4,
                remaining: 3
            })
        ));
        assert_eq!(
            Decoder::new(&[0, 0, 0, 2]).get_bool(),
            Err(XdrError::InvalidBool(2))
        );
        // Announces 0xffff_fff0 bytes but holds four: must fail without allocating.
        assert!(matches!(
            Decoder::new(&[0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4]).get_opaque(usize::MAX),
            Err(XdrError::Truncated { .. })
        ));
        assert!(matches!(
            Decoder::new(&[0xff, 0xff, 0xff, 0xf0]).get_array::<u32>(usize::MAX),
            Err(XdrError::Truncated { .. })
        ));
        assert_eq!(
            Decoder::new(&[0, 0, 0, 1, b'a', 0, 1, 0]).get_opaque(8),
            Err(XdrError::NonZeroPadding)
        );
        assert_eq!(
            Decoder::new(&[0, 0, 0, 1, 0xff, 0, 0, 0]).get_string(8),
            Err(XdrError::InvalidUtf8)
        );
        assert_eq!(
            from_bytes::<u32>(&[0, 0, 0, 1, 0]),
            Err(XdrError::TrailingBytes(1))
        );
    }

    #[test]
    fn enums_round_trip_and_reject_unknown() {
        assert_eq!(Colour::Blue.to_wire(), 7);
        for c in Colour::ALL {
            assert_eq!(from_bytes::<Colour>(&to_bytes(c)).unwrap(), *c);
        }
        assert_eq!(
            from_bytes::<Colour>(&[0, 0, 0, 2]),
            Err(XdrError::InvalidEnum {
                name: "Colour",
                value: 2
            })
        );
    }

    #[test]
    fn arrays_lists_and_options() {
        let mut e = Encoder::new();
        e.put_array(&[1u32, 2, 3]);
        e.put_option(Some(&9u64));
        e.put_option::<u64>(None);
        // A pmaplist-style linked list of two items.
        e.put_bool(true);
        e.put_u32(5);
        e.put_bool(true);
        e.put_u32(6);
        e.put_bool(false);
        let b = e.into_inner();
        let mut d = Decoder::new(&b);
        assert_eq!(d.get_array::<u32>(3).unwrap(), vec![1, 2, 3]);
        assert_eq!(d.get_option::<u64>().unwrap(), Some(9));
        assert_eq!(d.get_option::<u64>().unwrap(), None);
        let mut l = d.clone();
        assert_eq!(d.get_list::<u32>(2).unwrap(), vec![5, 6]);
        d.finish().unwrap();
        assert!(matches!(
            l.get_list::<u32>(1),
            Err(XdrError::TooLong { .. })
        ));
        assert!(matches!(
            Decoder::new(&b).get_array::<u32>(2),
            Err(XdrError::TooLong { len: 3, max: 2 })
        ));
    }
}
