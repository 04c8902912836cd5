//! The durable state of the status monitor, in the state directory:
//!
//! - `state`: the NSM state number, in decimal. Odd while the service runs: every start makes
//!   it odd and larger than any number given out before (an odd number advances by 2, an even
//!   one by 1); a clean stop makes it even. Peers compare it to learn that we restarted.
//! - `clients-<group>.json`: per service group, the client hosts that locked in its exports
//!   and the address their status monitor is reached at. They are sent SM_NOTIFY when the
//!   group restarts (the daemon or a failover), so a host is added before its first lock in
//!   a group is granted, and removed when it reboots or is cleared. A host is not removed
//!   when it unlocks its last lock: keeping it costs one spurious SM_NOTIFY after a restart,
//!   while removing it would cost an fsync on every lock of a host that locks and unlocks.
//! - `monitors.json`: the SM_MON registrations of callers that asked to hear of a host's
//!   reboot.
//!
//! Every file is replaced atomically: written to a temporary file, synced, renamed over the
//! old one, and the directory synced, before the reply that depends on it is sent.
//!
//! Writers take turns on a writer lock and update the in-memory copy only once their file is
//! durable; the in-memory copy is locked just long enough to read or update it. So a check
//! such as [`NsmStore::has_client`] never waits for a disk, and never sees a change that is
//! not yet on disk.

use crate::proto::nsm::{MyId, SM_PRIV_SIZE};
use lock_table::ScopeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const STATE_FILE: &str = "state";
const MONITORS_FILE: &str = "monitors.json";

/// One SM_MON registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    pub mon_name: String,
    pub my_name: String,
    pub my_prog: u32,
    pub my_vers: u32,
    pub my_proc: u32,
    pub priv_: [u8; SM_PRIV_SIZE],
    /// Where the SM_MON came from: the callback goes to this host's portmapper.
    pub caller: IpAddr,
}

impl Monitor {
    fn same_caller(&self, id: &MyId) -> bool {
        self.my_name == id.my_name
            && self.my_prog == id.my_prog
            && self.my_vers == id.my_vers
            && self.my_proc == id.my_proc
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientEntry {
    name: String,
    addr: IpAddr,
}

#[derive(Debug, Default)]
struct Inner {
    state: i32,
    groups: BTreeMap<u32, BTreeMap<String, IpAddr>>,
    monitors: Vec<Monitor>,
}

/// The status monitor's on-disk state and its in-memory copy.
#[derive(Debug)]
pub struct NsmStore {
    dir: PathBuf,
    /// Held for the whole of a durable change, from reading what to write to updating
    /// `inner`.
    writer: Mutex<()>,
    inner: Mutex<Inner>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Replaces `dir/name` with `data` durably.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn client_file(scope: ScopeId) -> String {
    format!("clients-{}.json", scope.0)
}

impl NsmStore {
    /// Opens (creating if needed, mode 0700) the state directory and loads what it holds.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner::default();
        let state_path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&state_path) {
            Ok(s) => {
                inner.state = s
                    .trim()
                    .parse()
                    .map_err(|e| invalid(&state_path, format!("bad state number: {e}")))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(group) = name
                .strip_prefix("clients-")
                .and_then(|r| r.strip_suffix(".json"))
                .and_then(|g| g.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let list: Vec<ClientEntry> =
                serde_json::from_slice(&std::fs::read(&path)?).map_err(|e| invalid(&path, e))?;
            inner
                .groups
                .insert(group, list.into_iter().map(|c| (c.name, c.addr)).collect());
        }
        let mon_path = dir.join(MONITORS_FILE);
        match std::fs::read(&mon_path) {
            Ok(b) => {
                inner.monitors = serde_json::from_slice(&b).map_err(|e| invalid(&mon_path, e))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            writer: Mutex::new(()),
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_turn(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current state number.
    pub fn state(&self) -> i32 {
        self.lock().state
    }

    /// Writes state number `n`; the caller holds the write turn.
    fn set_state(&self, n: i32) -> io::Result<i32> {
        write_atomic(&self.dir, STATE_FILE, format!("{n}\n").as_bytes())?;
        self.lock().state = n;
        Ok(n)
    }

    /// Makes the state number odd and larger than before (a start or a simulated crash).
    pub fn advance(&self) -> io::Result<i32> {
        let _turn = self.write_turn();
        let n = self.state();
        let next = if n % 2 != 0 {
            n.wrapping_add(2)
        } else {
            n.wrapping_add(1)
        };
        // Wrapping past i32::MAX restarts at 1, as statd does.
        let next = if next <= 0 { 1 } else { next };
        self.set_state(next)
    }

    /// Makes the state number even (a clean stop).
    pub fn mark_stopped(&self) -> io::Result<i32> {
        let _turn = self.write_turn();
        let n = self.state();
        if n % 2 == 0 {
            return Ok(n);
        }
        self.set_state(n.wrapping_add(1).max(0))
    }

    /// Records that `name` (reached at `addr`) holds state in `scope`; durable when this
    /// returns. Returns false, without I/O, when the host was already listed at `addr`.
    pub fn add_client(&self, scope: ScopeId, name: &str, addr: IpAddr) -> io::Result<bool> {
        if self.has_client(scope, name, addr) {
            return Ok(false);
        }
        let _turn = self.write_turn();
        let mut group = self
            .lock()
            .groups
            .get(&scope.0)
            .cloned()
            .unwrap_or_default();
        // Another writer may have listed it while this one waited for its turn.
        if group.get(name) == Some(&addr) {
            return Ok(false);
        }
        group.insert(name.to_string(), addr);
        write_atomic(&self.dir, &client_file(scope), &serialize_group(&group))?;
        self.lock().groups.insert(scope.0, group);
        Ok(true)
    }

    /// Whether `name` is listed in `scope` (the fast path before [`Self::add_client`]).
    pub fn has_client(&self, scope: ScopeId, name: &str, addr: IpAddr) -> bool {
        self.lock()
            .groups
            .get(&scope.0)
            .is_some_and(|g| g.get(name) == Some(&addr))
    }

    /// Drops `name` from every group's list; returns the groups it was in.
    pub fn remove_client(&self, name: &str) -> io::Result<Vec<ScopeId>> {
        let _turn = self.write_turn();
        let lists: Vec<(u32, BTreeMap<String, IpAddr>)> = self
            .lock()
            .groups
            .iter()
            .filter(|(_, list)| list.contains_key(name))
            .map(|(g, list)| {
                let mut list = list.clone();
                list.remove(name);
                (*g, list)
            })
            .collect();
        let mut changed = Vec::new();
        for (g, list) in lists {
            write_atomic(&self.dir, &client_file(ScopeId(g)), &serialize_group(&list))?;
            self.lock().groups.insert(g, list);
            changed.push(ScopeId(g));
        }
        Ok(changed)
    }

    /// The client list of a group: (host name, address).
    pub fn clients(&self, scope: ScopeId) -> Vec<(String, IpAddr)> {
        self.lock()
            .groups
            .get(&scope.0)
            .map(|g| g.iter().map(|(n, a)| (n.clone(), *a)).collect())
            .unwrap_or_default()
    }

    /// Every group with a client list on record.
    pub fn groups(&self) -> Vec<ScopeId> {
        self.lock().groups.keys().map(|g| ScopeId(*g)).collect()
    }

    /// Whether `name` is on any group's list.
    pub fn lists(&self, name: &str) -> bool {
        self.lock().groups.values().any(|g| g.contains_key(name))
    }

    /// Hosts recorded at `addr` in any group.
    pub fn names_at(&self, addr: IpAddr) -> Vec<String> {
        let inner = self.lock();
        let mut out: Vec<String> = Vec::new();
        for g in inner.groups.values() {
            for (n, a) in g {
                if *a == addr && !out.contains(n) {
                    out.push(n.clone());
                }
            }
        }
        out
    }

    /// Adds an SM_MON registration (replacing an identical one), durably.
    pub fn monitor(&self, m: Monitor) -> io::Result<()> {
        let _turn = self.write_turn();
        let mut next = self.lock().monitors.clone();
        next.retain(|x| {
            !(x.mon_name == m.mon_name
                && x.my_name == m.my_name
                && x.my_prog == m.my_prog
                && x.my_vers == m.my_vers
                && x.my_proc == m.my_proc)
        });
        next.push(m);
        self.save_monitors(next)
    }

    /// Removes the registrations of `my_id` for `mon_name`, durably.
    pub fn unmonitor(&self, mon_name: &str, my_id: &MyId) -> io::Result<()> {
        let _turn = self.write_turn();
        let mut next = self.lock().monitors.clone();
        next.retain(|x| !(x.mon_name == mon_name && x.same_caller(my_id)));
        self.save_monitors(next)
    }

    /// Removes every registration of `my_id`, durably.
    pub fn unmonitor_all(&self, my_id: &MyId) -> io::Result<()> {
        let _turn = self.write_turn();
        let mut next = self.lock().monitors.clone();
        next.retain(|x| !x.same_caller(my_id));
        self.save_monitors(next)
    }

    /// The registrations watching `mon_name`.
    pub fn monitors_of(&self, mon_name: &str) -> Vec<Monitor> {
        self.lock()
            .monitors
            .iter()
            .filter(|m| m.mon_name == mon_name)
            .cloned()
            .collect()
    }

    /// Number of SM_MON registrations held.
    pub fn monitor_count(&self) -> usize {
        self.lock().monitors.len()
    }

    /// Writes the registrations `next`; the caller holds the write turn.
    fn save_monitors(&self, next: Vec<Monitor>) -> io::Result<()> {
        if next == self.lock().monitors {
            return Ok(());
        }
        let data = serde_json::to_vec_pretty(&next).map_err(io::Error::other)?;
        write_atomic(&self.dir, MONITORS_FILE, &data)?;
        self.lock().monitors = next;
        Ok(())
    }
}

fn serialize_group(g: &BTreeMap<String, IpAddr>) -> Vec<u8> {
    let list: Vec<ClientEntry> = g
        .iter()
        .map(|(n, a)| ClientEntry {
            name: n.clone(),
            addr: *a,
        })
        .collect();
    // Serialising plain strings and addresses cannot fail.
    serde_json::to_vec_pretty(&list).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_number_is_odd_while_up_and_advances() {
        let d = tempfile::tempdir().unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.state(), 0);
        assert_eq!(s.advance().unwrap(), 1);
        drop(s);
        // A crash: reopened while odd.
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.state(), 1);
        assert_eq!(s.advance().unwrap(), 3);
        assert_eq!(s.mark_stopped().unwrap(), 4);
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.advance().unwrap(), 5);
        assert_eq!(
            std::fs::read_to_string(d.path().join(STATE_FILE)).unwrap(),
            "5\n"
        );
        std::fs::write(d.path().join(STATE_FILE), "garbage").unwrap();
        assert!(NsmStore::open(d.path()).is_err());
    }

    #[test]
    fn client_lists_are_per_group_and_durable() {
        let d = tempfile::tempdir().unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(s.add_client(ScopeId(0), "alpha", a).unwrap());
        assert!(!s.add_client(ScopeId(0), "alpha", a).unwrap());
        assert!(s.add_client(ScopeId(7), "alpha", a).unwrap());
        assert!(s.add_client(ScopeId(7), "beta with space\n", b).unwrap());
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.clients(ScopeId(0)), vec![("alpha".to_string(), a)]);
        assert_eq!(s.clients(ScopeId(7)).len(), 2);
        assert_eq!(s.names_at(b), vec!["beta with space\n".to_string()]);
        assert_eq!(
            s.remove_client("alpha").unwrap(),
            vec![ScopeId(0), ScopeId(7)]
        );
        let s = NsmStore::open(d.path()).unwrap();
        assert!(s.clients(ScopeId(0)).is_empty());
        assert_eq!(
            s.clients(ScopeId(7)),
            vec![("beta with space\n".to_string(), b)]
        );
        assert_eq!(s.groups(), vec![ScopeId(0), ScopeId(7)]);
    }

    #[test]
    fn monitors_persist() {
        let d = tempfile::tempdir().unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        let id = MyId {
            my_name: "me".into(),
            my_prog: 100_021,
            my_vers: 4,
            my_proc: 16,
        };
        let m = Monitor {
            mon_name: "peer".into(),
            my_name: id.my_name.clone(),
            my_prog: id.my_prog,
            my_vers: id.my_vers,
            my_proc: id.my_proc,
            priv_: [5; SM_PRIV_SIZE],
            caller: "127.0.0.1".parse().unwrap(),
        };
        s.monitor(m.clone()).unwrap();
        s.monitor(m.clone()).unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.monitors_of("peer"), vec![m.clone()]);
        s.unmonitor("peer", &id).unwrap();
        assert_eq!(s.monitor_count(), 0);
        s.monitor(m).unwrap();
        s.unmonitor_all(&id).unwrap();
        assert_eq!(NsmStore::open(d.path()).unwrap().monitor_count(), 0);
    }
}
