//! What `lockfs locks` shows: every held and waiting lock and every share
//! reservation, with who holds it and where, like `lslocks`, and the value
//! blocks the daemon holds (loaded or changed since it started), with their
//! sequence numbers and validity.

use std::fmt::Write as _;
use std::path::Path;

use lock_table::{FileId, LockKind, LockState, Namespace, OwnerKind};
use serde::{Deserialize, Serialize};

use crate::context::LockContext;

/// One row of the listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRow {
    /// `POSIX`, `OFD`, `FLOCK`, `NLM`, `SHARE`, or `LVB` for a value block.
    pub kind: String,
    /// `held`, `waiting` (a lock request) or `waiting-io` (mandatory-locked I/O).
    pub state: String,
    /// Process id of a local holder (0 when unknown), svid of an NLM holder.
    pub pid: u32,
    /// The local holder's command name, from `/proc/<pid>/comm`.
    pub command: Option<String>,
    /// The remote host of an NLM holder.
    pub host: Option<String>,
    /// Where the file is reached now, if a mount knows it.
    pub path: Option<String>,
    /// The backing file's device and inode numbers.
    pub dev: u64,
    pub ino: u64,
    /// `READ` or `WRITE` for locks, the access/deny pair (`R/W`) for shares.
    pub mode: String,
    /// First byte of the lock.
    pub start: u64,
    /// Last byte of the lock; `None` means to end of file.
    pub end: Option<u64>,
    /// Share reservation access (`-`, `R`, `W`, `RW`).
    pub access: Option<String>,
    /// Share reservation deny (`-`, `R`, `W`, `RW`).
    pub deny: Option<String>,
    /// A value block's sequence number (number of sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Whether a value block is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
}

/// The command name of a local process, if it still exists.
pub fn command_of(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let c = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm")).ok()?;
    Some(c.trim_end().to_string())
}

fn kind_name(kind: OwnerKind, file: FileId) -> &'static str {
    if file.ns == Namespace::Flock {
        return "FLOCK";
    }
    match kind {
        OwnerKind::Posix => "POSIX",
        OwnerKind::Ofd => "OFD",
        OwnerKind::Flock => "FLOCK",
        OwnerKind::Nlm => "NLM",
        OwnerKind::NlmShare => "NLMSHARE",
    }
}

/// Every lock and share reservation of `ctx`'s tables.
pub fn list(ctx: &LockContext) -> Vec<LockRow> {
    let locks = ctx.table.read(|t| t.snapshot());
    let shares = ctx.shares().snapshot();
    let mut rows = Vec::with_capacity(locks.len() + shares.len());
    for l in locks {
        let real = FileId::new(l.file.dev, l.file.ino);
        let local = !l.owner.is_remote();
        rows.push(LockRow {
            kind: kind_name(l.owner.kind, l.file).to_string(),
            state: match l.state {
                LockState::Held => "held",
                LockState::Waiting { io: false, .. } => "waiting",
                LockState::Waiting { io: true, .. } => "waiting-io",
            }
            .to_string(),
            pid: l.pid,
            command: if local { command_of(l.pid) } else { None },
            host: l.host.clone(),
            path: ctx.path_of(real).map(|p| p.display().to_string()),
            dev: real.dev,
            ino: real.ino,
            mode: match l.kind {
                LockKind::Shared => "READ",
                LockKind::Exclusive => "WRITE",
            }
            .to_string(),
            start: l.range.start(),
            end: (!l.range.is_to_eof()).then(|| l.range.end()),
            access: None,
            deny: None,
            seq: None,
            valid: None,
        });
    }
    for (file, v) in ctx.table.read(|t| t.lvb_blocks()) {
        rows.push(LockRow {
            kind: "LVB".to_string(),
            state: if v.valid { "valid" } else { "not-valid" }.to_string(),
            pid: 0,
            command: None,
            host: None,
            path: ctx.path_of(file).map(|p| p.display().to_string()),
            dev: file.dev,
            ino: file.ino,
            mode: "-".to_string(),
            start: 0,
            end: None,
            access: None,
            deny: None,
            seq: Some(v.seq),
            valid: Some(v.valid),
        });
    }
    for s in shares {
        let r = s.reservation;
        let local = !r.owner.is_remote();
        rows.push(LockRow {
            kind: "SHARE".to_string(),
            state: "held".to_string(),
            pid: r.pid,
            command: if local { command_of(r.pid) } else { None },
            host: None,
            path: ctx.path_of(s.file).map(|p| p.display().to_string()),
            dev: s.file.dev,
            ino: s.file.ino,
            mode: r.mode.to_string(),
            start: 0,
            end: None,
            access: Some(r.mode.access.to_string()),
            deny: Some(r.mode.deny.to_string()),
            seq: None,
            valid: None,
        });
    }
    rows.sort_by(|a, b| (&a.path, a.dev, a.ino, a.start).cmp(&(&b.path, b.dev, b.ino, b.start)));
    rows
}

/// The rows as an `lslocks`-style table.
pub fn format_table(rows: &[LockRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>7} {:<8} {:<10} {:<6} {:>10} {:>10} PATH",
        "COMMAND", "PID", "TYPE", "STATE", "MODE", "START", "END"
    );
    for r in rows.iter().filter(|r| r.kind != "LVB") {
        let who = match (&r.host, &r.command) {
            (Some(h), _) => h.clone(),
            (None, Some(c)) => c.clone(),
            (None, None) => "-".to_string(),
        };
        let end = r.end.map_or("EOF".to_string(), |e| e.to_string());
        let path = r
            .path
            .clone()
            .unwrap_or_else(|| format!("[{}:{}]", r.dev, r.ino));
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:<8} {:<10} {:<6} {:>10} {:>10} {}",
            who, r.pid, r.kind, r.state, r.mode, r.start, end, path
        );
    }
    let blocks: Vec<&LockRow> = rows.iter().filter(|r| r.kind == "LVB").collect();
    if !blocks.is_empty() {
        let _ = writeln!(out, "\nVALUE BLOCKS\n{:>10} {:<10} PATH", "SEQ", "STATE");
        for r in blocks {
            let path = r
                .path
                .clone()
                .unwrap_or_else(|| format!("[{}:{}]", r.dev, r.ino));
            let _ = writeln!(out, "{:>10} {:<10} {}", r.seq.unwrap_or(0), r.state, path);
        }
    }
    out
}
