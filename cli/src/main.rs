//! `stunfwd`: run a peer, host the rendezvous + STUN server, or run the loopback demo.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use stunfwd_core::{Config, Engine, Event, SignalServer, SignalServerConfig};

#[derive(Parser)]
#[command(
    name = "stunfwd",
    version,
    about = "Reach a TCP or UDP service behind a NAT from a peer behind another NAT"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `debug` or `stunfwd_core=trace`.
    #[arg(long, default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one peer from a config file (JSON, or YAML with a .yaml/.yml extension).
    Run {
        /// The config file.
        config: PathBuf,
    },
    /// Run the rendezvous (signaling) server and its STUN responder.
    Signal {
        /// HTTP address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        http: SocketAddr,
        /// UDP address of the STUN responder.
        #[arg(long, default_value = "0.0.0.0:3478")]
        stun: SocketAddr,
    },
    /// Detect this host's NAT: public address, mapping and filtering behaviour.
    /// With a server that supports RFC 5780 (two addresses, e.g. coturn) both are
    /// measured; a second server cross-checks the mapping.
    Nat {
        /// A STUN server, host:port (repeat for more).
        #[arg(long = "stun", required = true)]
        stun: Vec<String>,
        /// Local address to probe from.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a rendezvous server and two peers in this process on loopback, forward a TCP
    /// and a UDP echo through the tunnel, and check that everything arrives intact.
    Demo {
        /// Bytes to send through the TCP echo.
        #[arg(long, default_value_t = 1 << 20)]
        bytes: usize,
    },
}

fn init_logs(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logs(cli.log_format, &cli.log);
            run(config)
        }
        Command::Signal { http, stun } => {
            init_logs(cli.log_format, &cli.log);
            signal(http, stun)
        }
        Command::Nat { stun, bind, json } => {
            init_logs(
                cli.log_format,
                &format!("warn,{}", cli.log.replace("info", "warn")),
            );
            nat(&stun, bind, json)
        }
        Command::Demo { bytes } => {
            init_logs(
                cli.log_format,
                &format!("warn,{}", cli.log.replace("info", "warn")),
            );
            demo::run(bytes)
        }
    }
}

/// Blocks until Ctrl-C or SIGTERM.
fn wait_for_shutdown_signal() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stunfwd: cannot wait for signals: {e}");
            return;
        }
    };
    rt.block_on(async {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    });
}

fn run(path: PathBuf) -> ExitCode {
    let config = match Config::from_path(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    if config.secret.is_none() {
        eprintln!(
            "stunfwd: warning: no `secret` set: anyone who knows the room name (including the rendezvous operator) can join it"
        );
    }
    let engine = match Engine::start(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    println!("local socket {}", engine.local_addr());
    for m in engine.mappings() {
        println!("mapping {} listening on {}", m.mapping, m.listen);
    }
    engine.subscribe(|event| match event {
        Event::State { state } => println!("state: {state}"),
        Event::MappingAdded { id, spec, listen } => println!("mapping {id} {spec} on {listen}"),
        Event::MappingRemoved { id } => println!("mapping {id} removed"),
        Event::PeerRejected { reason } => println!("peer rejected: {reason}"),
    });
    wait_for_shutdown_signal();
    println!("stopping");
    engine.stop(Duration::from_secs(3));
    println!("{}", engine.stats_json());
    ExitCode::SUCCESS
}

fn signal(http: SocketAddr, stun: SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = SignalServerConfig {
        http,
        stun: Some(stun),
        ..SignalServerConfig::default()
    };
    let server = match rt.block_on(SignalServer::start(config)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    println!("rendezvous on {}", server.url());
    if let Some(stun) = server.stun_addr() {
        println!("stun on {stun}");
    }
    wait_for_shutdown_signal();
    println!("draining");
    rt.block_on(server.stop(Duration::from_secs(5)));
    drop(server);
    rt.shutdown_timeout(Duration::from_secs(1));
    ExitCode::SUCCESS
}

fn nat(servers: &[String], bind: SocketAddr, json: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let servers: Vec<String> = servers
        .iter()
        .map(|s| s.trim_start_matches("stun:").to_owned())
        .collect();
    match rt.block_on(stunfwd_core::stun::detect_nat(&servers, bind)) {
        Ok(d) => {
            if json {
                let v = serde_json::json!({
                    "public_addr": d.public_addr(),
                    "mapped": d.mapped.iter().map(|(s, m)| serde_json::json!({"server": s, "mapped": m})).collect::<Vec<_>>(),
                    "mapping": d.mapping,
                    "filtering": d.filtering,
                    "nat_type": d.nat,
                    "errors": d.errors,
                });
                println!("{v}");
            } else {
                for (server, mapped) in &d.mapped {
                    println!("server {server} sees us at {mapped}");
                }
                for e in &d.errors {
                    println!("no answer: {e}");
                }
                println!("mapping:   {}", d.mapping.as_str());
                println!("filtering: {}", d.filtering.as_str());
                println!("nat type:  {}", d.nat.as_str());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stunfwd: {e}");
            ExitCode::from(2)
        }
    }
}
