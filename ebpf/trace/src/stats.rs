//! Summaries read back from the counter maps.

use std::time::Duration;

use lockfs_ebpf_common::{
    DIAG_MALFORMED, DIAG_MAP_FULL, DIAG_READ_FAILED, DIAG_RING_FULL, DIAG_WAIT_UNMATCHED,
    HIST_BUCKETS,
};

/// Log2 histogram of wait times, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitHistogram {
    /// `buckets[i]` counts waits of `[2^i, 2^(i+1))` ns (bucket 0 includes 0 ns).
    pub buckets: [u64; HIST_BUCKETS as usize],
}

impl WaitHistogram {
    /// Total number of waits counted.
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `[low, high)` bounds of bucket `i`.
    pub fn bucket_bounds(i: usize) -> (Duration, Duration) {
        let low = if i == 0 { 0 } else { 1u64 << i.min(63) };
        let high = if i >= 63 { u64::MAX } else { 1u64 << (i + 1) };
        (Duration::from_nanos(low), Duration::from_nanos(high))
    }

    /// Non-empty buckets as `(low, high, count)`.
    pub fn non_empty(&self) -> impl Iterator<Item = (Duration, Duration, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                let (lo, hi) = Self::bucket_bounds(i);
                (lo, hi, *c)
            })
    }
}

/// Input the programs had to drop or could not match, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// Events dropped because the ring buffer was full (counters still count them).
    pub ring_full: u64,
    /// Probe events that could not be read from the daemon's memory.
    pub read_failed: u64,
    /// Probe events with invalid fields.
    pub malformed: u64,
    /// Wait ends whose start was never seen.
    pub wait_unmatched: u64,
    /// Insertions refused because the files or waiters map was full.
    pub map_full: u64,
}

impl Diagnostics {
    pub(crate) fn from_slots(slots: &[u64]) -> Self {
        let get = |i: u32| slots.get(i as usize).copied().unwrap_or(0);
        Diagnostics {
            ring_full: get(DIAG_RING_FULL),
            read_failed: get(DIAG_READ_FAILED),
            malformed: get(DIAG_MALFORMED),
            wait_unmatched: get(DIAG_WAIT_UNMATCHED),
            map_full: get(DIAG_MAP_FULL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_powers_of_two() {
        assert_eq!(
            WaitHistogram::bucket_bounds(0),
            (Duration::ZERO, Duration::from_nanos(2))
        );
        assert_eq!(
            WaitHistogram::bucket_bounds(27),
            (Duration::from_nanos(1 << 27), Duration::from_nanos(1 << 28))
        );
        let mut h = WaitHistogram {
            buckets: [0; HIST_BUCKETS as usize],
        };
        h.buckets[27] = 2;
        h.buckets[3] = 1;
        assert_eq!(h.total(), 3);
        let v: Vec<_> = h.non_empty().map(|(_, _, c)| c).collect();
        assert_eq!(v, vec![1, 2]);
    }
}
