//! TCP record marking (RFC 5531 section 11).
//!
//! On a stream, each RPC message is a record made of fragments; each fragment starts with a
//! four-byte header whose top bit marks the last fragment and whose other 31 bits give the
//! fragment length. A peer can announce up to 2 GiB per fragment and any number of
//! fragments, so the reader enforces a maximum record size before it reserves memory: a
//! record that would exceed it is an error and the caller closes the connection.

use std::io;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const LAST_FRAGMENT: u32 = 0x8000_0000;
/// Largest fragment length the header can express.
pub const MAX_FRAGMENT: usize = 0x7fff_ffff;

/// Why a record could not be read.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("record of at least {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("connection closed in the middle of a record")]
    Truncated,
    #[error("I/O error reading a record: {0}")]
    Io(#[from] io::Error),
}

/// Reads one complete record, reassembling its fragments.
///
/// Returns `Ok(None)` on a clean end of stream between records. Memory grows only with bytes
/// actually received and never beyond `max_record`.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max_record: usize,
) -> Result<Option<Vec<u8>>, RecordError> {
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut hdr = [0u8; 4];
        match read_full(r, &mut hdr).await? {
            0 if first => return Ok(None),
            4 => {}
            _ => return Err(RecordError::Truncated),
        }
        first = false;
        let word = u32::from_be_bytes(hdr);
        let len = (word & !LAST_FRAGMENT) as usize;
        let total = out.len() + len;
        if total > max_record {
            return Err(RecordError::TooLarge {
                size: total,
                limit: max_record,
            });
        }
        let start = out.len();
        out.resize(total, 0);
        if read_full(r, &mut out[start..]).await? != len {
            return Err(RecordError::Truncated);
        }
        if word & LAST_FRAGMENT != 0 {
            return Ok(Some(out));
        }
    }
}

/// Fills `buf` unless the stream ends first; returns the number of bytes read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Frames `payload` as one record split into fragments of at most `max_fragment` bytes.
pub fn encode_record(payload: &[u8], max_fragment: usize) -> Vec<u8> {
    let max_fragment = max_fragment.clamp(1, MAX_FRAGMENT);
    let nfrag = payload.len().div_ceil(max_fragment).max(1);
    let mut out = Vec::with_capacity(payload.len() + 4 * nfrag);
    let mut chunks = payload.chunks(max_fragment).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&LAST_FRAGMENT.to_be_bytes());
        return out;
    }
    while let Some(chunk) = chunks.next() {
        let mut word = chunk.len() as u32;
        if chunks.peek().is_none() {
            word |= LAST_FRAGMENT;
        }
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Writes `payload` as a single-fragment record (or several, if it exceeds 2 GiB) and
/// flushes, with one write call for the common case.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode_record(payload, MAX_FRAGMENT)).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn single_and_multi_fragment_round_trip() {
        rt().block_on(async {
            let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
            for frag in [1usize, 3, 7, 999, 1000, 5000] {
                let wire = encode_record(&payload, frag);
                let mut r: &[u8] = &wire;
                let got = read_record(&mut r, 1000).await.unwrap().unwrap();
                assert_eq!(got, payload, "fragment size {frag}");
                assert!(read_record(&mut r, 1000).await.unwrap().is_none());
            }
            let empty = encode_record(&[], 10);
            assert_eq!(empty, vec![0x80, 0, 0, 0]);
            let mut r: &[u8] = &empty;
            assert_eq!(
                read_record(&mut r, 0).await.unwrap().unwrap(),
                Vec::<u8>::new()
            );
        });
    }

    #[test]
    fn oversized_record_is_refused_before_allocation() {
        rt().block_on(async {
            // Announces a 2 GiB fragment with no data behind it.
            let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
            assert!(matches!(
                read_record(&mut r, 1 << 20).await,
                Err(RecordError::TooLarge {
                    size: 0x7fff_ffff,
                    ..
                })
            ));
            // Many small fragments that add up past the limit.
            let wire = encode_record(&[7u8; 100], 10);
            let mut r: &[u8] = &wire;
            assert!(matches!(
                read_record(&mut r, 99).await,
                Err(RecordError::TooLarge {
                    size: 100,
                    limit: 99
                })
            ));
        });
    }

    #[test]
    fn truncation_is_an_error() {
        rt().block_on(async {
            let wire = encode_record(&[1, 2, 3, 4, 5, 6], 4);
            for cut in 1..wire.len() {
                let mut r: &[u8] = &wire[..cut];
                assert!(
                    matches!(read_record(&mut r, 100).await, Err(RecordError::Truncated)),
                    "cut at {cut}"
                );
            }
        });
    }
}
