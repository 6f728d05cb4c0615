//! coturn as README.md prints it: the lab reads the command between the
//! `<!-- coturn-command -->` markers of the README, fills in its placeholders and adds
//! only what a test run needs (log, pid and database files), so the command users copy
//! is the one the lab tests.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The README, compiled in (the lab must test what users read).
pub const README: &str = include_str!("../../README.md");

/// The line that opens the coturn command block in README.md.
pub const BEGIN_MARKER: &str = "<!-- coturn-command -->";
/// The line that closes it.
pub const END_MARKER: &str = "<!-- /coturn-command -->";

/// The placeholder of the first public address (listening and relay address).
pub const PUBLIC_IP_1: &str = "PUBLIC_IP_1";
/// The placeholder of the second public address (RFC 5780's alternate address).
pub const PUBLIC_IP_2: &str = "PUBLIC_IP_2";
/// The placeholder of the TURN password.
pub const PASSWORD: &str = "CHANGE-ME";

/// The command of the README's coturn block, split into words (the program first).
/// Lines ending in `\` continue; words are separated by blanks (the block has no
/// quoting, and a quote in it is an error).
pub fn readme_command(readme: &str) -> Result<Vec<String>> {
    let start = readme
        .lines()
        .position(|l| l.trim() == BEGIN_MARKER)
        .with_context(|| format!("README.md has no `{BEGIN_MARKER}` line"))?;
    let lines: Vec<&str> = readme.lines().skip(start + 1).collect();
    let end = lines
        .iter()
        .position(|l| l.trim() == END_MARKER)
        .with_context(|| format!("README.md has no `{END_MARKER}` after `{BEGIN_MARKER}`"))?;
    let block = &lines[..end];
    let open = block
        .iter()
        .position(|l| l.trim_start().starts_with("```"))
        .context("no code fence in the coturn block")?;
    let close = block[open + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with("```"))
        .context("the coturn block's code fence is not closed")?;
    let mut command = String::new();
    for line in &block[open + 1..open + 1 + close] {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        command.push(' ');
        command.push_str(line.strip_suffix('\\').unwrap_or(line));
        if !line.ends_with('\\') {
            break;
        }
    }
    if command.contains(['"', '\'']) {
        bail!("the coturn command in README.md uses quotes, which the lab does not parse");
    }
    let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    if words.first().map(String::as_str) != Some("turnserver") {
        bail!("the coturn block of README.md does not start with `turnserver`: {words:?}");
    }
    Ok(words)
}

/// The README's coturn command for this lab: the placeholders replaced by the
/// server's two addresses and `password`. Fails if a placeholder is missing or is
/// left over.
pub fn argv(readme: &str, ip1: IpAddr, ip2: IpAddr, password: &str) -> Result<Vec<String>> {
    let words = readme_command(readme)?;
    for p in [PUBLIC_IP_1, PUBLIC_IP_2, PASSWORD] {
        if !words.iter().any(|w| w.contains(p)) {
            bail!("the coturn command in README.md lacks the placeholder {p}");
        }
    }
    let out: Vec<String> = words
        .into_iter()
        .map(|w| {
            w.replace(PUBLIC_IP_1, &ip1.to_string())
                .replace(PUBLIC_IP_2, &ip2.to_string())
                .replace(PASSWORD, password)
        })
        .collect();
    if let Some(w) = out
        .iter()
        .find(|w| w.chars().any(|c| c.is_ascii_uppercase()) && w.contains('_'))
    {
        bail!("the coturn command in README.md has an unknown placeholder: {w}");
    }
    Ok(out)
}

/// What the lab appends to the README's command: files of its own, in `dir`, and a
/// simple log. None of these changes what coturn relays or to whom.
pub fn lab_extras(dir: &Path) -> Vec<String> {
    vec![
        "--simple-log".into(),
        "--log-file".into(),
        dir.join("turnserver.log").to_string_lossy().into_owned(),
        "--pidfile".into(),
        dir.join("turnserver.pid").to_string_lossy().into_owned(),
        "--db".into(),
        dir.join("turndb.sqlite").to_string_lossy().into_owned(),
    ]
}

/// The value of `--flag value` or `--flag=value` in `argv` (the last one wins, as
/// in coturn).
pub fn flag_values(argv: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = argv.iter().peekable();
    while let Some(w) = it.next() {
        if let Some(v) = w.strip_prefix(&format!("{flag}=")) {
            out.push(v.to_owned());
        } else if w == flag {
            if let Some(v) = it.peek() {
                if !v.starts_with('-') {
                    out.push((*v).clone());
                    it.next();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_block_parses_and_every_placeholder_is_filled() {
        let argv = argv(
            README,
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "pw",
        )
        .unwrap();
        assert_eq!(argv[0], "turnserver");
        assert!(argv.iter().any(|w| w == "192.0.2.1"), "{argv:?}");
        assert!(argv.iter().any(|w| w == "192.0.2.2"), "{argv:?}");
        assert!(argv.iter().any(|w| w.ends_with(":pw")), "{argv:?}");
        assert!(!argv.iter().any(|w| w.contains("PUBLIC_IP")), "{argv:?}");
    }

    #[test]
    fn the_readme_command_keeps_the_turn_host_s_loopback_closed() {
        let words = readme_command(README).unwrap();
        // coturn refuses loopback peers unless told otherwise; whoever opens them
        // must close 127.0.0.0/8 and ::1 again.
        if words.iter().any(|w| w == "--allow-loopback-peers") {
            let denied = flag_values(&words, "--denied-peer-ip");
            for range in ["127.0.0.0-127.255.255.255", "::1"] {
                assert!(denied.iter().any(|d| d == range), "{range} in {denied:?}");
            }
        }
        assert!(flag_values(&words, "--allowed-peer-ip").is_empty());
        assert!(words.iter().any(|w| w == "--no-multicast-peers"));
    }

    #[test]
    fn a_block_with_continuations_and_markers_parses() {
        let md = "x\n<!-- coturn-command -->\n```sh\nturnserver -n \\\n  --user u:CHANGE-ME --listening-ip PUBLIC_IP_1 \\\n  --listening-ip=PUBLIC_IP_2\n```\n<!-- /coturn-command -->\n";
        let w = argv(
            md,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "s",
        )
        .unwrap();
        assert_eq!(
            w,
            [
                "turnserver",
                "-n",
                "--user",
                "u:s",
                "--listening-ip",
                "10.0.0.1",
                "--listening-ip=10.0.0.2"
            ]
        );
        assert!(readme_command("no block").is_err());
    }
}
