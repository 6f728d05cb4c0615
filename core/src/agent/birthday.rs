//! Birthday punching between an *easy* NAT (one public port for every destination)
//! and a *hard* one (a new public port for every destination: symmetric), without I/O.
//!
//! The hard side opens many sockets; each sends one opener toward the easy side's
//! public address, so its NAT makes one mapping per socket, on ports nobody can
//! predict (the openers expire before the easy side's router, like the check list's,
//! so a Linux router there keeps no conntrack entry that would move the easy side's
//! port). The easy side then sprays authenticated checks at the hard side's public IP:
//! first at the ports just above the one STUN saw (where a NAT that allocates
//! sequentially puts the new mappings), then at random ports. A check that lands on
//! one of the hard side's mappings reaches that socket, because it comes from the
//! address the mapping was made for; the hard side answers it from that socket and
//! checks back, and that socket carries the tunnel from then on.
//!
//! With `s` sockets over a range of `r` ports, `n` random probes all miss with
//! probability `(1 - s/r)^n`: 256 sockets and 1,000 probes over 64,512 ports succeed
//! 98.1 % of the time, 2,000 probes 99.96 % (the defaults; measured in the NAT lab,
//! `docs/nat-matrix.md`).
//!
//! Every probe is a STUN Binding request with the room key's MESSAGE-INTEGRITY and the
//! session's USERNAME, like every other check: a stray or forged answer is not taken.
//! Both sides send at most `rate` packets per second, so a spray never floods a
//! router's connection table faster than a busy browser does, and stop at the first
//! success.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::stun::message::Tid;

/// Which end of the pair we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Our NAT maps every destination to a new port: we open the sockets.
    Hard,
    /// Our NAT keeps one port: we spray probes at the peer's ports.
    Easy,
}

impl Side {
    /// `"hard"` or `"easy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Hard => "hard",
            Side::Easy => "easy",
        }
    }
}

/// The lowest port a NAT hands out for a mapping (Linux: 1024 and up for a source port
/// above 1023).
pub const LOWEST_PORT: u16 = 1024;
/// How many ports just above the peer's STUN-mapped one the easy side probes first.
pub const NEAR_PORTS: u16 = 64;
/// How often a batch of packets goes out (the rate is spread over these ticks).
pub const TICK: Duration = Duration::from_millis(10);

/// What a birthday session is asked to do.
#[derive(Debug, Clone)]
pub struct BirthdayConfig {
    /// Our end.
    pub side: Side,
    /// The peer's public (STUN-mapped) address: where the hard side's openers go, and
    /// whose IP the easy side sprays (its port: where sequential allocation continues).
    pub peer: SocketAddr,
    /// Hard side: how many sockets to open.
    pub sockets: usize,
    /// Easy side: how many probes to send at most.
    pub probes: usize,
    /// Packets per second, either side.
    pub rate: u32,
    /// The openers' IP TTL (`None`: the hard side's first packets go at full TTL).
    pub opener_ttl: Option<u8>,
    /// Easy side: how long to wait before spraying, so that the hard side's mappings
    /// exist when the probes arrive.
    pub lead: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    /// Hard side: the sockets were opened and their openers sent before the session
    /// started (port prediction's comb, `agent::predict`); it only answers.
    pub premade: bool,
}

/// One packet to send: a check with transaction id `tid` from our socket `socket`
/// (the easy side's is always 0, the tunnel socket) to `to`, with IP TTL `ttl`
/// (`None`: normal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Transaction id of the Binding request.
    pub tid: Tid,
    /// Which of our sockets sends it.
    pub socket: usize,
    /// Destination.
    pub to: SocketAddr,
    /// IP TTL, for openers.
    pub ttl: Option<u8>,
}

/// A pair that worked: our socket (hard side: one of the opened ones; easy side: 0) and
/// the peer's address that answered or reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Won {
    /// Our socket.
    pub socket: usize,
    /// The peer's address on that pair.
    pub remote: SocketAddr,
}

/// The state of one birthday session.
#[derive(Debug)]
pub struct Birthday {
    config: BirthdayConfig,
    deadline: Instant,
    next_tick: Instant,
    /// Hard: the next socket to send an opener from. Easy: unused.
    openers_sent: usize,
    /// Easy: ports probed so far (each once).
    probed: HashSet<u16>,
    /// Easy: the next port of the near window (offset above the peer's port), counting
    /// down.
    near_next: u16,
    /// Transaction ids out, with the socket that sent each and where it went.
    tids: std::collections::HashMap<Tid, (usize, SocketAddr)>,
    /// Hard: the socket the peer's probe reached first; only it answers from then on.
    reached: Option<Won>,
    won: Option<Won>,
    gave_up: bool,
    queue: std::collections::VecDeque<Probe>,
    rng: StdRng,
}

impl Birthday {
    /// A session starting at `now`.
    pub fn new(config: BirthdayConfig, now: Instant) -> Birthday {
        Birthday::with_rng(config, now, StdRng::from_os_rng())
    }

    /// Like [`Birthday::new`] with a seeded random source, for repeatable tests.
    pub fn with_seed(config: BirthdayConfig, now: Instant, seed: u64) -> Birthday {
        Birthday::with_rng(config, now, StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: BirthdayConfig, now: Instant, rng: StdRng) -> Birthday {
        let start = match config.side {
            Side::Hard => now,
            Side::Easy => now + config.lead,
        };
        Birthday {
            deadline: now + config.timeout,
            next_tick: start,
            openers_sent: if config.premade { config.sockets } else { 0 },
            probed: HashSet::new(),
            near_next: NEAR_PORTS,
            tids: std::collections::HashMap::new(),
            reached: None,
            won: None,
            gave_up: false,
            queue: std::collections::VecDeque::new(),
            rng,
            config,
        }
    }

    /// Our end.
    pub fn side(&self) -> Side {
        self.config.side
    }

    /// How many sockets the hard side opens (0 on the easy side).
    pub fn sockets(&self) -> usize {
        match self.config.side {
            Side::Hard => self.config.sockets,
            Side::Easy => 0,
        }
    }

    /// Packets sent so far: openers (hard) or probes (easy), plus checks back.
    pub fn sent(&self) -> usize {
        self.tids.len()
    }

    /// The pair that worked, once one did.
    pub fn won(&self) -> Option<Won> {
        self.won
    }

    /// The socket the peer reached first (hard side), before our check back through
    /// it is answered: the tunnel socket from then on.
    pub fn reached(&self) -> Option<Won> {
        self.reached
    }

    /// True once the session is over without a pair (budget spent and timed out).
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// Every transaction id sent (the driver unregisters them at the end).
    pub fn tids(&self) -> impl Iterator<Item = &Tid> {
        self.tids.keys()
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Probe> {
        self.queue.pop_front()
    }

    /// When [`Birthday::handle_timeout`] must run next; `None` once over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.won.is_some() || self.gave_up {
            return None;
        }
        Some(if self.budget_left() {
            self.next_tick.min(self.deadline)
        } else {
            self.deadline
        })
    }

    fn budget_left(&self) -> bool {
        match self.config.side {
            // Once the peer reached a socket, the openers still to go would reach the
            // peer through it at full TTL: stop them.
            Side::Hard => self.openers_sent < self.config.sockets && self.reached.is_none(),
            Side::Easy => self.probed.len() < self.config.probes && self.ports_left(),
        }
    }

    fn ports_left(&self) -> bool {
        self.probed.len() < usize::from(u16::MAX - LOWEST_PORT) + 1
    }

    /// Advances the clock: queues this tick's share of the packets, gives up at the
    /// deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.won.is_some() || self.gave_up {
            return;
        }
        if now >= self.deadline {
            self.gave_up = true;
            self.queue.clear();
            return;
        }
        if now < self.next_tick || !self.budget_left() {
            return;
        }
        let per_tick = u64::from(self.config.rate) * TICK.as_millis() as u64 / 1000;
        // Under 100 packets/s a tick's share is less than one: one packet per tick,
        // with the ticks spaced to keep the rate.
        let (per_tick, interval) = if per_tick == 0 {
            (1, Duration::from_secs(1) / self.config.rate.max(1))
        } else {
            (per_tick, TICK)
        };
        for _ in 0..per_tick {
            if !self.budget_left() {
                break;
            }
            match self.config.side {
                Side::Hard => {
                    let socket = self.openers_sent;
                    self.openers_sent += 1;
                    self.push(socket, self.config.peer, self.config.opener_ttl);
                }
                Side::Easy => {
                    let port = self.next_port();
                    let to = SocketAddr::new(self.config.peer.ip(), port);
                    self.push(0, to, None);
                }
            }
        }
        self.next_tick = now + interval;
    }

    /// The next port to probe: the near window above the peer's port, from its top
    /// down, then random ones never probed before.
    ///
    /// From the top down: behind a NAT that allocates sequentially, the ports just
    /// above the peer's STUN-mapped one went to the peer's first flows after STUN
    /// (among them its tunnel socket's toward us, whose checks may have reached our
    /// router). Probing such a port from a Linux router without an input filter clashes
    /// with the entry those checks left, and the router then moves our socket to
    /// another public port for good (conntrack reuses the newest mapping of a source).
    /// The hard side's sockets come later, higher up: hit one of them first.
    fn next_port(&mut self) -> u16 {
        let base = self.config.peer.port();
        while self.near_next > 0 {
            let p = base.wrapping_add(self.near_next);
            self.near_next -= 1;
            if p >= LOWEST_PORT && self.probed.insert(p) {
                return p;
            }
        }
        loop {
            let p = self.rng.random_range(LOWEST_PORT..=u16::MAX);
            if self.probed.insert(p) {
                return p;
            }
        }
    }

    fn push(&mut self, socket: usize, to: SocketAddr, ttl: Option<u8>) {
        let tid: Tid = self.rng.random();
        self.tids.insert(tid, (socket, to));
        self.queue.push_back(Probe {
            tid,
            socket,
            to,
            ttl,
        });
    }

    /// An authentic check from the peer arrived on our socket `socket` from `from`.
    /// Returns whether to answer it: on the hard side, only on the first socket the
    /// peer reached (which then checks back at once); on the easy side always.
    pub fn on_request(&mut self, socket: usize, from: SocketAddr) -> bool {
        if self.gave_up {
            return false;
        }
        match self.config.side {
            Side::Easy => true,
            // The probes come from the easy side's public IP (its NAT keeps one port
            // for every destination, so from `peer` itself unless its router moved
            // it). An authentic check from any other IP is a replay: checks carry no
            // freshness, and the easy side sprays thousands of them.
            Side::Hard if from.ip() != self.config.peer.ip() => false,
            Side::Hard => match self.reached {
                Some(r) => r.socket == socket,
                None => {
                    self.reached = Some(Won {
                        socket,
                        remote: from,
                    });
                    self.queue.retain(|p| p.ttl.is_none());
                    self.push(socket, from, None);
                    true
                }
            },
        }
    }

    /// An answer to transaction `tid` came from `from` to our socket `socket`;
    /// `authentic` when its MESSAGE-INTEGRITY checks out. Returns whether the
    /// transaction was ours.
    pub fn on_response(
        &mut self,
        tid: Tid,
        socket: usize,
        from: SocketAddr,
        authentic: bool,
    ) -> bool {
        let Some(&(sent_from, sent_to)) = self.tids.get(&tid) else {
            return false;
        };
        // Like the check list's direct checks: only an answer straight back from the
        // address probed (the hard side answers from the socket the probe reached). An
        // authentic answer from elsewhere is a replay, or came another way.
        if !authentic
            || sent_from != socket
            || from != sent_to
            || self.won.is_some()
            || self.gave_up
        {
            return true;
        }
        if self.config.side == Side::Hard && self.reached.is_some_and(|r| r.socket != socket) {
            return true;
        }
        self.won = Some(Won {
            socket,
            remote: from,
        });
        self.queue.clear();
        true
    }
}

/// The chance that `probes` random probes over `range` ports hit one of `sockets`
/// mappings: `1 - (1 - sockets/range)^probes`.
pub fn success_chance(sockets: usize, probes: usize, range: u32) -> f64 {
    let miss = 1.0 - sockets as f64 / f64::from(range.max(1));
    1.0 - miss.max(0.0).powi(probes.min(i32::MAX as usize) as i32)
}
