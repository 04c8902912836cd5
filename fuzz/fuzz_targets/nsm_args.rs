//! NSM (status monitor, program 100024) arguments and results: every procedure's decoder
//! on arbitrary bytes; whatever is accepted re-encodes to exactly the bytes it came from.
#![no_main]

mod common;

use common::{canonical, split};
use libfuzzer_sys::fuzz_target;
use lockd_user::proto::nsm::{Mon, MonId, MyId, SmName, SmStat, SmStatRes, StatChge, Status};

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = split(data) else {
        return;
    };
    match sel % 8 {
        // SM_STAT
        0 => drop(canonical::<SmName>(bytes)),
        // SM_MON
        1 => {
            if let Some(m) = canonical::<Mon>(bytes) {
                assert!(m.mon_id.mon_name.len() <= 1024 && m.mon_id.my_id.my_name.len() <= 1024);
            }
        }
        // SM_UNMON
        2 => drop(canonical::<MonId>(bytes)),
        // SM_UNMON_ALL
        3 => drop(canonical::<MyId>(bytes)),
        // SM_NOTIFY
        4 => drop(canonical::<StatChge>(bytes)),
        // the status callback (NLM procedure 16)
        5 => drop(canonical::<Status>(bytes)),
        // replies, decoded by our own client
        6 => drop(canonical::<SmStatRes>(bytes)),
        _ => drop(canonical::<SmStat>(bytes)),
    }
});
