//! Crash recovery in both directions.
//!
//! **This server restarted** (a start after a crash or a clean stop, a simulated crash, a
//! group coming online): the NSM state number advances, each service group enters its own
//! grace period (only reclaims are granted; its length is configured; each group's ends on
//! its own timer), and every client on the group's list is sent SM_NOTIFY with our name and
//! new state, so its lockd reclaims. Notifications go to the status monitor found through
//! the client's portmapper at the address recorded for it, paced and in the background
//! ([`crate::notify`]), retried with doubling backoff until answered or until the
//! configured give-up time.
//!
//! **A client rebooted** (SM_NOTIFY from it, or FREE_ALL): everything it held is released
//! and waiters of other clients are granted, once the sender is found to be that client
//! (`judge_sender`): a notification from this server itself, or naming a host from an
//! address not on record for it, releases nothing.
//!
//! **A client is unreachable** (network partition): its locks stay, as NLM requires, until
//! an administrator clears the host ([`crate::lockd::Lockd::clear_host`], `lockfs clear
//! --host NAME`), or, when the opt-in policy
//! [`crate::lockd::CallbackPolicy::release_unreachable_after`] is set, until its GRANTED
//! callbacks have failed for that long.
//!
//! Groups can be taken offline (their requests refused, their locks released, their export
//! roots closed, a clean offline recorded on their storage) and brought online again (their
//! roots reopened, their client list, handle key and a new state number taken from their
//! storage ([`crate::group_state`]), grace and notifications for that group alone) without
//! touching other groups: the seam for failover.

use crate::callbacks::connect_udp;
use crate::group_state::{GroupState, LastOffline};
use crate::lockd::Lockd;
use crate::nsm::store::Monitor;
use crate::proto::nsm::Status;
use crate::xdr::to_bytes;
use lock_table::{Release, ScopeId};
use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Starts (or restarts) the grace period of `scope`; it ends by itself after the configured
/// length unless a later restart of the same group extended it.
///
/// A group whose client list is empty gets none: a client is listed (on disk) before its
/// first lock or share in the group is granted, so an empty list means nobody can have
/// state to reclaim, and new locks need not wait. That spares a first start, or a group
/// no client ever used, the whole grace period.
pub(crate) fn start_grace(lockd: &Arc<Lockd>, scope: ScopeId) {
    let len = lockd
        .group_grace
        .get(&scope)
        .copied()
        .unwrap_or(lockd.grace_len);
    if len.is_zero() {
        lockd.table.with(|t| t.end_grace(scope));
        return;
    }
    if lockd.store.clients(scope).is_empty() {
        lockd.table.with(|t| t.end_grace(scope));
        info!(group = scope.0, "no client to reclaim: no grace period");
        return;
    }
    let gen = {
        let mut g = lockd.grace_gen();
        let e = g.entry(scope).or_insert(0);
        *e += 1;
        *e
    };
    lockd.table.with(|t| t.begin_grace(scope));
    info!(group = scope.0, grace = ?len, "grace period started");
    let l = lockd.clone();
    tokio::spawn(async move {
        tokio::time::sleep(len).await;
        if l.grace_gen().get(&scope) == Some(&gen) {
            l.table.with(|t| t.end_grace(scope));
            info!(group = scope.0, "grace period ended");
        }
    });
}

/// Sends SM_NOTIFY with the current state to every client of the given groups (each host
/// and address once), in the background and paced ([`crate::notify`]).
pub(crate) fn notify_clients(lockd: &Arc<Lockd>, scopes: &[ScopeId]) {
    let state = lockd.state();
    let mut targets: BTreeSet<(String, IpAddr)> = BTreeSet::new();
    for s in scopes {
        targets.extend(lockd.store.clients(*s));
    }
    if targets.is_empty() {
        return;
    }
    tokio::spawn(crate::notify::notify_round(
        lockd.clone(),
        targets.into_iter().collect(),
        state,
    ));
}

/// Sends SM_NOTIFY with `state` (the group's own) to every client of one group, starting
/// `per_second` clients a second over all its server IDs.
pub(crate) fn notify_group(lockd: &Arc<Lockd>, scope: ScopeId, state: i32, per_second: u32) {
    let targets: BTreeSet<(String, IpAddr)> = lockd.store.clients(scope).into_iter().collect();
    if targets.is_empty() {
        return;
    }
    let targets: Vec<(String, IpAddr)> = targets.into_iter().collect();
    match lockd.server_ids.get(&scope).filter(|ids| !ids.is_empty()) {
        // A client knows the group by the server ID it mounted: each gets its notice.
        // The group's pace is shared by its server IDs: one round each, run side by side.
        Some(ids) => {
            let pace = per_second / ids.len() as u32;
            // On the group's own thread, with the reclaims it sets off.
            let on = lockd
                .threads
                .handle(scope)
                .unwrap_or_else(tokio::runtime::Handle::current);
            for (name, addr) in ids {
                on.spawn(crate::notify::notify_round_as(
                    lockd.clone(),
                    targets.clone(),
                    state,
                    name.clone(),
                    Some(*addr),
                    pace,
                ));
            }
        }
        None => {
            tokio::spawn(crate::notify::notify_round_as(
                lockd.clone(),
                targets,
                state,
                lockd.name.clone(),
                None,
                per_second,
            ));
        }
    }
}

/// Takes up the state a group keeps on its own storage: its client list, its handle key,
/// and a new state number (returned). How its last stint online ended is logged: a crash
/// is a warning, a first online is not.
pub(crate) fn attach_storage(lockd: &Lockd, scope: ScopeId) -> io::Result<i32> {
    let Some(storage) = lockd.group_storage.get(&scope) else {
        return Err(io::Error::other(format!(
            "group {} has no storage",
            scope.0
        )));
    };
    let gs = GroupState::open(storage)?;
    let lease = gs.acquire_lease(&format!("{} pid {}", lockd.name, std::process::id()))?;
    let last = gs.take_last_offline()?;
    lockd.store.attach_group(scope, &gs.clients_dir())?;
    lockd.fhs.set_group_key(scope, gs.fh_key()?);
    let state = gs.advance()?;
    lockd
        .leases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(scope, (lease, state));
    match last {
        LastOffline::Never => info!(
            group = scope.0,
            state, "group online for the first time: its storage has no earlier state"
        ),
        LastOffline::Clean => info!(
            group = scope.0,
            state, "group state taken from its storage; last offline was clean"
        ),
        LastOffline::Unclean => warn!(
            group = scope.0,
            state,
            "group state taken from its storage; its last node did not take it offline cleanly"
        ),
    }
    Ok(state)
}

/// Every group this server knows: those of the exports and those with client lists.
pub(crate) fn all_scopes(lockd: &Lockd) -> Vec<ScopeId> {
    let mut s = lockd.exports.scopes();
    for g in lockd.store.groups() {
        if !s.contains(&g) {
            s.push(g);
        }
    }
    s
}

/// SM_SIMU_CRASH: what a crash and restart of this node's lock service would do, without
/// stopping. It concerns the groups served here: every remote lock and share is released
/// (only those groups have any), the node's state number advances, and each online group
/// enters its grace and notifies its clients, a group with storage under its own server
/// IDs and with its own state number, advanced on its storage. Offline groups, which
/// another node may be serving, are left alone: no grace, no notification in their name.
/// The client lists are kept: they say whom to notify.
pub(crate) fn restart_in_place(lockd: &Arc<Lockd>) -> io::Result<i32> {
    let hosts: Vec<_> = lockd.table.with(|t| {
        let hosts: Vec<_> = t.registry().hosts().map(|(h, _)| h).collect();
        for h in &hosts {
            t.release_host(*h, Release::Abnormal);
        }
        hosts
    });
    {
        let mut shares = lockd.shares();
        for h in hosts {
            shares.release_host(h);
        }
    }
    lockd.pending().clear();
    let state = lockd.store.advance()?;
    let served: Vec<ScopeId> = all_scopes(lockd)
        .into_iter()
        .filter(|s| !lockd.is_offline(*s))
        .collect();
    let (moving, fixed): (Vec<ScopeId>, Vec<ScopeId>) = served
        .iter()
        .partition(|s| lockd.group_storage.contains_key(s));
    let mut group_states = Vec::new();
    for s in &moving {
        group_states.push((*s, advance_group_state(lockd, *s)?));
    }
    for s in &served {
        start_grace(lockd, *s);
    }
    notify_clients(lockd, &fixed);
    for (s, st) in group_states {
        notify_group(lockd, s, st, lockd.policy.notify_per_second);
    }
    Ok(state)
}

/// Advances the state number a group keeps on its storage, for a group served here, and
/// remembers it beside the group's lease.
fn advance_group_state(lockd: &Lockd, scope: ScopeId) -> io::Result<i32> {
    let Some(storage) = lockd.group_storage.get(&scope) else {
        return Err(io::Error::other(format!(
            "group {} has no storage",
            scope.0
        )));
    };
    let state = GroupState::open(storage)?.advance()?;
    if let Some(e) = lockd
        .leases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&scope)
    {
        e.1 = state;
    }
    Ok(state)
}

/// The groups a notification sent to this node's address `to` concerns: those whose
/// server IDs include `to`; when `to` is none of them, the groups without server IDs
/// (reached at the node's own addresses); every group when the address it reached is not
/// known (a datagram to a wildcard socket).
pub(crate) fn groups_reached(lockd: &Lockd, to: IpAddr) -> Option<Vec<ScopeId>> {
    let to = to.to_canonical();
    if to.is_unspecified() {
        return None;
    }
    let by_id: Vec<ScopeId> = lockd
        .server_ids
        .iter()
        .filter(|(_, ids)| ids.iter().any(|(_, a)| a.to_canonical() == to))
        .map(|(s, _)| *s)
        .collect();
    if !by_id.is_empty() {
        return Some(by_id);
    }
    Some(
        all_scopes(lockd)
            .into_iter()
            .filter(|s| lockd.server_ids.get(s).is_none_or(|ids| ids.is_empty()))
            .collect(),
    )
}

/// Whose reboot a notification announces, once its sender is checked against the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sender {
    /// The named host, on record at the sender's address: its state may be released.
    Host(String),
    /// This server itself (its own name, or its own state from a local address): a
    /// notification lockfs sent that came back through a local portmapper.
    Ourselves,
    /// The named host is on record, but not at the sender's address.
    Mismatch(Vec<IpAddr>),
    /// Not named, and several hosts are on record at the sender's address.
    Ambiguous(Vec<String>),
    /// Nobody on record by that name or at that address.
    Unknown,
}

/// Decides who sent a reboot notification naming `mon_name` with `state` from `from`.
///
/// Only a host itself may end its locks, and NSM has no authentication but the source
/// address. So a named host on a client list is believed only from an address on record
/// for it (the addresses its NLM requests came from). A name that is on no list is matched
/// by address only when exactly one host is on record there and the address is not a
/// loopback one, which every program of this machine shares, lockfs itself included.
pub(crate) fn judge_sender(lockd: &Lockd, mon_name: &str, state: i32, from: IpAddr) -> Sender {
    if mon_name.eq_ignore_ascii_case(&lockd.name)
        || lockd
            .server_ids
            .values()
            .flatten()
            .any(|(n, _)| n.eq_ignore_ascii_case(mon_name))
    {
        return Sender::Ourselves;
    }
    if let Some((name, addrs)) = lockd.store.record(mon_name) {
        return if addrs.contains(&from) {
            Sender::Host(name)
        } else {
            Sender::Mismatch(addrs)
        };
    }
    if from.is_loopback() {
        if state == lockd.state() {
            return Sender::Ourselves;
        }
        return Sender::Unknown;
    }
    let names = lockd.store.names_at(from);
    match names.len() {
        0 => Sender::Unknown,
        1 => Sender::Host(names.into_iter().next().unwrap_or_default()),
        _ => Sender::Ambiguous(names),
    }
}

/// SM_NOTIFY from `mon_name` (sent from `from` to this node's address `to`): it rebooted
/// with state `state`. Its state is released in the groups the notification reached
/// ([`groups_reached`]) and nowhere else: a client notifies each server it monitored,
/// each group under the server ID it knows the group by, so a notice that reached one
/// group says nothing about what the host holds in another.
pub(crate) fn peer_rebooted(
    lockd: &Arc<Lockd>,
    mon_name: &str,
    state: i32,
    from: IpAddr,
    to: IpAddr,
) {
    match judge_sender(lockd, mon_name, state, from) {
        Sender::Ourselves => {
            info!(client = mon_name, %from, state, "SM_NOTIFY from this server itself ignored");
            return;
        }
        Sender::Mismatch(on_record) => {
            warn!(client = mon_name, %from, state, ?on_record, "SM_NOTIFY from an address not on record for that host; refused, nothing released");
            return;
        }
        Sender::Ambiguous(hosts) => {
            warn!(client = mon_name, %from, state, ?hosts, "SM_NOTIFY names no listed host and several hosts share its address; refused, nothing released");
            return;
        }
        Sender::Unknown => {
            info!(client = mon_name, %from, state, "SM_NOTIFY from a host that holds nothing here");
        }
        Sender::Host(name) => {
            let groups = groups_reached(lockd, to);
            info!(client = mon_name, %from, %to, state, host = %name, groups = ?groups.as_ref().map(|g| g.iter().map(|s| s.0).collect::<Vec<_>>()), "peer rebooted");
            lockd.release_host_in(&name, groups.as_deref(), Release::Abnormal);
        }
    }
    for m in lockd.store.monitors_of(mon_name) {
        tokio::spawn(status_callback(lockd.clone(), m, state));
    }
}

async fn status_callback(lockd: Arc<Lockd>, m: Monitor, state: i32) {
    let pol = &lockd.policy;
    let args = Status {
        mon_name: m.mon_name.clone(),
        state,
        priv_: m.priv_,
    };
    let mut backoff = pol.initial_backoff;
    for _ in 0..5 {
        let r = async {
            let c = connect_udp(m.caller, m.my_prog, m.my_vers, pol).await?;
            c.call_raw(m.my_prog, m.my_vers, m.my_proc, &to_bytes(&args))
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match r {
            Ok(_) => return,
            Err(e) => {
                debug!(monitor = %m.my_name, error = %e, "status callback failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(pol.max_backoff);
            }
        }
    }
    warn!(monitor = %m.my_name, host = %m.mon_name, "status callback not delivered");
}

/// Stops or resumes answering for a group's exports on this node, and nothing else: its
/// locks, shares and lease stay. Taking a group offline starts with this, so nothing new
/// is granted while its mounts are released, before [`group_offline`] empties it and lets
/// its lease go; resuming undoes it when a mount could not be released.
pub fn set_group_refused(lockd: &Lockd, scope: ScopeId, refused: bool) {
    lockd.set_offline(scope, refused);
}

/// Takes a service group offline on this node: its exports' requests are refused, every
/// lock, waiter and share in them is released (its client list stays, for whoever brings
/// it online), their roots are closed, and, for a group with storage, a clean offline is
/// recorded there.
pub fn group_offline(lockd: &Lockd, scope: ScopeId) -> io::Result<()> {
    let has_storage = lockd.group_storage.contains_key(&scope);
    if has_storage && lockd.is_offline(scope) && lockd.group_state(scope).is_none() {
        return Ok(());
    }
    // Refused first, so nothing new is granted while the group is being emptied.
    lockd.set_offline(scope, true);
    let r = lockd
        .table
        .with(|t| t.release_scope(scope, Release::Abnormal));
    let shares = lockd.shares().release_scope(scope);
    for e in lockd.exports.of_group(scope) {
        e.close();
    }
    lockd.forget_nfs_files(scope);
    if let Some(storage) = lockd.group_storage.get(&scope) {
        GroupState::open(storage)?.record_clean_offline()?;
        // Last: the next node may take the group only once everything here is let go.
        lockd
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&scope);
    }
    info!(
        group = scope.0,
        files = r.files,
        waiters = r.waiters,
        shares,
        "group offline"
    );
    Ok(())
}

/// Brings a service group online: a new state number, grace for this group alone, and
/// SM_NOTIFY to its clients. Returns the new state.
///
/// A group with storage that is online here already is left as it is (its state returned):
/// a cluster manager's start may be repeated.
pub fn group_online(lockd: &Arc<Lockd>, scope: ScopeId) -> io::Result<i32> {
    if lockd.group_storage.contains_key(&scope) && !lockd.is_offline(scope) {
        if let Some(state) = lockd.group_state(scope) {
            return Ok(state);
        }
    }
    for e in lockd.exports.of_group(scope) {
        e.reopen().map_err(io::Error::other)?;
    }
    // Handles resolve to (device, inode): the storage may have been mounted anew.
    lockd.fhs.clear_cache();
    lockd.forget_nfs_files(scope);
    let state = if lockd.group_storage.contains_key(&scope) {
        attach_storage(lockd, scope)?
    } else {
        lockd.store.advance()?
    };
    start_grace(lockd, scope);
    // Served from here on: its grace is in place, so only reclaims are granted.
    lockd.set_offline(scope, false);
    notify_group(lockd, scope, state, lockd.policy.group_notify_per_second);
    info!(group = scope.0, state, "group online");
    Ok(state)
}
