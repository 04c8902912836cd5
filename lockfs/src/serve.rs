//! `lockfs serve [--config FILE]`: the daemon. One lock table and one share
//! table; every configured export mounted through FUSE over them, and the NLM
//! and NSM services answering remote clients from the same tables, so a remote
//! lock and a local lock on the same file meet.
//!
//! Without `--config` it runs an embedded default under `./lockfs-data`: the
//! directory `export` mounted on `mnt`, state in `state`, services on
//! 127.0.0.1. SIGTERM or SIGINT stop the services (unregistering them from
//! rpcbind) and unmount every export.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use fuse_lockfs::LockContext;
use lock_table::{ScopeId, SharedTable};
use lockd_user::exports::Export as LockdExport;
use lockd_user::service::{LockdConfig, LockdService, PortmapMode};
use share_reservations::ShareTable;

use crate::admin;
use crate::config::{self, Config};
use crate::exports_mounted::ExportMounts;

/// The configuration to run: the file given, or the embedded default rooted
/// at `./lockfs-data` (whose directories are created).
pub fn resolve_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(config::load(p)?),
        None => {
            let base = std::env::current_dir()
                .context("current directory")?
                .join("lockfs-data");
            let cfg = config::embedded_default(&base);
            for e in &cfg.exports {
                std::fs::create_dir_all(&e.source)
                    .with_context(|| format!("creating {}", e.source.display()))?;
            }
            Ok(cfg)
        }
    }
}

/// The exports as the NLM service sees them.
pub fn lockd_exports(cfg: &Config) -> Vec<LockdExport> {
    cfg.exports
        .iter()
        .map(|e| {
            let mut x = LockdExport::new(e.id, &e.source);
            x.scope = ScopeId(cfg.group(&e.group).map_or(0, |g| g.scope));
            x.allowed = e.clients.clone();
            x.read_only = e.read_only;
            x
        })
        .collect()
}

fn lockd_config(cfg: &Config) -> LockdConfig {
    let mut l = LockdConfig::new(cfg.node_name.clone(), cfg.state_dir.clone());
    l.exports = lockd_exports(cfg);
    l.grace = cfg
        .group(config::DEFAULT_GROUP)
        .map_or(l.grace, |g| g.grace);
    l.group_grace = cfg
        .groups
        .iter()
        .map(|g| (ScopeId(g.scope), g.grace))
        .collect();
    l.offline = cfg
        .groups
        .iter()
        .filter(|g| !g.online_at_start)
        .map(|g| ScopeId(g.scope))
        .collect();
    l.group_storage = cfg
        .groups
        .iter()
        .filter_map(|g| Some((ScopeId(g.scope), g.storage.clone()?)))
        .collect();
    l.group_server_ids = cfg
        .groups
        .iter()
        .map(|g| {
            let ids = g.server_ids.iter().map(|i| (i.name.clone(), i.address));
            (ScopeId(g.scope), ids.collect())
        })
        .collect();
    l.limits.max_owners_per_host = cfg.owners_per_host;
    l.limits.max_locks_per_host = cfg.locks_per_host;
    l.limits.max_waiters = cfg.waiters;
    l.server.max_tcp_connections = cfg.connections;
    l.server.max_tcp_connections_per_peer = cfg.net.connections_per_address;
    l.server.max_unfinished_record_bytes = cfg.net.unfinished_record_bytes;
    l.limits.store = lockd_user::nsm::store::StoreLimits {
        clients: cfg.net.clients,
        names_per_address: cfg.net.client_names_per_address,
        addresses_per_client: cfg.net.addresses_per_client,
        monitors: cfg.net.monitors,
        monitors_per_host: cfg.net.monitors_per_host,
    };
    l.callbacks.notify_per_second = cfg.net.notify_per_second;
    l.callbacks.group_notify_per_second = cfg.net.group_notify_per_second;
    l.callbacks.notify_in_flight = cfg.net.notify_in_flight;
    l.server.busy_poll = cfg.busy_poll;
    l.callbacks.release_unreachable_after = cfg.release_unreachable_after;
    let addrs: Vec<std::net::SocketAddr> = cfg
        .listen
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, cfg.port))
        .collect();
    l.udp = addrs.clone();
    l.tcp = addrs;
    l.portmap = PortmapMode::Auto;
    l
}

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(config_path: Option<&Path>) -> Result<()> {
    let cfg = resolve_config(config_path)?;
    let set = fuse_lockfs::block_termination();
    match fuse_lockfs::raise_fd_limit() {
        Ok(n) => tracing::info!(limit = n, "descriptor limit (RLIMIT_NOFILE) {n}"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;

    // One table for every door. Waiting FUSE and NLM requests are woken
    // through the table's waiter registry; the notifier only sees events of
    // requests no door registered, which lockd still answers for NLM owners.
    let (sink, queue) = lockd_user::EventSink::new();
    let table = Arc::new(SharedTable::new(move |e| sink.on_table_event(e)));
    let shares = Arc::new(Mutex::new(ShareTable::new()));
    let base_ctx = LockContext::from_parts(table.clone(), shares.clone());

    // One worker: it waits in epoll, runs the connection that became readable and writes
    // its reply without handing work to another thread. Measured on 2 cores with 16
    // concurrent NLM clients, a second worker only added cross-thread wake-ups and doubled
    // the tail latency. FUSE requests, the NFS door and each group with server IDs have
    // threads of their own (ARCHITECTURE.md, "Threads of the daemon").
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let service = runtime
        .block_on(LockdService::start(
            lockd_config(&cfg),
            table.clone(),
            shares.clone(),
            queue,
        ))
        .context("starting the NLM and NSM services")?;
    eprintln!(
        "lockfs: NLM/NSM on udp {:?} tcp {:?}, state {}",
        service.udp_addrs(),
        service.tcp_addrs(),
        service.state()
    );

    let caches = Arc::new(crate::nfs::MountCaches::default());
    let nfs = crate::nfs::start(&cfg, &service, caches.clone());

    // An offline group's storage may be on another node: its exports are mounted when it
    // comes online here.
    let mounts = Arc::new(ExportMounts::new(&cfg, base_ctx.clone(), caches));
    let mut online: Vec<&str> = Vec::new();
    for e in &cfg.exports {
        if cfg.group(&e.group).is_some_and(|g| !g.online_at_start) {
            eprintln!(
                "lockfs: export {:?}: group {:?} is offline, not mounted",
                e.name, e.group
            );
        } else if !online.contains(&e.group.as_str()) {
            online.push(&e.group);
        }
    }
    for g in online {
        mounts.mount_group(g)?;
    }
    let lockd = service.lockd().clone();
    let clear: admin::ClearHost = Arc::new(move |name: &str| {
        let r = lockd.clear_host(name);
        tracing::info!(
            client = name,
            locks = r.locks.files,
            waiters = r.locks.waiters,
            shares = r.shares,
            "host cleared by the administrator"
        );
        serde_json::json!({
            "host": name,
            "locks": r.locks.files,
            "waiters": r.locks.waiters,
            "shares": r.shares,
            "was_monitored": r.was_monitored,
        })
    });
    let group = group_command(&cfg, service.lockd().clone(), &runtime, mounts.clone());
    let (lockd, ctx) = (service.lockd().clone(), base_ctx.clone());
    let name_files: admin::NameFiles = Arc::new(move |files: &[(u64, u64)]| {
        let ids: Vec<_> = files
            .iter()
            .map(|&(dev, ino)| lock_table::FileId::new(dev, ino))
            .collect();
        lockd
            .source_paths_of(&ids)
            .into_iter()
            .map(|(id, source)| {
                let seen = ctx.mounted_path_of(&source).unwrap_or(source);
                ((id.dev, id.ino), seen.display().to_string())
            })
            .collect()
    });
    let doors = admin::Doors {
        clear_host: Some(clear),
        group: Some(group),
        name_files: Some(name_files),
    };
    let _admin = admin::serve_with(&cfg.admin_socket, base_ctx, doors)?;
    eprintln!("lockfs: admin socket {}", cfg.admin_socket.display());

    let mut sig = 0;
    // SAFETY: `set` is a valid sigset_t and `sig` a valid out-pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    tracing::info!(signal = sig, "stopping");
    let lockd = service.lockd().clone();
    let moving: Vec<&config::Group> = cfg.groups.iter().filter(|g| g.storage.is_some()).collect();
    // A group that moves is left in the order that lets another node take it safely:
    // nothing of it is served any more (its requests refused, the NFS door closed), its
    // mounts are released, then its locks, its clean offline recorded, its lease let go
    // last. Until then no other node can take the group while this one still serves it.
    for g in &moving {
        lockd_user::recovery::set_group_refused(&lockd, ScopeId(g.scope), true);
    }
    if let Some(n) = nfs {
        n.shutdown();
    }
    let mut failed = false;
    for g in &moving {
        if let Err(e) = mounts.release_group(&g.name) {
            // Not recorded as clean: the mount may still show this node's files. The lease
            // goes with the process.
            eprintln!("lockfs: group {:?}: {e:#}", g.name);
            failed = true;
            continue;
        }
        if let Err(e) = lockd_user::recovery::group_offline(&lockd, ScopeId(g.scope)) {
            eprintln!("lockfs: taking group {:?} offline: {e}", g.name);
        }
    }
    runtime.block_on(service.shutdown());
    failed |= !mounts.release_all();
    if failed {
        bail!("some exports could not be unmounted");
    }
    eprintln!("lockfs: stopped");
    Ok(())
}

/// The lock agent's requests, answered from the admin socket's thread.
fn group_command(
    cfg: &Config,
    lockd: std::sync::Arc<lockd_user::lockd::Lockd>,
    runtime: &tokio::runtime::Runtime,
    mounts: Arc<ExportMounts>,
) -> admin::GroupCommand {
    let groups = cfg.groups.clone();
    let handle = runtime.handle().clone();
    Arc::new(move |verb: &str, name: &str| {
        use serde_json::json;
        // Grace timers and notifications are tasks of the daemon's runtime.
        let _rt = handle.enter();
        let status = |g: &config::Group| {
            let s = lockd_user::service::group_status(&lockd, ScopeId(g.scope));
            json!({
                "name": g.name,
                "online": s.online,
                "in_grace": s.in_grace,
                "clients": s.clients,
                "state": s.state,
                "storage": g.storage,
                "server_ids": g.server_ids.iter().map(|i| json!({"name": i.name, "address": i.address.to_string()})).collect::<Vec<_>>(),
            })
        };
        if verb == "status" && name.is_empty() {
            return json!({ "groups": groups.iter().map(status).collect::<Vec<_>>() });
        }
        let Some(g) = groups.iter().find(|g| g.name == name) else {
            return json!({ "error": format!("no group named {name:?} is configured") });
        };
        let scope = ScopeId(g.scope);
        let r = match verb {
            // Its exports are mounted once it is online, and released before it goes
            // offline (its requests refused first, its lease let go last). An export that
            // cannot be mounted takes the group offline again; one that cannot be released
            // keeps it online, so the cluster manager sees the stop fail.
            "online" => lockd_user::recovery::group_online(&lockd, scope)
                .map(|_| ())
                .and_then(|()| {
                    mounts.mount_group(&g.name).map_err(|e| {
                        let _ = lockd_user::recovery::group_offline(&lockd, scope);
                        std::io::Error::other(format!("{e:#}"))
                    })
                }),
            "offline" => {
                lockd_user::recovery::set_group_refused(&lockd, scope, true);
                match mounts.release_group(&g.name) {
                    Ok(()) => lockd_user::recovery::group_offline(&lockd, scope),
                    Err(e) => {
                        lockd_user::recovery::set_group_refused(&lockd, scope, false);
                        Err(std::io::Error::other(format!("{e:#}")))
                    }
                }
            }
            "status" => Ok(()),
            other => return json!({ "error": format!("unknown group request {other:?}") }),
        };
        match r {
            Ok(()) => {
                tracing::info!(group = %g.name, request = verb, "lock agent request done");
                status(g)
            }
            Err(e) => {
                tracing::warn!(group = %g.name, request = verb, error = %e, "lock agent request failed");
                json!({ "error": format!("group {:?}: {e}", g.name) })
            }
        }
    })
}

/// `lockfs fh PATH`: the NLM file handle of a file under an export, in hex.
/// PATH may name the file through the export's source or its mount point.
pub fn file_handle(config_path: Option<&Path>, path: &Path) -> Result<String> {
    let cfg = resolve_config(config_path)?;
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let mut resolved: PathBuf = abs.clone();
    for e in &cfg.exports {
        if let Ok(rest) = abs.strip_prefix(&e.mountpoint) {
            resolved = e.source.join(rest);
            break;
        }
    }
    // A group with storage keeps its handle key there, so handles survive its moves.
    let storage = cfg
        .exports
        .iter()
        .filter(|e| resolved.starts_with(&e.source))
        .max_by_key(|e| e.source.components().count())
        .and_then(|e| cfg.group(&e.group)?.storage.clone());
    let key_dir = match storage {
        Some(s) => lockd_user::group_state::GroupState::open(&s)
            .with_context(|| format!("group storage {}", s.display()))?
            .dir()
            .to_path_buf(),
        None => {
            std::fs::create_dir_all(&cfg.state_dir)
                .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
            cfg.state_dir.clone()
        }
    };
    let fh = lockd_user::fh::fh_for_path(&key_dir, &lockd_exports(&cfg), &resolved)
        .with_context(|| format!("no file handle for {}", path.display()))?;
    Ok(fh.iter().map(|b| format!("{b:02x}")).collect())
}
