//! NLM (network lock manager, program 100021) wire types and procedure numbers.
//!
//! Versions 1 and 3 follow X/Open XNFS (`nlm_prot.x`): 32-bit offsets and lengths and the
//! five `nlm_stats` values. Version 4 follows RFC 1813 appendix II: 64-bit offsets and
//! lengths and ten `nlm4_stats` values. The two families have the same shapes, so they are
//! generated from one description into [`v3`] (serving versions 1 and 3) and [`v4`], with
//! the same type names in each. No value is converted between families here: what a
//! 64-bit lock looks like to a 32-bit client is a decision of the procedure layer.
//!
//! Limits applied on decode: caller names `LM_MAXSTRLEN` (1024), netobj cookies and owner
//! handles `MAXNETOBJ_SZ` (1024), `nlm_notify` names `LM_MAXNAMELEN` (1025), file handles
//! [`NLM3_FH_MAX`] (an NFS version 2 handle) and [`NLM4_FH_MAX`] (an NFS version 3 handle).

/// NLM program number.
pub const NLM_PROG: u32 = 100_021;
/// Version 1 (XNFS `NLM_VERS`): procedures 0..=15.
pub const NLM_VERS: u32 = 1;
/// Version 3 (XNFS `NLM_VERSX`): version 1 plus SHARE, UNSHARE, NM_LOCK, FREE_ALL.
pub const NLM_VERSX: u32 = 3;
/// Version 4 (RFC 1813): 64-bit offsets.
pub const NLM4_VERS: u32 = 4;

/// Longest caller name.
pub const LM_MAXSTRLEN: usize = 1024;
/// Longest `nlm_notify` name (`MAXNAMELEN` in `nlm_prot.x`).
pub const LM_MAXNAMELEN: usize = LM_MAXSTRLEN + 1;
/// Longest netobj (cookies, owner handles).
pub const MAXNETOBJ_SZ: usize = 1024;
/// Longest file handle in versions 1 and 3: the NFS version 2 handle size.
pub const NLM3_FH_MAX: usize = 32;
/// Longest file handle in version 4: the NFS version 3 handle size (`NFS3_FHSIZE`).
pub const NLM4_FH_MAX: usize = 64;

/// Procedure numbers; identical in all versions (20..=23 exist from version 3 on).
pub mod proc_ {
    pub const NULL: u32 = 0;
    pub const TEST: u32 = 1;
    pub const LOCK: u32 = 2;
    pub const CANCEL: u32 = 3;
    pub const UNLOCK: u32 = 4;
    pub const GRANTED: u32 = 5;
    pub const TEST_MSG: u32 = 6;
    pub const LOCK_MSG: u32 = 7;
    pub const CANCEL_MSG: u32 = 8;
    pub const UNLOCK_MSG: u32 = 9;
    pub const GRANTED_MSG: u32 = 10;
    pub const TEST_RES: u32 = 11;
    pub const LOCK_RES: u32 = 12;
    pub const CANCEL_RES: u32 = 13;
    pub const UNLOCK_RES: u32 = 14;
    pub const GRANTED_RES: u32 = 15;
    /// Not in XNFS or RFC 1813: Linux's lockd asks its statd to call this procedure with an
    /// NSM `status` ([`crate::proto::nsm::Status`]) when a monitored host reboots.
    pub const NSM_NOTIFY: u32 = 16;
    pub const SHARE: u32 = 20;
    pub const UNSHARE: u32 = 21;
    pub const NM_LOCK: u32 = 22;
    pub const FREE_ALL: u32 = 23;
}

crate::xdr_enum! {
    /// Share deny mode (`fsh_mode`, `fsh4_mode`).
    pub enum FshMode {
        DenyNone = 0,
        DenyRead = 1,
        DenyWrite = 2,
        DenyReadWrite = 3,
    }
}

crate::xdr_enum! {
    /// Share access mode (`fsh_access`, `fsh4_access`).
    pub enum FshAccess {
        None = 0,
        Read = 1,
        Write = 2,
        ReadWrite = 3,
    }
}

macro_rules! nlm_family {
    ($off:ty, $fh_max:expr) => {
        use super::{FshAccess, FshMode, LM_MAXNAMELEN, LM_MAXSTRLEN, MAXNETOBJ_SZ};
        use crate::xdr::{Decoder, Encoder, XdrDecode, XdrEncode, XdrError};

        /// Largest file handle of this family.
        pub const FH_MAX: usize = $fh_max;

        crate::xdr_struct! {
            /// The holder of a conflicting lock, returned by TEST.
            pub struct Holder {
                pub exclusive: bool [xdr],
                pub svid: i32 [xdr],
                pub oh: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub l_offset: $off [xdr],
                pub l_len: $off [xdr],
            }
        }

        /// `testrply`: the conflicting holder when the status is DENIED.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum TestReply {
            Denied(Holder),
            /// Any status but DENIED. `Other(Stats::Denied)` is encoded as DENIED with an
            /// empty holder, since the union requires one.
            Other(Stats),
        }

        impl XdrEncode for TestReply {
            fn encode(&self, enc: &mut Encoder) {
                match self {
                    TestReply::Denied(h) => {
                        Stats::Denied.encode(enc);
                        h.encode(enc);
                    }
                    TestReply::Other(Stats::Denied) => {
                        Stats::Denied.encode(enc);
                        Holder {
                            exclusive: false,
                            svid: 0,
                            oh: Vec::new(),
                            l_offset: 0,
                            l_len: 0,
                        }
                        .encode(enc);
                    }
                    TestReply::Other(s) => s.encode(enc),
                }
            }
        }

        impl XdrDecode for TestReply {
            fn decode(dec: &mut Decoder<'_>) -> Result<Self, XdrError> {
                Ok(match Stats::decode(dec)? {
                    Stats::Denied => TestReply::Denied(Holder::decode(dec)?),
                    s => TestReply::Other(s),
                })
            }
        }

        crate::xdr_struct! {
            /// Result of LOCK, CANCEL, UNLOCK, GRANTED, NM_LOCK and of the `*_RES` messages.
            pub struct Res {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub stat: Stats [xdr],
            }
        }

        crate::xdr_struct! {
            /// Result of TEST.
            pub struct TestRes {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub stat: TestReply [xdr],
            }
        }

        crate::xdr_struct! {
            /// A lock as described by the client.
            pub struct Lock {
                pub caller_name: String [string LM_MAXSTRLEN],
                pub fh: Vec<u8> [opaque FH_MAX],
                pub oh: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub svid: i32 [xdr],
                pub l_offset: $off [xdr],
                pub l_len: $off [xdr],
            }
        }

        crate::xdr_struct! {
            /// Arguments of LOCK, LOCK_MSG and NM_LOCK.
            pub struct LockArgs {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub block: bool [xdr],
                pub exclusive: bool [xdr],
                pub alock: Lock [xdr],
                pub reclaim: bool [xdr],
                pub state: i32 [xdr],
            }
        }

        crate::xdr_struct! {
            /// Arguments of CANCEL and CANCEL_MSG.
            pub struct CancArgs {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub block: bool [xdr],
                pub exclusive: bool [xdr],
                pub alock: Lock [xdr],
            }
        }

        crate::xdr_struct! {
            /// Arguments of TEST, TEST_MSG, GRANTED and GRANTED_MSG.
            pub struct TestArgs {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub exclusive: bool [xdr],
                pub alock: Lock [xdr],
            }
        }

        crate::xdr_struct! {
            /// Arguments of UNLOCK and UNLOCK_MSG.
            pub struct UnlockArgs {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub alock: Lock [xdr],
            }
        }

        crate::xdr_struct! {
            /// A share reservation (DOS-style open mode).
            pub struct Share {
                pub caller_name: String [string LM_MAXSTRLEN],
                pub fh: Vec<u8> [opaque FH_MAX],
                pub oh: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub mode: FshMode [xdr],
                pub access: FshAccess [xdr],
            }
        }

        crate::xdr_struct! {
            /// Arguments of SHARE and UNSHARE.
            pub struct ShareArgs {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub share: Share [xdr],
                pub reclaim: bool [xdr],
            }
        }

        crate::xdr_struct! {
            /// Result of SHARE and UNSHARE.
            pub struct ShareRes {
                pub cookie: Vec<u8> [opaque MAXNETOBJ_SZ],
                pub stat: Stats [xdr],
                pub sequence: i32 [xdr],
            }
        }

        crate::xdr_struct! {
            /// Argument of FREE_ALL: the client host that rebooted and its new NSM state.
            pub struct Notify {
                pub name: String [string LM_MAXNAMELEN],
                pub state: i32 [xdr],
            }
        }
    };
}

/// NLM versions 1 and 3 (XNFS): 32-bit offsets.
pub mod v3 {
    crate::xdr_enum! {
        /// `nlm_stats`.
        pub enum Stats {
            Granted = 0,
            Denied = 1,
            DeniedNolocks = 2,
            Blocked = 3,
            DeniedGracePeriod = 4,
            /// Not in XNFS, but sent by Sun-derived and BSD servers as `nlm_deadlck`.
            Deadlck = 5,
        }
    }

    nlm_family!(u32, super::NLM3_FH_MAX);
}

/// NLM version 4 (RFC 1813): 64-bit offsets.
///
/// RFC 1813 prints `nlm4_notify.state` as `int64`, but every implementation (and the
/// kernel's own XDR description) sends a 32-bit int; lockd-user follows the wire.
pub mod v4 {
    crate::xdr_enum! {
        /// `nlm4_stats`.
        pub enum Stats {
            Granted = 0,
            Denied = 1,
            DeniedNolocks = 2,
            Blocked = 3,
            DeniedGracePeriod = 4,
            Deadlck = 5,
            Rofs = 6,
            StaleFh = 7,
            Fbig = 8,
            Failed = 9,
        }
    }

    nlm_family!(u64, super::NLM4_FH_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::{from_bytes, to_bytes, XdrError};

    fn lock4() -> v4::Lock {
        v4::Lock {
            caller_name: "client1".into(),
            fh: vec![0xab; 64],
            oh: b"owner@client1".to_vec(),
            svid: 4242,
            l_offset: 1 << 40,
            l_len: u64::MAX,
        }
    }

    #[test]
    fn v4_lockargs_layout() {
        let a = v4::LockArgs {
            cookie: vec![1, 2, 3],
            block: true,
            exclusive: false,
            alock: lock4(),
            reclaim: false,
            state: 3,
        };
        let b = to_bytes(&a);
        // cookie(4+4) block exclusive | name(4+8) fh(4+64) oh(4+16) svid off(8) len(8) | reclaim state
        assert_eq!(b.len(), 8 + 4 + 4 + 12 + 68 + 20 + 4 + 8 + 8 + 4 + 4);
        assert_eq!(&b[..8], &[0, 0, 0, 3, 1, 2, 3, 0]);
        assert_eq!(&b[8..16], &[0, 0, 0, 1, 0, 0, 0, 0]);
        let off = 8 + 8 + 12 + 68 + 20 + 4;
        assert_eq!(&b[off..off + 8], &(1u64 << 40).to_be_bytes());
        assert_eq!(from_bytes::<v4::LockArgs>(&b).unwrap(), a);
    }

    #[test]
    fn v3_uses_32_bit_offsets_and_small_handles() {
        let l = v3::Lock {
            caller_name: "c".into(),
            fh: vec![7; 32],
            oh: vec![],
            svid: -1,
            l_offset: 10,
            l_len: 0,
        };
        let b = to_bytes(&l);
        assert_eq!(b.len(), 8 + 36 + 4 + 4 + 4 + 4);
        assert_eq!(from_bytes::<v3::Lock>(&b).unwrap(), l);
        let too_big = v3::Lock {
            fh: vec![7; 33],
            ..l
        };
        assert_eq!(
            from_bytes::<v3::Lock>(&to_bytes(&too_big)),
            Err(XdrError::TooLong { len: 33, max: 32 })
        );
        // A v4 handle of 64 bytes is fine, 65 is not.
        let mut l4 = lock4();
        l4.fh = vec![0; 65];
        assert!(from_bytes::<v4::Lock>(&to_bytes(&l4)).is_err());
    }

    #[test]
    fn limits_on_names_and_netobjs() {
        let mut l = lock4();
        l.caller_name = "x".repeat(LM_MAXSTRLEN);
        assert!(from_bytes::<v4::Lock>(&to_bytes(&l)).is_ok());
        l.caller_name.push('x');
        assert!(matches!(
            from_bytes::<v4::Lock>(&to_bytes(&l)),
            Err(XdrError::TooLong {
                len: 1025,
                max: 1024
            })
        ));
        let n = v4::Notify {
            name: "n".repeat(LM_MAXNAMELEN),
            state: 5,
        };
        assert_eq!(from_bytes::<v4::Notify>(&to_bytes(&n)).unwrap(), n);
        let r = v4::Res {
            cookie: vec![0; MAXNETOBJ_SZ + 1],
            stat: v4::Stats::Granted,
        };
        assert!(from_bytes::<v4::Res>(&to_bytes(&r)).is_err());
    }

    #[test]
    fn stats_values() {
        assert_eq!(v4::Stats::Failed.to_wire(), 9);
        assert_eq!(v4::Stats::StaleFh.to_wire(), 7);
        assert_eq!(v4::Stats::ALL.len(), 10);
        assert!(v3::Stats::from_wire(6).is_err());
        assert!(v4::Stats::from_wire(10).is_err());
    }

    #[test]
    fn testres_union() {
        let denied = v4::TestRes {
            cookie: vec![9],
            stat: v4::TestReply::Denied(v4::Holder {
                exclusive: true,
                svid: 7,
                oh: b"oh".to_vec(),
                l_offset: 5,
                l_len: 6,
            }),
        };
        let b = to_bytes(&denied);
        assert_eq!(b.len(), 8 + 4 + 4 + 4 + 8 + 8 + 8);
        assert_eq!(from_bytes::<v4::TestRes>(&b).unwrap(), denied);
        let granted = v3::TestRes {
            cookie: vec![],
            stat: v3::TestReply::Other(v3::Stats::Granted),
        };
        let b = to_bytes(&granted);
        assert_eq!(b, vec![0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(from_bytes::<v3::TestRes>(&b).unwrap(), granted);
        let odd = v3::TestRes {
            cookie: vec![],
            stat: v3::TestReply::Other(v3::Stats::Denied),
        };
        assert!(matches!(
            from_bytes::<v3::TestRes>(&to_bytes(&odd)).unwrap().stat,
            v3::TestReply::Denied(_)
        ));
    }

    #[test]
    fn share_round_trip() {
        let s = v4::ShareArgs {
            cookie: vec![1],
            share: v4::Share {
                caller_name: "h".into(),
                fh: vec![1; 20],
                oh: vec![2; 3],
                mode: FshMode::DenyWrite,
                access: FshAccess::ReadWrite,
            },
            reclaim: true,
        };
        assert_eq!(from_bytes::<v4::ShareArgs>(&to_bytes(&s)).unwrap(), s);
        let r = v3::ShareRes {
            cookie: vec![1],
            stat: v3::Stats::DeniedGracePeriod,
            sequence: -3,
        };
        assert_eq!(from_bytes::<v3::ShareRes>(&to_bytes(&r)).unwrap(), r);
    }
}
