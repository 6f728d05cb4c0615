//! A running `stunfwd` peer's controls (issue #18): the `mapping>` prompt on a
//! terminal (client mode), re-reading the config file on SIGHUP or when it changes,
//! and stopping on Ctrl-C or SIGTERM.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use stunfwd_core::config::Mode;
use stunfwd_core::{Config, Engine, Mapping};

/// How often the config file is looked at for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

/// What woke the control loop.
enum Wake {
    Stop,
    Reload,
    Line(String),
    StdinClosed,
}

/// A live status line is drawn on stdout (a terminal): other lines clear it first.
static STATUS_LINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a line on stdout, ignoring a closed stdout.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if STATUS_LINE.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = write!(out, "\r\x1b[2K");
    }
    let _ = writeln!(out, "{line}");
}

/// How often the status line is redrawn.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Redraws the status line every second until `stop` is dropped.
fn status_line(engine: &Engine, stop: &mpsc::Receiver<()>) {
    let snapshot =
        || serde_json::from_str::<serde_json::Value>(&engine.stats_json()).unwrap_or_default();
    let mut prev = snapshot();
    let mut at = std::time::Instant::now();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(STATUS_EVERY) {
        let now = snapshot();
        let text = crate::status::line(&prev, &now, at.elapsed().as_secs_f64());
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{text}");
        let _ = out.flush();
        (prev, at) = (now, std::time::Instant::now());
    }
}

/// Runs `engine`'s controls until it should stop. `config` is the file it was started
/// from (re-read on SIGHUP or change), `running` the config in force.
pub fn control(engine: &Engine, config: Option<&Path>, running: Config) {
    let (tx, rx) = mpsc::channel::<Wake>();
    spawn_signals(tx.clone());
    let prompt = running.mode == Mode::Client && std::io::stdin().is_terminal();
    if prompt {
        spawn_stdin(tx.clone());
        say("type `help` for the mapping commands");
        show_prompt();
    }
    // On a terminal without the prompt: a live status line (piped: log lines only).
    let (_status_stop, status_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        if !prompt && std::io::stdout().is_terminal() {
            STATUS_LINE.store(true, std::sync::atomic::Ordering::Relaxed);
            scope.spawn(move || status_line(engine, &status_rx));
        }
        serve(engine, config, running, prompt, &rx);
        STATUS_LINE.store(false, std::sync::atomic::Ordering::Relaxed);
        drop(_status_stop);
    });
}

fn serve(
    engine: &Engine,
    config: Option<&Path>,
    running: Config,
    prompt: bool,
    rx: &mpsc::Receiver<Wake>,
) {
    let mut running = running;
    let mut stamp = config.and_then(file_stamp);
    loop {
        let wake = match rx.recv_timeout(FILE_POLL) {
            Ok(w) => w,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = config.and_then(file_stamp);
                if now.is_some() && now != stamp {
                    stamp = now;
                    Wake::Reload
                } else {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Wake::Stop,
        };
        match wake {
            Wake::Stop => return,
            Wake::StdinClosed => {
                // No more commands (stdin closed, Ctrl-D): keep running until a
                // signal, and say so rather than leave a prompt that no longer reads.
                if prompt {
                    say("end of input: the mapping> prompt is closed; the mappings keep running, Ctrl-C stops stunfwd");
                }
                continue;
            }
            Wake::Reload => {
                if let Some(path) = config {
                    stamp = file_stamp(path);
                    running = reload(engine, path, running);
                }
            }
            Wake::Line(line) => {
                if command(engine, line.trim()) {
                    return;
                }
                if prompt {
                    show_prompt();
                }
            }
        }
    }
}

fn show_prompt() {
    let mut out = std::io::stdout();
    let _ = write!(out, "mapping> ");
    let _ = out.flush();
}

/// The file's modification time and length: what tells a change.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn spawn_signals(tx: mpsc::Sender<Wake>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.send(Wake::Stop);
                    return;
                };
                loop {
                    let wake = tokio::select! {
                        _ = tokio::signal::ctrl_c() => Wake::Stop,
                        _ = term.recv() => Wake::Stop,
                        _ = hup.recv() => Wake::Reload,
                    };
                    let stop = matches!(wake, Wake::Stop);
                    if tx.send(wake).is_err() || stop {
                        return;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
                let _ = tx.send(Wake::Stop);
            }
        });
    });
}

fn spawn_stdin(tx: mpsc::Sender<Wake>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Wake::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Wake::StdinClosed);
    });
}

const HELP: &str = "commands:
  add SPEC        open a mapping: 2222:22, 5353:5353/udp, 8080:db.lan:80, or tcp:2222:22
  remove ID|SPEC  close a mapping and its connections
  list            the mappings, with the addresses they listen on
  status          state, path, RTT, mappings and their traffic
  help            this text
  quit            stop stunfwd";

/// One prompt command; true when it asks to stop.
fn command(engine: &Engine, line: &str) -> bool {
    let (verb, arg) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(v, a)| (v, a.trim()));
    match verb {
        "" => {}
        "help" | "?" => say(HELP),
        "status" => {
            let stats = serde_json::from_str(&engine.stats_json()).unwrap_or_default();
            say(&crate::status::report(&stats));
        }
        "quit" | "exit" => return true,
        "list" | "ls" => {
            let list = engine.mappings();
            if list.is_empty() {
                say("no mappings");
            }
            for m in list {
                say(&format!(
                    "{}  {}  listening on {}",
                    m.id, m.mapping, m.listen
                ));
            }
        }
        "add" => match parse_mapping(arg) {
            Ok(m) => match engine.add_mapping(m) {
                Ok(id) => {
                    let listen = engine
                        .mapping_addr(id)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    say(&format!("added {id}: listening on {listen}"));
                }
                Err(e) => say(&format!("error: {e}")),
            },
            Err(e) => say(&format!("error: {e}")),
        },
        "remove" | "rm" if arg.is_empty() => {
            say("error: remove what? give an id or a spec from `list`, e.g. `remove 2`");
        }
        "remove" | "rm" => match find_mapping(engine, arg) {
            Some(id) => match engine.remove_mapping(id) {
                Ok(()) => say(&format!("removed {id}")),
                Err(e) => say(&format!("error: {e}")),
            },
            None => say(&format!(
                "error: no mapping `{arg}`; give an id or a spec from `list`"
            )),
        },
        other => say(&format!("error: unknown command `{other}`; type `help`")),
    }
    false
}

/// A mapping in the engine's spelling (`tcp:2222:22`) or `connect`'s (`2222:22/udp`).
fn parse_mapping(arg: &str) -> Result<Mapping, String> {
    if arg.is_empty() {
        return Err("add what? e.g. `add 2222:22` or `add 5353:5353/udp`".into());
    }
    if arg.starts_with("tcp:") || arg.starts_with("udp:") {
        return Mapping::parse(arg).map_err(|e| e.to_string());
    }
    let spec = crate::share::mapping_spec(arg)?;
    Mapping::parse(&spec).map_err(|e| e.to_string())
}

/// A mapping by id, or by spec (either spelling).
fn find_mapping(engine: &Engine, arg: &str) -> Option<stunfwd_core::MappingId> {
    let list = engine.mappings();
    if let Ok(id) = arg.parse::<u64>() {
        return list.iter().find(|m| m.id == id).map(|m| m.id);
    }
    let wanted = parse_mapping(arg).ok()?.to_string();
    list.iter()
        .find(|m| m.mapping.to_string() == wanted)
        .map(|m| m.id)
}

/// Re-reads the config and applies its mapping differences; the config now in force.
/// A config that does not parse is reported, and the running one stays.
fn reload(engine: &Engine, path: &Path, running: Config) -> Config {
    let new = match Config::from_path(path) {
        Ok(c) => c,
        Err(e) => {
            say(&format!(
                "config reload failed, the running config stays: {e}"
            ));
            return running;
        }
    };
    let others_changed = {
        let strip = |c: &Config| {
            let mut v = c.to_json();
            if let Some(o) = v.as_object_mut() {
                o.remove("mappings");
            }
            v
        };
        strip(&new) != strip(&running)
    };
    if new.mode != Mode::Client {
        if others_changed {
            say("config reloaded: settings other than mappings take effect at the next start");
        }
        return running;
    }
    let spec = |m: &Mapping| m.to_string();
    let wanted: BTreeSet<String> = new.mappings.iter().map(spec).collect();
    let current: Vec<(stunfwd_core::MappingId, String)> = engine
        .mappings()
        .into_iter()
        .map(|m| (m.id, spec(&m.mapping)))
        .collect();
    let have: BTreeSet<String> = current.iter().map(|(_, s)| s.clone()).collect();
    let (mut added, mut removed) = (0, 0);
    for (id, s) in &current {
        if !wanted.contains(s) {
            match engine.remove_mapping(*id) {
                Ok(()) => removed += 1,
                Err(e) => say(&format!("config reload: cannot remove {s}: {e}")),
            }
        }
    }
    for m in &new.mappings {
        if !have.contains(&spec(m)) {
            match engine.add_mapping(m.clone()) {
                Ok(id) => {
                    added += 1;
                    let listen = engine
                        .mapping_addr(id)
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    say(&format!("mapping {} listening on {listen}", spec(m)));
                }
                Err(e) => say(&format!("config reload: cannot add {}: {e}", spec(m))),
            }
        }
    }
    say(&format!(
        "config reloaded: {added} mapping(s) added, {removed} removed, {} unchanged{}",
        have.intersection(&wanted).count(),
        if others_changed {
            "; settings other than mappings take effect at the next start"
        } else {
            ""
        }
    ));
    new
}
