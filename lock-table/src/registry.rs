//! Interning of variable-length identities: remote host names and NLM owners.
//!
//! The table's hot path works on fixed-size [`Owner`] values. NLM names an
//! owner by (client host name, svid, opaque owner handle of up to 1024 bytes)
//! and a share owner by (host name, owner handle); this registry maps those to
//! stable ids, exactly (no hashing shortcuts: two different handles are always
//! two owners). Owner ids of a host are dropped when the host is released
//! (client reboot, FREE_ALL, administrative clear), which bounds the registry by
//! the owners of hosts that currently hold state.

use crate::ids::{HostId, Owner, OwnerKind};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

#[derive(Debug, Default)]
struct HostEntry {
    name: Box<str>,
    /// key: svid (big endian) followed by the owner handle.
    lock_owners: FxHashMap<Box<[u8]>, u64>,
    share_owners: FxHashMap<Box<[u8]>, u64>,
}

/// Host names and NLM owners, interned.
#[derive(Debug)]
pub struct Registry {
    by_name: FxHashMap<Box<str>, HostId>,
    hosts: Vec<HostEntry>,
    /// For listings and NLM TEST replies: the svid of an NLM lock owner.
    svids: FxHashMap<u64, u32>,
    next_owner: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            by_name: FxHashMap::default(),
            // Index 0 is the local host.
            hosts: vec![HostEntry {
                name: "localhost".into(),
                ..HostEntry::default()
            }],
            svids: FxHashMap::default(),
            next_owner: 1,
        }
    }
}

impl Registry {
    /// The id of a remote host, interned on first use. Names are compared
    /// exactly, as NLM's `caller_name` and NSM's `mon_name` are.
    pub fn host(&mut self, name: &str) -> HostId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = HostId(self.hosts.len() as u32);
        self.hosts.push(HostEntry {
            name: name.into(),
            ..HostEntry::default()
        });
        self.by_name.insert(name.into(), id);
        id
    }

    /// The id of a host already known, without interning.
    pub fn find_host(&self, name: &str) -> Option<HostId> {
        self.by_name.get(name).copied()
    }

    /// The name of a host, `None` for the local host or an unknown id.
    pub fn host_name(&self, host: HostId) -> Option<&str> {
        if host == HostId::LOCAL {
            return None;
        }
        self.hosts.get(host.0 as usize).map(|h| &*h.name)
    }

    /// All remote hosts known.
    pub fn hosts(&self) -> impl Iterator<Item = (HostId, &str)> {
        self.hosts
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, h)| (HostId(i as u32), &*h.name))
    }

    /// The lock owner (host, svid, owner handle) of an NLM request.
    pub fn nlm_owner(&mut self, host: HostId, svid: u32, oh: &[u8]) -> Owner {
        let mut key: SmallVec<[u8; 64]> = SmallVec::new();
        key.extend_from_slice(&svid.to_be_bytes());
        key.extend_from_slice(oh);
        let next = &mut self.next_owner;
        let entry = self.hosts.get_mut(host.0 as usize);
        let Some(entry) = entry else {
            // An id that was never handed out: give a fresh, unshared owner so
            // the caller cannot alias anybody's locks.
            let id = *next;
            *next += 1;
            return Owner {
                kind: OwnerKind::Nlm,
                host,
                id,
            };
        };
        let id = match entry.lock_owners.get(&key[..]) {
            Some(&id) => id,
            None => {
                let id = *next;
                *next += 1;
                entry.lock_owners.insert(key[..].into(), id);
                self.svids.insert(id, svid);
                id
            }
        };
        Owner {
            kind: OwnerKind::Nlm,
            host,
            id,
        }
    }

    /// The lock owner (host, svid, owner handle) if it is already interned,
    /// without interning it (front doors check per-host limits with it).
    pub fn find_nlm_owner(&self, host: HostId, svid: u32, oh: &[u8]) -> Option<Owner> {
        let mut key: SmallVec<[u8; 64]> = SmallVec::new();
        key.extend_from_slice(&svid.to_be_bytes());
        key.extend_from_slice(oh);
        let id = *self.hosts.get(host.0 as usize)?.lock_owners.get(&key[..])?;
        Some(Owner {
            kind: OwnerKind::Nlm,
            host,
            id,
        })
    }

    /// The share owner (host, owner handle) of an NLM SHARE request.
    pub fn nlm_share_owner(&mut self, host: HostId, oh: &[u8]) -> Owner {
        let next = &mut self.next_owner;
        let id = match self.hosts.get_mut(host.0 as usize) {
            Some(entry) => match entry.share_owners.get(oh) {
                Some(&id) => id,
                None => {
                    let id = *next;
                    *next += 1;
                    entry.share_owners.insert(oh.into(), id);
                    id
                }
            },
            None => {
                let id = *next;
                *next += 1;
                id
            }
        };
        Owner {
            kind: OwnerKind::NlmShare,
            host,
            id,
        }
    }

    /// The svid an NLM lock owner was registered with.
    pub fn svid(&self, owner: &Owner) -> Option<u32> {
        if owner.kind != OwnerKind::Nlm {
            return None;
        }
        self.svids.get(&owner.id).copied()
    }

    /// Number of interned owners of a host (for per-host limits).
    pub fn owner_count(&self, host: HostId) -> usize {
        self.hosts
            .get(host.0 as usize)
            .map_or(0, |h| h.lock_owners.len() + h.share_owners.len())
    }

    /// Forget the owners of a host once everything it held is released. The
    /// host keeps its id, so a rebooted client is the same host.
    pub fn forget_owners(&mut self, host: HostId) {
        if host == HostId::LOCAL {
            return;
        }
        if let Some(entry) = self.hosts.get_mut(host.0 as usize) {
            for id in entry.lock_owners.values() {
                self.svids.remove(id);
            }
            entry.lock_owners = FxHashMap::default();
            entry.share_owners = FxHashMap::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_exact() {
        let mut r = Registry::default();
        let a = r.host("client-a");
        let b = r.host("client-b");
        assert_ne!(a, b);
        assert_eq!(r.host("client-a"), a);
        let o1 = r.nlm_owner(a, 7, b"oh-1");
        assert_eq!(r.nlm_owner(a, 7, b"oh-1"), o1);
        assert_ne!(r.nlm_owner(a, 8, b"oh-1"), o1);
        assert_ne!(r.nlm_owner(a, 7, b"oh-2"), o1);
        assert_ne!(r.nlm_owner(b, 7, b"oh-1"), o1);
        assert_eq!(r.svid(&o1), Some(7));
        assert_eq!(r.find_nlm_owner(a, 7, b"oh-1"), Some(o1));
        assert_eq!(r.find_nlm_owner(a, 7, b"oh-9"), None);
        // svid and handle are not confusable by concatenation.
        let x = r.nlm_owner(a, 0x0102_0304, b"");
        let y = r.nlm_owner(a, 0x0102_0300, &[4]);
        assert_ne!(x, y);
        let s = r.nlm_share_owner(a, b"oh-1");
        assert_ne!(s, o1);
        assert_eq!(r.nlm_share_owner(a, b"oh-1"), s);
        assert_eq!(r.host_name(a), Some("client-a"));
        assert_eq!(r.host_name(HostId::LOCAL), None);
    }

    #[test]
    fn forgetting_a_host_keeps_its_id() {
        let mut r = Registry::default();
        let a = r.host("a");
        let o = r.nlm_owner(a, 1, b"x");
        assert_eq!(r.owner_count(a), 1);
        r.forget_owners(a);
        assert_eq!(r.owner_count(a), 0);
        assert_eq!(r.host("a"), a);
        assert_ne!(r.nlm_owner(a, 1, b"x"), o);
    }
}
