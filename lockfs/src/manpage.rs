//! The manual pages lockfs(8) and lockfs.toml(5), and the bash completion.
//!
//! They are generated, never written by hand: lockfs(8) from the clap
//! definition that `--help` prints, lockfs.toml(5) from [`config::KEYS`],
//! the table the configuration parser checks every key against. A new
//! option or key therefore reaches the pages by itself, and the tests below
//! fail if a key the parser accepts is missing from the page.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use clap::{Arg, Command};

use crate::config::{self, Section};

/// The example configuration shipped as /etc/lockfs/lockfs.toml, shown in
/// lockfs.toml(5).
pub const EXAMPLE_CONFIG: &str = include_str!("../../scripts/lockfs.toml");

/// Writes lockfs.8, lockfs.toml.5 and the bash completion `lockfs` into `dir`.
pub fn generate(cli: Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("lockfs.8", lockfs_8(cli.clone()).as_bytes())?;
    write("lockfs.toml.5", lockfs_toml_5(version(&cli)).as_bytes())?;
    let mut bash = Vec::new();
    let mut cmd = cli;
    clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "lockfs", &mut bash);
    write("lockfs", &bash)
}

fn version(cli: &Command) -> &str {
    cli.get_version().unwrap_or(env!("CARGO_PKG_VERSION"))
}

/// Text for a roff line: backslashes escaped, and a leading `.` or `'`
/// kept from being read as a request.
fn text(s: &str) -> String {
    let s = s.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// A command-line word (option, command name): hyphens as `\-`, so the
/// page shows characters that can be typed.
fn word(s: &str) -> String {
    text(s).replace('-', "\\-")
}

/// Paragraphs of help text, blank lines starting new paragraphs.
fn paragraphs(out: &mut String, help: &str) {
    for (i, para) in help.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str(".PP\n");
        }
        let joined = para.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(out, "{}", text(&joined));
    }
}

fn visible_args(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| !a.is_hide_set())
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

fn value_name(arg: &Arg) -> String {
    match arg.get_value_names() {
        Some(names) if !names.is_empty() => names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        _ => arg.get_id().as_str().to_uppercase(),
    }
}

fn repeats(arg: &Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::Append)
}

/// The option or positional as it is typed, in roff.
fn arg_form(arg: &Arg) -> String {
    let value = if arg.get_action().takes_values() {
        format!(
            " \\fI{}\\fR{}",
            word(&value_name(arg)),
            if repeats(arg) { "..." } else { "" }
        )
    } else {
        String::new()
    };
    if arg.is_positional() {
        let v = format!(
            "\\fI{}\\fR{}",
            word(&value_name(arg)),
            if repeats(arg) { "..." } else { "" }
        );
        return if arg.is_last_set() {
            format!("\\-\\- {v}")
        } else {
            v
        };
    }
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(format!("\\fB\\-{}\\fR", word(&s.to_string())));
    }
    if let Some(l) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", word(l)));
    }
    format!("{}{value}", names.join(", "))
}

/// One synopsis line: the command path, its options, its positionals.
fn synopsis(path: &str, cmd: &Command) -> String {
    let mut s = format!("\\fB{}\\fR", word(path));
    for arg in visible_args(cmd) {
        if matches!(arg.get_id().as_str(), "help" | "version") {
            continue;
        }
        let form = arg_form(arg);
        // Only the first name of an option in the synopsis.
        let form = form.split(", ").last().unwrap_or(&form).to_string();
        if arg.is_required_set() {
            let _ = write!(s, " {form}");
        } else {
            let _ = write!(s, " [{form}]");
        }
    }
    s
}

fn help_of(arg: &Arg) -> String {
    arg.get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

fn describe_args(out: &mut String, cmd: &Command, with_help_and_version: bool) {
    for arg in visible_args(cmd) {
        if !with_help_and_version && matches!(arg.get_id().as_str(), "help" | "version") {
            continue;
        }
        let _ = writeln!(out, ".TP\n{}", arg_form(arg));
        let mut help = help_of(arg).trim().to_string();
        // clap drops the full stop of a one-line help; sentences follow.
        if !help.is_empty() && !help.ends_with('.') {
            help.push('.');
        }
        if arg.get_action().takes_values() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() {
                let _ = write!(help, " Values: {}.", values.join(", "));
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                let _ = write!(help, " Default: {}.", defaults.join(" "));
            }
        }
        paragraphs(out, help.trim());
    }
}

fn about(cmd: &Command) -> String {
    let mut about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|h| h.to_string())
        .unwrap_or_default()
        .trim()
        .to_string();
    if !about.is_empty() && !about.ends_with('.') {
        about.push('.');
    }
    about
}

/// A subcommand and, recursively, its own subcommands.
fn describe_command(out: &mut String, path: &str, cmd: &Command) {
    let _ = writeln!(out, ".SS \"{}\"", word(path));
    let _ = writeln!(out, "{}\n.PP", synopsis(path, cmd));
    paragraphs(out, about(cmd).trim());
    describe_args(out, cmd, false);
    for sub in visible_subcommands(cmd) {
        describe_command(out, &format!("{path} {}", sub.get_name()), sub);
    }
}

/// lockfs(8): every subcommand with its synopsis and options.
pub fn lockfs_8(mut cli: Command) -> String {
    cli.build();
    let name = cli.get_name().to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH {} 8 \"\" \"{} {}\" \"System Administration\"",
        name.to_uppercase(),
        name,
        text(version(&cli))
    );
    let _ = writeln!(out, ".SH NAME");
    let short = cli.get_about().map(|a| a.to_string()).unwrap_or_default();
    let short = short.strip_prefix(&format!("{name}: ")).unwrap_or(&short);
    let _ = writeln!(out, "{} \\- {}", word(&name), text(short));
    let _ = writeln!(out, ".SH SYNOPSIS");
    for sub in visible_subcommands(&cli) {
        let _ = writeln!(
            out,
            "{}\n.br",
            synopsis(&format!("{name} {}", sub.get_name()), sub)
        );
    }
    let _ = writeln!(
        out,
        "\\fB{}\\fR \\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR",
        word(&name)
    );
    let _ = writeln!(out, ".SH DESCRIPTION");
    paragraphs(&mut out, about(&cli).trim());
    let _ = writeln!(out, ".SH COMMANDS");
    for sub in visible_subcommands(&cli) {
        describe_command(&mut out, &format!("{name} {}", sub.get_name()), sub);
    }
    let _ = writeln!(out, ".SH OPTIONS");
    describe_args(&mut out, &cli, true);
    out.push_str(
        r#".SH FILES
.TP
.I /etc/lockfs/lockfs.toml
The daemon's configuration, see \fBlockfs.toml\fR(5).
.TP
.I /run/lockfs/
The daemons' root-only admin sockets, read by \fBlockfs locks\fR and \fBlockfs clear\fR, and the logs of mounts made by \fBmount.fuse.lockfs\fR.
.TP
.I /var/lib/lockfs/
The default state directory: NSM state number, client lists, file-handle key.
.TP
.I /sbin/mount.fuse.lockfs
The \fBmount\fR(8) helper, so that /etc/fstab can name the type \fBfuse.lockfs\fR, for instance
.RS
.nf
/srv/data  /mnt/data  fuse.lockfs  defaults,mandatory=file  0 0
.fi
.RE
.SH EXIT STATUS
0 on success; 1 with a message on standard error otherwise, and 2 for a command line that does not parse.
.SH SEE ALSO
\fBlockfs.toml\fR(5), \fBmount\fR(8), \fBfstab\fR(5), \fBfcntl\fR(2), \fBflock\fR(2), \fBlslocks\fR(8), \fBrpcbind\fR(8), \fBbpftool\fR(8)
"#,
    );
    out
}

/// A section's subsection title in lockfs.toml(5).
fn title(section: Section) -> String {
    match section {
        Section::Top => "Top level".to_string(),
        s => s.header().to_string(),
    }
}

/// lockfs.toml(5): every key of every section, from [`config::KEYS`].
pub fn lockfs_toml_5(version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH LOCKFS.TOML 5 \"\" \"lockfs {}\" \"File Formats\"",
        text(version)
    );
    out.push_str(
        r#".SH NAME
lockfs.toml \- configuration file of the lockfs daemon
.SH SYNOPSIS
.I /etc/lockfs/lockfs.toml
.SH DESCRIPTION
\fBlockfs serve \-\-config\fR \fIFILE\fR reads its exports, service groups, listening addresses and limits from a TOML file.
A key that is not listed below is refused, and every error names the key and its line.
Durations are a number of seconds (\fB90\fR) or a string with a unit: \fB"90s"\fR, \fB"2m"\fR, \fB"1h"\fR.
.SH KEYS
"#,
    );
    for section in Section::ALL {
        let _ = writeln!(out, ".SS \"{}\"", text(&title(section)));
        paragraphs(&mut out, section.doc());
        for key in config::keys_of(section) {
            let _ = writeln!(
                out,
                ".TP\n\\fB{}\\fR = \\fI{}\\fR",
                word(key.name),
                text(key.value)
            );
            let mut doc = key.doc.to_string();
            match key.default {
                Some(d) => {
                    let _ = write!(doc, " Default: {d}.");
                }
                None => doc.push_str(" Required."),
            }
            paragraphs(&mut out, &doc);
        }
    }
    out.push_str(".SH EXAMPLE\nThe example installed as /etc/lockfs/lockfs.toml:\n.PP\n.nf\n");
    for line in EXAMPLE_CONFIG.lines() {
        let _ = writeln!(out, "{}", text(line));
    }
    out.push_str(
        r#".fi
.SH SEE ALSO
\fBlockfs\fR(8)
"#,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// The text of one `.SS` subsection of a page.
    fn subsection<'a>(page: &'a str, title: &str) -> &'a str {
        let head = format!(".SS \"{title}\"\n");
        let start = page
            .find(&head)
            .unwrap_or_else(|| panic!("no subsection {title:?}"))
            + head.len();
        let rest = &page[start..];
        let end = rest
            .find("\n.SS ")
            .or(rest.find("\n.SH "))
            .unwrap_or(rest.len());
        &rest[..end]
    }

    #[test]
    fn every_key_the_parser_accepts_is_described_in_its_section() {
        let page = lockfs_toml_5("0.0.0");
        let accepted = config::accepted_keys();
        assert!(accepted.len() >= 20, "{accepted:?}");
        for (section, key) in accepted {
            let body = subsection(&page, &title(section));
            let entry = format!(".TP\n\\fB{}\\fR = ", word(&key));
            assert!(
                body.contains(&entry),
                "key {key} of {} is not in lockfs.toml(5):\n{body}",
                section.header()
            );
        }
    }

    #[test]
    fn every_subcommand_and_option_is_in_lockfs_8() {
        let mut cli = crate::Cli::command();
        let page = lockfs_8(cli.clone());
        cli.build();
        let mut seen = 0;
        for sub in visible_subcommands(&cli) {
            let path = format!("lockfs {}", sub.get_name());
            let body = subsection(&page, &word(&path));
            for arg in visible_args(sub) {
                if arg.get_id() == "help" {
                    continue;
                }
                if let Some(long) = arg.get_long() {
                    let form = format!("\\fB\\-\\-{}\\fR", word(long));
                    assert!(body.contains(&form), "{path}: --{long} missing:\n{body}");
                    seen += 1;
                }
            }
        }
        assert!(seen > 20, "only {seen} options found");
        // The packaging-only generator is not documented as a command.
        assert!(!page.contains("generate\\-docs"));
        assert!(page.contains(".SS \"lockfs trace\""));
    }

    #[test]
    fn roff_requests_in_text_are_escaped() {
        assert_eq!(text(".not a request"), "\\&.not a request");
        assert_eq!(text("a\\b"), "a\\eb");
        assert_eq!(word("--path-prefix"), "\\-\\-path\\-prefix");
    }
}
