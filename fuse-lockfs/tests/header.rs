//! The C header publishes the same request code and layout as the Rust side.

use std::path::Path;
use std::process::Command;

#[test]
fn the_c_header_matches_the_rust_constants() {
    let cc = ["cc", "gcc", "clang"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(cc) = cc else {
        lockfs_testkit::skipping!("header check: no C compiler");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("check.c");
    std::fs::write(
        &src,
        "#include <errno.h>\n#include <stdio.h>\n#include \"lockfs.h\"\n\
         int main(void) { printf(\"%lu %zu %d\\n\", (unsigned long)LOCKFS_IOC_SET_SHARE,\n\
         sizeof(struct lockfs_share), LOCKFS_SHARE_ERRNO); return 0; }\n",
    )
    .unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let exe = dir.path().join("check");
    let st = Command::new(cc)
        .args(["-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success(), "lockfs.h does not compile");
    let out = Command::new(&exe).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "{} 8 {}",
            fuse_lockfs::LOCKFS_IOC_SET_SHARE,
            fuse_lockfs::SHARE_ERRNO
        )
    );
}
