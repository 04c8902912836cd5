//! The soak test's checker, independent of the clients: it reads only the event log
//! the clients and the killer wrote (one event a line, client-side timestamps) and
//! proves from it that
//!
//! - no two conflicting locks were ever held at once from the clients' point of view:
//!   a lock counts as held from the moment its GRANTED reply was received until its
//!   UNLOCK was sent (the server's own hold contains that interval, so an overlap
//!   here is an overlap on the server), across restarts for as long as the client
//!   believed it held it;
//! - every lock held at a kill was reclaimed after it (RECLAIMED), none was lost.
//!
//! Log lines: `T_NS CLIENT KIND FILE START LEN EXCL`, KIND one of GRANT, RELEASE,
//! RECLAIMED, LOST, or `T_NS - KILL` / `T_NS - RESTARTED` from the killer.

use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone, Copy)]
struct Held {
    client: u32,
    file: u32,
    start: u64,
    /// Exclusive end (`u64::MAX` for "to end of file").
    end: u64,
    exclusive: bool,
    from: u64,
    until: u64,
}

impl Held {
    fn conflicts(&self, o: &Held) -> bool {
        self.client != o.client
            && self.file == o.file
            && (self.exclusive || o.exclusive)
            && self.start < o.end
            && o.start < self.end
            && self.from < o.until
            && o.from < self.until
    }
}

/// What the log shows.
#[derive(Debug, Default)]
pub struct Report {
    pub grants: u64,
    pub releases: u64,
    pub kills: u64,
    pub restarts: u64,
    pub held_at_kills: u64,
    pub reclaimed: u64,
    pub lost: u64,
    /// Locks held at a kill that the client neither reclaimed nor lost (a client bug).
    pub unreclaimed: u64,
    pub conflicts: Vec<String>,
    pub pairs_checked: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.conflicts.is_empty() && self.lost == 0 && self.unreclaimed == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grants {} releases {} kills {} restarts {} held-at-kill {} reclaimed {} lost {} \
             unreclaimed {} overlapping-pairs-checked {} conflicts {}",
            self.grants,
            self.releases,
            self.kills,
            self.restarts,
            self.held_at_kills,
            self.reclaimed,
            self.lost,
            self.unreclaimed,
            self.pairs_checked,
            self.conflicts.len()
        )
    }
}

fn field<T: std::str::FromStr>(f: &[&str], i: usize, line: &str) -> Result<T, String> {
    f.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad field {i} in log line {line:?}"))
}

/// Checks a whole log.
pub fn check(log: &str) -> Result<Report, String> {
    let mut r = Report::default();
    // Open holds by (client, file, start, len).
    let mut open: HashMap<(u32, u32, u64, u64), Held> = HashMap::new();
    let mut closed: Vec<Held> = Vec::new();
    // Holds open at the last kill, waiting for RECLAIMED or LOST.
    let mut awaiting: HashMap<(u32, u32, u64, u64), u64> = HashMap::new();
    let mut last_t = 0u64;
    // Writers log an event after its call returned, stamped with when it took effect
    // from the client's side (an UNLOCK when it was sent): take them in time order.
    let mut lines: Vec<(u64, &str)> = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        lines.push((field(&f, 0, line)?, line));
    }
    lines.sort_by_key(|(t, _)| *t);
    for (t, line) in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        last_t = last_t.max(t);
        match f.get(2).copied() {
            Some("KILL") => {
                r.kills += 1;
                r.unreclaimed += awaiting.len() as u64;
                awaiting = open.keys().map(|k| (*k, t)).collect();
                r.held_at_kills += awaiting.len() as u64;
                continue;
            }
            Some("RESTARTED") => {
                r.restarts += 1;
                continue;
            }
            _ => {}
        }
        let client: u32 = field(&f, 1, line)?;
        let file: u32 = field(&f, 3, line)?;
        let start: u64 = field(&f, 4, line)?;
        let len: u64 = field(&f, 5, line)?;
        let exclusive = field::<u8>(&f, 6, line)? == 1;
        let key = (client, file, start, len);
        match f[2] {
            "GRANT" => {
                r.grants += 1;
                let end = if len == 0 {
                    u64::MAX
                } else {
                    start.saturating_add(len)
                };
                let h = Held {
                    client,
                    file,
                    start,
                    end,
                    exclusive,
                    from: t,
                    until: u64::MAX,
                };
                if open.insert(key, h).is_some() {
                    return Err(format!("client {client} granted {key:?} twice: {line}"));
                }
            }
            "RELEASE" | "LOST" => {
                let mut h = open
                    .remove(&key)
                    .ok_or_else(|| format!("release of a lock not held: {line}"))?;
                h.until = t;
                closed.push(h);
                if f[2] == "LOST" {
                    r.lost += 1;
                    awaiting.remove(&key);
                } else {
                    r.releases += 1;
                    if awaiting.remove(&key).is_some() {
                        r.unreclaimed += 1;
                    }
                }
            }
            "RECLAIMED" => {
                if !open.contains_key(&key) {
                    return Err(format!("reclaim of a lock not held: {line}"));
                }
                if awaiting.remove(&key).is_some() {
                    r.reclaimed += 1;
                }
            }
            other => return Err(format!("unknown event {other}: {line}")),
        }
    }
    r.unreclaimed += awaiting.len() as u64;
    for (_, mut h) in open {
        h.until = last_t;
        closed.push(h);
    }
    // Sweep in order of acquisition, keeping the holds still active.
    closed.sort_by_key(|h| h.from);
    let mut active: Vec<Held> = Vec::new();
    for h in &closed {
        active.retain(|a| a.until > h.from);
        for a in &active {
            r.pairs_checked += 1;
            if a.conflicts(h) {
                r.conflicts.push(format!("{a:?} and {h:?} held at once"));
            }
        }
        active.push(*h);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn finds_an_overlap_and_accepts_sequential_holds() {
        let ok = "10 1 GRANT 0 0 10 1\n20 1 RELEASE 0 0 10 1\n20 2 GRANT 0 5 10 1\n30 2 RELEASE 0 5 10 1\n";
        let r = check(ok).unwrap();
        assert!(r.ok() && r.grants == 2, "{r}");
        let bad = "10 1 GRANT 0 0 10 1\n15 2 GRANT 0 5 10 0\n20 1 RELEASE 0 0 10 1\n30 2 RELEASE 0 5 10 0\n";
        assert_eq!(check(bad).unwrap().conflicts.len(), 1);
        let shared = "10 1 GRANT 0 0 10 0\n15 2 GRANT 0 5 10 0\n20 1 RELEASE 0 0 10 0\n30 2 RELEASE 0 5 10 0\n";
        assert!(check(shared).unwrap().ok());
    }

    #[test]
    fn a_lock_held_at_a_kill_must_be_reclaimed() {
        let ok = "10 1 GRANT 0 0 10 1\n12 - KILL\n14 - RESTARTED\n15 1 RECLAIMED 0 0 10 1\n20 1 RELEASE 0 0 10 1\n";
        let r = check(ok).unwrap();
        assert!(r.ok() && r.held_at_kills == 1 && r.reclaimed == 1, "{r}");
        let missed = "10 1 GRANT 0 0 10 1\n12 - KILL\n14 - RESTARTED\n20 1 RELEASE 0 0 10 1\n";
        assert_eq!(check(missed).unwrap().unreclaimed, 1);
        let lost = "10 1 GRANT 0 0 10 1\n12 - KILL\n15 1 LOST 0 0 10 1\n";
        assert_eq!(check(lost).unwrap().lost, 1);
    }
}
