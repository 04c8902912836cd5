//! Property tests: random bytes never panic any decoder, and generated values survive an
//! encode/decode round trip unchanged (with every strict prefix rejected).

use lockd_user::portmap::{Mapping, Rpcb};
use lockd_user::proto::nlm::{self, v3, v4, FshAccess, FshMode};
use lockd_user::proto::nsm;
use lockd_user::record::read_record;
use lockd_user::rpc::{AuthSys, CallHeader, Credential, OpaqueAuth, ReplyHeader};
use lockd_user::xdr::{from_bytes, to_bytes, Decoder, XdrDecode, XdrEncode};
use proptest::prelude::*;
use std::fmt::Debug;

fn try_all<T: XdrDecode>(bytes: &[u8]) {
    let _ = from_bytes::<T>(bytes);
    let _ = T::decode(&mut Decoder::new(bytes));
}

fn decode_everything(bytes: &[u8]) {
    try_all::<v3::LockArgs>(bytes);
    try_all::<v3::CancArgs>(bytes);
    try_all::<v3::TestArgs>(bytes);
    try_all::<v3::UnlockArgs>(bytes);
    try_all::<v3::ShareArgs>(bytes);
    try_all::<v3::Notify>(bytes);
    try_all::<v3::Res>(bytes);
    try_all::<v3::TestRes>(bytes);
    try_all::<v3::ShareRes>(bytes);
    try_all::<v4::LockArgs>(bytes);
    try_all::<v4::CancArgs>(bytes);
    try_all::<v4::TestArgs>(bytes);
    try_all::<v4::UnlockArgs>(bytes);
    try_all::<v4::ShareArgs>(bytes);
    try_all::<v4::Notify>(bytes);
    try_all::<v4::Res>(bytes);
    try_all::<v4::TestRes>(bytes);
    try_all::<v4::ShareRes>(bytes);
    try_all::<nsm::SmName>(bytes);
    try_all::<nsm::MyId>(bytes);
    try_all::<nsm::MonId>(bytes);
    try_all::<nsm::Mon>(bytes);
    try_all::<nsm::SmStatRes>(bytes);
    try_all::<nsm::SmStat>(bytes);
    try_all::<nsm::StatChge>(bytes);
    try_all::<nsm::Status>(bytes);
    try_all::<Mapping>(bytes);
    try_all::<Rpcb>(bytes);
    try_all::<AuthSys>(bytes);
    try_all::<OpaqueAuth>(bytes);
    if let Ok(h) = CallHeader::decode(&mut Decoder::new(bytes)) {
        let _ = Credential::parse(&h.cred);
    }
    let _ = ReplyHeader::decode(&mut Decoder::new(bytes));
    let _ = Decoder::new(bytes).get_list::<Mapping>(1000);
    let _ = Decoder::new(bytes).get_array::<u64>(usize::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = bytes;
        while let Ok(Some(_)) = read_record(&mut r, 4096).await {}
    });
}

fn round_trip<T: XdrEncode + XdrDecode + PartialEq + Debug>(v: &T) {
    let b = to_bytes(v);
    assert_eq!(b.len() % 4, 0, "XDR is four-byte aligned");
    assert_eq!(&from_bytes::<T>(&b).unwrap(), v);
    for cut in [0, 1, b.len() / 2, b.len().saturating_sub(1)] {
        if cut < b.len() {
            assert!(
                from_bytes::<T>(&b[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn name(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::char::range('a', 'z'), 0..=max)
        .prop_map(|v| v.into_iter().collect())
}

fn lock4() -> impl Strategy<Value = v4::Lock> {
    (
        name(40),
        bytes(nlm::NLM4_FH_MAX),
        bytes(64),
        any::<i32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(caller_name, fh, oh, svid, l_offset, l_len)| v4::Lock {
            caller_name,
            fh,
            oh,
            svid,
            l_offset,
            l_len,
        })
}

fn lock3() -> impl Strategy<Value = v3::Lock> {
    (
        name(40),
        bytes(nlm::NLM3_FH_MAX),
        bytes(64),
        any::<i32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(caller_name, fh, oh, svid, l_offset, l_len)| v3::Lock {
            caller_name,
            fh,
            oh,
            svid,
            l_offset,
            l_len,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(b in bytes(600)) {
        decode_everything(&b);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        l in lock4(), pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()
    ) {
        let mut b = to_bytes(&v4::LockArgs {
            cookie: vec![1, 2, 3, 4],
            block: true,
            exclusive: true,
            alock: l,
            reclaim: false,
            state: 1,
        });
        let i = pos.index(b.len());
        b[i] = val;
        let c = cut.index(b.len() + 1);
        decode_everything(&b[..c]);
        let call = CallHeader::new(1, nlm::NLM_PROG, 4, 2, AuthSys::default().to_opaque()).to_message(&b);
        decode_everything(&call);
    }

    #[test]
    fn nlm4_round_trips(l in lock4(), cookie in bytes(nlm::MAXNETOBJ_SZ), f in any::<[bool; 3]>(), state in any::<i32>()) {
        round_trip(&v4::LockArgs { cookie: cookie.clone(), block: f[0], exclusive: f[1], alock: l.clone(), reclaim: f[2], state });
        round_trip(&v4::CancArgs { cookie: cookie.clone(), block: f[0], exclusive: f[1], alock: l.clone() });
        round_trip(&v4::TestArgs { cookie: cookie.clone(), exclusive: f[1], alock: l.clone() });
        round_trip(&v4::UnlockArgs { cookie: cookie.clone(), alock: l.clone() });
        round_trip(&v4::TestRes {
            cookie: cookie.clone(),
            stat: v4::TestReply::Denied(v4::Holder { exclusive: f[0], svid: l.svid, oh: l.oh.clone(), l_offset: l.l_offset, l_len: l.l_len }),
        });
        for s in v4::Stats::ALL {
            round_trip(&v4::Res { cookie: cookie.clone(), stat: *s });
            round_trip(&v4::ShareRes { cookie: cookie.clone(), stat: *s, sequence: state });
        }
        round_trip(&v4::ShareArgs {
            cookie,
            share: v4::Share { caller_name: l.caller_name, fh: l.fh, oh: l.oh, mode: FshMode::DenyReadWrite, access: FshAccess::Read },
            reclaim: f[2],
        });
    }

    #[test]
    fn nlm3_round_trips(l in lock3(), cookie in bytes(64), f in any::<[bool; 3]>(), state in any::<i32>()) {
        round_trip(&v3::LockArgs { cookie: cookie.clone(), block: f[0], exclusive: f[1], alock: l.clone(), reclaim: f[2], state });
        round_trip(&v3::TestRes { cookie: cookie.clone(), stat: v3::TestReply::Other(v3::Stats::Blocked) });
        round_trip(&v3::Notify { name: l.caller_name.clone(), state });
        round_trip(&v3::ShareArgs {
            cookie,
            share: v3::Share { caller_name: l.caller_name, fh: l.fh, oh: l.oh, mode: FshMode::DenyNone, access: FshAccess::Write },
            reclaim: f[2],
        });
    }

    #[test]
    fn nsm_round_trips(mon_name in name(100), my_name in name(100), ids in any::<[u32; 3]>(), priv_ in any::<[u8; 16]>(), state in any::<i32>()) {
        let my_id = nsm::MyId { my_name, my_prog: ids[0], my_vers: ids[1], my_proc: ids[2] };
        round_trip(&my_id);
        let mon_id = nsm::MonId { mon_name: mon_name.clone(), my_id };
        round_trip(&mon_id);
        round_trip(&nsm::Mon { mon_id, priv_ });
        round_trip(&nsm::Status { mon_name: mon_name.clone(), state, priv_ });
        round_trip(&nsm::StatChge { mon_name: mon_name.clone(), state });
        round_trip(&nsm::SmName { mon_name });
    }
}
