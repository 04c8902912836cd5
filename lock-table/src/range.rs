//! Byte ranges over the whole `u64` space, with an inclusive end.
//!
//! An inclusive end lets "to end of file" be the plain value `u64::MAX` and
//! keeps every range representable, including a lock on the very last byte.
//! Arithmetic that would step past `u64::MAX` is done with checked operations,
//! never `end + 1`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A non-empty byte range `[start, end]`, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Range {
    start: u64,
    end: u64,
}

/// A range that cannot be formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RangeError {
    #[error("range end {end} lies before its start {start}")]
    Reversed { start: u64, end: u64 },
    #[error("range starting at {start} with length {len} runs past the largest offset")]
    Overflow { start: u64, len: u64 },
}

impl Range {
    /// Every byte, as a whole-file lock covers.
    pub const WHOLE: Range = Range {
        start: 0,
        end: u64::MAX,
    };

    /// The range `[start, end]`.
    pub fn new(start: u64, end: u64) -> Result<Range, RangeError> {
        if end < start {
            return Err(RangeError::Reversed { start, end });
        }
        Ok(Range { start, end })
    }

    /// A range given as offset and length, where length 0 means "to end of
    /// file" (POSIX `l_len == 0`, NLM `l_len == 0`).
    pub fn from_len(start: u64, len: u64) -> Result<Range, RangeError> {
        if len == 0 {
            return Ok(Range::to_eof(start));
        }
        match start.checked_add(len - 1) {
            Some(end) => Ok(Range { start, end }),
            None => Err(RangeError::Overflow { start, len }),
        }
    }

    /// `[start, u64::MAX]`.
    pub const fn to_eof(start: u64) -> Range {
        Range {
            start,
            end: u64::MAX,
        }
    }

    #[inline]
    pub const fn start(&self) -> u64 {
        self.start
    }

    #[inline]
    pub const fn end(&self) -> u64 {
        self.end
    }

    /// Whether the range runs to the end of the offset space ("to EOF").
    #[inline]
    pub const fn is_to_eof(&self) -> bool {
        self.end == u64::MAX
    }

    /// The length, or 0 for a range that runs to end of file (the encoding
    /// POSIX and NLM use on the wire).
    pub const fn wire_len(&self) -> u64 {
        if self.end == u64::MAX {
            0
        } else {
            self.end - self.start + 1
        }
    }

    #[inline]
    pub const fn overlaps(&self, other: &Range) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    #[inline]
    pub const fn contains(&self, other: &Range) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    #[inline]
    pub const fn contains_offset(&self, off: u64) -> bool {
        self.start <= off && off <= self.end
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_to_eof() {
            write!(f, "{}-EOF", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn len_zero_is_to_eof() {
        let r = Range::from_len(10, 0).unwrap();
        assert_eq!(r.end(), u64::MAX);
        assert!(r.is_to_eof());
        assert_eq!(r.wire_len(), 0);
    }

    #[test]
    fn last_byte_is_representable() {
        let r = Range::from_len(u64::MAX, 1).unwrap();
        assert_eq!((r.start(), r.end()), (u64::MAX, u64::MAX));
        assert!(Range::from_len(u64::MAX, 2).is_err());
        assert_eq!(Range::from_len(1, u64::MAX).unwrap().end(), u64::MAX);
        assert!(Range::from_len(2, u64::MAX).is_err());
    }

    #[test]
    fn reversed_is_refused() {
        assert_eq!(
            Range::new(5, 4),
            Err(RangeError::Reversed { start: 5, end: 4 })
        );
    }

    #[test]
    fn overlap_and_containment() {
        let a = Range::new(0, 9).unwrap();
        let b = Range::new(9, 20).unwrap();
        let c = Range::new(10, 20).unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert!(Range::WHOLE.contains(&a));
        assert!(!a.contains(&b));
    }
}
