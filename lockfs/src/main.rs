//! The `lockfs` command: the lock-table demonstration, a FUSE mount whose locks
//! live in the lock table (`mount`), the listing of a running daemon (`locks`)
//! and opens with share reservations (`share-open`).

mod admin;
mod config;
mod demo;
mod exports_mounted;
mod lvb;
mod manpage;
mod mount;
mod nfs;
mod serve;
mod share_open;
mod trace;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory as _, Parser, Subcommand};

/// `lockfs --version`: the package version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LOCKFS_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "lockfs",
    version = VERSION,
    about = "lockfs: one lock table for local and remote locks",
    long_about = "lockfs enforces advisory and mandatory byte-range locks and \
                  Windows-style share reservations for local programs, through a FUSE \
                  passthrough file system mounted over each exported directory, and for \
                  remote NFS clients, through a user-space lockd speaking NLM v1, v3 and v4 \
                  and NSM. One daemon (lockfs serve) holds one lock table behind all of them, \
                  so a local fcntl lock and a remote NLM lock on the same file conflict.\n\n\
                  The other commands mount a single export in the foreground, list and clear \
                  the locks of running daemons, open a file under a share reservation, and \
                  trace lock contention with eBPF."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Walk through the lock table: grants, conflicts, queues, deadlock,
    /// grace, value blocks and share reservations.
    Demo {
        /// Print the steps as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mount SOURCE at MOUNTPOINT through lockfs and serve it in the foreground
    /// until SIGTERM or SIGINT (which unmount).
    Mount {
        /// The directory to serve.
        source: PathBuf,
        /// Where to mount it.
        mountpoint: PathBuf,
        /// Comma-separated options: mandatory=off|file|all, flock=separate|shared,
        /// ro, threads=N, nopassthrough, nosplice, max_read=BYTES, socket=PATH.
        #[arg(short = 'o')]
        options: Vec<String>,
    },
    /// List every held and waiting lock and share reservation of running
    /// daemons, like lslocks.
    Locks {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Ask this admin socket only (default: every socket in /run/lockfs).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Open FILE with a share reservation and run CMD with it open on --fd.
    ShareOpen {
        /// What this open does: -, r, w or rw.
        #[arg(long)]
        access: String,
        /// What others may not do while it is open: -, r, w or rw.
        #[arg(long, default_value = "-")]
        deny: String,
        /// The descriptor CMD finds the file on.
        #[arg(long, default_value_t = 3)]
        fd: i32,
        /// The file to open.
        file: PathBuf,
        /// The command to run, and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
    /// Run the daemon: mount every configured export through FUSE and serve
    /// NLM and NSM to remote clients, all over one lock table. Without
    /// --config, an embedded default under ./lockfs-data.
    Serve {
        /// The TOML configuration file (see lockfs.toml(5)).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the NLM file handle (hex) of a file under an export, named
    /// through the export's source or its mount point.
    Fh {
        /// A file under an export's source or mount point.
        path: PathBuf,
        /// The TOML configuration file (see lockfs.toml(5)).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Release every lock, waiter and share reservation a remote NLM host
    /// holds: the remedy for a client that crashed or is cut off and will
    /// not send SM_NOTIFY.
    Clear {
        /// The host's NLM caller name.
        #[arg(long)]
        host: String,
        /// The daemon's admin socket (default: every socket in /run/lockfs).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Read or write a file's lock value block (32 bytes a holder of an
    /// exclusive lock leaves for the next holder; see include/lockfs.h).
    #[command(subcommand)]
    Lvb(LvbCommand),
    /// The lock agent's channel to a running daemon: bring a service group
    /// online on this node, take it offline, or report the groups.
    Group {
        #[command(subcommand)]
        action: GroupAction,
        /// The daemon's admin socket.
        #[arg(long, global = true, default_value = "/run/lockfs/admin.sock")]
        socket: PathBuf,
    },
    /// Trace lock contention with eBPF: the kernel's file locks and a running
    /// daemon's lock table, live like top, as one snapshot, or as JSON lines.
    Trace(trace::TraceArgs),
}

#[derive(Subcommand)]
enum LvbCommand {
    /// Print the value, its sequence number and whether it is valid, read
    /// under a shared lock on the file.
    Get {
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store VALUE (text, or hex with --hex; at most 32 bytes) under an
    /// exclusive lock on the file, which the command takes and drops.
    Set {
        path: PathBuf,
        value: String,
        /// VALUE is hex digits.
        #[arg(long)]
        hex: bool,
        /// Print the new block as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GroupAction {
    /// Serve the group here: take its lease on its storage, load its client
    /// list, advance its state, start its grace and notify its clients.
    /// Succeeds at once if the group is online here already.
    Online { name: String },
    /// Stop serving the group here: refuse its requests, release its locks,
    /// waiters and shares, record a clean offline, let go of its lease.
    /// Succeeds at once if the group is offline here already.
    Offline { name: String },
    /// Report every group (online, in grace, clients, state), or one.
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Logs to stderr at `RUST_LOG` (default `info`), coloured only on a terminal: a log
/// file or journal gets plain text.
fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> Result<()> {
    // `lockfs generate-docs DIR` writes the manual pages and the bash
    // completion for packaging. It is no clap subcommand, so that it appears
    // neither in the pages nor in the completion it generates.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "generate-docs") {
        let [_, _, dir] = &args[..] else {
            anyhow::bail!("usage: lockfs generate-docs DIR");
        };
        return manpage::generate(Cli::command(), std::path::Path::new(dir));
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Mount {
            source,
            mountpoint,
            options,
        } => {
            init_logging();
            mount::run(&source, &mountpoint, &options)?;
        }
        Command::Locks { json, socket } => {
            let sockets = match socket {
                Some(s) => vec![s],
                None => admin::all_sockets(),
            };
            let mut rows = Vec::new();
            for s in &sockets {
                match admin::query(s) {
                    Ok(r) => rows.extend(r),
                    Err(e) if sockets.len() == 1 => return Err(e),
                    Err(e) => eprintln!("lockfs: {e:#}"),
                }
            }
            let text = if json {
                serde_json::to_string_pretty(&rows)? + "\n"
            } else {
                fuse_lockfs::listing::format_table(&rows)
            };
            // A reader that stops early (`| head`) is not an error.
            let mut out = std::io::stdout().lock();
            if let Err(e) = std::io::Write::write_all(&mut out, text.as_bytes()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e.into());
                }
            }
        }
        Command::ShareOpen {
            access,
            deny,
            fd,
            file,
            cmd,
        } => share_open::run(&access, &deny, fd, &file, &cmd)?,
        Command::Trace(args) => trace::run(&args)?,
        Command::Lvb(LvbCommand::Get { path, json }) => lvb::get(&path, json)?,
        Command::Lvb(LvbCommand::Set {
            path,
            value,
            hex,
            json,
        }) => lvb::set(&path, &value, hex, json)?,
        Command::Serve { config } => {
            init_logging();
            serve::run(config.as_deref())?;
        }
        Command::Clear { host, socket } => {
            let sockets = match socket {
                Some(s) => vec![s],
                None => admin::all_sockets(),
            };
            let mut done = false;
            for s in &sockets {
                match admin::clear_host(s, &host) {
                    Ok(v) => {
                        println!("{v}");
                        done = true;
                    }
                    Err(e) if sockets.len() == 1 => return Err(e),
                    Err(_) => {}
                }
            }
            if !done {
                anyhow::bail!(
                    "no lockfs daemon with NLM service answered (tried {} sockets)",
                    sockets.len()
                );
            }
        }
        Command::Group { action, socket } => match action {
            GroupAction::Online { name } => {
                admin::group_request(&socket, "online", &name)?;
            }
            GroupAction::Offline { name } => {
                admin::group_request(&socket, "offline", &name)?;
            }
            GroupAction::Status { name, json } => {
                let v = admin::group_request(&socket, "status", name.as_deref().unwrap_or(""))?;
                let rows = match v.get("groups") {
                    Some(serde_json::Value::Array(a)) => a.clone(),
                    _ => vec![v.clone()],
                };
                if json {
                    println!("{}", serde_json::Value::Array(rows));
                } else {
                    println!("GROUP\tONLINE\tGRACE\tCLIENTS\tSTATE");
                    for r in rows {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            r["name"].as_str().unwrap_or(""),
                            r["online"],
                            r["in_grace"],
                            r["clients"],
                            r["state"]
                        );
                    }
                }
            }
        },
        Command::Fh { path, config } => {
            println!("{}", serve::file_handle(config.as_deref(), &path)?);
        }
        Command::Demo { json } => {
            let steps = demo::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&steps)?);
            } else {
                demo::print(&steps);
            }
        }
    }
    Ok(())
}
