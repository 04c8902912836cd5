//! The durable state of the status monitor, in the state directory:
//!
//! - `state`: the NSM state number, in decimal. Odd while the service runs: every start makes
//!   it odd and larger than any number given out before (an odd number advances by 2, an even
//!   one by 1); a clean stop makes it even. Peers compare it to learn that we restarted.
//! - `clients/<group>/`: per service group, the client hosts that locked in its exports, one
//!   file per client. They are sent SM_NOTIFY when the group restarts (the daemon or a
//!   failover), so a host is added before its first lock in a group is granted, and removed
//!   when it reboots or is cleared. A host is not removed when it unlocks its last lock:
//!   keeping it costs one spurious SM_NOTIFY after a restart, while removing it would cost
//!   an fsync on every lock of a host that locks and unlocks.
//! - `monitors/`: the SM_MON registrations of local callers that asked to hear of a host's
//!   reboot, one file per registration.
//!
//! A group's client directory (`ClientDir`) holds:
//!
//! - `c-<name>`: one client, named by a safe encoding of its NLM name (letters, digits, `-`,
//!   `_` and an inner `.` as they are, every other byte as `%XX`; a name whose encoding would
//!   be too long for a file name becomes `~` and the SHA-256 of the name in hex). The file
//!   holds, in JSON, the full name, the address its first request came from and where its
//!   status monitor is called (program, version and procedure of SM_NOTIFY, looked up
//!   through the portmapper at that address).
//! - `a-<alias>`: a symbolic link to a client's `c-` file for each other address that
//!   client's requests came from (or another name it is known by).
//!
//! The directory is a parameter ([`NsmStore::attach_group`]), so a group's list can live on
//! the group's own storage and move with it.
//!
//! Every change is made durable before the reply that depends on it is sent, and costs in
//! proportion to the entry, not the list: a file is written under a temporary name, synced,
//! renamed into place and the directory synced; a link is created under a temporary name
//! and renamed; a removal unlinks the entry and its links and syncs the directory. What a
//! crash can leave behind is ignored when the directory is read, and cleaned up: a
//! temporary file (a name starting with `.`), an entry that does not parse (half written),
//! a link whose entry is gone.
//!
//! Lists and registrations are capped ([`StoreLimits`]): in total, per address (how many
//! client names one address may hold), per client (how many addresses), and per monitored
//! host. A change over a cap is refused and nothing is written.
//!
//! Older versions kept a group's list in `clients-<group>.json` and the registrations in
//! `monitors.json`, rewritten whole on every change. Such a file is read once, when the
//! store opens, converted into the directories above, and removed.
//!
//! Writers take turns on a writer lock and update the in-memory copy only once their change
//! is durable; the in-memory copy is locked just long enough to read or update it. So a
//! check such as [`NsmStore::has_client`] never waits for a disk, and never sees a change
//! that is not yet on disk.

use crate::proto::nsm::{proc_ as sm_proc, MyId, SM_PRIV_SIZE, SM_PROG, SM_VERS};
use lock_table::ScopeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;
use tracing::{info, warn};

const STATE_FILE: &str = "state";
const CLIENTS_DIR: &str = "clients";
const MONITORS_DIR: &str = "monitors";
const LEGACY_MONITORS: &str = "monitors.json";
const ENTRY: &str = "c-";
const ALIAS: &str = "a-";
const MONITOR: &str = "m-";
/// Temporary names start with a dot, which no encoded name does.
const TEMP: &str = ".tmp-";
/// Encoded names longer than this are replaced by a hash (NAME_MAX is 255).
const MAX_ENCODED: usize = 180;

/// Why a change was not recorded.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A cap of [`StoreLimits`] is reached; nothing was written.
    #[error("limit reached: {what} ({limit})")]
    Limit { what: &'static str, limit: usize },
}

/// Caps on what the store holds. Defaults are generous for real clients and still bound
/// the memory and disk an attacker can make the daemon spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLimits {
    /// Client entries over all groups.
    pub clients: usize,
    /// Client names recorded at one address (clients behind one NAT, or on one machine).
    pub names_per_address: usize,
    /// Addresses recorded for one client (a multi-homed client).
    pub addresses_per_client: usize,
    /// SM_MON registrations in total.
    pub monitors: usize,
    /// SM_MON registrations for one monitored host.
    pub monitors_per_host: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            clients: 65_536,
            names_per_address: 1024,
            addresses_per_client: 16,
            monitors: 65_536,
            monitors_per_host: 64,
        }
    }
}

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

    /// The file of this registration: one per (monitored host, caller identity).
    fn file_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.mon_name.as_bytes(),
            self.my_name.as_bytes(),
            &self.my_prog.to_be_bytes(),
            &self.my_vers.to_be_bytes(),
            &self.my_proc.to_be_bytes(),
        ] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        format!("{MONITOR}{}", hex(&h.finalize()))
    }
}

/// Where a client's status monitor is called with SM_NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCallback {
    pub prog: u32,
    pub vers: u32,
    #[serde(rename = "proc")]
    pub proc_: u32,
}

impl Default for StatusCallback {
    fn default() -> Self {
        Self {
            prog: SM_PROG,
            vers: SM_VERS,
            proc_: sm_proc::NOTIFY,
        }
    }
}

/// The content of a client's `c-` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EntryFile {
    name: String,
    addr: IpAddr,
    status_monitor: StatusCallback,
}

/// A listed client as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub name: String,
    /// The address notifications go to.
    pub addr: IpAddr,
    pub status_monitor: StatusCallback,
    /// Other addresses its requests came from.
    pub other_addrs: Vec<IpAddr>,
    /// Other names it is known by.
    pub other_names: Vec<String>,
}

impl ClientRecord {
    /// Every address on record for it.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.addr).chain(self.other_addrs.iter().copied())
    }

    fn has_addr(&self, a: IpAddr) -> bool {
        self.addresses().any(|x| x == a)
    }
}

/// One group's client directory, loaded.
#[derive(Debug, Clone)]
struct ClientDir {
    dir: PathBuf,
    clients: BTreeMap<String, ClientRecord>,
    /// Other names, to the client's name.
    names: HashMap<String, String>,
}

impl ClientDir {
    fn empty(dir: PathBuf) -> Self {
        Self {
            dir,
            clients: BTreeMap::new(),
            names: HashMap::new(),
        }
    }

    /// Reads a client directory, ignoring (and removing) what a crash left half done.
    fn load(dir: &Path) -> io::Result<Self> {
        let mut out = Self::empty(dir.to_path_buf());
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let mut links = Vec::new();
        let mut by_file: HashMap<String, String> = HashMap::new();
        let mut stale = Vec::new();
        for entry in rd {
            let entry = entry?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str().map(str::to_string) else {
                continue;
            };
            if fname.starts_with('.') {
                stale.push(fname);
            } else if let Some(enc) = fname.strip_prefix(ENTRY) {
                let parsed = std::fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<EntryFile>(&b).ok())
                    .filter(|e| encode(&e.name) == enc);
                match parsed {
                    Some(e) => {
                        by_file.insert(fname.clone(), e.name.clone());
                        out.clients.insert(
                            e.name.clone(),
                            ClientRecord {
                                name: e.name,
                                addr: e.addr,
                                status_monitor: e.status_monitor,
                                other_addrs: Vec::new(),
                                other_names: Vec::new(),
                            },
                        );
                    }
                    None => {
                        warn!(entry = %entry.path().display(), "ignoring a client entry that does not parse (half written by a crash?)");
                        stale.push(fname);
                    }
                }
            } else if fname.starts_with(ALIAS) {
                links.push(fname);
            }
        }
        for link in links {
            let target = std::fs::read_link(dir.join(&link))
                .ok()
                .and_then(|t| t.to_str().map(str::to_string));
            let alias = decode(&link[ALIAS.len()..]);
            let owner = target.and_then(|t| by_file.get(&t).cloned());
            match (owner, alias) {
                (Some(name), Some(alias)) => {
                    let rec = out.clients.get_mut(&name).expect("loaded above");
                    match alias.parse::<IpAddr>() {
                        Ok(a) => rec.other_addrs.push(a),
                        Err(_) => {
                            rec.other_names.push(alias.clone());
                            out.names.insert(alias, name);
                        }
                    }
                }
                _ => stale.push(link),
            }
        }
        if !stale.is_empty() {
            for f in &stale {
                let _ = std::fs::remove_file(dir.join(f));
            }
            let _ = sync_dir(dir);
        }
        Ok(out)
    }

    /// The client called `name`, directly or by another name.
    fn resolve(&self, name: &str) -> Option<&ClientRecord> {
        self.clients
            .get(name)
            .or_else(|| self.names.get(name).and_then(|n| self.clients.get(n)))
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: i32,
    groups: BTreeMap<u32, ClientDir>,
    monitors: BTreeMap<String, Monitor>,
}

impl Inner {
    fn client_count(&self) -> usize {
        self.groups.values().map(|g| g.clients.len()).sum()
    }

    /// Distinct client names recorded at `addr`, in any group.
    fn names_at(&self, addr: IpAddr) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for g in self.groups.values() {
            for c in g.clients.values() {
                if c.has_addr(addr) && !out.contains(&c.name) {
                    out.push(c.name.clone());
                }
            }
        }
        out
    }
}

/// The status monitor's on-disk state and its in-memory copy.
#[derive(Debug)]
pub struct NsmStore {
    dir: PathBuf,
    limits: StoreLimits,
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `data` durably: a temporary file, synced, renamed over the old
/// one, and the directory synced. A failure leaves no temporary file behind.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{TEMP}{name}"));
    let r = (|| {
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
        sync_dir(dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Points `dir/link` at `target` (a name in the same directory) durably.
fn link_atomic(dir: &Path, link: &str, target: &str) -> io::Result<()> {
    let tmp = dir.join(format!("{TEMP}{link}"));
    let _ = std::fs::remove_file(&tmp);
    let r = (|| {
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, dir.join(link))?;
        sync_dir(dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Removes names from `dir` (those already gone are fine) and syncs it.
fn remove_durably(dir: &Path, names: &[String]) -> io::Result<()> {
    for n in names {
        match std::fs::remove_file(dir.join(n)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(dir)
}

/// Creates `dir` (and its parents) durably: each new directory's parent is synced.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durably(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// A file-name-safe, one-to-one encoding of a client name or alias.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
            b'.' if i > 0 => out.push('.'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    if out.len() > MAX_ENCODED {
        return format!("~{}", hex(&Sha256::digest(s.as_bytes())));
    }
    out
}

/// The text behind [`encode`], unless it was hashed.
fn decode(s: &str) -> Option<String> {
    if s.starts_with('~') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn entry_file(name: &str) -> String {
    format!("{ENTRY}{}", encode(name))
}

fn alias_file(alias: &str) -> String {
    format!("{ALIAS}{}", encode(alias))
}

impl NsmStore {
    /// Opens (creating if needed) the state directory, converts files of the older format,
    /// and loads what it holds; the client list of group `g` is `clients/<g>/`.
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
        convert_legacy(dir)?;
        let clients = dir.join(CLIENTS_DIR);
        if clients.is_dir() {
            for entry in std::fs::read_dir(&clients)? {
                let entry = entry?;
                let Some(g) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                inner.groups.insert(g, ClientDir::load(&entry.path())?);
            }
        }
        let mdir = dir.join(MONITORS_DIR);
        if let Ok(rd) = std::fs::read_dir(&mdir) {
            let mut stale = Vec::new();
            for entry in rd {
                let entry = entry?;
                let Some(fname) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if !fname.starts_with(MONITOR) {
                    if fname.starts_with('.') {
                        stale.push(fname);
                    }
                    continue;
                }
                let m = std::fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Monitor>(&b).ok())
                    .filter(|m| m.file_name() == fname);
                match m {
                    Some(m) => {
                        inner.monitors.insert(fname, m);
                    }
                    None => {
                        warn!(entry = %entry.path().display(), "ignoring a monitor registration that does not parse (half written by a crash?)");
                        stale.push(fname);
                    }
                }
            }
            if !stale.is_empty() {
                let _ = remove_durably(&mdir, &stale);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            limits: StoreLimits::default(),
            writer: Mutex::new(()),
            inner: Mutex::new(inner),
        })
    }

    /// The same store with other caps.
    pub fn with_limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves group `scope`'s client list from `dir` (the group's own storage, for a group
    /// that moves between nodes) instead of `clients/<group>/` in the state directory.
    pub fn attach_group(&self, scope: ScopeId, dir: &Path) -> io::Result<()> {
        let _turn = self.write_turn();
        let g = ClientDir::load(dir)?;
        self.lock().groups.insert(scope.0, g);
        Ok(())
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

    /// The caps in force.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Where group `scope`'s client list is kept.
    pub fn group_dir(&self, scope: ScopeId) -> PathBuf {
        self.lock()
            .groups
            .get(&scope.0)
            .map(|g| g.dir.clone())
            .unwrap_or_else(|| self.dir.join(CLIENTS_DIR).join(scope.0.to_string()))
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
    /// returns. Returns false, without I/O, when the host was already listed at `addr`. A
    /// listed host calling from another address gets that address recorded as well.
    pub fn add_client(&self, scope: ScopeId, name: &str, addr: IpAddr) -> Result<bool, StoreError> {
        if self.has_client(scope, name, addr) {
            return Ok(false);
        }
        let _turn = self.write_turn();
        let (dir, existing, at_addr, total) = {
            let inner = self.lock();
            let g = inner.groups.get(&scope.0);
            // Another writer may have listed it while this one waited for its turn.
            if let Some(rec) = g.and_then(|g| g.resolve(name)) {
                if rec.has_addr(addr) {
                    return Ok(false);
                }
            }
            (
                g.map(|g| g.dir.clone())
                    .unwrap_or_else(|| self.dir.join(CLIENTS_DIR).join(scope.0.to_string())),
                g.and_then(|g| g.resolve(name)).cloned(),
                inner.names_at(addr),
                inner.client_count(),
            )
        };
        let l = &self.limits;
        let canonical = existing.as_ref().map_or(name, |r| r.name.as_str());
        if !at_addr.iter().any(|n| n == canonical) && at_addr.len() >= l.names_per_address {
            return Err(StoreError::Limit {
                what: "client names per address",
                limit: l.names_per_address,
            });
        }
        create_dir_durably(&dir)?;
        match existing {
            Some(rec) => {
                if rec.addresses().count() >= l.addresses_per_client {
                    return Err(StoreError::Limit {
                        what: "addresses per client",
                        limit: l.addresses_per_client,
                    });
                }
                link_atomic(&dir, &alias_file(&addr.to_string()), &entry_file(&rec.name))?;
                let mut inner = self.lock();
                let g = inner
                    .groups
                    .entry(scope.0)
                    .or_insert_with(|| ClientDir::empty(dir.clone()));
                if let Some(r) = g.clients.get_mut(&rec.name) {
                    r.other_addrs.push(addr);
                }
            }
            None => {
                if total >= l.clients {
                    return Err(StoreError::Limit {
                        what: "clients",
                        limit: l.clients,
                    });
                }
                let e = EntryFile {
                    name: name.to_string(),
                    addr,
                    status_monitor: StatusCallback::default(),
                };
                let data = serde_json::to_vec_pretty(&e).map_err(io::Error::other)?;
                write_atomic(&dir, &entry_file(name), &data)?;
                let mut inner = self.lock();
                let g = inner
                    .groups
                    .entry(scope.0)
                    .or_insert_with(|| ClientDir::empty(dir.clone()));
                g.clients.insert(
                    name.to_string(),
                    ClientRecord {
                        name: name.to_string(),
                        addr,
                        status_monitor: e.status_monitor,
                        other_addrs: Vec::new(),
                        other_names: Vec::new(),
                    },
                );
            }
        }
        Ok(true)
    }

    /// Whether `name` is listed in `scope` with `addr` among its addresses (the fast path
    /// before [`Self::add_client`]).
    pub fn has_client(&self, scope: ScopeId, name: &str, addr: IpAddr) -> bool {
        self.lock()
            .groups
            .get(&scope.0)
            .and_then(|g| g.resolve(name))
            .is_some_and(|r| r.has_addr(addr))
    }

    /// Drops `name` (and its links) from every group's list; returns the groups it was in.
    pub fn remove_client(&self, name: &str) -> io::Result<Vec<ScopeId>> {
        self.remove_client_from(name, None)
    }

    /// Drops `name` (and its links) from the lists of `only` (every group when `None`);
    /// returns the groups it was removed from.
    pub fn remove_client_from(
        &self,
        name: &str,
        only: Option<&[ScopeId]>,
    ) -> io::Result<Vec<ScopeId>> {
        let _turn = self.write_turn();
        let found: Vec<(u32, PathBuf, ClientRecord)> = self
            .lock()
            .groups
            .iter()
            .filter(|(g, _)| only.is_none_or(|o| o.contains(&ScopeId(**g))))
            .filter_map(|(g, d)| d.resolve(name).map(|r| (*g, d.dir.clone(), r.clone())))
            .collect();
        let mut changed = Vec::new();
        for (g, dir, rec) in found {
            let mut files = vec![entry_file(&rec.name)];
            files.extend(rec.other_addrs.iter().map(|a| alias_file(&a.to_string())));
            files.extend(rec.other_names.iter().map(|n| alias_file(n)));
            remove_durably(&dir, &files)?;
            let mut inner = self.lock();
            if let Some(d) = inner.groups.get_mut(&g) {
                d.clients.remove(&rec.name);
                d.names.retain(|_, n| *n != rec.name);
            }
            changed.push(ScopeId(g));
        }
        Ok(changed)
    }

    /// The client list of a group: (host name, address notifications go to).
    pub fn clients(&self, scope: ScopeId) -> Vec<(String, IpAddr)> {
        self.lock()
            .groups
            .get(&scope.0)
            .map(|g| {
                g.clients
                    .values()
                    .map(|c| (c.name.clone(), c.addr))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of clients listed in a group.
    pub fn client_count(&self, scope: ScopeId) -> usize {
        self.lock()
            .groups
            .get(&scope.0)
            .map_or(0, |g| g.clients.len())
    }

    /// Every group with a client list on record.
    pub fn groups(&self) -> Vec<ScopeId> {
        self.lock().groups.keys().map(|g| ScopeId(*g)).collect()
    }

    /// Whether `name` is on any group's list (by its name or another name it is known by).
    pub fn lists(&self, name: &str) -> bool {
        self.record(name).is_some()
    }

    /// What is on record for the client called `name`, over all groups: its name and every
    /// address its requests came from.
    pub fn record(&self, name: &str) -> Option<(String, Vec<IpAddr>)> {
        let inner = self.lock();
        let mut out: Option<(String, Vec<IpAddr>)> = None;
        for g in inner.groups.values() {
            if let Some(r) = g.resolve(name) {
                let (_, addrs) = out.get_or_insert_with(|| (r.name.clone(), Vec::new()));
                for a in r.addresses() {
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
        }
        out
    }

    /// Hosts recorded at `addr` in any group.
    pub fn names_at(&self, addr: IpAddr) -> Vec<String> {
        self.lock().names_at(addr)
    }

    /// Adds an SM_MON registration (replacing one of the same host and caller), durably.
    pub fn monitor(&self, m: Monitor) -> Result<(), StoreError> {
        let _turn = self.write_turn();
        let fname = m.file_name();
        {
            let inner = self.lock();
            match inner.monitors.get(&fname) {
                Some(old) if *old == m => return Ok(()),
                Some(_) => {}
                None => {
                    let l = &self.limits;
                    if inner.monitors.len() >= l.monitors {
                        return Err(StoreError::Limit {
                            what: "monitors",
                            limit: l.monitors,
                        });
                    }
                    let of_host = inner
                        .monitors
                        .values()
                        .filter(|x| x.mon_name == m.mon_name)
                        .count();
                    if of_host >= l.monitors_per_host {
                        return Err(StoreError::Limit {
                            what: "monitors per host",
                            limit: l.monitors_per_host,
                        });
                    }
                }
            }
        }
        let dir = self.dir.join(MONITORS_DIR);
        create_dir_durably(&dir)?;
        let data = serde_json::to_vec_pretty(&m).map_err(io::Error::other)?;
        write_atomic(&dir, &fname, &data)?;
        self.lock().monitors.insert(fname, m);
        Ok(())
    }

    /// Removes the registrations matching `keep == false`, durably.
    fn unmonitor_where(&self, drop_it: impl Fn(&Monitor) -> bool) -> io::Result<()> {
        let _turn = self.write_turn();
        let gone: Vec<String> = self
            .lock()
            .monitors
            .iter()
            .filter(|(_, m)| drop_it(m))
            .map(|(f, _)| f.clone())
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        remove_durably(&self.dir.join(MONITORS_DIR), &gone)?;
        let mut inner = self.lock();
        for f in gone {
            inner.monitors.remove(&f);
        }
        Ok(())
    }

    /// Removes the registrations of `my_id` for `mon_name`, durably.
    pub fn unmonitor(&self, mon_name: &str, my_id: &MyId) -> io::Result<()> {
        self.unmonitor_where(|x| x.mon_name == mon_name && x.same_caller(my_id))
    }

    /// Removes every registration of `my_id`, durably.
    pub fn unmonitor_all(&self, my_id: &MyId) -> io::Result<()> {
        self.unmonitor_where(|x| x.same_caller(my_id))
    }

    /// The registrations watching `mon_name`.
    pub fn monitors_of(&self, mon_name: &str) -> Vec<Monitor> {
        self.lock()
            .monitors
            .values()
            .filter(|m| m.mon_name == mon_name)
            .cloned()
            .collect()
    }

    /// Number of SM_MON registrations held.
    pub fn monitor_count(&self) -> usize {
        self.lock().monitors.len()
    }
}

#[derive(Debug, Deserialize)]
struct LegacyClient {
    name: String,
    addr: IpAddr,
}

/// Converts `clients-<group>.json` and `monitors.json` of the older format into entries,
/// then removes them. Run before anything else reads the directory.
fn convert_legacy(dir: &Path) -> io::Result<()> {
    let mut old = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name
            .strip_prefix("clients-")
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|g| g.parse::<u32>().ok())
        {
            old.push((g, entry.path()));
        }
    }
    for (g, path) in old {
        let list: Vec<LegacyClient> =
            serde_json::from_slice(&std::fs::read(&path)?).map_err(|e| invalid(&path, e))?;
        let gdir = dir.join(CLIENTS_DIR).join(g.to_string());
        create_dir_durably(&gdir)?;
        for c in &list {
            let e = EntryFile {
                name: c.name.clone(),
                addr: c.addr,
                status_monitor: StatusCallback::default(),
            };
            let data = serde_json::to_vec_pretty(&e).map_err(io::Error::other)?;
            write_atomic(&gdir, &entry_file(&c.name), &data)?;
        }
        remove_durably(
            dir,
            &[path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()],
        )?;
        info!(group = g, clients = list.len(), from = %path.display(), "client list converted to one file per client");
    }
    let mpath = dir.join(LEGACY_MONITORS);
    match std::fs::read(&mpath) {
        Ok(b) => {
            let list: Vec<Monitor> = serde_json::from_slice(&b).map_err(|e| invalid(&mpath, e))?;
            let mdir = dir.join(MONITORS_DIR);
            create_dir_durably(&mdir)?;
            for m in &list {
                let data = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
                write_atomic(&mdir, &m.file_name(), &data)?;
            }
            remove_durably(dir, &[LEGACY_MONITORS.to_string()])?;
            info!(
                monitors = list.len(),
                "monitor registrations converted to one file each"
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(())
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
    fn names_encode_one_to_one_into_safe_file_names() {
        for s in [
            "alpha",
            "a.b-c_d",
            ".hidden",
            "../../etc/passwd",
            "x/y",
            "sp ace\n",
            "%41",
            "é",
            "",
        ] {
            let e = encode(s);
            assert!(!e.contains('/') && !e.starts_with('.'), "{s:?} -> {e}");
            assert_eq!(decode(&e).as_deref(), Some(s));
        }
        assert_ne!(encode("%41"), encode("A"));
        let long = "n".repeat(1000);
        let e = encode(&long);
        assert!(e.len() < 100 && e.starts_with('~'));
        assert_ne!(e, encode(&"n".repeat(999)));
    }

    #[test]
    fn client_lists_are_per_group_one_file_per_client_and_durable() {
        let d = tempfile::tempdir().unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(s.add_client(ScopeId(0), "alpha", a).unwrap());
        assert!(!s.add_client(ScopeId(0), "alpha", a).unwrap());
        assert!(s.add_client(ScopeId(7), "alpha", a).unwrap());
        assert!(s.add_client(ScopeId(7), "beta with space\n", b).unwrap());
        // alpha calls from a second address: a link, not a rewrite.
        assert!(s.add_client(ScopeId(7), "alpha", b).unwrap());
        let g7 = d.path().join("clients/7");
        let link = std::fs::read_link(g7.join("a-127.0.0.3")).unwrap();
        assert_eq!(link, Path::new("c-alpha"));
        assert!(g7.join("c-beta%20with%20space%0A").is_file());
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.clients(ScopeId(0)), vec![("alpha".to_string(), a)]);
        assert_eq!(s.clients(ScopeId(7)).len(), 2);
        assert!(s.has_client(ScopeId(7), "alpha", b));
        assert!(!s.has_client(ScopeId(0), "alpha", b));
        assert_eq!(s.record("alpha").unwrap().1, vec![a, b]);
        let mut at_b = s.names_at(b);
        at_b.sort();
        assert_eq!(
            at_b,
            vec!["alpha".to_string(), "beta with space\n".to_string()]
        );
        assert_eq!(
            s.remove_client("alpha").unwrap(),
            vec![ScopeId(0), ScopeId(7)]
        );
        assert!(!g7.join("a-127.0.0.3").exists() && !g7.join("c-alpha").exists());
        let s = NsmStore::open(d.path()).unwrap();
        assert!(s.clients(ScopeId(0)).is_empty());
        assert_eq!(
            s.clients(ScopeId(7)),
            vec![("beta with space\n".to_string(), b)]
        );
        assert_eq!(s.groups(), vec![ScopeId(0), ScopeId(7)]);
    }

    #[test]
    fn what_a_crash_leaves_half_done_is_ignored_on_read() {
        let d = tempfile::tempdir().unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        s.add_client(ScopeId(0), "good", a).unwrap();
        drop(s);
        let g = d.path().join("clients/0");
        // A temporary file never renamed, an entry cut short, an entry whose content names
        // another client, a link to an entry that is gone.
        std::fs::write(g.join(".tmp-c-next"), b"{\"name\":\"next\",\"ad").unwrap();
        std::fs::write(g.join("c-torn"), b"{\"name\":\"torn\",\"addr\":\"10.0").unwrap();
        std::fs::write(
            g.join("c-liar"),
            br#"{"name":"good","addr":"10.0.0.9","status_monitor":{"prog":100024,"vers":1,"proc":6}}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink("c-gone", g.join("a-10.0.0.7")).unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.clients(ScopeId(0)), vec![("good".to_string(), a)]);
        assert!(s.names_at("10.0.0.7".parse().unwrap()).is_empty());
        let mut left: Vec<String> = std::fs::read_dir(&g)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["c-good".to_string()], "debris cleaned up");
        // And the store keeps working.
        assert!(s.add_client(ScopeId(0), "torn", a).unwrap());
    }

    #[test]
    fn caps_refuse_without_writing() {
        let d = tempfile::tempdir().unwrap();
        let s = NsmStore::open(d.path()).unwrap().with_limits(StoreLimits {
            clients: 3,
            names_per_address: 2,
            addresses_per_client: 2,
            monitors: 2,
            monitors_per_host: 1,
        });
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        s.add_client(ScopeId(0), "a", ip("10.0.0.1")).unwrap();
        s.add_client(ScopeId(0), "b", ip("10.0.0.1")).unwrap();
        assert!(matches!(
            s.add_client(ScopeId(0), "c", ip("10.0.0.1")),
            Err(StoreError::Limit { .. })
        ));
        s.add_client(ScopeId(0), "a", ip("10.0.0.2")).unwrap();
        assert!(matches!(
            s.add_client(ScopeId(0), "a", ip("10.0.0.3")),
            Err(StoreError::Limit { .. })
        ));
        s.add_client(ScopeId(0), "c", ip("10.0.0.4")).unwrap();
        assert!(matches!(
            s.add_client(ScopeId(0), "d", ip("10.0.0.5")),
            Err(StoreError::Limit { .. })
        ));
        assert_eq!(s.client_count(ScopeId(0)), 3);
        let m = |host: &str, me: &str| Monitor {
            mon_name: host.into(),
            my_name: me.into(),
            my_prog: 100_021,
            my_vers: 4,
            my_proc: 16,
            priv_: [0; SM_PRIV_SIZE],
            caller: ip("127.0.0.1"),
        };
        s.monitor(m("h1", "x")).unwrap();
        assert!(matches!(
            s.monitor(m("h1", "y")),
            Err(StoreError::Limit { .. })
        ));
        s.monitor(m("h2", "x")).unwrap();
        assert!(matches!(
            s.monitor(m("h3", "x")),
            Err(StoreError::Limit { .. })
        ));
        // Replacing an existing registration is not a new one.
        let mut again = m("h2", "x");
        again.priv_ = [9; SM_PRIV_SIZE];
        s.monitor(again.clone()).unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.monitors_of("h2"), vec![again]);
        assert_eq!(s.monitor_count(), 2);
    }

    #[test]
    fn the_older_format_is_converted_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("clients-3.json"),
            br#"[{"name":"alpha","addr":"127.0.0.2"},{"name":"beta","addr":"127.0.0.3"}]"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("monitors.json"),
            br#"[{"mon_name":"peer","my_name":"me","my_prog":100021,"my_vers":4,"my_proc":16,"priv_":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],"caller":"127.0.0.1"}]"#,
        )
        .unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.clients(ScopeId(3)).len(), 2);
        assert_eq!(s.monitors_of("peer").len(), 1);
        assert!(!d.path().join("clients-3.json").exists());
        assert!(!d.path().join("monitors.json").exists());
        assert!(d.path().join("clients/3/c-alpha").is_file());
        let s = NsmStore::open(d.path()).unwrap();
        assert_eq!(s.clients(ScopeId(3)).len(), 2);
        assert_eq!(s.monitor_count(), 1);
    }

    #[test]
    fn a_group_list_can_live_elsewhere() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let s = NsmStore::open(d.path()).unwrap();
        s.attach_group(ScopeId(4), elsewhere.path()).unwrap();
        s.add_client(ScopeId(4), "alpha", "10.1.1.1".parse().unwrap())
            .unwrap();
        assert!(elsewhere.path().join("c-alpha").is_file());
        assert!(!d.path().join("clients/4").exists());
        let s2 = NsmStore::open(d.path()).unwrap();
        assert!(s2.clients(ScopeId(4)).is_empty());
        s2.attach_group(ScopeId(4), elsewhere.path()).unwrap();
        assert_eq!(s2.clients(ScopeId(4)).len(), 1);
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
