//! TCP record marking: the server's incremental reader ([`RecordReader`]) fed in arbitrary
//! pieces must find exactly the records, and the same end, as the one-shot reader
//! ([`read_record`]) over the same stream, and never hold a record over the limit; a
//! payload framed by [`encode_record`] must come back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockd_user::record::{encode_record, read_record, RecordError, RecordReader};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    Truncated,
    TooLarge,
}

/// A byte slice as a reader is always ready, so one poll finishes the future.
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("reading from a slice is never pending"),
    }
}

fn one_shot(mut stream: &[u8], max: usize) -> (Vec<Vec<u8>>, End) {
    let mut out = Vec::new();
    loop {
        match now(read_record(&mut stream, max)) {
            Ok(Some(r)) => {
                assert!(r.len() <= max);
                out.push(r);
            }
            Ok(None) => return (out, End::Clean),
            Err(RecordError::Truncated) => return (out, End::Truncated),
            Err(RecordError::TooLarge { size, limit }) => {
                assert!(size > limit && limit == max);
                return (out, End::TooLarge);
            }
            Err(RecordError::Io(e)) => panic!("I/O error from a slice: {e}"),
            Err(e @ RecordError::OverBudget { .. }) => panic!("no budget was given: {e}"),
        }
    }
}

fn incremental(stream: &[u8], max: usize, read_size: usize, pieces: &[u8]) -> (Vec<Vec<u8>>, End) {
    let mut r = RecordReader::new(max, read_size);
    let mut out = Vec::new();
    let mut at = 0;
    let mut piece = 0;
    loop {
        loop {
            match r.next_record() {
                Ok(Some(rec)) => {
                    assert!(rec.len() <= max);
                    out.push(rec.to_vec());
                }
                Ok(None) => break,
                Err(RecordError::TooLarge { .. }) => return (out, End::TooLarge),
                Err(e) => panic!("unexpected reader error {e}"),
            }
        }
        if at == stream.len() {
            let end = if r.between_records() {
                End::Clean
            } else {
                End::Truncated
            };
            return (out, end);
        }
        let spare = r.spare();
        assert!(!spare.is_empty(), "no room to read into");
        let want = match pieces.get(piece % pieces.len().max(1)) {
            Some(&p) => usize::from(p) + 1,
            None => spare.len(),
        };
        piece += 1;
        let n = want.min(spare.len()).min(stream.len() - at);
        spare[..n].copy_from_slice(&stream[at..at + n]);
        r.filled(n);
        at += n;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let max = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let read_size = usize::from(data[2]) * 4;
    let npieces = usize::from(data[3] % 8);
    let rest = &data[4..];
    let (pieces, stream) = rest.split_at(npieces.min(rest.len()));

    let a = one_shot(stream, max);
    let b = incremental(stream, max, read_size, pieces);
    assert_eq!(a, b, "the two readers disagree");

    // Framing round trip: the stream's bytes as a payload, in fragments of any size.
    let frag = usize::from(data[2]) + 1;
    let framed = encode_record(stream, frag);
    let limit = stream.len();
    let (recs, end) = one_shot(&framed, limit);
    assert_eq!((recs.as_slice(), end), (&[stream.to_vec()][..], End::Clean));
    let (recs, end) = incremental(&framed, limit, read_size, pieces);
    assert_eq!((recs.as_slice(), end), (&[stream.to_vec()][..], End::Clean));
    if limit > 0 {
        let (recs, end) = one_shot(&framed, limit - 1);
        assert!(recs.is_empty() && end == End::TooLarge);
    }
});
