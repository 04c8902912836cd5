//! Checks live tracepoint formats against the offsets the programs read.
//!
//! The programs read tracepoint records at fixed offsets taken from the
//! format files of the kernels lockfs supports. A kernel that moved a field
//! would make them read garbage silently, so the loader compares before it
//! attaches and refuses with [`TraceError::TracepointLayout`] instead.

use std::path::Path;

use crate::TraceError;

/// A tracepoint, the fields its program reads and their expected offsets.
pub(crate) struct PointSpec {
    pub category: &'static str,
    pub name: &'static str,
    pub program: &'static str,
    pub fields: &'static [(&'static str, usize)],
    /// Missing from some kernels; skipped rather than fatal when absent.
    pub optional: bool,
}

const LOCK_FIELDS: &[(&str, usize)] = &[
    ("i_ino", 16),
    ("s_dev", 24),
    ("pid", 48),
    ("flags", 52),
    ("type", 56),
    ("fl_start", 64),
    ("fl_end", 72),
    ("ret", 80),
];

const LEASE_FIELDS: &[(&str, usize)] = &[("i_ino", 16), ("s_dev", 24), ("type", 52)];

/// Every tracepoint program, with its layout expectations.
pub(crate) const POINTS: &[PointSpec] = &[
    PointSpec {
        category: "filelock",
        name: "posix_lock_inode",
        program: "lfs_posix_lock",
        fields: LOCK_FIELDS,
        optional: false,
    },
    PointSpec {
        category: "filelock",
        name: "flock_lock_inode",
        program: "lfs_flock_lock",
        fields: LOCK_FIELDS,
        optional: false,
    },
    PointSpec {
        category: "filelock",
        name: "fcntl_setlk",
        program: "lfs_fcntl_setlk",
        fields: &[("ret", 80)],
        optional: false,
    },
    PointSpec {
        category: "filelock",
        name: "locks_remove_posix",
        program: "lfs_rm_posix",
        fields: LOCK_FIELDS,
        optional: false,
    },
    PointSpec {
        category: "syscalls",
        name: "sys_exit_flock",
        program: "lfs_exit_flock",
        fields: &[("ret", 16)],
        optional: false,
    },
    PointSpec {
        category: "filelock",
        name: "break_lease_block",
        program: "lfs_lease_block",
        fields: LEASE_FIELDS,
        optional: true,
    },
    PointSpec {
        category: "filelock",
        name: "break_lease_unblock",
        program: "lfs_lease_unblk",
        fields: &[],
        optional: true,
    },
];

/// Offset of `field` in a tracefs format description, if listed.
pub(crate) fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        // The name is the last word of the declaration, minus any array suffix.
        let name = decl.split_whitespace().last()?;
        let name = name.split('[').next()?.trim_start_matches('*');
        if name != field {
            return None;
        }
        let off = rest.trim().strip_prefix("offset:")?;
        off.split(';').next()?.trim().parse().ok()
    })
}

/// Reads the format of a tracepoint; `Ok(None)` if the kernel lacks it.
pub(crate) fn read_format(
    root: &Path,
    category: &str,
    name: &str,
) -> Result<Option<String>, TraceError> {
    let path = root.join("events").join(category).join(name).join("format");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) if source.raw_os_error() == Some(libc::EACCES) => {
            Err(TraceError::NoPrivilege {
                action: format!("read {}", path.display()),
                source,
            })
        }
        Err(source) => Err(TraceError::Io {
            action: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Compares a live format against the spec.
pub(crate) fn check_layout(spec: &PointSpec, format: &str) -> Result<(), TraceError> {
    for (field, expected) in spec.fields {
        let found = field_offset(format, field);
        if found != Some(*expected) {
            return Err(TraceError::TracepointLayout {
                event: format!("{}:{}", spec.category, spec.name),
                field: (*field).to_owned(),
                expected: *expected,
                found,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "name: posix_lock_inode
ID: 1128
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:struct file_lock * fl;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long i_ino;\toffset:16;\tsize:8;\tsigned:0;
\tfield:dev_t s_dev;\toffset:24;\tsize:4;\tsigned:0;
\tfield:unsigned int pid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned int flags;\toffset:52;\tsize:4;\tsigned:0;
\tfield:unsigned char type;\toffset:56;\tsize:1;\tsigned:0;
\tfield:loff_t fl_start;\toffset:64;\tsize:8;\tsigned:1;
\tfield:loff_t fl_end;\toffset:72;\tsize:8;\tsigned:1;
\tfield:int ret;\toffset:80;\tsize:4;\tsigned:1;
";

    #[test]
    fn parses_offsets() {
        assert_eq!(field_offset(SAMPLE, "fl"), Some(8));
        assert_eq!(field_offset(SAMPLE, "ret"), Some(80));
        assert_eq!(field_offset(SAMPLE, "type"), Some(56));
        assert_eq!(field_offset(SAMPLE, "nope"), None);
        check_layout(&POINTS[0], SAMPLE).unwrap();
    }

    #[test]
    fn a_moved_field_is_refused() {
        let moved = SAMPLE.replace("offset:80", "offset:84");
        match check_layout(&POINTS[0], &moved) {
            Err(TraceError::TracepointLayout {
                field,
                expected: 80,
                found: Some(84),
                ..
            }) => assert_eq!(field, "ret"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
