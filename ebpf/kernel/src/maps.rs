//! The maps, declared as BTF maps so `bpftool map dump` prints field names.

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use lockfs_ebpf_common::{
    FileKey, FileStats, LockEvent, WaiterEntry, WaiterKey, DIAG_SLOTS, EVENTS_RING_BYTES,
    HIST_BUCKETS, MAX_FILES, MAX_WAITERS,
};

#[btf_map(name = "lfs_events")]
pub static EVENTS: RingBuf<LockEvent, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

#[btf_map(name = "lfs_files")]
pub static FILES: PerCpuHashMap<FileKey, FileStats, { MAX_FILES as usize }> = PerCpuHashMap::new();

#[btf_map(name = "lfs_wait_hist")]
pub static WAIT_HIST: PerCpuArray<u64, { HIST_BUCKETS as usize }> = PerCpuArray::new();

#[btf_map(name = "lfs_waiters")]
pub static WAITERS: HashMap<WaiterKey, WaiterEntry, { MAX_WAITERS as usize }> = HashMap::new();

#[btf_map(name = "lfs_diag")]
pub static DIAG: PerCpuArray<u64, { DIAG_SLOTS as usize }> = PerCpuArray::new();

/// Bumps a diagnostic counter.
#[inline(always)]
pub fn diag(slot: u32) {
    if let Some(p) = DIAG.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of a preallocated array; nothing else on this
        // CPU runs while the program does.
        unsafe { *p += 1 };
    }
}

/// Applies `f` to this CPU's counters of `key`, creating them if needed.
#[inline(always)]
pub fn with_file_stats(key: &FileKey, f: impl FnOnce(&mut FileStats)) {
    let mut p = FILES.get_ptr_mut(key);
    if p.is_none() {
        if FILES.insert(key, FileStats::default(), 0).is_err() {
            diag(lockfs_ebpf_common::DIAG_MAP_FULL);
            return;
        }
        p = FILES.get_ptr_mut(key);
    }
    if let Some(p) = p {
        // SAFETY: this CPU's copy of a per-CPU hash value; the program runs
        // with preemption disabled, so no one else writes it meanwhile.
        f(unsafe { &mut *p });
    }
}

/// Counts one finished wait of `ns` nanoseconds in the histogram.
#[inline(always)]
pub fn hist_add(ns: u64) {
    let bucket = lockfs_ebpf_common::hist_bucket(ns);
    if let Some(p) = WAIT_HIST.get_ptr_mut(bucket) {
        // SAFETY: per-CPU slot of a preallocated array.
        unsafe { *p += 1 };
    }
}
