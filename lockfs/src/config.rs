//! The daemon's configuration file (TOML) and the embedded default.
//!
//! Every error names the offending key and its line, whether the TOML does
//! not parse, a key is unknown or mistyped, or a value is wrong in context (a
//! duplicate export name, an export naming a group that is not declared, a
//! bad client block).
//!
//! ```toml
//! node_name = "nfs-a"                  # default: this machine's host name
//! state_dir = "/var/lib/lockfs"        # NSM state, client lists, handle key
//! admin_socket = "/run/lockfs/admin.sock"
//! grace_period = 90                    # seconds, or "90s", "2m"
//! # Opt-in: release everything a client holds once callbacks to it (GRANTED,
//! # _RES) have failed this long: a network partition that outlived it.
//! release_unreachable_after = "10m"
//!
//! [listen]
//! addresses = ["127.0.0.1"]            # NLM and NSM, UDP and TCP
//! port = 0                             # 0: any free port, registered with rpcbind
//! busy_poll_us = 200                   # after a reply, poll the connection this long
//!                                      # before sleeping (latency for CPU); 0: off
//! nfs_port = 2049                      # NFS version 3, UDP and TCP; 0: no NFS
//! mount_port = 20048                   # MOUNT versions 1 and 3, UDP and TCP
//!
//! [limits]
//! owners_per_host = 4096
//! locks_per_host = 1048576             # lock-table segments a client may hold
//! waiters = 65536
//! connections = 1024                   # TCP; when full, the idlest one is closed
//! connections_per_address = 64         # TCP connections from one peer address
//! unfinished_record_bytes = 33554432   # unfinished TCP records, all connections together
//! clients = 65536                      # listed clients, all groups together
//! client_names_per_address = 1024      # listed client names at one address
//! addresses_per_client = 16            # addresses recorded for one client
//! monitors = 65536                     # SM_MON registrations
//! monitors_per_host = 64               # SM_MON registrations for one monitored host
//! notify_per_second = 500              # clients a restart's SM_NOTIFY round starts per second
//! group_notify_per_second = 600        # clients a group coming online notifies per second
//! notify_in_flight = 1024             # SM_NOTIFY requests awaiting a reply at once
//! open_files = 4096                    # backing descriptors kept open behind NFS handles
//! nfs_max_io = 1048576                 # largest NFS READ and WRITE (bytes)
//!
//! [[group]]                            # a service group: its own grace period
//! name = "default"                     # and client list; fails over as a unit
//! grace_period = 45
//!
//! [[group]]                            # a group that moves between nodes
//! name = "g1"
//! storage = "/srv/g1"                  # on the group's shared storage; its state
//!                                      # lives in STORAGE/.lockfs
//! server_ids = ["10.0.0.10", "nfs-g1=10.0.0.10"]  # ADDRESS or NAME=ADDRESS that
//!                                      # clients use to reach the group
//! online_at_start = false              # default: false (the cluster manager
//!                                      # brings it online); groups without
//!                                      # storage are always online
//!
//! [[export]]
//! name = "data"
//! source = "/srv/data"                 # the directory served
//! mountpoint = "/mnt/data"             # where local programs reach it
//! group = "default"                    # default: "default"
//! mandatory = "file"                   # off | file | all
//! flock = "separate"                   # separate (or local) | shared
//! clients = ["10.0.0.0/8", "::1"]      # NLM clients allowed; default: any
//! read_only = false
//! no_root_squash = false               # NFS: root stays root (default: squashed)
//! anon_uid = 65534                     # NFS: who squashed and AUTH_NONE callers are
//! anon_gid = 65534
//! ```

use lockd_user::exports::Cidr;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use toml::Spanned;

/// The group every export belongs to unless it names another.
pub const DEFAULT_GROUP: &str = "default";

/// A configuration error, with the line it was found on when known.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{path}: {0}", path = .1)]
    Read(#[source] std::io::Error, String),
    #[error("{path}: line {line}, column {column}: unknown key {key:?} in {section}; its keys are: {expected}")]
    UnknownKey {
        path: String,
        line: usize,
        column: usize,
        key: String,
        section: &'static str,
        expected: String,
    },
}

/// `mandatory` and `flock` of an export: the very types, words and parser of
/// the `-o` options of `lockfs mount`, so both accept the same words.
pub use fuse_lockfs::{FlockMode as FlockPolicy, Mandatory as MandatoryPolicy};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_name: Option<String>,
    state_dir: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    grace_period: Option<Spanned<RawDuration>>,
    release_unreachable_after: Option<Spanned<RawDuration>>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    export: Vec<RawExport>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    addresses: Option<Vec<Spanned<String>>>,
    port: Option<u16>,
    busy_poll_us: Option<u64>,
    nfs_port: Option<u16>,
    mount_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    owners_per_host: Option<usize>,
    locks_per_host: Option<u64>,
    waiters: Option<usize>,
    connections: Option<usize>,
    connections_per_address: Option<usize>,
    unfinished_record_bytes: Option<usize>,
    clients: Option<usize>,
    client_names_per_address: Option<usize>,
    addresses_per_client: Option<usize>,
    monitors: Option<usize>,
    monitors_per_host: Option<usize>,
    notify_per_second: Option<u32>,
    group_notify_per_second: Option<u32>,
    notify_in_flight: Option<usize>,
    open_files: Option<usize>,
    nfs_max_io: Option<u32>,
}

/// Limits of the network side beyond the lock table's: TCP connections and record memory,
/// client lists and SM_MON registrations, the pace of a restart's notifications.
#[derive(Debug, Clone, PartialEq)]
pub struct NetLimits {
    pub connections_per_address: usize,
    pub unfinished_record_bytes: usize,
    pub clients: usize,
    pub client_names_per_address: usize,
    pub addresses_per_client: usize,
    pub monitors: usize,
    pub monitors_per_host: usize,
    pub notify_per_second: u32,
    pub group_notify_per_second: u32,
    pub notify_in_flight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    grace_period: Option<Spanned<RawDuration>>,
    storage: Option<Spanned<PathBuf>>,
    server_ids: Option<Vec<Spanned<String>>>,
    online_at_start: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    name: Spanned<String>,
    source: Spanned<PathBuf>,
    mountpoint: Spanned<PathBuf>,
    group: Option<Spanned<String>>,
    mandatory: Option<MandatoryPolicy>,
    flock: Option<FlockPolicy>,
    clients: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    no_root_squash: bool,
    anon_uid: Option<u32>,
    anon_gid: Option<u32>,
}

/// A service group after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    /// Scope id in the lock table: stable for a given configuration (the
    /// order groups are declared in, the default group first).
    pub scope: u32,
    pub grace: Duration,
    /// The directory on the group's shared storage that moves with it; `None`: the group
    /// is local to this node and always online.
    pub storage: Option<PathBuf>,
    /// The names and addresses clients use to reach the group's exports.
    pub server_ids: Vec<ServerId>,
    /// Whether the daemon serves the group from its start. A group with storage starts
    /// offline unless configured otherwise: the cluster manager decides where it runs.
    pub online_at_start: bool,
}

/// A name and address by which clients reach a group (`NAME=ADDRESS`, or `ADDRESS`
/// alone, whose text is then the name). The name is what SM_NOTIFY carries as the
/// server's `mon_name`, so it must be what the clients mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerId {
    pub name: String,
    pub address: IpAddr,
}

impl std::str::FromStr for ServerId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) => (n.trim(), a.trim()),
            None => (s.trim(), s.trim()),
        };
        if name.is_empty() {
            return Err(format!("{s:?}: the name before '=' is empty"));
        }
        if name.len() > 1024 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{s:?}: a name is at most 1024 characters, without spaces"
            ));
        }
        let address: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address (use ADDRESS or NAME=ADDRESS)"))?;
        Ok(ServerId {
            name: name.to_string(),
            address,
        })
    }
}

/// An export after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub name: String,
    /// Stable id (1-based position in the file); part of NLM file handles.
    pub id: u32,
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub group: String,
    pub mandatory: MandatoryPolicy,
    pub flock: FlockPolicy,
    /// Empty: every client is allowed.
    pub clients: Vec<Cidr>,
    pub read_only: bool,
    /// NFS callers with uid 0 keep it (otherwise they become `anon_uid`/`anon_gid`).
    pub no_root_squash: bool,
    pub anon_uid: u32,
    pub anon_gid: u32,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub state_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub listen: Vec<IpAddr>,
    pub port: u16,
    /// How long the RPC server keeps polling a connection after a reply;
    /// `None` sleeps at once.
    pub busy_poll: Option<Duration>,
    /// NFS version 3 port; `None`: NFS and MOUNT are not served.
    pub nfs_port: Option<u16>,
    pub mount_port: u16,
    /// Backing descriptors the NFS door keeps open behind handles.
    pub open_files: usize,
    /// Largest NFS READ and WRITE, advertised in FSINFO.
    pub nfs_max_io: u32,
    pub owners_per_host: usize,
    pub locks_per_host: u64,
    pub waiters: usize,
    pub connections: usize,
    pub net: NetLimits,
    /// Release a host whose callbacks have failed this long (opt-in).
    pub release_unreachable_after: Option<Duration>,
    pub groups: Vec<Group>,
    pub exports: Vec<Export>,
}

impl Config {
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    match raw {
        RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
        RawDuration::Text(t) => {
            let t = t.trim();
            let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
            let n: u64 = num
                .parse()
                .map_err(|_| format!("{t:?} is not a duration (use 90, \"90s\", \"2m\")"))?;
            let secs = match unit.trim() {
                "" | "s" => n,
                "m" => n.saturating_mul(60),
                "h" => n.saturating_mul(3600),
                other => return Err(format!("unknown unit {other:?} (use s, m or h)")),
            };
            Ok(Duration::from_secs(secs))
        }
    }
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Parse and validate configuration text. `path` names the source in errors.
pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
    check_known_keys(text, path)?;
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let invalid = |span: std::ops::Range<usize>, key: &str, message: String| ConfigError::Invalid {
        path: path.to_string(),
        line: line_of(text, span.start),
        key: key.to_string(),
        message,
    };

    let default_grace = match &raw.grace_period {
        Some(g) => parse_duration(g.get_ref()).map_err(|m| invalid(g.span(), "grace_period", m))?,
        None => Duration::from_secs(90),
    };

    let release_unreachable_after = match &raw.release_unreachable_after {
        Some(d) => Some(
            parse_duration(d.get_ref())
                .map_err(|m| invalid(d.span(), "release_unreachable_after", m))?,
        ),
        None => None,
    };

    let mut groups = vec![Group {
        name: DEFAULT_GROUP.to_string(),
        scope: 0,
        grace: default_grace,
        storage: None,
        server_ids: Vec::new(),
        online_at_start: true,
    }];
    for g in &raw.group {
        let name = g.name.get_ref();
        if name.is_empty() {
            return Err(invalid(
                g.name.span(),
                "group.name",
                "must not be empty".into(),
            ));
        }
        let grace = match &g.grace_period {
            Some(d) => parse_duration(d.get_ref())
                .map_err(|m| invalid(d.span(), "group.grace_period", m))?,
            None => default_grace,
        };
        let storage = match &g.storage {
            Some(p) => {
                if !p.get_ref().is_absolute() {
                    return Err(invalid(
                        p.span(),
                        "group.storage",
                        format!("{} is not an absolute path", p.get_ref().display()),
                    ));
                }
                if name == DEFAULT_GROUP {
                    return Err(invalid(
                        p.span(),
                        "group.storage",
                        "the default group stays on its node; declare a group of another name to move it".into(),
                    ));
                }
                if let Some(other) = groups.iter().find(|x| {
                    x.storage
                        .as_deref()
                        .is_some_and(|s| overlaps(s, p.get_ref()))
                }) {
                    return Err(invalid(
                        p.span(),
                        "group.storage",
                        format!(
                            "{} overlaps the storage of group {:?}",
                            p.get_ref().display(),
                            other.name
                        ),
                    ));
                }
                Some(p.get_ref().clone())
            }
            None => None,
        };
        let mut server_ids = Vec::new();
        for id in g.server_ids.iter().flatten() {
            let sid: ServerId = id
                .get_ref()
                .parse()
                .map_err(|m| invalid(id.span(), "group.server_ids", m))?;
            if server_ids.contains(&sid) {
                return Err(invalid(
                    id.span(),
                    "group.server_ids",
                    format!("{:?} is listed twice", id.get_ref()),
                ));
            }
            if let Some(other) = groups.iter().find(|x| {
                x.server_ids
                    .iter()
                    .any(|o| o.address == sid.address || o.name.eq_ignore_ascii_case(&sid.name))
            }) {
                return Err(invalid(
                    id.span(),
                    "group.server_ids",
                    format!(
                        "{:?} is already a server ID of group {:?}: a name or address reaches one group",
                        id.get_ref(),
                        other.name
                    ),
                ));
            }
            server_ids.push(sid);
        }
        if storage.is_none() && !server_ids.is_empty() {
            return Err(invalid(
                g.name.span(),
                "group.server_ids",
                "a group with server IDs moves between nodes and needs `storage`".into(),
            ));
        }
        let online_at_start = match &g.online_at_start {
            Some(o) if storage.is_none() && !*o.get_ref() => {
                return Err(invalid(
                    o.span(),
                    "group.online_at_start",
                    "a group without `storage` is always online".into(),
                ))
            }
            Some(o) => *o.get_ref(),
            None => storage.is_none(),
        };
        if name == DEFAULT_GROUP {
            groups[0].grace = grace;
            continue;
        }
        if groups.iter().any(|x| &x.name == name) {
            return Err(invalid(
                g.name.span(),
                "group.name",
                format!("group {name:?} is declared twice"),
            ));
        }
        let scope = groups.len() as u32;
        groups.push(Group {
            name: name.clone(),
            scope,
            grace,
            storage,
            server_ids,
            online_at_start,
        });
    }

    let mut exports = Vec::new();
    let mut names: BTreeMap<String, ()> = BTreeMap::new();
    for (i, e) in raw.export.iter().enumerate() {
        let name = e.name.get_ref();
        if name.is_empty() || name.contains('/') {
            return Err(invalid(
                e.name.span(),
                "export.name",
                "must be non-empty and contain no '/'".into(),
            ));
        }
        if names.insert(name.clone(), ()).is_some() {
            return Err(invalid(
                e.name.span(),
                "export.name",
                format!("export {name:?} is declared twice"),
            ));
        }
        for (key, p) in [
            ("export.source", &e.source),
            ("export.mountpoint", &e.mountpoint),
        ] {
            if !p.get_ref().is_absolute() {
                return Err(invalid(
                    p.span(),
                    key,
                    format!("{} is not an absolute path", p.get_ref().display()),
                ));
            }
        }
        if e.source.get_ref() == e.mountpoint.get_ref() {
            return Err(invalid(
                e.mountpoint.span(),
                "export.mountpoint",
                "must differ from source".into(),
            ));
        }
        let group = match &e.group {
            Some(g) => {
                if !groups.iter().any(|x| &x.name == g.get_ref()) {
                    return Err(invalid(
                        g.span(),
                        "export.group",
                        format!("no [[group]] named {:?} is declared", g.get_ref()),
                    ));
                }
                g.get_ref().clone()
            }
            None => DEFAULT_GROUP.to_string(),
        };
        let mut clients = Vec::new();
        for c in e.clients.iter().flatten() {
            let cidr: Cidr =
                c.get_ref()
                    .parse()
                    .map_err(|err: lockd_user::exports::CidrError| {
                        invalid(c.span(), "export.clients", err.to_string())
                    })?;
            clients.push(cidr);
        }
        exports.push(Export {
            name: name.clone(),
            id: i as u32 + 1,
            source: e.source.get_ref().clone(),
            mountpoint: e.mountpoint.get_ref().clone(),
            group,
            mandatory: e.mandatory.unwrap_or(MandatoryPolicy::Off),
            flock: e.flock.unwrap_or(FlockPolicy::Separate),
            clients,
            read_only: e.read_only,
            no_root_squash: e.no_root_squash,
            anon_uid: e.anon_uid.unwrap_or(65534),
            anon_gid: e.anon_gid.unwrap_or(65534),
        });
    }
    if exports.is_empty() {
        return Err(ConfigError::Parse {
            path: path.to_string(),
            message: "no [[export]] is configured".into(),
        });
    }

    let mut listen = Vec::new();
    match &raw.listen.addresses {
        Some(addrs) => {
            for a in addrs {
                let ip: IpAddr = a.get_ref().parse().map_err(|_| {
                    invalid(
                        a.span(),
                        "listen.addresses",
                        format!("{:?} is not an IP address", a.get_ref()),
                    )
                })?;
                listen.push(ip);
            }
        }
        None => listen.push(IpAddr::from([127, 0, 0, 1])),
    }

    Ok(Config {
        node_name: raw.node_name.unwrap_or_else(this_host),
        state_dir: raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/lockfs")),
        admin_socket: raw
            .admin_socket
            .unwrap_or_else(|| PathBuf::from("/run/lockfs/admin.sock")),
        listen,
        port: raw.listen.port.unwrap_or(0),
        busy_poll: match raw.listen.busy_poll_us.unwrap_or(200) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        },
        nfs_port: match raw.listen.nfs_port.unwrap_or(2049) {
            0 => None,
            p => Some(p),
        },
        mount_port: raw.listen.mount_port.unwrap_or(20048),
        open_files: raw.limits.open_files.unwrap_or(4096).max(16),
        nfs_max_io: raw
            .limits
            .nfs_max_io
            .unwrap_or(1 << 20)
            .clamp(4096, 16 << 20),
        owners_per_host: raw.limits.owners_per_host.unwrap_or(4096),
        locks_per_host: raw.limits.locks_per_host.unwrap_or(1 << 20),
        waiters: raw.limits.waiters.unwrap_or(65_536),
        connections: raw.limits.connections.unwrap_or(1024),
        net: NetLimits {
            connections_per_address: raw.limits.connections_per_address.unwrap_or(64),
            unfinished_record_bytes: raw.limits.unfinished_record_bytes.unwrap_or(32 << 20),
            clients: raw.limits.clients.unwrap_or(65_536),
            client_names_per_address: raw.limits.client_names_per_address.unwrap_or(1024),
            addresses_per_client: raw.limits.addresses_per_client.unwrap_or(16),
            monitors: raw.limits.monitors.unwrap_or(65_536),
            monitors_per_host: raw.limits.monitors_per_host.unwrap_or(64),
            notify_per_second: raw.limits.notify_per_second.unwrap_or(500).max(1),
            group_notify_per_second: raw
                .limits
                .group_notify_per_second
                .unwrap_or(lockd_user::lockd::GROUP_NOTIFY_PER_SECOND)
                .max(1),
            notify_in_flight: raw.limits.notify_in_flight.unwrap_or(1024).max(1),
        },
        release_unreachable_after,
        groups,
        exports,
    })
}

/// Whether one directory contains the other (or they are the same).
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read(e, path.display().to_string()))?;
    parse(&text, &path.display().to_string())
}

/// The configuration used when none is given: one export of
/// `BASE/export` mounted on `BASE/mnt` (mandatory locking by the set-group-ID
/// convention), state in `BASE/state`, the default admin socket, services on
/// 127.0.0.1, a short grace period.
pub fn embedded_default(base: &Path) -> Config {
    let text = format!(
        r#"
state_dir = {state:?}
grace_period = 15

[listen]
addresses = ["127.0.0.1"]

[[export]]
name = "default"
source = {src:?}
mountpoint = {mnt:?}
mandatory = "file"
"#,
        state = base.join("state"),
        src = base.join("export"),
        mnt = base.join("mnt"),
    );
    // The text above is fixed apart from the paths, which must be absolute.
    parse(&text, "embedded default").expect("the embedded default configuration is valid")
}

/// Where a configuration key lives: the top level or one of its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Top,
    Listen,
    Limits,
    Group,
    Export,
}

impl Section {
    pub const ALL: [Section; 5] = [
        Section::Top,
        Section::Listen,
        Section::Limits,
        Section::Group,
        Section::Export,
    ];

    /// The key that opens the section at the top level (`None`: the top level).
    pub fn table(self) -> Option<&'static str> {
        match self {
            Section::Top => None,
            Section::Listen => Some("listen"),
            Section::Limits => Some("limits"),
            Section::Group => Some("group"),
            Section::Export => Some("export"),
        }
    }

    /// How the section is written in the file.
    pub fn header(self) -> &'static str {
        match self {
            Section::Top => "the top level",
            Section::Listen => "[listen]",
            Section::Limits => "[limits]",
            Section::Group => "[[group]]",
            Section::Export => "[[export]]",
        }
    }

    /// What the section is for.
    pub fn doc(self) -> &'static str {
        match self {
            Section::Top => "Keys before the first table apply to the whole daemon.",
            Section::Listen => {
                "Where NLM, NSM, NFS and MOUNT listen for remote clients, over UDP and TCP."
            }
            Section::Limits => {
                "Bounds on what remote clients may hold or queue. A request beyond a limit \
                 is refused with DENIED_NOLOCKS and logged."
            }
            Section::Group => {
                "A service group: exports that fail over together, with their own client \
                 list and grace period, so that recovering one group never touches another's \
                 locks. A group named \"default\" exists without being declared; declaring it \
                 sets its grace period."
            }
            Section::Export => {
                "A directory served through the FUSE file system (and to NLM clients). At \
                 least one export is required."
            }
        }
    }
}

/// One configuration key: the table [`parse`] checks every key of a file
/// against and the lockfs.toml(5) manual page is generated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub section: Section,
    pub name: &'static str,
    /// The kind of value, as the manual page shows it.
    pub value: &'static str,
    /// The value used when the key is absent (`None`: the key is required).
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// Every key the configuration file accepts.
pub const KEYS: &[Key] = &[
    Key {
        section: Section::Top,
        name: "node_name",
        value: "string",
        default: Some("this machine's host name"),
        doc: "The name this server gives itself in SM_NOTIFY messages to NLM clients \
              after a restart.",
    },
    Key {
        section: Section::Top,
        name: "state_dir",
        value: "absolute path",
        default: Some("/var/lib/lockfs"),
        doc: "Where the daemon keeps its NSM state number, the client list of every \
              service group and the key that signs NLM file handles. Created if missing. \
              Keep it across restarts: crash recovery depends on it.",
    },
    Key {
        section: Section::Top,
        name: "admin_socket",
        value: "path",
        default: Some("/run/lockfs/admin.sock"),
        doc: "The root-only Unix socket that lockfs locks and lockfs clear talk to.",
    },
    Key {
        section: Section::Top,
        name: "grace_period",
        value: "duration",
        default: Some("90"),
        doc: "How long after a restart only reclaims of locks held before it are \
              granted, for every group that does not set its own. A duration is a \
              number of seconds, or a string with a unit: \"90s\", \"2m\", \"1h\".",
    },
    Key {
        section: Section::Top,
        name: "release_unreachable_after",
        value: "duration",
        default: Some("never"),
        doc: "Opt-in: release every lock, waiter and share reservation of a remote host \
              once callbacks to it (GRANTED, _RES) have failed for this long, or once it \
              has not answered probes of its portmapper for this long while another \
              request wants its locks, as after a network partition that outlived it. \
              Lock value blocks the host was writing become not-valid.",
    },
    Key {
        section: Section::Listen,
        name: "addresses",
        value: "array of IP addresses",
        default: Some("[\"127.0.0.1\"]"),
        doc: "The addresses NLM, NSM, NFS and MOUNT listen on.",
    },
    Key {
        section: Section::Listen,
        name: "port",
        value: "integer",
        default: Some("0"),
        doc: "The port NLM and NSM listen on; 0 takes any free port. The services are \
              registered with the system's rpcbind or, when none runs, with lockfs's own \
              portmapper.",
    },
    Key {
        section: Section::Listen,
        name: "busy_poll_us",
        value: "integer (microseconds)",
        default: Some("200"),
        doc: "After a reply, keep polling the connection this long before sleeping: \
              lower latency for a busy client at the cost of CPU time. 0 turns it off.",
    },
    Key {
        section: Section::Listen,
        name: "nfs_port",
        value: "integer",
        default: Some("2049"),
        doc: "The port NFS version 3 listens on (UDP and TCP, on the listen addresses), \
              serving the exports with the same file handles as NLM; 0 serves no NFS and \
              no MOUNT. When the port cannot be bound the daemon says so and serves the \
              rest without NFS.",
    },
    Key {
        section: Section::Listen,
        name: "mount_port",
        value: "integer",
        default: Some("20048"),
        doc: "The fixed port of the MOUNT program (versions 1 and 3, UDP and TCP), which \
              NFS clients ask for an export's root handle and showmount lists exports \
              with.",
    },
    Key {
        section: Section::Limits,
        name: "owners_per_host",
        value: "integer",
        default: Some("4096"),
        doc: "NLM lock owners (client processes) one client host may have.",
    },
    Key {
        section: Section::Limits,
        name: "locks_per_host",
        value: "integer",
        default: Some("1048576"),
        doc: "Lock-table segments one client host may hold.",
    },
    Key {
        section: Section::Limits,
        name: "waiters",
        value: "integer",
        default: Some("65536"),
        doc: "Queued blocking requests, local ones included.",
    },
    Key {
        section: Section::Limits,
        name: "connections",
        value: "integer",
        default: Some("1024"),
        doc: "Open TCP connections; when the table is full, the idlest connection is closed to admit a new one.",
    },
    Key {
        section: Section::Limits,
        name: "connections_per_address",
        value: "integer",
        default: Some("64"),
        doc: "TCP connections from one peer address; further ones are closed.",
    },
    Key {
        section: Section::Limits,
        name: "unfinished_record_bytes",
        value: "integer",
        default: Some("33554432"),
        doc: "Bytes held in unfinished TCP records, all connections together (the first 16 KiB of each record are free); a connection that would pass it is closed.",
    },
    Key {
        section: Section::Limits,
        name: "clients",
        value: "integer",
        default: Some("65536"),
        doc: "Listed clients (client-list entries), all groups together; a new client beyond it is refused with DENIED_NOLOCKS.",
    },
    Key {
        section: Section::Limits,
        name: "client_names_per_address",
        value: "integer",
        default: Some("1024"),
        doc: "Client names listed at one address.",
    },
    Key {
        section: Section::Limits,
        name: "addresses_per_client",
        value: "integer",
        default: Some("16"),
        doc: "Addresses recorded for one client.",
    },
    Key {
        section: Section::Limits,
        name: "monitors",
        value: "integer",
        default: Some("65536"),
        doc: "SM_MON registrations in total; beyond it SM_MON answers res_stat fail.",
    },
    Key {
        section: Section::Limits,
        name: "monitors_per_host",
        value: "integer",
        default: Some("64"),
        doc: "SM_MON registrations for one monitored host.",
    },
    Key {
        section: Section::Limits,
        name: "notify_per_second",
        value: "integer",
        default: Some("500"),
        doc: "Clients a restart's SM_NOTIFY round starts per second.",
    },
    Key {
        section: Section::Limits,
        name: "group_notify_per_second",
        value: "integer",
        default: Some("600"),
        doc: "Clients a group coming online (lockfs group online) notifies per second, all its server IDs together.",
    },
    Key {
        section: Section::Limits,
        name: "notify_in_flight",
        value: "integer",
        default: Some("1024"),
        doc: "SM_NOTIFY requests (portmapper lookups included) awaiting a reply at once.",
    },
    Key {
        section: Section::Limits,
        name: "open_files",
        value: "integer",
        default: Some("4096"),
        doc: "Backing-file descriptors the NFS server keeps open behind file handles \
              (least recently used ones are closed first).",
    },
    Key {
        section: Section::Limits,
        name: "nfs_max_io",
        value: "integer (bytes)",
        default: Some("1048576"),
        doc: "The largest NFS READ and WRITE, advertised to clients in FSINFO (4096 to \
              16777216; over UDP at most 32768).",
    },
    Key {
        section: Section::Group,
        name: "name",
        value: "string",
        default: None,
        doc: "The group's name, unique, non-empty; exports name it in their group key.",
    },
    Key {
        section: Section::Group,
        name: "grace_period",
        value: "duration",
        default: Some("the top-level grace_period"),
        doc: "This group's own grace period after a restart.",
    },
    Key {
        section: Section::Group,
        name: "storage",
        value: "absolute path",
        default: None,
        doc: "A directory on the group's own shared storage, which moves with the group: \
              its client list, state number, file-handle key, clean-offline record and \
              lease live under .lockfs/ there. Not allowed for the default group; two \
              groups' storage may not overlap.",
    },
    Key {
        section: Section::Group,
        name: "server_ids",
        value: "array of \"ADDRESS\" or \"NAME=ADDRESS\"",
        default: Some("[]"),
        doc: "The addresses (and names) clients use to reach this group's exports; \
              SM_NOTIFY goes out once per server ID, naming it. Needs storage; a name or \
              address belongs to one group only.",
    },
    Key {
        section: Section::Group,
        name: "online_at_start",
        value: "boolean",
        default: Some("false for a group with storage"),
        doc: "Whether the daemon serves this group as it starts; otherwise the group \
              waits for `lockfs group online NAME`. A group without storage is always \
              online.",
    },
    Key {
        section: Section::Export,
        name: "name",
        value: "string",
        default: None,
        doc: "The export's name, unique, non-empty, without '/'.",
    },
    Key {
        section: Section::Export,
        name: "source",
        value: "absolute path",
        default: None,
        doc: "The directory served.",
    },
    Key {
        section: Section::Export,
        name: "mountpoint",
        value: "absolute path",
        default: None,
        doc: "Where local programs reach the export through FUSE; must differ from source.",
    },
    Key {
        section: Section::Export,
        name: "group",
        value: "string",
        default: Some("\"default\""),
        doc: "The service group the export belongs to; a group other than \"default\" \
              must be declared with [[group]].",
    },
    Key {
        section: Section::Export,
        name: "mandatory",
        value: "off | file | all",
        default: Some("off"),
        doc: "Mandatory locking: off (advisory only), file (files marked by the System V \
              convention: set-group-ID on, group-execute off) or all files. On a \
              mandatory file a read, write or truncate that meets another owner's \
              conflicting lock waits, or fails with EAGAIN on an O_NONBLOCK open.",
    },
    Key {
        section: Section::Export,
        name: "flock",
        value: "separate | shared",
        default: Some("separate"),
        doc: "separate: flock locks conflict only with flock locks, as on native Linux. \
              shared: flock locks are whole-file locks in the shared table, seen by NLM \
              clients and POSIX locks.",
    },
    Key {
        section: Section::Export,
        name: "clients",
        value: "array of addresses or CIDR blocks",
        default: Some("any client"),
        doc: "The NLM clients allowed to lock files of this export, such as \
              \"10.0.0.0/8\" or \"::1\".",
    },
    Key {
        section: Section::Export,
        name: "read_only",
        value: "boolean",
        default: Some("false"),
        doc: "Serve the export read-only (NFS answers NFS3ERR_ROFS to every change).",
    },
    Key {
        section: Section::Export,
        name: "no_root_squash",
        value: "boolean",
        default: Some("false"),
        doc: "NFS callers with uid 0 act as root. By default they act as anon_uid and \
              anon_gid, without supplementary groups.",
    },
    Key {
        section: Section::Export,
        name: "anon_uid",
        value: "integer",
        default: Some("65534"),
        doc: "The uid NFS operations of squashed root and of AUTH_NONE callers run as.",
    },
    Key {
        section: Section::Export,
        name: "anon_gid",
        value: "integer",
        default: Some("65534"),
        doc: "The gid NFS operations of squashed root and of AUTH_NONE callers run as.",
    },
];

/// The keys of one section, in table order.
pub fn keys_of(section: Section) -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(move |k| k.section == section)
}

/// The keys of a TOML document with their spans, tables nested: only what
/// [`check_known_keys`] needs. An array's entries are its elements' keys
/// run together (every element of `[[export]]` is an export).
#[derive(Default)]
struct KeyTree(Vec<(toml::Spanned<String>, KeyTree)>);

impl<'de> Deserialize<'de> for KeyTree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyTree;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<KeyTree, E> {
                Ok(KeyTree::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<KeyTree, E> {
                Ok(KeyTree::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<KeyTree, E> {
                Ok(KeyTree::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeyTree, E> {
                Ok(KeyTree::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<KeyTree, E> {
                Ok(KeyTree::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<KeyTree, A::Error> {
                let mut all = Vec::new();
                while let Some(KeyTree(entries)) = seq.next_element()? {
                    all.extend(entries);
                }
                Ok(KeyTree(all))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KeyTree, A::Error> {
                let mut all = Vec::new();
                while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
                    all.push((key, map.next_value()?));
                }
                Ok(KeyTree(all))
            }
        }
        d.deserialize_any(V)
    }
}

/// Refuses a key that is not in [`KEYS`], naming its line and column and
/// the keys its section takes. Text that does not parse as TOML is left to
/// the full parse, which says where.
fn check_known_keys(text: &str, path: &str) -> Result<(), ConfigError> {
    let Ok(top) = toml::from_str::<KeyTree>(text) else {
        return Ok(());
    };
    let unknown = |key: &toml::Spanned<String>, section: Section| {
        let start = key.span().start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let mut expected: Vec<&str> = keys_of(section).map(|k| k.name).collect();
        if section == Section::Top {
            expected.extend(Section::ALL.iter().filter_map(|s| s.table()));
        }
        ConfigError::UnknownKey {
            path: path.to_string(),
            line: line_of(text, start),
            column: text[line_start..start].chars().count() + 1,
            key: key.get_ref().clone(),
            section: section.header(),
            expected: expected.join(", "),
        }
    };
    for (key, value) in &top.0 {
        let name = key.get_ref().as_str();
        if let Some(section) = Section::ALL.into_iter().find(|s| s.table() == Some(name)) {
            for (inner, _) in &value.0 {
                if !keys_of(section).any(|k| k.name == inner.get_ref()) {
                    return Err(unknown(inner, section));
                }
            }
        } else if !keys_of(Section::Top).any(|k| k.name == name) {
            return Err(unknown(key, Section::Top));
        }
    }
    Ok(())
}

/// The fields serde's derive accepts for a struct: its unknown-field
/// error lists them all.
#[cfg(test)]
fn serde_fields<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let e = toml::from_str::<T>("zz_not_a_key = 1\n")
        .unwrap_err()
        .to_string();
    let list = e
        .split_once("expected")
        .unwrap_or_else(|| panic!("no field list in: {e}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every key the parser accepts, as (section, name): what serde's
/// structs take, tables included, independently of [`KEYS`].
#[cfg(test)]
pub(crate) fn accepted_keys() -> Vec<(Section, String)> {
    let mut out = Vec::new();
    for name in serde_fields::<RawConfig>() {
        if !Section::ALL
            .iter()
            .any(|s| s.table() == Some(name.as_str()))
        {
            out.push((Section::Top, name));
        }
    }
    for (section, fields) in [
        (Section::Listen, serde_fields::<RawListen>()),
        (Section::Limits, serde_fields::<RawLimits>()),
        (Section::Group, serde_fields::<RawGroup>()),
        (Section::Export, serde_fields::<RawExport>()),
    ] {
        out.extend(fields.into_iter().map(|f| (section, f)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, "lockfs.toml").unwrap_err().to_string()
    }

    const MINIMAL: &str = r#"
[[export]]
name = "data"
source = "/srv/data"
mountpoint = "/mnt/data"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL, "x").unwrap();
        assert_eq!(c.exports.len(), 1);
        let e = &c.exports[0];
        assert_eq!(
            (e.id, e.group.as_str(), e.mandatory, e.flock),
            (1, "default", MandatoryPolicy::Off, FlockPolicy::Separate)
        );
        assert!(e.clients.is_empty());
        assert_eq!(c.groups.len(), 1);
        assert_eq!(c.groups[0].grace, Duration::from_secs(90));
        assert_eq!(c.listen, vec![IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(c.busy_poll, Some(Duration::from_micros(200)));
        assert_eq!((c.nfs_port, c.mount_port), (Some(2049), 20048));
        assert_eq!((c.open_files, c.nfs_max_io), (4096, 1 << 20));
        assert_eq!(
            (e.no_root_squash, e.anon_uid, e.anon_gid),
            (false, 65534, 65534)
        );
    }

    #[test]
    fn nfs_keys_parse() {
        let text = MINIMAL
            .replace(
                "[[export]]",
                "[listen]\nnfs_port = 0\nmount_port = 635\n[limits]\nopen_files = 64\nnfs_max_io = 65536\n[[export]]",
            )
            + "no_root_squash = true\nanon_uid = 7\nanon_gid = 8\n";
        let c = parse(&text, "x").unwrap();
        assert_eq!((c.nfs_port, c.mount_port), (None, 635), "0: no NFS");
        assert_eq!((c.open_files, c.nfs_max_io), (64, 65536));
        let e = &c.exports[0];
        assert_eq!((e.no_root_squash, e.anon_uid, e.anon_gid), (true, 7, 8));
        let bad = MINIMAL.to_string() + "anon_uid = \"nobody\"\n";
        assert!(parse(&bad, "x").is_err());
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
node_name = "nfs-a"
state_dir = "/var/lib/lockfs"
grace_period = "2m"
release_unreachable_after = "10m"
[listen]
addresses = ["127.0.0.1", "::1"]
port = 4045
busy_poll_us = 0
[limits]
waiters = 10
locks_per_host = 5000
connections_per_address = 8
monitors_per_host = 3
notify_per_second = 50
[[group]]
name = "g1"
grace_period = 30
[[export]]
name = "a"
source = "/srv/a"
mountpoint = "/mnt/a"
group = "g1"
mandatory = "all"
flock = "shared"
clients = ["10.0.0.0/8", "::1"]
read_only = true
[[export]]
name = "b"
source = "/srv/b"
mountpoint = "/mnt/b"
"#,
            "x",
        )
        .unwrap();
        assert_eq!(c.node_name, "nfs-a");
        assert_eq!(c.port, 4045);
        assert_eq!(c.busy_poll, None);
        assert_eq!(c.waiters, 10);
        assert_eq!(c.locks_per_host, 5000);
        assert_eq!(c.net.connections_per_address, 8);
        assert_eq!(c.net.monitors_per_host, 3);
        assert_eq!(c.net.notify_per_second, 50);
        assert_eq!(c.net.clients, 65_536);
        assert_eq!(c.release_unreachable_after, Some(Duration::from_secs(600)));
        assert_eq!(c.group("default").unwrap().grace, Duration::from_secs(120));
        assert_eq!(c.group("g1").unwrap().grace, Duration::from_secs(30));
        assert_eq!(c.group("g1").unwrap().scope, 1);
        let a = &c.exports[0];
        assert_eq!(
            (a.mandatory, a.flock, a.read_only, a.clients.len()),
            (MandatoryPolicy::All, FlockPolicy::Shared, true, 2)
        );
        assert!(a.clients[0].contains("10.1.2.3".parse().unwrap()));
        assert_eq!(c.exports[1].id, 2);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = err(
            "[[export]]\nname = \"a\"\nsource = \"/s\"\nmountpoint = \"/m\"\ngroup = \"nope\"\n",
        );
        assert!(e.contains("lockfs.toml:5: export.group"), "{e}");
        let e = err("[[export]]\nname = \"a\"\nsource = \"/s\"\nmountpoint = \"/m\"\nclients = [\"10.0.0.0/33\"]\n");
        assert!(e.contains(":5: export.clients"), "{e}");
        let e = err("[[export]]\nname = \"a\"\nsource = \"relative\"\nmountpoint = \"/m\"\n");
        assert!(e.contains(":3: export.source"), "{e}");
        let dup = format!("{MINIMAL}{MINIMAL}");
        let e = err(&dup);
        assert!(e.contains(":8: export.name") && e.contains("twice"), "{e}");
        let e = err(&format!("grace_period = \"9 fortnights\"\n{MINIMAL}"));
        assert!(e.contains(":1: grace_period"), "{e}");
    }

    #[test]
    fn unknown_and_mistyped_keys_name_the_line() {
        let e = err(&format!("{MINIMAL}mandatroy = \"file\"\n"));
        assert!(e.contains("line 6") && e.contains("mandatroy"), "{e}");
        let e = err(&format!("{MINIMAL}mandatory = \"sometimes\"\n"));
        assert!(e.contains("line 6") && e.contains("sometimes"), "{e}");
        let e = err("[listen]\nport = \"high\"\n");
        assert!(e.contains("line 2"), "{e}");
        let e = err("this is not toml");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn no_export_is_an_error() {
        assert!(err("node_name = \"x\"\n").contains("no [[export]]"));
    }

    #[test]
    fn embedded_default_is_valid_and_under_base() {
        let c = embedded_default(Path::new("/tmp/base"));
        assert_eq!(c.exports[0].source, PathBuf::from("/tmp/base/export"));
        assert_eq!(c.exports[0].mountpoint, PathBuf::from("/tmp/base/mnt"));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/base/state"));
        assert_eq!(c.exports[0].mandatory, MandatoryPolicy::File);
    }

    #[test]
    fn the_key_table_is_exactly_what_the_parser_accepts() {
        let mut accepted = accepted_keys();
        // Sanity: the enumeration sees real fields in every section.
        assert!(accepted.contains(&(Section::Top, "grace_period".into())));
        assert!(accepted.contains(&(Section::Export, "clients".into())));
        let mut table: Vec<(Section, String)> = KEYS
            .iter()
            .map(|k| (k.section, k.name.to_string()))
            .collect();
        let order = |v: &mut Vec<(Section, String)>| {
            v.sort_by_key(|(s, n)| (*s as u8, n.clone()));
        };
        order(&mut accepted);
        order(&mut table);
        assert_eq!(table, accepted);
        // Every section's table is a key serde takes at the top level.
        let top = serde_fields::<RawConfig>();
        for s in Section::ALL.iter().filter_map(|s| s.table()) {
            assert!(top.iter().any(|f| f == s), "{s} in {top:?}");
        }
    }

    #[test]
    fn a_key_outside_the_table_is_refused_with_its_line_and_column() {
        let e = err(&format!("{MINIMAL}  mandatroy = \"file\"\n"));
        assert!(
            e.contains("line 6, column 3")
                && e.contains("\"mandatroy\" in [[export]]")
                && e.contains("mountpoint"),
            "{e}"
        );
        let e = err(&format!("[listen]\nprot = 1\n{MINIMAL}"));
        assert!(
            e.contains("line 2, column 1") && e.contains("[listen]"),
            "{e}"
        );
        let e = err(&format!("[lisen]\nport = 1\n{MINIMAL}"));
        assert!(
            e.contains("line 1") && e.contains("\"lisen\" in the top level"),
            "{e}"
        );
        let e = err(&format!("[[group]]\nname = \"g\"\ngrace = 3\n{MINIMAL}"));
        assert!(e.contains("line 3") && e.contains("[[group]]"), "{e}");
        // Inline and dotted tables are checked the same way.
        let e = err(&format!("listen = {{ port = 1, host = \"x\" }}\n{MINIMAL}"));
        assert!(e.contains("line 1") && e.contains("\"host\""), "{e}");
        let e = err(&format!("limits.lock = 1\n{MINIMAL}"));
        assert!(e.contains("\"lock\" in [limits]"), "{e}");
    }

    #[test]
    fn the_shipped_example_configuration_is_valid() {
        let c = parse(
            include_str!("../../scripts/lockfs.toml"),
            "scripts/lockfs.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.exports.is_empty());
    }

    const HA: &str = r#"
[[group]]
name = "g1"
storage = "/srv/g1"
server_ids = ["10.0.0.10", "nfs-g1=10.0.0.11"]
[[group]]
name = "g2"
storage = "/srv/g2"
server_ids = ["fd00::2"]
online_at_start = true
[[group]]
name = "local"
[[export]]
name = "a"
source = "/srv/g1/a"
mountpoint = "/mnt/a"
group = "g1"
"#;

    #[test]
    fn groups_with_storage_start_offline_unless_configured_online() {
        let c = parse(HA, "x").unwrap();
        let g1 = c.group("g1").unwrap();
        assert_eq!(g1.storage.as_deref(), Some(Path::new("/srv/g1")));
        assert_eq!(
            g1.server_ids,
            vec![
                ServerId {
                    name: "10.0.0.10".into(),
                    address: IpAddr::from([10, 0, 0, 10])
                },
                ServerId {
                    name: "nfs-g1".into(),
                    address: IpAddr::from([10, 0, 0, 11])
                },
            ]
        );
        assert!(!g1.online_at_start);
        let g2 = c.group("g2").unwrap();
        assert!(g2.online_at_start);
        assert_eq!(
            g2.server_ids[0].address,
            "fd00::2".parse::<IpAddr>().unwrap()
        );
        let local = c.group("local").unwrap();
        assert!(local.online_at_start && local.storage.is_none());
        assert!(c.group("default").unwrap().online_at_start);
    }

    #[test]
    fn bad_group_keys_name_the_line() {
        let with = |from: &str, to: &str| {
            assert!(HA.contains(from), "{from}");
            err(&HA.replacen(from, to, 1))
        };
        let e = with("storage = \"/srv/g1\"", "storage = \"srv/g1\"");
        assert!(
            e.contains("lockfs.toml:4: group.storage") && e.contains("absolute"),
            "{e}"
        );
        let e = with("storage = \"/srv/g2\"", "storage = \"/srv/g1/sub\"");
        assert!(
            e.contains(":8: group.storage") && e.contains("\"g1\""),
            "{e}"
        );
        let e = with("\"10.0.0.10\"", "\"10.0.0.300\"");
        assert!(
            e.contains(":5: group.server_ids") && e.contains("not an IP"),
            "{e}"
        );
        let e = with("\"10.0.0.10\"", "\"=10.0.0.10\"");
        assert!(
            e.contains(":5: group.server_ids") && e.contains("empty"),
            "{e}"
        );
        let e = with("\"fd00::2\"", "\"nfs-g1=fd00::2\"");
        assert!(
            e.contains(":9: group.server_ids") && e.contains("\"g1\""),
            "{e}"
        );
        let e = with("\"fd00::2\"", "\"10.0.0.11\"");
        assert!(
            e.contains(":9: group.server_ids") && e.contains("already"),
            "{e}"
        );
        let e = with(
            "name = \"local\"",
            "name = \"local\"\nserver_ids = [\"10.1.1.1\"]",
        );
        assert!(
            e.contains(":12: group.server_ids") && e.contains("storage"),
            "{e}"
        );
        let e = with(
            "name = \"local\"",
            "name = \"local\"\nonline_at_start = false",
        );
        assert!(e.contains(":13: group.online_at_start"), "{e}");
        let e = with(
            "name = \"local\"",
            "name = \"default\"\nstorage = \"/srv/d\"",
        );
        assert!(
            e.contains(":13: group.storage") && e.contains("default"),
            "{e}"
        );
        let e = with("online_at_start = true", "online_at_start = \"yes\"");
        assert!(
            e.contains("line 10") && e.contains("online_at_start"),
            "{e}"
        );
    }
}
