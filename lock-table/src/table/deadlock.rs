//! Deadlock detection: whether a waiting request would close a cycle of
//! owners waiting for each other.

use super::LockTable;
use crate::ids::{FileId, LockKind, Owner};
use crate::range::Range;
use rustc_hash::FxHashSet;
use smallvec::SmallVec;

/// Bound on the owners visited by one deadlock search; past it the search
/// gives up and reports no deadlock (as Linux bounds its walk).
const DEADLOCK_SEARCH_LIMIT: usize = 4096;

impl LockTable {
    /// Whether a request by `selves[0]` that is blocked on `file` would
    /// close a cycle in the wait-for graph: the owners holding the
    /// conflicting locks wait (transitively) for the requester. Only held
    /// locks make edges; OFD and flock owners are not followed, as in Linux.
    pub(super) fn would_deadlock(
        &self,
        selves: &[Owner],
        file: FileId,
        range: Range,
        kind: LockKind,
    ) -> bool {
        let Some(f) = self.files.get(&file) else {
            return false;
        };
        let mut stack: SmallVec<[Owner; 8]> = SmallVec::new();
        f.holdings
            .conflicting_owners(range, kind, selves, &mut stack);
        let mut visited: FxHashSet<Owner> = FxHashSet::default();
        while let Some(o) = stack.pop() {
            if selves.contains(&o) {
                return true;
            }
            if !o.kind.detects_deadlock() || !visited.insert(o) {
                continue;
            }
            if visited.len() > DEADLOCK_SEARCH_LIMIT {
                return false;
            }
            let Some(entry) = self.owners.get(&o) else {
                continue;
            };
            for wid in &entry.waiters {
                let Some(w) = self.waiters.get(wid) else {
                    continue;
                };
                if let Some(wf) = self.files.get(&w.file) {
                    wf.holdings
                        .conflicting_owners(w.range, w.kind, &w.selves(), &mut stack);
                }
            }
        }
        false
    }
}
