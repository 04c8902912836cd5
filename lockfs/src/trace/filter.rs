//! The `--path-prefix`, `--pid` and `--host` filters of `lockfs trace`.

use std::path::PathBuf;

use lockfs_trace::Event;

/// Which files and parties the view keeps.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub path_prefix: Option<PathBuf>,
    pub pid: Option<u32>,
    pub host: Option<String>,
}

impl Filter {
    /// Whether the pid or host filter is set.
    pub fn filters_parties(&self) -> bool {
        self.pid.is_some() || self.host.is_some()
    }

    /// A party passes when it is the pid asked for (the lock's pid or the
    /// process that made the request) and from the host asked for.
    pub fn matches(&self, pid: u32, tgid: u32, host: &str) -> bool {
        self.pid.is_none_or(|p| p == pid || p == tgid)
            && self.host.as_deref().is_none_or(|h| h == host)
    }

    pub fn matches_party(&self, ev: &Event) -> bool {
        self.matches(ev.pid, ev.tgid, &ev.host)
    }

    /// Whether a file's path passes the path filter. Files the path index
    /// cannot name yet are not decided here (see `paths::Name`).
    pub fn matches_path(&self, path: Option<&str>) -> bool {
        match &self.path_prefix {
            None => true,
            Some(prefix) => path.is_some_and(|p| std::path::Path::new(p).starts_with(prefix)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine() {
        let any = Filter::default();
        assert!(any.matches(1, 2, "") && any.matches_path(None));
        let f = Filter {
            path_prefix: Some("/srv/data".into()),
            pid: Some(7),
            host: Some("client-a".into()),
        };
        assert!(f.matches(7, 1, "client-a"));
        assert!(f.matches(1, 7, "client-a"));
        assert!(!f.matches(7, 1, "client-b"));
        assert!(!f.matches(8, 1, "client-a"));
        assert!(f.matches_path(Some("/srv/data/x")));
        assert!(!f.matches_path(Some("/srv/database")));
        assert!(!f.matches_path(None));
    }
}
