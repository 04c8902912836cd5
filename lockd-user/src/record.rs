//! TCP record marking (RFC 5531 section 11).
//!
//! On a stream, each RPC message is a record made of fragments; each fragment starts with a
//! four-byte header whose top bit marks the last fragment and whose other 31 bits give the
//! fragment length. A peer can announce up to 2 GiB per fragment and any number of
//! fragments, so the reader enforces a maximum record size before it reserves memory: a
//! record that would exceed it is an error and the caller closes the connection.

use bytes::BufMut;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The record-mark bit of the last fragment of a record.
pub const LAST_FRAGMENT: u32 = 0x8000_0000;
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
    /// Unfinished records of all connections together would hold more than the shared
    /// budget ([`RecordBudget`]).
    #[error("unfinished records would exceed the shared budget of {limit} bytes")]
    OverBudget { limit: usize },
}

/// Bytes of unfinished records (received, not yet complete) that all the connections of a
/// server may hold together. A connection holds its first [`RecordBudget::FREE_PER_RECORD`]
/// bytes of a record without charge, so ordinary calls (NLM and NSM calls are a few
/// kilobytes at most) never touch the budget; only what lies beyond is charged, as it
/// arrives, and given back when the record completes or the connection closes.
///
/// Memory freed by large records goes back to the system: glibc keeps freed blocks of
/// many threads' arenas for reuse, so after large records are released the allocator is
/// asked to return free pages, at most once per [`RecordBudget::TRIM_DELAY`].
#[derive(Debug)]
pub struct RecordBudget {
    limit: usize,
    used: AtomicUsize,
    trim_pending: AtomicBool,
}

impl RecordBudget {
    /// Bytes of a record held without charge.
    pub const FREE_PER_RECORD: usize = 16 * 1024;
    /// How long after a release the allocator is asked to return free memory.
    pub const TRIM_DELAY: Duration = Duration::from_millis(200);

    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            trim_pending: AtomicBool::new(false),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn charge(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn release(self: &Arc<Self>, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
        if self.trim_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    tokio::time::sleep(Self::TRIM_DELAY).await;
                    me.trim_pending.store(false, Ordering::Release);
                    return_free_memory();
                });
            }
            Err(_) => {
                self.trim_pending.store(false, Ordering::Release);
                return_free_memory();
            }
        }
    }
}

/// Asks the allocator to give free memory back to the system.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
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

/// Reassembles records from a stream into buffers kept from one record to the next, for a
/// server connection that reads many small records: after the first few, no record costs an
/// allocation, and several records that arrive in one read are taken without another read.
///
/// Bytes come in through [`RecordReader::spare`] and [`RecordReader::filled`]; complete
/// records come out of [`RecordReader::next_record`]. Like [`read_record`], it checks the
/// size a fragment header announces against the limit before it keeps any of its bytes.
#[derive(Debug)]
pub struct RecordReader {
    input: Box<[u8]>,
    /// Unparsed received bytes are `input[pos..end]`.
    pos: usize,
    end: usize,
    record: Vec<u8>,
    max_record: usize,
    /// Bytes still to come of the fragment being read, if one is.
    fragment: Option<(usize, bool)>,
    /// The previous call returned `record`, which must be cleared before reuse.
    returned: bool,
    budget: Option<Arc<RecordBudget>>,
    /// Bytes of the current record charged to `budget`.
    charged: usize,
    /// A fragment header of the record being assembled was received (an empty
    /// non-final fragment adds no bytes but still begins a record).
    begun: bool,
    /// While the rest of a large fragment is read straight into `record`.
    direct: Option<Direct>,
}

/// A large fragment read straight into the record: `record` holds the `filled` bytes
/// received so far (its length), its capacity the whole fragment, which ends at `end`.
/// The room beyond is never zeroed: a read fills it in place (see
/// [`RecordReader::read_from`]); zeroing a megabyte before each WRITE's data landed on
/// it took an eighth of the server's CPU with 16 writers.
#[derive(Debug, Clone, Copy)]
struct Direct {
    filled: usize,
    end: usize,
}

/// How much room [`RecordReader::spare`] offers for a large fragment at a time, zeroed.
/// The whole fragment's capacity is reserved at once (address space, not memory, until
/// written), but only received bytes are charged to the budget.
const DIRECT_STEP: usize = 256 * 1024;

impl Drop for RecordReader {
    fn drop(&mut self) {
        self.uncharge();
    }
}

/// A reassembly buffer larger than this is given back after its record.
pub const KEEP_RECORD_CAPACITY: usize = 64 * 1024;

impl RecordReader {
    /// A reader refusing records over `max_record` bytes that reads up to `read_size` bytes
    /// at a time (at least 16).
    pub fn new(max_record: usize, read_size: usize) -> Self {
        Self {
            input: vec![0u8; read_size.max(16)].into_boxed_slice(),
            pos: 0,
            end: 0,
            record: Vec::new(),
            max_record,
            fragment: None,
            returned: false,
            budget: None,
            charged: 0,
            begun: false,
            direct: None,
        }
    }

    /// Charges the bytes of unfinished records beyond the free allowance to `budget`.
    pub fn with_budget(mut self, budget: Arc<RecordBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    fn uncharge(&mut self) {
        if let Some(b) = &self.budget {
            b.release(std::mem::take(&mut self.charged));
        }
    }

    /// Makes room in the budget for the record to grow to `len` bytes.
    fn reserve(&mut self, len: usize) -> Result<(), RecordError> {
        let Some(b) = &self.budget else {
            return Ok(());
        };
        let need = len
            .saturating_sub(RecordBudget::FREE_PER_RECORD)
            .saturating_sub(self.charged);
        if need == 0 {
            return Ok(());
        }
        if !b.charge(need) {
            return Err(RecordError::OverBudget { limit: b.limit });
        }
        self.charged += need;
        Ok(())
    }

    /// The next complete record among the bytes received so far, or `None` until more bytes
    /// arrive. The slice stays valid until the next call.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>, RecordError> {
        if self.returned {
            self.returned = false;
            self.uncharge();
            self.record.clear();
            if self.record.capacity() > KEEP_RECORD_CAPACITY {
                self.record.shrink_to(KEEP_RECORD_CAPACITY);
            }
        }
        loop {
            let (left, last) = match self.fragment {
                Some(f) => f,
                None => {
                    if self.end - self.pos < 4 {
                        return Ok(None);
                    }
                    let h = &self.input[self.pos..self.pos + 4];
                    let word = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                    self.pos += 4;
                    self.begun = true;
                    let len = (word & !LAST_FRAGMENT) as usize;
                    let total = self.record.len() + len;
                    if total > self.max_record {
                        return Err(RecordError::TooLarge {
                            size: total,
                            limit: self.max_record,
                        });
                    }
                    (len, word & LAST_FRAGMENT != 0)
                }
            };
            if let Some(d) = self.direct {
                // The fragment's bytes go straight into the record (see `read_from`).
                self.reserve(d.filled)?;
                if d.filled < d.end {
                    return Ok(None);
                }
                self.direct = None;
            } else {
                let take = left.min(self.end - self.pos);
                self.reserve(self.record.len() + take)?;
                self.record
                    .extend_from_slice(&self.input[self.pos..self.pos + take]);
                self.pos += take;
                if take < left {
                    let rest = left - take;
                    self.fragment = Some((rest, last));
                    // A large rest is read into the record itself, in reads as large as
                    // the kernel gives, instead of input-sized pieces copied over and a
                    // buffer that grows by doubling.
                    if rest >= self.input.len() {
                        let filled = self.record.len();
                        self.record.reserve_exact(rest);
                        self.direct = Some(Direct {
                            filled,
                            end: filled + rest,
                        });
                    }
                    return Ok(None);
                }
            }
            self.fragment = None;
            if last {
                self.returned = true;
                self.begun = false;
                return Ok(Some(&self.record));
            }
        }
    }

    /// Moves out the record [`Self::next_record`] just returned, for a caller that hands
    /// it on rather than copy it; the next record is read into a buffer of the reader's
    /// own. A record larger than [`KEEP_RECORD_CAPACITY`] costs no more this way: the
    /// reader would not have kept its buffer anyway.
    pub fn take_record(&mut self) -> Vec<u8> {
        if !self.returned {
            return Vec::new();
        }
        std::mem::take(&mut self.record)
    }

    /// Where the next read should put its bytes; call [`Self::filled`] with the count.
    /// Only valid after [`Self::next_record`] returned `None`, so at most a partial
    /// fragment header is left over and the space is never empty. For a large fragment the
    /// room is zeroed first: [`Self::read_from`] reads without that.
    pub fn spare(&mut self) -> &mut [u8] {
        if let Some(d) = self.direct {
            self.record.resize((d.filled + DIRECT_STEP).min(d.end), 0);
            return &mut self.record[d.filled..];
        }
        self.input_room()
    }

    /// The input buffer's free end, with the unparsed bytes moved to its start.
    fn input_room(&mut self) -> &mut [u8] {
        if self.pos > 0 {
            self.input.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        &mut self.input[self.end..]
    }

    /// Records that `n` bytes were read into [`Self::spare`].
    pub fn filled(&mut self, n: usize) {
        if let Some(d) = &mut self.direct {
            d.filled = (d.filled + n).min(self.record.len());
            self.record.truncate(d.filled);
            return;
        }
        self.end = (self.end + n).min(self.input.len());
    }

    /// Reads what `r` has (at least one byte, or 0 at its end) into the reader, as
    /// [`Self::spare`] and [`Self::filled`] do, but a large fragment's bytes land in the
    /// record's unused capacity without zeroing it first. Cancel-safe: bytes read are
    /// always recorded.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        // `read_buf` appends to the record itself; `filled` then finds it grown by `n`.
        let n = match self.direct {
            Some(d) => {
                r.read_buf(&mut (&mut self.record).limit(d.end - d.filled))
                    .await?
            }
            None => r.read(self.input_room()).await?,
        };
        self.filled(n);
        Ok(n)
    }

    /// [`Self::read_from`] for a TCP stream, without waiting: `WouldBlock` when it has
    /// nothing.
    pub fn try_read_from(&mut self, s: &tokio::net::TcpStream) -> io::Result<usize> {
        let n = match self.direct {
            Some(d) => s.try_read_buf(&mut (&mut self.record).limit(d.end - d.filled))?,
            None => s.try_read(self.input_room())?,
        };
        self.filled(n);
        Ok(n)
    }

    /// Whether the stream may end here: nothing of a further record was received.
    pub fn between_records(&self) -> bool {
        self.fragment.is_none() && self.pos == self.end && !self.begun
    }
}

/// Frames `payload` as one record split into fragments of at most `max_fragment` bytes.
pub fn encode_record(payload: &[u8], max_fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record_into(&mut out, payload, max_fragment);
    out
}

/// Like [`encode_record`], appending to `out` (whose capacity a caller can reuse).
pub fn encode_record_into(out: &mut Vec<u8>, payload: &[u8], max_fragment: usize) {
    let max_fragment = max_fragment.clamp(1, MAX_FRAGMENT);
    let nfrag = payload.len().div_ceil(max_fragment).max(1);
    out.reserve(payload.len() + 4 * nfrag);
    let mut chunks = payload.chunks(max_fragment).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&LAST_FRAGMENT.to_be_bytes());
        return;
    }
    while let Some(chunk) = chunks.next() {
        let mut word = chunk.len() as u32;
        if chunks.peek().is_none() {
            word |= LAST_FRAGMENT;
        }
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(chunk);
    }
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

    /// Found by the record-marking fuzz target: a stream ending after an empty
    /// non-final fragment had begun a record, yet was taken for a clean end.
    #[test]
    fn an_empty_non_final_fragment_begins_a_record() {
        let mut r = RecordReader::new(100, 16);
        let spare = r.spare();
        spare[..8].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0]);
        r.filled(8);
        assert_eq!(r.next_record().unwrap(), Some(&[][..]));
        assert_eq!(r.next_record().unwrap(), None);
        assert!(!r.between_records(), "a record was begun and not finished");
        let mut s: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            rt().block_on(read_record(&mut s, 100)),
            Err(RecordError::Truncated)
        ));
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

    /// Feeds `wire` to a reader `chunk` bytes per read; returns the records and whether the
    /// stream ended between records.
    fn reassemble(
        wire: &[u8],
        chunk: usize,
        max: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), RecordError> {
        let mut rr = RecordReader::new(max, 16);
        let mut out = Vec::new();
        let mut rest = wire;
        loop {
            while let Some(rec) = rr.next_record()? {
                out.push(rec.to_vec());
            }
            if rest.is_empty() {
                return Ok((out, rr.between_records()));
            }
            let spare = rr.spare();
            assert!(!spare.is_empty());
            let n = chunk.min(spare.len()).min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            rr.filled(n);
            rest = &rest[n..];
        }
    }

    #[test]
    fn reader_reassembles_records_split_anywhere() {
        let payloads: Vec<Vec<u8>> = vec![
            (0..100u32).map(|i| i as u8).collect(),
            Vec::new(),
            vec![9; 37],
            (0..64u32).map(|i| (i * 7) as u8).collect(),
        ];
        let mut wire = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            wire.extend(encode_record(p, [1000, 7, 1, 3][i]));
        }
        for chunk in 1..=wire.len() {
            let (got, clean) = reassemble(&wire, chunk, 100).unwrap();
            assert_eq!(got, payloads, "chunk {chunk}");
            assert!(clean, "chunk {chunk}");
        }
    }

    #[test]
    fn reader_refuses_oversized_records_and_sees_truncation() {
        // One fragment announcing more than the limit, before any of its bytes arrive.
        let r = reassemble(&[0x80, 0, 0, 101], 4, 100);
        assert!(matches!(
            r,
            Err(RecordError::TooLarge {
                size: 101,
                limit: 100
            })
        ));
        // Fragments that add up past the limit.
        let wire = encode_record(&[7u8; 100], 10);
        assert!(matches!(
            reassemble(&wire, 5, 99),
            Err(RecordError::TooLarge {
                size: 100,
                limit: 99
            })
        ));
        // A stream cut inside a record is not between records, at any cut.
        let wire = encode_record(&[1, 2, 3, 4, 5, 6], 4);
        for cut in 1..wire.len() {
            let (got, clean) = reassemble(&wire[..cut], 3, 100).unwrap();
            assert!(got.is_empty() && !clean, "cut at {cut}");
        }
        // A record far larger than the read buffer, and the buffer it needed is given back.
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = encode_record(&big, 70_000);
        wire.extend(encode_record(b"next", 100));
        let mut rr = RecordReader::new(1 << 20, 4096);
        let mut rest = &wire[..];
        let mut got = Vec::new();
        while got.len() < 2 {
            while let Some(rec) = rr.next_record().unwrap() {
                got.push(rec.to_vec());
            }
            if got.len() < 2 {
                let spare = rr.spare();
                let n = spare.len().min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                rr.filled(n);
                rest = &rest[n..];
            }
        }
        assert_eq!(got, vec![big, b"next".to_vec()]);
        assert!(rr.record.capacity() <= KEEP_RECORD_CAPACITY);
    }

    #[test]
    fn a_record_taken_out_is_whole_and_the_next_is_read_apart() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut wire = encode_record(&big, 100_000);
        wire.extend(encode_record(b"small", 100));
        wire.extend(encode_record(&big[..70_000], 100_000));
        let mut rr = RecordReader::new(1 << 20, 4096);
        assert!(
            rr.take_record().is_empty(),
            "nothing returned yet, nothing taken"
        );
        let mut rest = &wire[..];
        let mut taken = Vec::new();
        while taken.len() < 3 {
            while let Some(rec) = rr.next_record().unwrap() {
                let copy = rec.to_vec();
                let owned = rr.take_record();
                assert_eq!(owned, copy, "the taken record is the one returned");
                taken.push(owned);
            }
            if taken.len() < 3 {
                let spare = rr.spare();
                let n = spare.len().min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                rr.filled(n);
                rest = &rest[n..];
            }
        }
        assert_eq!(
            taken,
            vec![big.clone(), b"small".to_vec(), big[..70_000].to_vec()]
        );
    }

    #[test]
    fn large_fragments_are_read_straight_into_the_record() {
        // Two records of two fragments each, the large ones arriving in big reads: the
        // reader offers room past its input buffer's size, and every byte lands in place.
        let payload = |seed: u8, n: usize| -> Vec<u8> {
            (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
        };
        let (p1, p2) = (payload(1, 700_000), payload(2, 300_001));
        let mut wire = encode_record(&p1, 400_000);
        wire.extend(encode_record(&p2, 1 << 20));
        let mut rr = RecordReader::new(1 << 20, 4096);
        let mut out = Vec::new();
        let mut rest = &wire[..];
        let mut largest_room = 0;
        loop {
            while let Some(r) = rr.next_record().unwrap() {
                out.push(r.to_vec());
            }
            if rest.is_empty() {
                break;
            }
            let spare = rr.spare();
            largest_room = largest_room.max(spare.len());
            // Reads of uneven sizes, as a socket gives them.
            let n = spare.len().min(rest.len()).min(100_003);
            spare[..n].copy_from_slice(&rest[..n]);
            rr.filled(n);
            rest = &rest[n..];
        }
        assert_eq!(out.len(), 2);
        assert!(
            out[0] == p1 && out[1] == p2,
            "records reassembled byte for byte"
        );
        assert_eq!(
            largest_room, DIRECT_STEP,
            "large fragments are read in large pieces"
        );
        assert!(rr.between_records());
    }

    /// Gives at most `step` bytes per read, as a socket does.
    struct Trickle<'a> {
        rest: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = self.rest.len().min(self.step).min(buf.remaining());
            buf.put_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn reads_from_a_stream_fill_large_records_in_place() {
        // A large record in two fragments, a small one and another large one, back to back
        // on a stream that gives uneven reads: each record comes out whole, no byte of the
        // next one is taken into the record before it, and a large fragment's room is its
        // whole rest, read without zeroing (the record never holds more than it received).
        let payload = |seed: u8, n: usize| -> Vec<u8> {
            (0..n).map(|i| (i as u8).wrapping_mul(29) ^ seed).collect()
        };
        let (p1, p2, p3) = (payload(1, 1 << 20), payload(2, 9), payload(3, 500_001));
        let mut wire = encode_record(&p1, 600_000);
        wire.extend(encode_record(&p2, 1 << 20));
        wire.extend(encode_record(&p3, 1 << 20));
        for step in [4093usize, 65_536, 300_007, 1 << 21] {
            let mut src = Trickle { rest: &wire, step };
            let mut rr = RecordReader::new(2 << 20, 16 * 1024);
            let mut out = Vec::new();
            rt().block_on(async {
                loop {
                    while let Some(r) = rr.next_record().unwrap() {
                        out.push(r.to_vec());
                    }
                    if let Some(d) = rr.direct {
                        assert_eq!(rr.record.len(), d.filled, "only received bytes are in it");
                    }
                    if rr.read_from(&mut src).await.unwrap() == 0 {
                        break;
                    }
                }
            });
            assert_eq!(out.len(), 3, "reads of {step}");
            assert!(
                out[0] == p1 && out[1] == p2 && out[2] == p3,
                "records reassembled byte for byte with reads of {step}"
            );
            assert!(rr.between_records());
        }
    }

    #[test]
    fn unfinished_records_share_a_budget_and_give_it_back() {
        let budget = Arc::new(RecordBudget::new(200_000));
        let free = RecordBudget::FREE_PER_RECORD;
        let feed = |rr: &mut RecordReader, bytes: &[u8]| -> Result<Vec<Vec<u8>>, RecordError> {
            let mut out = Vec::new();
            let mut rest = bytes;
            loop {
                while let Some(r) = rr.next_record()? {
                    out.push(r.to_vec());
                }
                if rest.is_empty() {
                    return Ok(out);
                }
                let spare = rr.spare();
                let n = spare.len().min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                rr.filled(n);
                rest = &rest[n..];
            }
        };
        // Small records never touch the budget.
        let mut a = RecordReader::new(1 << 20, 4096).with_budget(budget.clone());
        assert_eq!(
            feed(&mut a, &encode_record(&[1; 1000], 1 << 20))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(budget.used(), 0);
        // Two unfinished large records: charged beyond the free part, as bytes arrive.
        let big = encode_record(&vec![2u8; 200_000], 1 << 20);
        assert!(feed(&mut a, &big[..free + 60_000]).unwrap().is_empty());
        assert_eq!(budget.used(), 60_000 - 4);
        let mut b = RecordReader::new(1 << 20, 4096).with_budget(budget.clone());
        assert!(matches!(
            feed(&mut b, &big[..free + 150_000]),
            Err(RecordError::OverBudget { limit: 200_000 })
        ));
        drop(b);
        assert_eq!(
            budget.used(),
            60_000 - 4,
            "a refused reader gives back what it held"
        );
        // Completing a record gives its charge back; so does closing.
        assert_eq!(feed(&mut a, &big[free + 60_000..]).unwrap().len(), 1);
        assert!(a.next_record().unwrap().is_none());
        assert_eq!(budget.used(), 0);
        assert!(feed(&mut a, &big[..free + 50_000]).unwrap().is_empty());
        assert!(budget.used() > 0);
        drop(a);
        assert_eq!(budget.used(), 0);
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
