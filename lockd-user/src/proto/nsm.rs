//! NSM (network status monitor, program 100024 version 1) wire types and procedure numbers,
//! after X/Open XNFS chapter 11 (`sm_inter.x`), plus the `status` callback a status monitor
//! sends to the program that asked it to monitor a host.
//!
//! XNFS declares `my_prog`, `my_vers` and `my_proc` as `int`; they carry RPC program,
//! version and procedure numbers, so they are `u32` here (the wire bits are the same).

/// NSM program number.
pub const SM_PROG: u32 = 100_024;
/// The only NSM version.
pub const SM_VERS: u32 = 1;
/// Longest host name.
pub const SM_MAXSTRLEN: usize = 1024;
/// Size of the opaque cookie the monitoring program stores with a monitor.
pub const SM_PRIV_SIZE: usize = 16;

/// Procedure numbers.
pub mod proc_ {
    pub const NULL: u32 = 0;
    pub const STAT: u32 = 1;
    pub const MON: u32 = 2;
    pub const UNMON: u32 = 3;
    pub const UNMON_ALL: u32 = 4;
    pub const SIMU_CRASH: u32 = 5;
    /// Sent by a rebooted host's status monitor to the monitors of its peers.
    pub const NOTIFY: u32 = 6;
}

crate::xdr_enum! {
    /// `res`: whether the status monitor agrees to monitor.
    pub enum SmRes {
        Succ = 0,
        Fail = 1,
    }
}

crate::xdr_struct! {
    /// Argument of SM_STAT.
    pub struct SmName {
        pub mon_name: String [string SM_MAXSTRLEN],
    }
}

crate::xdr_struct! {
    /// Who to call back, and how, when a monitored host changes state.
    pub struct MyId {
        pub my_name: String [string SM_MAXSTRLEN],
        pub my_prog: u32 [xdr],
        pub my_vers: u32 [xdr],
        pub my_proc: u32 [xdr],
    }
}

crate::xdr_struct! {
    /// Argument of SM_UNMON: the monitored host and the caller's identity.
    pub struct MonId {
        pub mon_name: String [string SM_MAXSTRLEN],
        pub my_id: MyId [xdr],
    }
}

crate::xdr_struct! {
    /// Argument of SM_MON.
    pub struct Mon {
        pub mon_id: MonId [xdr],
        pub priv_: [u8; SM_PRIV_SIZE] [fixed SM_PRIV_SIZE],
    }
}

crate::xdr_struct! {
    /// Result of SM_STAT and SM_MON.
    pub struct SmStatRes {
        pub res_stat: SmRes [xdr],
        pub state: i32 [xdr],
    }
}

crate::xdr_struct! {
    /// Result of SM_UNMON and SM_UNMON_ALL: the local state number.
    pub struct SmStat {
        pub state: i32 [xdr],
    }
}

crate::xdr_struct! {
    /// Argument of SM_NOTIFY: a host and its new state number.
    pub struct StatChge {
        pub mon_name: String [string SM_MAXSTRLEN],
        pub state: i32 [xdr],
    }
}

crate::xdr_struct! {
    /// The callback (`status` in `sm_inter.x`) a status monitor sends to
    /// `my_prog`/`my_vers`/`my_proc` when a monitored host reports a new state.
    pub struct Status {
        pub mon_name: String [string SM_MAXSTRLEN],
        pub state: i32 [xdr],
        pub priv_: [u8; SM_PRIV_SIZE] [fixed SM_PRIV_SIZE],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::{from_bytes, to_bytes, XdrError};

    #[test]
    fn mon_layout_and_round_trip() {
        let m = Mon {
            mon_id: MonId {
                mon_name: "server".into(),
                my_id: MyId {
                    my_name: "localhost".into(),
                    my_prog: 100_021,
                    my_vers: 4,
                    my_proc: 16,
                },
            },
            priv_: *b"0123456789abcdef",
        };
        let b = to_bytes(&m);
        // name(4+8) | my_name(4+12) prog vers proc | priv(16, no length word)
        assert_eq!(b.len(), 12 + 16 + 12 + 16);
        assert_eq!(&b[b.len() - 16..], b"0123456789abcdef");
        assert_eq!(from_bytes::<Mon>(&b).unwrap(), m);
        assert!(matches!(
            from_bytes::<Mon>(&b[..b.len() - 1]),
            Err(XdrError::Truncated { .. })
        ));
    }

    #[test]
    fn results_and_notify() {
        let r = SmStatRes {
            res_stat: SmRes::Fail,
            state: 7,
        };
        assert_eq!(to_bytes(&r), vec![0, 0, 0, 1, 0, 0, 0, 7]);
        assert_eq!(from_bytes::<SmStatRes>(&to_bytes(&r)).unwrap(), r);
        assert!(from_bytes::<SmStatRes>(&[0, 0, 0, 2, 0, 0, 0, 7]).is_err());
        let n = StatChge {
            mon_name: "peer".into(),
            state: 9,
        };
        assert_eq!(from_bytes::<StatChge>(&to_bytes(&n)).unwrap(), n);
        let s = Status {
            mon_name: "peer".into(),
            state: 9,
            priv_: [3; 16],
        };
        assert_eq!(from_bytes::<Status>(&to_bytes(&s)).unwrap(), s);
        let long = SmName {
            mon_name: "a".repeat(SM_MAXSTRLEN + 1),
        };
        assert!(matches!(
            from_bytes::<SmName>(&to_bytes(&long)),
            Err(XdrError::TooLong { .. })
        ));
    }
}
