//! Why tracing could not start or a read failed, in words an operator can act on.

use std::{io, path::PathBuf};

/// Everything that can go wrong while loading, attaching or reading.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The process may not use BPF (needs root, or CAP_BPF with CAP_PERFMON).
    #[error("not allowed to {action}: {source} (run as root, or with CAP_BPF and CAP_PERFMON)")]
    NoPrivilege {
        /// What was being attempted.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The kernel exposes no BTF, which the BTF-defined maps need.
    #[error("the kernel has no BTF ({path} is missing); a kernel built with CONFIG_DEBUG_INFO_BTF=y is needed")]
    NoBtf {
        /// Where kernel BTF was looked for.
        path: PathBuf,
    },
    /// A kernel feature the programs rely on is missing.
    #[error("kernel feature missing: {feature}: {detail}")]
    FeatureMissing {
        /// The feature (for example "tracepoint filelock:posix_lock_inode").
        feature: String,
        /// What was observed.
        detail: String,
    },
    /// This build of lockfs was compiled without the eBPF programs.
    #[error("this build has no eBPF programs (built with AYA_BUILD_SKIP); rebuild after running scripts/setup-ebpf.sh")]
    ProgramsNotBuilt,
    /// The eBPF object could not be parsed, relocated or its maps created.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The verifier rejected a program.
    #[error("the kernel rejected program {program}: {detail}")]
    Verifier {
        /// Program name.
        program: String,
        /// The error including the verifier log.
        detail: String,
    },
    /// A tracepoint's record layout differs from what the programs were built for.
    #[error(
        "tracepoint {event}: field {field} is at offset {found:?}, the programs expect {expected}"
    )]
    TracepointLayout {
        /// `category:name`.
        event: String,
        /// Field name.
        field: String,
        /// Offset the programs read.
        expected: usize,
        /// Offset in the live format file (`None` if the field is absent).
        found: Option<usize>,
    },
    /// The daemon binary lacks a probe point symbol.
    #[error("{}", symbol_message(exe, symbol, *stripped))]
    SymbolNotFound {
        /// Binary that was inspected.
        exe: PathBuf,
        /// First missing symbol.
        symbol: String,
        /// Whether the binary has no symbol table at all.
        stripped: bool,
    },
    /// Attaching a program failed.
    #[error("attaching {program} to {target} failed: {source}")]
    Attach {
        /// Program name.
        program: String,
        /// Tracepoint or `binary:symbol`.
        target: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Pinning or unpinning maps under bpffs failed.
    #[error("pinning at {path} failed: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading a map failed.
    #[error("reading map {map} failed: {source}")]
    MapRead {
        /// Map name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The daemon's probe gate could not be found.
    #[error("cannot open the probe gate of process {pid}: {reason}")]
    Gate {
        /// The daemon process.
        pid: u32,
        /// What is missing.
        reason: String,
    },
    /// A system call of the loader itself failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being attempted.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn symbol_message(exe: &std::path::Path, symbol: &str, stripped: bool) -> String {
    if stripped {
        format!(
            "symbol {symbol} not found in {}: the binary is stripped (it has no symbol table); \
             uprobes need the lockfs_probe_* symbols, so trace an unstripped build",
            exe.display()
        )
    } else {
        format!(
            "symbol {symbol} not found in {}: this binary does not contain lockfs's probe points",
            exe.display()
        )
    }
}

/// Finds an `io::Error` in an error's source chain.
pub(crate) fn find_io_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

/// Whether an error chain bottoms out in EPERM or EACCES.
pub(crate) fn is_permission(err: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    let io = find_io_error(err)?;
    match io.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Some(io::Error::from_raw_os_error(
            io.raw_os_error().unwrap_or(libc::EPERM),
        )),
        _ => None,
    }
}
