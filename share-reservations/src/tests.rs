//! Tests of the share-reservation rules.

use crate::*;
use lock_table::{FileId, Owner, ScopeId};

const F: FileId = FileId::new(1, 1);
const G: FileId = FileId::new(1, 2);

fn m(access: ShareAccess, deny: ShareDeny) -> ShareMode {
    ShareMode::new(access, deny)
}

fn req(file: FileId, owner: Owner, mode: ShareMode) -> ShareRequest {
    ShareRequest {
        file,
        scope: ScopeId::DEFAULT,
        owner,
        pid: 1,
        mode,
    }
}

fn open(n: u64) -> Owner {
    Owner::ofd(n)
}

#[test]
fn documented_matrix_matches_the_rule() {
    let doc = include_str!("matrix.md");
    let parse = |label: &str| -> ShareMode {
        let (a, d) = label.trim().trim_matches('*').split_once('/').unwrap();
        let bits = |s: &str| match s {
            "-" => 0,
            "R" => 1,
            "W" => 2,
            "RW" => 3,
            other => panic!("bad label {other}"),
        };
        m(
            ShareAccess::from_wire(bits(a)).unwrap(),
            ShareDeny::from_wire(bits(d)).unwrap(),
        )
    };
    let mut lines = doc.lines();
    let header: Vec<ShareMode> = lines
        .next()
        .unwrap()
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .skip(1)
        .map(parse)
        .collect();
    assert_eq!(header.len(), 16);
    lines.next();
    let mut rows = 0;
    for line in lines {
        let cells: Vec<&str> = line
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let held = parse(cells[0]);
        for (req, cell) in header.iter().zip(&cells[1..]) {
            let expect = if held.conflicts_with(req) {
                "✗"
            } else {
                "·"
            };
            assert_eq!(*cell, expect, "held {held}, requested {req}");
        }
        rows += 1;
    }
    assert_eq!(rows, 16);
}

#[test]
fn conflict_is_symmetric_and_follows_access_versus_deny() {
    for a1 in ShareAccess::ALL {
        for d1 in ShareDeny::ALL {
            for a2 in ShareAccess::ALL {
                for d2 in ShareDeny::ALL {
                    let (x, y) = (m(a1, d1), m(a2, d2));
                    assert_eq!(x.conflicts_with(&y), y.conflicts_with(&x));
                    let expect = (a1.reads() && d2.to_wire() & 1 != 0)
                        || (a1.writes() && d2.to_wire() & 2 != 0)
                        || (a2.reads() && d1.to_wire() & 1 != 0)
                        || (a2.writes() && d1.to_wire() & 2 != 0);
                    assert_eq!(x.conflicts_with(&y), expect, "{x} vs {y}");
                }
            }
        }
    }
}

#[test]
fn deny_write_blocks_later_writers_and_is_blocked_by_earlier_ones() {
    let mut t = ShareTable::new();
    t.reserve(&req(F, open(1), m(ShareAccess::READ, ShareDeny::WRITE)))
        .unwrap();
    // Plain opens are reservations with deny none.
    t.reserve(&req(F, open(2), m(ShareAccess::READ, ShareDeny::NONE)))
        .unwrap();
    let err = t
        .reserve(&req(F, open(3), m(ShareAccess::WRITE, ShareDeny::NONE)))
        .unwrap_err();
    assert_eq!(err.held.owner, open(1));
    assert!(t
        .reserve(&req(
            F,
            open(3),
            m(ShareAccess::READ_WRITE, ShareDeny::NONE)
        ))
        .is_err());

    let mut t = ShareTable::new();
    t.reserve(&req(F, open(1), m(ShareAccess::WRITE, ShareDeny::NONE)))
        .unwrap();
    let err = t
        .reserve(&req(F, open(2), m(ShareAccess::READ, ShareDeny::WRITE)))
        .unwrap_err();
    assert_eq!(err.held.owner, open(1));
    // Deny-read is fine against a writer.
    t.reserve(&req(F, open(2), m(ShareAccess::WRITE, ShareDeny::READ)))
        .unwrap();
}

#[test]
fn refusal_changes_nothing_and_files_are_independent() {
    let mut t = ShareTable::new();
    t.reserve(&req(
        F,
        open(1),
        m(ShareAccess::READ_WRITE, ShareDeny::READ_WRITE),
    ))
    .unwrap();
    assert!(t
        .reserve(&req(F, open(2), m(ShareAccess::NONE, ShareDeny::READ)))
        .is_err());
    assert_eq!(t.len(), 1);
    t.reserve(&req(
        G,
        open(2),
        m(ShareAccess::READ_WRITE, ShareDeny::READ_WRITE),
    ))
    .unwrap();
    // Access none with deny none never conflicts.
    t.reserve(&req(F, open(3), m(ShareAccess::NONE, ShareDeny::NONE)))
        .unwrap();
    assert_eq!(t.len(), 3);
}

#[test]
fn same_owner_replaces_its_reservation() {
    let mut t = ShareTable::new();
    let mut reg = lock_table::Registry::default();
    let host = reg.host("win-client");
    let o = reg.nlm_share_owner(host, b"handle");
    t.reserve(&req(F, o, m(ShareAccess::READ, ShareDeny::WRITE)))
        .unwrap();
    // Its own deny-write does not stop it from upgrading to write.
    t.reserve(&req(F, o, m(ShareAccess::READ_WRITE, ShareDeny::WRITE)))
        .unwrap();
    assert_eq!(t.on_file(F).len(), 1);
    assert_eq!(
        t.on_file(F)[0].mode,
        m(ShareAccess::READ_WRITE, ShareDeny::WRITE)
    );
    // A replacement that conflicts with another owner is refused and the
    // old reservation stays.
    t.reserve(&req(F, open(9), m(ShareAccess::NONE, ShareDeny::NONE)))
        .unwrap();
    t.reserve(&req(F, open(8), m(ShareAccess::READ, ShareDeny::NONE)))
        .unwrap();
    assert!(t
        .reserve(&req(F, o, m(ShareAccess::READ, ShareDeny::READ)))
        .is_err());
    assert_eq!(
        t.on_file(F).iter().find(|r| r.owner == o).unwrap().mode,
        m(ShareAccess::READ_WRITE, ShareDeny::WRITE)
    );
}

#[test]
fn bulk_release_by_owner_open_file_host_and_scope() {
    let mut t = ShareTable::new();
    let mut reg = lock_table::Registry::default();
    let a = reg.host("a");
    let b = reg.host("b");
    let a1 = reg.nlm_share_owner(a, b"1");
    let a2 = reg.nlm_share_owner(a, b"2");
    let b1 = reg.nlm_share_owner(b, b"1");
    let rd = m(ShareAccess::READ, ShareDeny::NONE);
    t.reserve(&req(F, a1, rd)).unwrap();
    t.reserve(&req(G, a2, rd)).unwrap();
    t.reserve(&req(F, b1, rd)).unwrap();
    t.reserve(&req(F, open(5), rd)).unwrap();
    t.reserve(&ShareRequest {
        scope: ScopeId(7),
        ..req(G, open(6), rd)
    })
    .unwrap();
    assert_eq!(t.release_host(a), 2);
    assert_eq!(t.release_open_file(5), 1);
    assert_eq!(t.release_scope(ScopeId(7)), 1);
    assert_eq!(t.snapshot().len(), 1);
    assert!(t.release(F, b1));
    assert!(!t.release(F, b1));
    assert!(t.is_empty());
}

#[test]
fn wire_values_are_checked() {
    assert_eq!(ShareAccess::from_wire(3), Some(ShareAccess::READ_WRITE));
    assert_eq!(ShareAccess::from_wire(4), None);
    assert_eq!(ShareDeny::from_wire(2), Some(ShareDeny::WRITE));
    assert_eq!(ShareDeny::from_wire(u32::MAX), None);
    assert_eq!(
        ShareAccess::from_open_flags(libc_o_rdwr()),
        ShareAccess::READ_WRITE
    );
    assert_eq!(ShareAccess::from_open_flags(0), ShareAccess::READ);
    assert_eq!(ShareAccess::from_open_flags(1 | 0o100), ShareAccess::WRITE);
}

fn libc_o_rdwr() -> i32 {
    2
}
