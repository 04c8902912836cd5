//! Runs the lock service alone (no FUSE) over export directories given on the command line,
//! so tests can kill it with SIGKILL and restart it as a real process.
//!
//! ```text
//! lockd-test-server --name NAME --state-dir DIR [--listen IP] [--port N] [--grace-ms N]
//!     [--client-portmap-port N] [--portmap off|auto|IP:PORT] [--unreachable-ms N]
//!     [--max-owners N] [--max-waiters N] [--max-record N] [--record-budget N]
//!     [--conns-per-address N]
//!     [--notify-per-second N] [--fh-of PATH ...]
//!     --export ID:DIR[:GROUP[:ro|CIDR,CIDR...]] ...
//! ```
//!
//! When serving, it prints `READY udp=ADDR tcp=ADDR state=N` on standard output, then
//! `FH PATH HEX` for every `--fh-of PATH` (the NLM file handle, for benchmark clients). SIGTERM or
//! SIGINT stops it cleanly (unregistering and marking the state even).

use anyhow::{bail, Context, Result};
use lock_table::{ScopeId, SharedTable};
use lockd_user::{EventSink, Export, LockdConfig, LockdService, PortmapMode};
use share_reservations::ShareTable;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

fn parse_export(s: &str) -> Result<Export> {
    let mut parts = s.splitn(4, ':');
    let id: u32 = parts
        .next()
        .context("export id")?
        .parse()
        .context("export id")?;
    let dir = parts.next().context("export directory")?;
    let mut e = Export::new(id, dir);
    if let Some(g) = parts.next() {
        e.scope = ScopeId(g.parse().context("export group")?);
    }
    match parts.next() {
        None => {}
        Some("ro") => e.read_only = true,
        Some(other) => {
            for c in other.split(',') {
                e.allowed.push(c.parse()?);
            }
        }
    }
    Ok(e)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut name = None;
    let mut state_dir = None;
    let mut listen: IpAddr = "127.0.0.1".parse()?;
    let mut port = 0u16;
    let mut grace_ms = 90_000u64;
    let mut exports = Vec::new();
    let mut portmap = PortmapMode::Off;
    let mut pm_port = 111u16;
    let mut unreachable = None;
    let mut max_owners = None;
    let mut max_waiters = None;
    let mut max_record = None;
    let mut record_budget = None;
    let mut conns_per_address = None;
    let mut notify_rate = None;
    let mut fh_of = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--name" => name = Some(val()?),
            "--state-dir" => state_dir = Some(val()?),
            "--listen" => listen = val()?.parse()?,
            "--port" => port = val()?.parse()?,
            "--grace-ms" => grace_ms = val()?.parse()?,
            "--client-portmap-port" => pm_port = val()?.parse()?,
            "--unreachable-ms" => unreachable = Some(Duration::from_millis(val()?.parse()?)),
            "--max-owners" => max_owners = Some(val()?.parse()?),
            "--max-waiters" => max_waiters = Some(val()?.parse()?),
            "--max-record" => max_record = Some(val()?.parse()?),
            "--record-budget" => record_budget = Some(val()?.parse()?),
            "--conns-per-address" => conns_per_address = Some(val()?.parse()?),
            "--notify-per-second" => notify_rate = Some(val()?.parse()?),
            "--portmap" => {
                portmap = match val()?.as_str() {
                    "off" => PortmapMode::Off,
                    "auto" => PortmapMode::Auto,
                    addr => PortmapMode::Builtin(vec![addr.parse()?]),
                }
            }
            "--export" => exports.push(parse_export(&val()?)?),
            "--fh-of" => fh_of.push(std::path::PathBuf::from(val()?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let mut config = LockdConfig::new(
        name.context("--name is required")?,
        state_dir.context("--state-dir is required")?,
    );
    config.exports = exports.clone();
    config.grace = Duration::from_millis(grace_ms);
    config.udp = vec![SocketAddr::new(listen, port)];
    config.tcp = vec![SocketAddr::new(listen, port)];
    config.portmap = portmap;
    config.callbacks.client_portmap_port = pm_port;
    config.callbacks.release_unreachable_after = unreachable;
    config.callbacks.initial_backoff = Duration::from_millis(200);
    config.callbacks.max_backoff = Duration::from_secs(2);
    config.callbacks.attempt_timeout = Duration::from_secs(2);
    if let Some(n) = max_owners {
        config.limits.max_owners_per_host = n;
    }
    if let Some(n) = max_waiters {
        config.limits.max_waiters = n;
    }
    if let Some(n) = max_record {
        config.server.max_record_size = n;
    }
    if let Some(n) = conns_per_address {
        config.server.max_tcp_connections_per_peer = n;
    }
    if let Some(n) = record_budget {
        config.server.max_unfinished_record_bytes = n;
    }
    if let Some(n) = notify_rate {
        config.callbacks.notify_per_second = n;
    }

    let config_dir = config.state_dir.clone();
    let (sink, queue) = EventSink::new();
    let table = Arc::new(SharedTable::new(move |ev| sink.on_table_event(ev)));
    let shares = Arc::new(Mutex::new(ShareTable::new()));
    let svc = LockdService::start(config, table, shares, queue).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "READY udp={} tcp={} state={}",
            svc.udp_addrs()[0],
            svc.tcp_addrs()[0],
            svc.state()
        )?;
        for p in &fh_of {
            let fh = lockd_user::fh_for_path(&config_dir, &exports, p)?;
            let hex: String = fh.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "FH {} {hex}", p.display())?;
        }
        out.flush()?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    svc.shutdown().await;
    Ok(())
}
