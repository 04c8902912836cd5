//! `lockfs demo`: a narrated walk through the lock table and the share
//! table, showing locks granted, refused, queued and woken, a deadlock
//! refused, grace, and a value block going stale after a crash. It drives
//! the same library calls the front doors use.

use lock_table::*;
use serde::Serialize;
use share_reservations::{ShareAccess, ShareDeny, ShareMode, ShareRequest, ShareTable};
use std::sync::{Arc, Mutex};

/// One line of the walk: what was asked and what the table answered.
#[derive(Serialize)]
pub struct Step {
    pub ask: String,
    pub answer: String,
}

struct Demo {
    table: SharedTable,
    events: Arc<Mutex<Vec<Event>>>,
    steps: Vec<Step>,
}

fn describe_outcome(out: &LockOutcome) -> String {
    match out {
        LockOutcome::Granted => "granted".into(),
        LockOutcome::Queued(id) => format!("queued as waiter {}", id.0),
        LockOutcome::Refused(Refusal::Conflict(h)) => format!(
            "refused: conflicts with {:?} lock {} held by pid {}",
            h.kind, h.range, h.pid
        ),
        LockOutcome::Refused(r) => format!("refused: {r:?}"),
    }
}

impl Demo {
    fn step(&mut self, ask: impl Into<String>, answer: impl Into<String>) {
        self.steps.push(Step {
            ask: ask.into(),
            answer: answer.into(),
        });
    }

    fn lock(&mut self, who: &str, req: LockRequest) -> LockOutcome {
        let out = self.table.lock(&req);
        let mut answer = describe_outcome(&out);
        for e in self.events.lock().unwrap().drain(..) {
            answer.push_str(&format!("; woke token {}", e.token()));
        }
        let wait = if matches!(req.wait, Wait::Yes { .. }) {
            " (waiting)"
        } else {
            ""
        };
        self.step(
            format!("{who}: {:?} lock {}{wait}", req.kind, req.range),
            answer,
        );
        out
    }

    fn unlock(&mut self, who: &str, file: FileId, owner: Owner, range: Range) {
        self.table.with(|t| t.unlock(file, owner, range));
        let woke: Vec<String> = self
            .events
            .lock()
            .unwrap()
            .drain(..)
            .map(|e| match e {
                Event::Granted {
                    token, range, kind, ..
                } => {
                    format!("granted waiting {kind:?} {range} (token {token})")
                }
                Event::Dropped { token, .. } => format!("dropped token {token}"),
            })
            .collect();
        let answer = if woke.is_empty() {
            "unlocked".to_string()
        } else {
            format!("unlocked; {}", woke.join(", "))
        };
        self.step(format!("{who}: unlock {range}"), answer);
    }
}

fn req(
    file: FileId,
    owner: Owner,
    pid: u32,
    kind: LockKind,
    s: u64,
    len: u64,
    wait: Wait,
) -> LockRequest {
    LockRequest {
        file,
        scope: ScopeId::DEFAULT,
        owner,
        pid,
        kind,
        range: Range::from_len(s, len).expect("demo ranges are valid"),
        wait,
        reclaim: false,
    }
}

/// Run the walk and return its steps.
pub fn run() -> Vec<Step> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut d = Demo {
        table: SharedTable::new(move |e: Event| sink.lock().unwrap().push(e)),
        events,
        steps: Vec::new(),
    };
    let f = FileId::new(1, 1001);
    let g = FileId::new(1, 1002);
    let (a, b, c) = (Owner::posix(1), Owner::posix(2), Owner::posix(3));

    d.lock(
        "pid 101",
        req(f, a, 101, LockKind::Shared, 0, 100, Wait::No),
    );
    d.lock(
        "pid 102",
        req(f, b, 102, LockKind::Shared, 50, 100, Wait::No),
    );
    d.lock(
        "pid 103",
        req(f, c, 103, LockKind::Exclusive, 90, 10, Wait::No),
    );
    d.lock(
        "pid 103",
        req(
            f,
            c,
            103,
            LockKind::Exclusive,
            90,
            10,
            Wait::Yes { token: 103 },
        ),
    );
    d.lock(
        "pid 104 (holds nothing)",
        req(
            f,
            Owner::posix(4),
            104,
            LockKind::Shared,
            95,
            1,
            Wait::Yes { token: 104 },
        ),
    );
    d.unlock("pid 101", f, a, Range::WHOLE);
    d.unlock("pid 102", f, b, Range::WHOLE);
    d.unlock("pid 103", f, c, Range::WHOLE);
    d.unlock("pid 104", f, Owner::posix(4), Range::WHOLE);

    // A deadlock: 101 holds f, 102 holds g, each wants the other's.
    d.lock(
        "pid 101 on file f",
        req(f, a, 101, LockKind::Exclusive, 0, 1, Wait::No),
    );
    d.lock(
        "pid 102 on file g",
        req(g, b, 102, LockKind::Exclusive, 0, 1, Wait::No),
    );
    d.lock(
        "pid 101 on file g",
        req(
            g,
            a,
            101,
            LockKind::Exclusive,
            0,
            1,
            Wait::Yes { token: 101 },
        ),
    );
    d.lock(
        "pid 102 on file f",
        req(
            f,
            b,
            102,
            LockKind::Exclusive,
            0,
            1,
            Wait::Yes { token: 102 },
        ),
    );
    d.table.with(|t| {
        t.release_owner(a, Release::Normal);
        t.release_owner(b, Release::Normal);
    });
    d.events.lock().unwrap().clear();

    // A value block written by a remote writer that then crashes.
    let (host, nlm) = d.table.with(|t| {
        let host = t.registry_mut().host("client.example");
        (host, t.registry_mut().nlm_owner(host, 7, b"oh"))
    });
    d.lock(
        "client.example svid 7",
        req(g, nlm, 7, LockKind::Exclusive, 0, 0, Wait::No),
    );
    let seq = d.table.with(|t| t.lvb_write(g, nlm, b"epoch=42"));
    d.step(
        "client.example: write value block \"epoch=42\"",
        format!("{seq:?}"),
    );
    d.table.with(|t| t.release_host(host, Release::Abnormal));
    let v = d.table.read(|t| t.lvb_peek(g));
    d.step(
        "client.example crashes; its locks are released",
        format!("value block now valid={} seq={}", v.valid, v.seq),
    );

    // Grace.
    d.table.with(|t| t.begin_grace(ScopeId::DEFAULT));
    d.lock(
        "pid 105 during grace",
        req(f, Owner::posix(5), 105, LockKind::Shared, 0, 1, Wait::No),
    );
    let mut reclaim = req(g, nlm, 7, LockKind::Exclusive, 0, 0, Wait::No);
    reclaim.reclaim = true;
    d.lock("client.example reclaim during grace", reclaim);
    d.table.with(|t| t.end_grace(ScopeId::DEFAULT));

    // Share reservations.
    let mut shares = ShareTable::new();
    let deny_write = ShareMode::new(ShareAccess::READ, ShareDeny::WRITE);
    let writer = ShareMode::new(ShareAccess::WRITE, ShareDeny::NONE);
    let r1 = shares.reserve(&ShareRequest {
        file: f,
        scope: ScopeId::DEFAULT,
        owner: Owner::ofd(1),
        pid: 201,
        mode: deny_write,
    });
    d.step(
        "pid 201: open for read, deny write",
        match r1 {
            Ok(()) => "granted".into(),
            Err(e) => format!("refused: {e}"),
        },
    );
    let r2 = shares.reserve(&ShareRequest {
        file: f,
        scope: ScopeId::DEFAULT,
        owner: Owner::ofd(2),
        pid: 202,
        mode: writer,
    });
    d.step(
        "pid 202: open for write",
        match r2 {
            Ok(()) => "granted".into(),
            Err(e) => format!("refused: {e}"),
        },
    );
    d.steps
}

/// Print the walk as text.
pub fn print(steps: &[Step]) {
    for s in steps {
        println!("{:<48} -> {}", s.ask, s.answer);
    }
}
