//! One traced event as a JSON object (`lockfs trace --json`).

use lockfs_trace::{Event, EventKind, KernelPoint, WaitEndReason, TO_EOF};
use serde_json::{json, Value};

use super::view::{lock_name, owner_name, source_name};

fn kind_name(k: EventKind) -> &'static str {
    k.name()
}

fn reason_name(r: WaitEndReason) -> Option<&'static str> {
    Some(match r {
        WaitEndReason::None => return None,
        WaitEndReason::Granted => "granted",
        WaitEndReason::Cancelled => "cancelled",
        WaitEndReason::Interrupted => "interrupted",
        WaitEndReason::TimedOut => "timed_out",
        WaitEndReason::Failed => "failed",
        WaitEndReason::Ended => "ended",
    })
}

fn point_name(p: KernelPoint) -> Option<String> {
    (p != KernelPoint::None).then(|| format!("{p:?}"))
}

/// The event with every field named; `end` is `null` for "to end of file".
pub fn event(ev: &Event, path: Option<&str>) -> Value {
    let mut v = json!({
        "ts_ns": ev.ts_ns,
        "source": source_name(ev.source),
        "kind": kind_name(ev.kind),
        "dev": ev.dev,
        "ino": ev.ino,
        "start": ev.start,
        "end": (ev.end != TO_EOF).then_some(ev.end),
        "lock": lock_name(ev.lock_type),
        "owner": owner_name(ev.owner_kind),
        "pid": ev.pid,
        "tgid": ev.tgid,
        "waiter": ev.waiter,
    });
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    if let Some(p) = path {
        obj.insert("path".into(), p.into());
    }
    if let Some(point) = point_name(ev.point) {
        obj.insert("point".into(), point.into());
    }
    if ev.kind == EventKind::WaitEnded {
        obj.insert("reason".into(), reason_name(ev.wait_reason).into());
        obj.insert(
            "wait_ns".into(),
            ev.wait
                .map(|w| w.as_nanos().min(u64::MAX as u128) as u64)
                .into(),
        );
    }
    if !ev.host.is_empty() {
        obj.insert("host".into(), ev.host.clone().into());
    }
    if ev.ret != 0 {
        obj.insert("ret".into(), ev.ret.into());
    }
    if ev.caller_ts_ns != 0 {
        obj.insert("caller_ts_ns".into(), ev.caller_ts_ns.into());
    }
    v
}
