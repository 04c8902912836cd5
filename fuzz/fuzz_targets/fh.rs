//! The NLM file-handle check. Arbitrary bytes are never accepted as a handle (they would
//! need this server's MAC); a handle sealed with the key opens to its parts, and so does
//! the same handle zero-padded to NFS version 2's 32 bytes; any other change of one bit or
//! of its length is refused. A sealed handle carrying arbitrary
//! kernel-handle bytes goes through `open_by_handle_at` and must be refused or name a file
//! of the export, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockd_user::exports::{Export, Exports};
use lockd_user::fh::{v2_handle, FhError, FhKey, FileHandles, KEY_LEN, MAC_LEN, V2_FHSIZE};
use std::sync::OnceLock;

struct World {
    _dir: tempfile::TempDir,
    exports: Exports,
    handles: FileHandles,
    key: FhKey,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("f"), b"x").expect("a file in the export");
        let exports = Exports::open(vec![Export::new(1, dir.path())]).expect("export opens");
        let key = FhKey::from_bytes([0x5a; KEY_LEN]);
        World {
            _dir: dir,
            exports,
            handles: FileHandles::new(key.clone()),
            key,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // Arbitrary bytes: refused by the length or MAC check, before any system call,
    // unless they are a handle this key sealed. (In process, libFuzzer sees the MAC
    // comparison and can copy the expected tag into its input; that is not a forgery,
    // and such input is a genuine sealed handle.)
    let genuine = match w.key.open(data) {
        Ok((e, t, k)) => {
            // Sealed, or sealed and zero-padded to NFS version 2's fixed size.
            let sealed = w.key.seal(e, t, k);
            let padded = v2_handle(&sealed).filter(|_| data.len() == V2_FHSIZE);
            assert!(
                sealed == data || padded.is_some_and(|p| p[..] == *data),
                "a forged handle opened"
            );
            true
        }
        Err(FhError::Malformed(_)) | Err(FhError::BadMac) => false,
        Err(e) => panic!("unexpected error {e}"),
    };
    if let Ok((o, _)) = w.handles.resolve(&w.exports, data) {
        assert!(genuine, "a handle that does not open resolved");
        assert_eq!(o.export.id, 1);
    }

    let Some((&t, rest)) = data.split_first() else {
        return;
    };
    let (export, kernel) = match rest.split_first() {
        Some((&e, k)) => (u32::from(e & 1), &k[..k.len().min(128)]),
        None => return,
    };
    let fh = w.key.seal(export, t, kernel);
    match w.key.open(&fh) {
        Ok(parts) => {
            assert!(!kernel.is_empty());
            assert_eq!(parts, (export, t, kernel));
        }
        Err(FhError::Malformed(n)) => assert!(kernel.is_empty() && n == 5 + MAC_LEN),
        Err(e) => panic!("a sealed handle was refused: {e}"),
    }
    // One flipped bit anywhere, or one byte less or more, is refused.
    let bit = usize::from(t) * 8 + usize::from(rest[0]);
    let mut flipped = fh.clone();
    let i = (bit / 8) % flipped.len();
    flipped[i] ^= 1 << (bit % 8);
    assert!(
        w.key.open(&flipped).is_err(),
        "bit flip at byte {i} accepted"
    );
    assert!(w.key.open(&fh[..fh.len() - 1]).is_err());
    let mut longer = fh.clone();
    longer.push(0);
    if longer.len() != V2_FHSIZE {
        assert!(w.key.open(&longer).is_err());
    }
    // Zero-padded to NFS version 2's size (MOUNT version 1), it opens as itself.
    if let Some(p) = v2_handle(&fh) {
        if !kernel.is_empty() {
            assert_eq!(w.key.open(&p).ok(), Some((export, t, kernel)));
        }
    }
    // Through the resolver: export 0 does not exist; export 1 hands the kernel bytes to
    // open_by_handle_at, which must fail cleanly for almost every input.
    match w.handles.resolve(&w.exports, &fh) {
        Ok((o, _)) => assert_eq!(o.export.id, 1),
        Err(FhError::UnknownExport(0)) => assert_eq!(export, 0),
        Err(_) => {}
    }
});
