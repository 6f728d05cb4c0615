//! `stunfwd`: run a peer, host the rendezvous + STUN server, or run the loopback demo.

mod demo;
mod live;
mod share;
mod status;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use stunfwd_core::{Config, Engine, Event, SignalServer, SignalServerConfig};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    /// Log filter: a level, or `target=level` directives, e.g. `debug` or
    /// `warn,stunfwd_core=trace`.
    #[arg(long, default_value = "info", global = true, value_parser = check_filter)]
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
    /// Without one, uses config.yml, config.yaml or config.json in the current
    /// directory (the Go tool's habit). SIGHUP, or a change to the file, applies the
    /// mapping differences live.
    Run {
        /// The config file (same as --config).
        #[arg(value_name = "CONFIG", conflicts_with = "config_flag")]
        config: Option<PathBuf>,
        /// The config file.
        #[arg(long = "config", value_name = "PATH")]
        config_flag: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (overrides `metricsAddr`).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
    /// Serve local services to clients without a config file: prints a share token
    /// (rendezvous URL, a fresh room and secret, STUN server) that `connect` takes.
    Expose {
        /// Services clients may reach: tcp:PORT, udp:PORT or PROTO:HOST:PORT
        /// (`tcp:22` is 127.0.0.1:22).
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
        /// The rendezvous server's URL (default: $STUNFWD_SIGNAL).
        #[arg(long, value_name = "URL")]
        signal: Option<String>,
        /// A STUN server, host:port (repeat for more; default: the rendezvous host's
        /// own, port 3478).
        #[arg(long = "stun", value_name = "HOST:PORT")]
        stun: Vec<String>,
        /// How many clients at once (default 32).
        #[arg(long)]
        max_clients: Option<usize>,
        /// Serve Prometheus metrics and the stats `stunfwd status` reads at ADDR.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// Local address of the tunnels' UDP sockets (default [::]:0).
        #[arg(long, value_name = "ADDR")]
        bind: Option<SocketAddr>,
    },
    /// Reach the services of an `expose` peer: the token it printed, then the ports to
    /// open here, LOCAL:REMOTE or LOCAL:HOST:REMOTE, each with /udp for UDP.
    Connect {
        /// The share token `stunfwd expose` printed.
        token: String,
        /// Ports to open here, e.g. 2222:22 5353:5353/udp.
        #[arg(required = true, value_name = "LOCAL:REMOTE[/udp]")]
        ports: Vec<String>,
        /// Use this rendezvous URL instead of the token's.
        #[arg(long, value_name = "URL")]
        signal: Option<String>,
        /// Local address of the tunnel's UDP socket (default [::]:0).
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
        /// Serve Prometheus metrics and the stats `stunfwd status` reads at ADDR.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
    /// Print a running peer's state, paths, mappings and clients, read from its
    /// metrics address (`GET /stats`; run the peer with --metrics ADDR or metricsAddr).
    Status {
        /// The peer's metrics address, host:port (or the http://ADDR/metrics URL it printed).
        #[arg(value_parser = status::peer_addr)]
        addr: SocketAddr,
        /// Print the stats JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Run the rendezvous (signaling) server and its STUN responder.
    Signal {
        /// HTTP address to listen on (`[::]`: IPv4 and IPv6).
        #[arg(long, default_value = "[::]:8080")]
        http: SocketAddr,
        /// UDP address of the STUN responder (`[::]`: IPv4 and IPv6).
        #[arg(long, default_value = "[::]:3478")]
        stun: SocketAddr,
        #[command(flatten)]
        options: Box<SignalOptions>,
    },
    /// Detect this host's NAT: public address, mapping and filtering behaviour.
    /// With a server that supports RFC 5780 (two addresses, e.g. coturn) both are
    /// measured; a second server cross-checks the mapping. Also asks the default
    /// gateway for a port mapping (PCP, NAT-PMP, UPnP-IGD) and deletes it again.
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
        /// Do not ask the router for a port mapping.
        #[arg(long)]
        no_port_mapping: bool,
    },
    /// Run a rendezvous server and two peers in this process on loopback, forward a TCP
    /// and a UDP echo through the tunnel, and check that everything arrives intact.
    Demo {
        /// Bytes to send through the TCP echo.
        #[arg(long, default_value_t = 1 << 20)]
        bytes: usize,
    },
}

/// `--log` must parse as a filter; clap reports the error with the option's name.
/// (`Targets` rather than `EnvFilter`: the same `target=level` syntax without a regex
/// engine in the binary, which kept 0.4 MB of code out of every `stunfwd` process.)
fn check_filter(s: &str) -> Result<String, String> {
    s.parse::<Targets>().map(|_| s.to_owned()).map_err(|e| {
        format!(
            "{e} (valid: a level such as `debug`, or directives such as `warn,stunfwd_core=trace`)"
        )
    })
}

/// Logs go to stderr: human-readable lines, or one JSON object per line. Either way
/// each line carries the fields of its spans (`engine{room, mode}`,
/// `tunnel{peer, path}`, `mapping{id, mapping}`, `conn{from, peer}`).
fn init_logs(format: LogFormat, filter: &str) {
    // Checked by `check_filter` when the arguments were parsed.
    let filter: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    // Colours only on a terminal (and never with NO_COLOR set): piped into a file or a
    // log collector, escape codes are noise.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_ansi(ansi)
        // The builder's own default is INFO; `filter` decides.
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.finish().with(filter).init(),
        LogFormat::Json => builder.json().finish().with(filter).init(),
    }
}

/// mimalloc instead of glibc's malloc, only with `--features mimalloc`: measured for
/// issue #19 and not chosen (idle RSS 35 MB against 10 MB; docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Raises the soft limit on open descriptors to the hard limit, as the Go runtime does
/// for every program: a server holds one socket per UDP flow
/// (`performance.maxUdpFlowsPerClient`, 4,096 per client by default) and one per TCP
/// connection, and the usual soft limit of 1,024 would refuse them long before the
/// configured caps. A library cannot do this for its host; the CLI is its own host.
#[cfg(target_os = "linux")]
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Elsewhere the limit stays as the system set it (macOS reports an unlimited hard
/// limit that setrlimit refuses).
#[cfg(not(target_os = "linux"))]
fn raise_fd_limit() {}

fn main() -> ExitCode {
    raise_fd_limit();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            config_flag,
            metrics,
        } => {
            init_logs(cli.log_format, &cli.log);
            match config.or(config_flag).map_or_else(find_config, Ok) {
                Ok(path) => run(path, metrics),
                Err(e) => {
                    eprintln!("stunfwd: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Expose {
            services,
            signal,
            stun,
            max_clients,
            metrics,
            bind,
        } => {
            init_logs(cli.log_format, &cli.log);
            expose(services, signal, stun, max_clients, metrics, bind)
        }
        Command::Connect {
            token,
            ports,
            signal,
            bind,
            metrics,
        } => {
            init_logs(cli.log_format, &cli.log);
            connect(&token, &ports, signal, bind.as_deref(), metrics)
        }
        Command::Status { addr, json } => match status::fetch(addr) {
            Ok(stats) => {
                if json {
                    println!("{stats}");
                } else {
                    println!("{}", status::report(&stats));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stunfwd: {e}");
                ExitCode::from(1)
            }
        },
        Command::Signal {
            http,
            stun,
            options,
        } => {
            init_logs(cli.log_format, &cli.log);
            signal(http, stun, *options)
        }
        Command::Nat {
            stun,
            bind,
            json,
            no_port_mapping,
        } => {
            init_logs(
                cli.log_format,
                &format!("warn,{}", cli.log.replace("info", "warn")),
            );
            nat(&stun, bind, json, !no_port_mapping)
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

/// The names `stunfwd run` looks for in the current directory, in this order.
const CONFIG_NAMES: [&str; 3] = ["config.yml", "config.yaml", "config.json"];

/// `config.yml`, `config.yaml` or `config.json` in the current directory.
fn find_config() -> Result<PathBuf, String> {
    let dir =
        std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    CONFIG_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no config: give one (`stunfwd run FILE` or `--config FILE`), or put {} in {}",
                CONFIG_NAMES.join(", "),
                dir.display()
            )
        })
}

fn run(path: PathBuf, metrics: Option<SocketAddr>) -> ExitCode {
    let mut config = match Config::from_path(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    if metrics.is_some() {
        config.metrics_addr = metrics;
    }
    if config.secret.is_none() {
        eprintln!(
            "stunfwd: warning: no `secret` set: anyone who knows the room name (including the rendezvous operator) can join it"
        );
    }
    run_engine(config, |_| {}, Some(path))
}

/// `stunfwd expose`: a fresh room and secret, a token that names them, a server.
fn expose(
    services: Vec<String>,
    signal: Option<String>,
    stun: Vec<String>,
    max_clients: Option<usize>,
    metrics: Option<SocketAddr>,
    bind: Option<SocketAddr>,
) -> ExitCode {
    let made = (|| {
        let allow = services
            .iter()
            .map(|s| share::allow_rule(s))
            .collect::<Result<Vec<String>, String>>()?;
        let signal_url = share::signal_url(signal)?;
        let stun = share::stun_servers(stun, &signal_url)?;
        let (room, secret) = share::fresh_room_and_secret();
        let token = token::Token {
            signal_url,
            room,
            secret,
            stun,
        };
        let mut config = share::server_config(&token, &allow, max_clients)?;
        config.metrics_addr = metrics.or(config.metrics_addr);
        if let Some(b) = bind {
            config.bind = b;
        }
        Ok::<_, String>((token, config, allow))
    })();
    let (token, config, allow) = match made {
        Ok(m) => m,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    let example = allow
        .first()
        .and_then(|a| a.rsplit(':').next())
        .map(|port| {
            let udp = if allow[0].starts_with("udp") {
                "/udp"
            } else {
                ""
            };
            format!("LOCAL:{port}{udp}")
        })
        .unwrap_or_default();
    run_engine(
        config,
        move |say| {
            // The token goes to stdout only, never to the logs.
            say(format!(
                "share token (it holds the secret: whoever has it can reach {}):",
                allow.join(", ")
            ));
            say(format!("token {}", token.encode()));
            say(format!("on the client: stunfwd connect TOKEN {example}"));
        },
        None,
    )
}

/// `stunfwd connect TOKEN PORTS...`.
fn connect(
    text: &str,
    ports: &[String],
    signal: Option<String>,
    bind: Option<&str>,
    metrics: Option<SocketAddr>,
) -> ExitCode {
    let made = (|| {
        let mut token = token::Token::decode(text).map_err(|e| e.to_string())?;
        if let Some(url) = signal {
            token.signal_url = url;
        }
        let mappings = ports
            .iter()
            .map(|p| share::mapping_spec(p))
            .collect::<Result<Vec<String>, String>>()?;
        let mut config = share::client_config(&token, &mappings, bind)?;
        config.metrics_addr = metrics.or(config.metrics_addr);
        Ok::<_, String>(config)
    })();
    match made {
        Ok(config) => run_engine(config, |_| {}, None),
        Err(e) => {
            eprintln!("stunfwd: {e}");
            ExitCode::from(2)
        }
    }
}

/// Starts an engine, prints what it listens on (after `intro`) and its events, and
/// runs it until Ctrl-C, SIGTERM or `quit` at the `mapping>` prompt; `file`, the
/// config it came from, is re-read on SIGHUP or when it changes.
fn run_engine(
    config: Config,
    intro: impl FnOnce(&dyn Fn(String)),
    file: Option<PathBuf>,
) -> ExitCode {
    let running = config.clone();
    let engine = match Engine::start(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    // A closed stdout (`stunfwd run … | head`) must not panic the process or a callback.
    macro_rules! say {
        ($($arg:tt)*) => {{
            live::say(&format!($($arg)*));
        }};
    }
    intro(&|line| say!("{line}"));
    say!("local socket {}", engine.local_addr());
    if let Some(addr) = engine.metrics_addr() {
        say!("metrics on http://{addr}/metrics");
    }
    for m in engine.mappings() {
        say!("mapping {} listening on {}", m.mapping, m.listen);
    }
    engine.subscribe(|event| match event {
        Event::State { state } => say!("state: {state}"),
        Event::MappingAdded { id, spec, listen } => say!("mapping {id} {spec} on {listen}"),
        Event::MappingRemoved { id } => say!("mapping {id} removed"),
        Event::PeerRejected { reason } => say!("peer rejected: {reason}"),
        Event::Warning { message } => say!("warning: {message}"),
        Event::ClientState { client, state } => {
            say!("client {}: {state}", client.get(..8).unwrap_or(client))
        }
    });
    live::control(&engine, file.as_deref(), running);
    say!("stopping");
    engine.stop(Duration::from_secs(3));
    say!("{}", engine.stats_json());
    ExitCode::SUCCESS
}

/// Store, TLS and limits of `stunfwd signal`; each limit defaults to the library's
/// (`SignalServerConfig::default()`, listed in docs/rendezvous.md).
#[derive(clap::Args)]
struct SignalOptions {
    /// Where rooms are kept: `memory`, or a Redis URL (`redis://host:6379`) shared by
    /// every instance behind a load balancer.
    #[arg(long, default_value = "memory", value_name = "memory|URL")]
    store: String,
    /// Prefix of the Redis keys and channels.
    #[arg(long, default_value = "stunfwd:")]
    redis_prefix: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Seconds a room lives without activity [default: 300].
    #[arg(long, value_name = "SECONDS")]
    room_ttl: Option<u64>,
    /// Most rooms held [default: 100000].
    #[arg(long)]
    max_rooms: Option<usize>,
    /// Largest request body, bytes [default: 16384].
    #[arg(long)]
    max_body: Option<usize>,
    /// Bytes of offers one client address may hold, 0 = unlimited [default: 4194304].
    #[arg(long)]
    max_bytes_per_ip: Option<usize>,
    /// Longest room name, bytes, 1-128 [default: 128].
    #[arg(long)]
    max_room_len: Option<usize>,
    /// Requests per second per client address, 0 = unlimited [default: 20].
    #[arg(long)]
    rate_per_ip: Option<u32>,
    /// Request burst per client address [default: 100].
    #[arg(long)]
    burst_per_ip: Option<u32>,
    /// Concurrent long-polls, 0 = unlimited [default: 10000].
    #[arg(long)]
    max_polls: Option<usize>,
    /// Concurrent long-polls per client address, 0 = unlimited [default: 100].
    #[arg(long)]
    max_polls_per_ip: Option<usize>,
    /// Open connections, 0 = unlimited [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Open connections per client address, 0 = unlimited [default: 256].
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Limit clients by the last X-Forwarded-For address (only behind a proxy that
    /// appends it, and reachable only through it).
    #[arg(long)]
    trust_x_forwarded_for: bool,
}

impl SignalOptions {
    fn into_config(self, http: SocketAddr, stun: SocketAddr) -> SignalServerConfig {
        let d = SignalServerConfig::default();
        SignalServerConfig {
            http,
            stun: Some(stun),
            store: match self.store.as_str() {
                "memory" => stunfwd_core::signal::StoreConfig::Memory,
                url => stunfwd_core::signal::StoreConfig::Redis {
                    url: url.to_owned(),
                    prefix: self.redis_prefix,
                },
            },
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| stunfwd_core::signal::TlsFiles { cert, key }),
            room_ttl: self.room_ttl.map_or(d.room_ttl, Duration::from_secs),
            max_rooms: self.max_rooms.unwrap_or(d.max_rooms),
            max_body: self.max_body.unwrap_or(d.max_body),
            max_bytes_per_client: self.max_bytes_per_ip.unwrap_or(d.max_bytes_per_client),
            max_room_len: self.max_room_len.unwrap_or(d.max_room_len),
            rate_per_ip: self.rate_per_ip.unwrap_or(d.rate_per_ip),
            burst_per_ip: self.burst_per_ip.unwrap_or(d.burst_per_ip),
            max_polls: self.max_polls.unwrap_or(d.max_polls),
            max_polls_per_ip: self.max_polls_per_ip.unwrap_or(d.max_polls_per_ip),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(d.max_connections_per_ip),
            trust_forwarded_for: self.trust_x_forwarded_for,
            ..d
        }
    }
}

fn signal(http: SocketAddr, stun: SocketAddr, options: SignalOptions) -> ExitCode {
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
    let config = options.into_config(http, stun);
    let server = match rt.block_on(SignalServer::start(config)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stunfwd: {e}");
            return ExitCode::from(2);
        }
    };
    // A closed stdout must not stop the server or its drain (print would panic).
    let say = |line: String| {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    };
    say(format!("rendezvous on {}", server.url()));
    if let Some(stun) = server.stun_addr() {
        say(format!("stun on {stun}"));
    }
    // SIGTERM or Ctrl-C: stop accepting, answer long-polls at once, wait for the rest.
    wait_for_shutdown_signal();
    say("draining".to_owned());
    rt.block_on(server.stop(Duration::from_secs(5)));
    drop(server);
    rt.shutdown_timeout(Duration::from_secs(1));
    ExitCode::SUCCESS
}

fn nat(servers: &[String], bind: SocketAddr, json: bool, port_mapping: bool) -> ExitCode {
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
    // The router is asked alongside the STUN tests, from a socket of its own.
    let (detected, mapping) = rt.block_on(async {
        let mapping = async {
            if port_mapping {
                stunfwd_core::portmap::probe().await
            } else {
                stunfwd_core::portmap::PortMapStatus::none(None, "not asked (--no-port-mapping)")
            }
        };
        tokio::join!(
            stunfwd_core::stun::detect_nat_and_allocation(&servers, bind),
            mapping
        )
    });
    match detected {
        Ok(d) => {
            if json {
                let v = serde_json::json!({
                    "public_addr": d.public_addr(),
                    "mapped": d.mapped.iter().map(|(s, m)| serde_json::json!({"server": s, "mapped": m})).collect::<Vec<_>>(),
                    "mapping": d.mapping,
                    "filtering": d.filtering,
                    "allocation": d.allocation,
                    "nat_type": d.nat,
                    "port_mapping": mapping,
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
                println!(
                    "mapping:   {}, allocation: {}",
                    d.mapping.as_str(),
                    d.allocation
                );
                println!("filtering: {}", d.filtering.as_str());
                println!("nat type:  {}", d.nat.as_str());
                println!("port mapping: {}", mapping.describe());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stunfwd: {e}");
            ExitCode::from(2)
        }
    }
}
