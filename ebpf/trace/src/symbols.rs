//! Checks that a daemon binary carries the probe point symbols.
//!
//! A uprobe is placed by symbol name, so a stripped binary cannot be traced.
//! Checking up front turns aya's generic "error resolving symbol" into an
//! error that says which symbol is missing and whether the binary is stripped.

use std::path::Path;

use lockfs_ebpf_common::EventKind;
use object::{Object as _, ObjectSymbol as _};

use crate::TraceError;

/// Every probe point symbol, in [`EventKind`] order.
pub const PROBE_SYMBOLS: [&str; 8] = {
    let mut out = [""; 8];
    let mut i = 0;
    while i < 8 {
        out[i] = EventKind::ALL[i].symbol();
        i += 1;
    }
    out
};

/// Returns the probe symbols `exe` lacks, and whether it has no symbol table.
pub fn missing_probe_symbols(exe: &Path) -> Result<(Vec<&'static str>, bool), TraceError> {
    let data = std::fs::read(exe).map_err(|source| TraceError::Io {
        action: format!("reading {}", exe.display()),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|e| TraceError::Io {
        action: format!("parsing {} as ELF", exe.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let stripped = file.symbol_table().is_none();
    let mut found = [false; 8];
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if let Ok(name) = sym.name() {
            if let Some(i) = PROBE_SYMBOLS.iter().position(|s| *s == name) {
                found[i] = true;
            }
        }
    }
    let missing = PROBE_SYMBOLS
        .iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(s, _)| *s)
        .collect();
    Ok((missing, stripped))
}

/// Fails with [`TraceError::SymbolNotFound`] unless every probe symbol is present.
pub(crate) fn require_probe_symbols(exe: &Path) -> Result<(), TraceError> {
    let (missing, stripped) = missing_probe_symbols(exe)?;
    match missing.first() {
        None => Ok(()),
        Some(symbol) => Err(TraceError::SymbolNotFound {
            exe: exe.to_path_buf(),
            symbol: (*symbol).to_owned(),
            stripped,
        }),
    }
}
