//! The real proxy service and worker on the simulated ring, for many seeds: simulated MySQL
//! clients (the library's login, then queries, pipelined, each answered with its own text) and
//! simulated MySQL servers (a greeting, native-password auth, sometimes through an auth switch,
//! then answers). Faults come from the simulation (short reads, partial sends, multishot ends,
//! hanging connects, peers that vanish). Checked after every turn: the worker's invariants and
//! the proxy's own; at the end: every client got exactly the answers to its own queries, in
//! order (no byte of one client reaches another), the servers never saw a handshake abandoned by
//! the proxy, and after the drain nothing is left (sockets, slots, buffers, memory, tables).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Proxy, Shared};
use crate::config::Config;
use crate::protocol::auth::native_password_scramble;
use crate::protocol::constants::*;
use crate::protocol::framing::{split_packet, write_packet};
use crate::protocol::handshake::{parse_handshake_response41, write_greeting, HandshakeV10};
use crate::protocol::packets::{write_eof_packet, write_err_packet, write_ok_packet};
use crate::runtime::sim::{Faults, PeerAction, Rng, SimHandle, SimPeer};
use crate::runtime::{Parts, Turn, Worker, WorkerConfig};
use crate::session::login::{Credentials, Login, LoginError};

const LISTEN: &str = "127.0.0.1:6033";
const BACKEND: &str = "127.0.0.1:3306";
const PASSWORD: &str = "pw";
const NONCE: &[u8; 20] = b"abcdefghijklmnopqrst";
const SWITCH_NONCE: &[u8; 20] = b"ABCDEFGHIJKLMNOPQRST";

/// What the simulated servers saw.
#[derive(Debug, Default)]
struct ServerLog {
    connections: usize,
    logins: usize,
    refused_logins: usize,
    /// Connections closed by the proxy before their handshake finished.
    abandoned_handshakes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerPhase {
    Greeting,
    Auth,
    Switched,
    Command,
    Done,
}

/// A MySQL server: greeting, native-password login (through an auth switch when `switch`),
/// then answers: COM_QUERY gets a one-row resultset holding the query text, COM_PING an OK.
struct SimServer {
    phase: ServerPhase,
    switch: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    deprecate_eof: bool,
    close: bool,
    log: Rc<RefCell<ServerLog>>,
}

impl SimServer {
    fn greeting(&self) -> Vec<u8> {
        let h = HandshakeV10 {
            protocol_version: 10,
            server_version: b"5.5.5-10.11.19-MariaDB-sim",
            connection_id: 7,
            auth_data_1: &NONCE[..8],
            capabilities: CLIENT_PROTOCOL_41
                | CLIENT_SECURE_CONNECTION
                | CLIENT_PLUGIN_AUTH
                | CLIENT_LONG_PASSWORD
                | CLIENT_TRANSACTIONS
                | CLIENT_CONNECT_WITH_DB
                | CLIENT_MULTI_RESULTS
                | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
                | if self.deprecate_eof {
                    CLIENT_DEPRECATE_EOF
                } else {
                    0
                },
            charset: 45,
            status: SERVER_STATUS_AUTOCOMMIT,
            auth_data_len: 21,
            mariadb_ext_capabilities: 0,
            auth_data_2: &NONCE[8..],
            auth_plugin_name: Some(b"mysql_native_password"),
        };
        let mut out = Vec::new();
        write_greeting(&mut out, &h);
        out
    }

    fn packet(&mut self, seq: u8, payload: &[u8]) {
        match self.phase {
            ServerPhase::Auth => self.on_login(seq, payload),
            ServerPhase::Switched => self.check_password(seq, payload, SWITCH_NONCE),
            ServerPhase::Command => self.on_command(payload),
            ServerPhase::Greeting | ServerPhase::Done => {}
        }
    }

    fn on_login(&mut self, seq: u8, payload: &[u8]) {
        let Ok(r) = parse_handshake_response41(payload) else {
            return self.refuse(seq + 1, "Bad handshake");
        };
        self.deprecate_eof &= r.capabilities & CLIENT_DEPRECATE_EOF != 0;
        if r.username != b"app" {
            return self.refuse(seq + 1, "Access denied for user");
        }
        if self.switch {
            let mut sw = vec![AUTH_SWITCH_HEADER];
            sw.extend_from_slice(b"mysql_native_password\0");
            sw.extend_from_slice(SWITCH_NONCE);
            sw.push(0);
            write_packet(&mut self.out, seq + 1, &sw);
            self.phase = ServerPhase::Switched;
            return;
        }
        let answer = r.auth_response.to_vec();
        self.check_password(seq, &answer, NONCE);
    }

    fn check_password(&mut self, seq: u8, answer: &[u8], nonce: &[u8]) {
        if answer != native_password_scramble(PASSWORD.as_bytes(), nonce) {
            return self.refuse(seq + 1, "Access denied (password)");
        }
        write_ok_packet(&mut self.out, seq + 1, 0, 0, SERVER_STATUS_AUTOCOMMIT, 0);
        self.phase = ServerPhase::Command;
        self.log.borrow_mut().logins += 1;
    }

    fn refuse(&mut self, seq: u8, msg: &str) {
        write_err_packet(&mut self.out, seq, 1045, b"28000", msg.as_bytes());
        self.log.borrow_mut().refused_logins += 1;
        self.phase = ServerPhase::Done;
        self.close = true;
    }

    fn on_command(&mut self, payload: &[u8]) {
        match payload.first() {
            Some(&COM_QUERY) => self.resultset(&payload[1..]),
            Some(&COM_PING) => write_ok_packet(&mut self.out, 1, 0, 0, SERVER_STATUS_AUTOCOMMIT, 0),
            Some(&COM_QUIT) => {
                self.phase = ServerPhase::Done;
                self.close = true;
            }
            _ => write_err_packet(&mut self.out, 1, 1047, b"08S01", b"Unknown command"),
        }
    }

    /// One column, one row: the query text itself.
    fn resultset(&mut self, text: &[u8]) {
        let out = &mut self.out;
        let mut seq = write_packet(out, 1, &[1]);
        let mut coldef = Vec::new();
        for s in [&b"def"[..], b"", b"", b"", b"q", b""] {
            coldef.push(s.len() as u8);
            coldef.extend_from_slice(s);
        }
        coldef.extend_from_slice(&[0x0c, 45, 0, 0, 1, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
        seq = write_packet(out, seq, &coldef);
        if !self.deprecate_eof {
            write_eof_packet(out, seq, 0, SERVER_STATUS_AUTOCOMMIT);
            seq = seq.wrapping_add(1);
        }
        let mut row = vec![text.len() as u8];
        row.extend_from_slice(text);
        seq = write_packet(out, seq, &row);
        if self.deprecate_eof {
            write_packet(out, seq, &[0xfe, 0, 0, 2, 0, 0, 0]);
        } else {
            write_eof_packet(out, seq, 0, SERVER_STATUS_AUTOCOMMIT);
        }
    }
}

impl SimPeer for SimServer {
    fn on_bytes(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
        while let Some((h, payload, used)) = split_packet(&self.inbuf) {
            let payload = payload.to_vec();
            self.inbuf.drain(..used);
            self.packet(h.seq, &payload);
        }
    }

    fn poll(&mut self, _now: Instant, out: &mut Vec<u8>) -> PeerAction {
        if self.phase == ServerPhase::Greeting {
            self.out = self.greeting();
            self.phase = ServerPhase::Auth;
        }
        out.append(&mut self.out);
        if self.close {
            PeerAction::Close
        } else {
            PeerAction::Continue
        }
    }

    fn on_vanished(&mut self) {
        self.phase = ServerPhase::Done;
    }

    fn on_closed(&mut self) {
        if matches!(self.phase, ServerPhase::Auth | ServerPhase::Switched) {
            self.log.borrow_mut().abandoned_handshakes += 1;
        }
        self.phase = ServerPhase::Done;
    }
}

/// What the simulated clients saw.
#[derive(Debug, Default)]
struct ClientLog {
    finished: usize,
    /// Ended early by a fault (or an ERR from the proxy); no answer they got was wrong.
    ended_early: usize,
    answers: usize,
    wrong: Vec<String>,
    /// ERR packets clients got (faults only).
    errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Logs in, runs its queries (up to `depth` pipelined), quits.
    Normal,
    /// Reads the greeting and leaves.
    LeaveAfterGreeting,
}

/// A MySQL client: logs in with the library's `Login`, sends `total` queries each asking for
/// its own text, `depth` at a time, and checks every answer against the oldest one sent.
struct SimClient {
    id: usize,
    behaviour: Behaviour,
    login: Option<Login>,
    caps: u32,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: VecDeque<String>,
    next: usize,
    total: usize,
    depth: usize,
    /// Packets of the response in progress (resultset shape known).
    resp: Vec<Vec<u8>>,
    done: bool,
    log: Rc<RefCell<ClientLog>>,
}

impl SimClient {
    fn cred() -> Credentials {
        Credentials {
            user: "app".into(),
            password: PASSWORD.into(),
            stage1: None,
            db: None,
        }
    }

    fn finish(&mut self, early: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let mut log = self.log.borrow_mut();
        if early {
            log.ended_early += 1;
        } else {
            log.finished += 1;
        }
    }

    fn wrong(&mut self, what: String) {
        self.log
            .borrow_mut()
            .wrong
            .push(format!("client {}: {what}", self.id));
        self.finish(true);
    }

    fn send_queries(&mut self) {
        while self.sent.len() < self.depth && self.next < self.total {
            let text = format!("c{}-q{}", self.id, self.next);
            let mut p = vec![COM_QUERY];
            p.extend_from_slice(text.as_bytes());
            write_packet(&mut self.out, 0, &p);
            self.sent.push_back(text);
            self.next += 1;
        }
        if self.sent.is_empty() && self.next == self.total && !self.done {
            write_packet(&mut self.out, 0, &[COM_QUIT]);
            self.finish(false);
        }
    }

    /// An ERR from the proxy ends the client early (a fault made a backend fail); it is not a
    /// wrong answer.
    fn refused(&mut self, payload: &[u8]) {
        self.log
            .borrow_mut()
            .errors
            .push(String::from_utf8_lossy(payload).into_owned());
        self.finish(true);
    }

    /// One packet of a response: a resultset ends with its terminator (EOF, or OK-as-EOF).
    fn on_response_packet(&mut self, payload: Vec<u8>) {
        if payload.first() == Some(&ERR_HEADER) && self.resp.is_empty() {
            return self.refused(&payload);
        }
        self.resp.push(payload);
        let eofs = if self.caps & CLIENT_DEPRECATE_EOF != 0 {
            0
        } else {
            1
        };
        if self.resp.len() < 4 + eofs {
            return;
        }
        let row = self.resp[2 + eofs].clone();
        self.resp.clear();
        let got = String::from_utf8_lossy(row.get(1..).unwrap_or(&[])).into_owned();
        match self.sent.pop_front() {
            Some(want) if want == got => self.log.borrow_mut().answers += 1,
            want => return self.wrong(format!("answer {got:?} for query {want:?}")),
        }
        self.send_queries();
    }
}

impl SimPeer for SimClient {
    fn on_bytes(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        if let Some(login) = self.login.as_mut() {
            if self.behaviour == Behaviour::LeaveAfterGreeting {
                // It saw the greeting: it leaves (poll says so).
                self.login = None;
                return;
            }
            match login.feed(data, &Self::cred(), &mut self.out) {
                Ok(None) => {}
                Ok(Some(caps)) => {
                    self.caps = caps;
                    self.login = None;
                    self.send_queries();
                }
                Err(LoginError::Server { .. }) => self.finish(true),
                Err(e) => self.wrong(format!("login: {e}")),
            }
            return;
        }
        self.inbuf.extend_from_slice(data);
        while let Some((_, payload, used)) = split_packet(&self.inbuf) {
            let payload = payload.to_vec();
            self.inbuf.drain(..used);
            self.on_response_packet(payload);
            if self.done {
                return;
            }
        }
    }

    fn poll(&mut self, _now: Instant, out: &mut Vec<u8>) -> PeerAction {
        out.append(&mut self.out);
        if self.behaviour == Behaviour::LeaveAfterGreeting && self.login.is_none() && !self.done {
            self.finish(false);
            return PeerAction::Close;
        }
        if self.done && self.sent.is_empty() {
            return PeerAction::Close;
        }
        PeerAction::Continue
    }

    fn on_closed(&mut self) {
        self.finish(true);
    }
}

fn config(prewarm: usize) -> Config {
    Config::from_toml_str(&format!(
        "[proxy]\nlisten = [\"{LISTEN}\"]\nbackends = [\"{BACKEND}\"]\nprewarm = {prewarm}\n\
         max_connections = 1000\n"
    ))
    .unwrap()
}

struct Run {
    sim: SimHandle,
    worker: Worker<Proxy>,
    clients: Rc<RefCell<ClientLog>>,
    servers: Rc<RefCell<ServerLog>>,
}

impl Run {
    fn new(seed: u64, faults: Faults, prewarm: usize) -> Run {
        let sim = SimHandle::new(seed, faults, 512);
        let servers = Rc::new(RefCell::new(ServerLog::default()));
        let log = Rc::clone(&servers);
        let mut rng = Rng::new(seed ^ 0x5e4);
        sim.add_server(
            BACKEND.parse().unwrap(),
            Box::new(move || {
                log.borrow_mut().connections += 1;
                Box::new(SimServer {
                    phase: ServerPhase::Greeting,
                    switch: rng.chance(0.3),
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    deprecate_eof: rng.chance(0.5),
                    close: false,
                    log: Rc::clone(&log),
                })
            }),
        );
        let shared = Arc::new(Shared::new(&config(prewarm)));
        let cfg = WorkerConfig {
            buffer_count: 32,
            buffer_size: 4096,
            ..WorkerConfig::basic(0, 512)
        };
        let listen = [LISTEN.parse().unwrap()];
        let parts = Parts::new(Proxy::new(shared));
        let worker = Worker::with_driver(&cfg, sim.driver(), &listen, parts).unwrap();
        Run {
            sim,
            worker,
            clients: Rc::new(RefCell::new(ClientLog::default())),
            servers,
        }
    }

    fn add_client(&self, id: usize, behaviour: Behaviour, total: usize, depth: usize) {
        self.sim.connect_client(
            0,
            Box::new(SimClient {
                id,
                behaviour,
                login: Some(Login::new()),
                caps: 0,
                inbuf: Vec::new(),
                out: Vec::new(),
                sent: VecDeque::new(),
                next: 0,
                total,
                depth,
                resp: Vec::new(),
                done: false,
                log: Rc::clone(&self.clients),
            }),
        );
    }

    fn turn(&mut self, seed: u64) -> Turn {
        let t = self.worker.turn().unwrap();
        let holds = self.worker.service.holds();
        if let Err(e) = self.worker.io.invariants(&holds) {
            panic!("seed {seed}: runtime: {e}");
        }
        if let Err(e) = self.worker.service.invariants() {
            panic!("seed {seed}: proxy: {e}");
        }
        t
    }

    /// Runs until every client has finished or ended.
    fn until_clients_done(&mut self, seed: u64, clients: usize) {
        for _ in 0..400_000 {
            let l = self.clients.borrow();
            if l.finished + l.ended_early == clients {
                return;
            }
            drop(l);
            self.turn(seed);
        }
        panic!("seed {seed}: clients not done: {:?}", self.clients.borrow());
    }

    /// Drains the worker and checks nothing is left.
    fn drain_clean(&mut self, seed: u64) {
        self.worker.shutdown_flag().store(true, Ordering::Relaxed);
        for _ in 0..400_000 {
            if self.turn(seed) == Turn::Done {
                break;
            }
        }
        let io = &self.worker.io;
        assert_eq!(io.sockets(), 0, "seed {seed}: sockets left");
        assert_eq!(
            self.worker.service.connections(),
            (0, 0),
            "seed {seed}: tables"
        );
        let (free, count) = io.buffers_free();
        assert_eq!(free, u32::from(count), "seed {seed}: buffers held");
        assert_eq!(self.sim.slots_in_use(), 0, "seed {seed}: slots in use");
        assert_eq!(io.memory_used(), 0, "seed {seed}: memory not given back");
    }
}

fn session_run(seed: u64, faults: Faults) {
    let mut rng = Rng::new(seed);
    let prewarm = rng.below(3) as usize;
    let mut run = Run::new(seed, faults.clone(), prewarm);
    let clients = 3 + rng.below(8) as usize;
    let mut expected = 0;
    for id in 0..clients {
        let leave = rng.chance(0.15);
        let behaviour = if leave {
            Behaviour::LeaveAfterGreeting
        } else {
            Behaviour::Normal
        };
        let total = rng.below(12) as usize;
        // Some clients pipeline past the tracker's 32: they must stall, never fail.
        let depth = if rng.chance(0.2) {
            40
        } else {
            1 + rng.below(4) as usize
        };
        if !leave {
            expected += total;
        }
        run.add_client(id, behaviour, total, depth);
    }
    run.until_clients_done(seed, clients);
    {
        let l = run.clients.borrow();
        assert!(l.wrong.is_empty(), "seed {seed}: {:?}", l.wrong);
        let no_faults = faults.vanish == 0.0 && faults.hang_connect == 0.0;
        if no_faults {
            assert!(l.errors.is_empty(), "seed {seed}: {:?}", l.errors);
            assert_eq!(l.ended_early, 0, "seed {seed}: {l:?}");
            assert_eq!(l.answers, expected, "seed {seed}");
        }
    }
    run.drain_clean(seed);
    let s = run.servers.borrow();
    assert_eq!(
        s.abandoned_handshakes, 0,
        "seed {seed}: the proxy left a server handshake unfinished: {s:?}"
    );
}

#[test]
fn sessions_without_faults() {
    for seed in 0..20 {
        session_run(seed, Faults::none());
    }
}

/// Many seeds with every fault the simulation has.
#[test]
fn sessions_under_faults_for_many_seeds() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let first: u64 = std::env::var("SIM_SEED_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        session_run(seed, Faults::some());
    }
}

/// Issue 6, item 7, in the simulation: clients that read the greeting and leave cost the
/// server no abandoned handshake; their backend connections are reused or retired cleanly.
#[test]
fn clients_leaving_mid_handshake_abandon_no_server_handshake() {
    let mut run = Run::new(99, Faults::none(), 2);
    for id in 0..30 {
        run.add_client(id, Behaviour::LeaveAfterGreeting, 0, 1);
    }
    run.add_client(30, Behaviour::Normal, 3, 1);
    run.until_clients_done(99, 31);
    assert_eq!(run.clients.borrow().answers, 3);
    run.drain_clean(99);
    let s = run.servers.borrow();
    assert_eq!(s.abandoned_handshakes, 0, "{s:?}");
    assert!(
        s.connections < 31,
        "greetings were reused: {} backend connections for 31 clients",
        s.connections
    );
    assert!(
        s.refused_logins > 0,
        "retired connections finished with a refused login"
    );
}
