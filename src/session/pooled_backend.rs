//! A pooled backend connection, as an I/O-free state machine: the proxy logs in as the
//! session's user (the library's [`Login`]), turns session-state tracking on, then runs jobs
//! one after another — internal statements (state replays, reading user variables back,
//! prepares, pings, resets) whose responses it reads itself, and the commands of whichever
//! session holds it, whose responses go to that session's client as they arrive (no copy),
//! except the packets that carry status and state (OK, EOF, ERR, prepare-OK), which are read
//! and, where the client needs it, rewritten. Other sessions' commands may be pipelined behind
//! a session's ([`PooledBackend::ride`]): each response, in order, goes to its own session,
//! announced with [`Action::Responder`].
//!
//! What a command changed in the session (tracked system variables and schema, the status
//! flags, last insert id, warnings, an untracked change) is reported with the end of its
//! response ([`Done`]) for the session to decide whether it may let the connection go.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::action::Action;
use super::login::{Credentials, Login, LoginError};
use super::pool::PoolKey;
use super::pooled_client::SHAPING;
use super::pooled_stmt::{close_packet, prepare_ok};
use super::relay::{Fate, Piece, Relay};
use super::state::{SessionState, UserVar, VarType};
use super::PooledId;
use crate::protocol::constants::*;
use crate::protocol::cursor::Cursor;
use crate::protocol::framing::{write_packet, PacketHead};
use crate::protocol::scanner::{ClientPacket, ResponseTracker, ServerPacket};
use crate::protocol::track::{self, StateChange};
use crate::protocol::ProtoError;
use crate::runtime::SockId;

/// The statement that turns session-state tracking on, run once after the login.
const SETUP: &[u8] = b"SET SESSION session_track_schema = 1, session_track_state_change = 1, \
    session_track_system_variables = '*', session_track_transaction_info = 'CHARACTERISTICS'";

/// Server statements one connection keeps at most; past it the least recently prepared is
/// closed (it is prepared again if a session needs it there).
pub const MAX_STMTS_PER_CONN: usize = 256;

/// Packets larger than this are never captured (only status packets are, and they are small).
const CAPTURE_MAX: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Login,
    /// The tracking setup runs.
    Setup,
    /// Ready: no job in flight.
    Idle,
    Busy,
    Ended,
}

/// Something run on the connection; its response is read by the machine (internal jobs) or
/// goes to the session's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Setup,
    /// A COM_INIT_DB or SET of a state replay.
    Replay,
    /// `SELECT @a, @b…` after a statement that assigned them.
    ReadVars(Vec<Vec<u8>>),
    /// `SELECT @@session.a, …` after a SET of system variables the server's tracking may not
    /// report (MariaDB reports only some of them).
    ReadSysVars(Vec<Vec<u8>>),
    /// A COM_STMT_PREPARE of statement `key` the session did not prepare here yet.
    Prepare(u64),
    Ping,
    /// COM_RESET_CONNECTION (then the tracking setup runs again).
    Reset,
    /// A command without a response (COM_STMT_CLOSE of an evicted statement).
    Quiet,
    /// A session's command. `prepare`: the client-visible id to put in a prepare-OK, with the
    /// statement's key (the prepared statement is then recorded for this connection).
    Client {
        prepare: Option<(u32, u64)>,
    },
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The setup ran (`tracking`: the server accepted it).
    Ready {
        tracking: bool,
    },
    /// A replay statement ran, or failed with this ERR packet.
    Replayed(Result<(), Vec<u8>>),
    Vars(Vec<(Vec<u8>, UserVar)>),
    /// System variables read back (false: the read failed).
    SysVars(bool),
    /// A statement prepared for a session's EXECUTE: its server id and parameter count, or the
    /// server's ERR packet (to go to the client as the EXECUTE's answer).
    Prepared(Result<(u32, u16), Vec<u8>>),
    Pinged(bool),
    /// A session command's response ended (`session`: whose; `None` when its client left).
    Client {
        session: Option<PooledId>,
        outcome: Outcome,
    },
}

/// What a command's response said about the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Status flags of the last OK/EOF (SERVER_STATUS_IN_TRANS, ...).
    pub status: u16,
    pub warnings: u16,
    /// ERR code when the command failed.
    pub error: Option<u16>,
    pub last_insert_id: u64,
    /// Tracked state changed (the connection's state was updated).
    pub changed: bool,
    /// The server said the state changed in a way no tracked item explains (user variables,
    /// temporary tables, prepared statements): the session must stay on this connection.
    pub untracked_change: bool,
    /// A client prepare's server statement id and parameter count.
    pub prepared: Option<(u32, u16)>,
    /// A client prepare's whole response (cached: the next prepare of the same statement is
    /// answered from it).
    pub prepare_response: Vec<u8>,
    /// Transaction characteristics are pending for the next transaction
    /// (`SET TRANSACTION ...`): the session must stay on this connection until it starts.
    pub trx_characteristics: bool,
}

/// A session's command sent behind the ones in flight (pipelined): the server answers in order,
/// so its response is the next after theirs.
#[derive(Debug)]
struct Rider {
    /// `None` once its client left (the response is read and dropped).
    session: Option<PooledId>,
    client_caps: u32,
    /// The command's length and first bytes: the response tracker reads them when its response
    /// begins.
    len: u32,
    head: Vec<u8>,
}

impl Rider {
    fn packet_head(&self) -> PacketHead<'_> {
        PacketHead {
            len: self.len,
            seq: 0,
            head: &self.head,
            continuation: false,
            at: None,
            start: 0,
        }
    }
}

/// The pooled side of one backend connection.
pub struct PooledBackend {
    pub sock: SockId,
    pub addr: SocketAddr,
    /// Index of the backend server (for the per-backend limit).
    pub server: usize,
    pub key: PoolKey,
    /// The session holding it now: the one whose response is being read (or is next).
    pub session: Option<PooledId>,
    /// Since when it finishes a command for a client that left (the rest of the response is
    /// read and dropped; then it is reset and pooled).
    pub orphaned: Option<Instant>,
    /// Since when it waits for the server to close after COM_QUIT (it still counts against
    /// the limit: the server still counts it).
    pub quitting: Option<Instant>,
    pub opened_at: Instant,
    /// When its login (or COM_CHANGE_USER) began.
    pub login_since: Instant,
    pub last_used: Instant,
    /// What the connection's session state is.
    pub state: SessionState,
    /// Its state right after the login and the tracking setup (a new session's state).
    pub baseline: Arc<SessionState>,
    /// The client capabilities of the session holding it (OK packets are rewritten for a
    /// client that did not ask for session tracking).
    pub client_caps: u32,
    phase: Phase,
    login: Option<Box<Login>>,
    cred: Credentials,
    caps: u32,
    tracking: bool,
    relay: Relay,
    tracker: ResponseTracker,
    /// The job whose response is awaited (one at a time: the server answers in order, and a
    /// response must be read before the next job can be decided on).
    job: Option<Job>,
    /// Jobs waiting for it, with their packets.
    queued: VecDeque<(Job, Vec<u8>)>,
    /// Commands of other sessions sent behind the one in front, in order (see [`Self::ride`]).
    riders: VecDeque<Rider>,
    /// The command in front may have others pipelined behind it (set by the service for a
    /// command that cannot change session state); cleared when the connection goes idle.
    shareable: bool,
    /// Commands pipelined since the connection was last idle.
    streak: u32,
    /// Captured packets of the internal response in progress.
    packets: Vec<Vec<u8>>,
    /// Something of the current response arrived already.
    answered: bool,
    /// Reused list of the pieces of one chunk, each with the number of pipelined responses that
    /// began before it in the chunk.
    pieces: Vec<(usize, Piece)>,
    /// The outcome being gathered for the client job in front.
    outcome: Outcome,
    /// The response in front ended (its last packet is being captured).
    ending: bool,
    /// Statements prepared here: statement key → server statement id.
    pub prepared: HashMap<u64, u32>,
    /// Their keys, least recently prepared first.
    prepared_order: VecDeque<u64>,
    /// Server statements closed to stay under [`MAX_STMTS_PER_CONN`] (read by the service).
    pub evicted: u64,
    /// The server's id of this connection (its thread id, what KILL names).
    pub thread_id: u32,
    /// The greeting's scramble (COM_CHANGE_USER answers it).
    nonce: Vec<u8>,
    /// The server's refusal of the login: code and message.
    pub last_error: Option<(u16, String)>,
}

impl PooledBackend {
    /// A connection being opened to `addr` (backend `server`) for sessions of `key`, logging
    /// in as `cred` with the key's capabilities and character set.
    pub fn new(
        sock: SockId,
        addr: SocketAddr,
        server: usize,
        key: PoolKey,
        cred: Credentials,
        now: Instant,
    ) -> PooledBackend {
        let want = (key.caps & SHAPING) | CLIENT_SESSION_TRACK | CLIENT_TRANSACTIONS;
        let charset = key.charset;
        PooledBackend {
            sock,
            addr,
            server,
            key,
            session: None,
            orphaned: None,
            quitting: None,
            opened_at: now,
            login_since: now,
            last_used: now,
            state: SessionState::default(),
            baseline: Arc::default(),
            client_caps: 0,
            phase: Phase::Connecting,
            login: Some(Box::new(Login::with_capabilities(want, charset))),
            cred,
            caps: 0,
            tracking: false,
            relay: Relay::new(),
            tracker: ResponseTracker::new(0),
            job: None,
            queued: VecDeque::new(),
            riders: VecDeque::new(),
            shareable: false,
            streak: 0,
            packets: Vec::new(),
            answered: false,
            pieces: Vec::new(),
            outcome: Outcome::default(),
            ending: false,
            prepared: HashMap::new(),
            prepared_order: VecDeque::new(),
            evicted: 0,
            last_error: None,
            thread_id: 0,
            nonce: Vec::new(),
        }
    }

    /// Logs the idle connection in as another user of the same capabilities (COM_CHANGE_USER):
    /// it then belongs to `key`, with a fresh session (state, statements and tracking are the
    /// server's defaults again; the setup runs once the OK comes).
    pub fn change_user(
        &mut self,
        key: PoolKey,
        cred: Credentials,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let (login, pkt) = Login::change_user(self.caps, key.charset, &self.nonce, &cred);
        self.key = key;
        self.cred = cred;
        self.login = Some(Box::new(login));
        self.phase = Phase::Login;
        self.login_since = now;
        self.server_session_dropped(None);
        self.baseline = Arc::default();
        self.tracking = false;
        out.push(Action::SendBackend(pkt));
    }

    /// The server dropped the connection's session (COM_RESET_CONNECTION, COM_CHANGE_USER): its
    /// state is the server's defaults in `schema`, and it has no statements.
    fn server_session_dropped(&mut self, schema: Option<Vec<u8>>) {
        self.state = SessionState {
            schema,
            ..SessionState::default()
        };
        self.prepared.clear();
        self.prepared_order.clear();
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Capabilities negotiated with the server.
    pub fn caps(&self) -> u32 {
        self.caps
    }

    /// Ready for a job and holding nothing half-relayed.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
            && self.job.is_none()
            && self.riders.is_empty()
            && self.relay.at_boundary()
    }

    /// Marks the session command just sent as one other sessions' commands may be pipelined
    /// behind (it cannot change the session state they run in).
    pub fn share(&mut self) {
        self.shareable = true;
    }

    /// Whether another session's command may be pipelined now: what runs is shareable client
    /// work, nothing internal waits, fewer than `depth` ride, and (when `others_wait`) the
    /// connection has not taken `4 × depth` since it was last idle, so it becomes free for
    /// sessions that cannot ride.
    pub fn takes_rider(&self, depth: usize, others_wait: bool) -> bool {
        let front = matches!(self.job, None | Some(Job::Client { prepare: None }));
        self.shareable
            && front
            && self.phase == Phase::Busy
            && self.queued.is_empty()
            && self.orphaned.is_none()
            && self.riders.len() < depth
            && (!others_wait || (self.streak as usize) < 4 * depth)
    }

    /// Sends session `sid`'s command (`packet`, sequence id 0) behind those in flight; its
    /// response goes to `sid` once theirs have ended.
    pub fn ride(
        &mut self,
        sid: PooledId,
        client_caps: u32,
        packet: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let payload = packet.get(HEADER_LEN..).unwrap_or(&[]);
        self.riders.push_back(Rider {
            session: Some(sid),
            client_caps,
            len: payload.len() as u32,
            head: payload[..payload.len().min(64)].to_vec(),
        });
        self.streak += 1;
        out.push(Action::SendBackend(packet));
    }

    /// Whether commands of other sessions wait behind the response being read.
    pub fn has_riders(&self) -> bool {
        !self.riders.is_empty()
    }

    /// The client of pipelined session `sid` left: its response will be read and dropped.
    pub fn drop_rider(&mut self, sid: PooledId) {
        for r in self.riders.iter_mut().filter(|r| r.session == Some(sid)) {
            r.session = None;
        }
    }

    /// The sessions whose pipelined commands have no response yet (the connection failed).
    pub fn take_riders(&mut self) -> Vec<PooledId> {
        self.riders.drain(..).filter_map(|r| r.session).collect()
    }

    /// Whether session `sid` has a command pipelined here.
    pub fn carries(&self, sid: PooledId) -> bool {
        self.riders.iter().any(|r| r.session == Some(sid))
    }

    pub fn on_connected(&mut self) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Login;
        }
    }

    /// Runs `job` (its packet is `packet`, sequence id 0): sent now if nothing is in flight,
    /// else when the jobs before it have ended.
    pub fn run(&mut self, job: Job, packet: Vec<u8>, out: &mut Vec<Action>) {
        if self.job.is_some() || !self.queued.is_empty() || !self.riders.is_empty() {
            self.queued.push_back((job, packet));
            return;
        }
        self.send(job, packet, out);
    }

    fn send(&mut self, job: Job, packet: Vec<u8>, out: &mut Vec<Action>) {
        let expects = packet.get(HEADER_LEN..).is_some_and(|p| {
            let head = PacketHead {
                len: p.len() as u32,
                seq: 0,
                head: &p[..p.len().min(64)],
                continuation: false,
                at: None,
                start: 0,
            };
            !matches!(
                self.tracker.on_client_packet(&head),
                Ok(ClientPacket::Command {
                    expect: crate::protocol::scanner::Expect::Nothing,
                    ..
                })
            )
        });
        out.push(Action::SendBackend(packet));
        if expects {
            self.job = Some(job);
            self.answered = false;
            if self.phase == Phase::Idle {
                self.phase = Phase::Busy;
            }
        }
    }

    /// Sends the next queued job, if any.
    fn next_job(&mut self, out: &mut Vec<Action>) {
        while self.job.is_none() && self.riders.is_empty() {
            let Some((job, packet)) = self.queued.pop_front() else {
                break;
            };
            self.send(job, packet, out);
        }
        let done = self.job.is_none() && self.riders.is_empty();
        if done && matches!(self.phase, Phase::Busy | Phase::Setup) {
            self.phase = Phase::Idle;
            self.shareable = false;
            self.streak = 0;
        }
    }

    /// Bytes from the server. Pieces of client responses become `out` actions; finished jobs
    /// are appended to `done`.
    pub fn on_bytes(
        &mut self,
        data: &[u8],
        out: &mut Vec<Action>,
        done: &mut Vec<Done>,
    ) -> Result<(), String> {
        match self.phase {
            Phase::Login => self.on_login_bytes(data, out, done),
            Phase::Setup | Phase::Busy | Phase::Idle => self.on_response_bytes(data, out, done),
            Phase::Connecting | Phase::Ended => Ok(()),
        }
    }

    fn on_login_bytes(
        &mut self,
        data: &[u8],
        out: &mut Vec<Action>,
        done: &mut Vec<Done>,
    ) -> Result<(), String> {
        let login = self.login.as_mut().expect("logging in");
        let mut send = Vec::new();
        let r = login.feed(data, &self.cred, &mut send);
        if !send.is_empty() {
            out.push(Action::SendBackend(send));
        }
        match r {
            Ok(None) => Ok(()),
            Ok(Some(caps)) => {
                // A COM_CHANGE_USER keeps the thread and the greeting's scramble.
                if login.connection_id != 0 {
                    self.thread_id = login.connection_id;
                    self.nonce = std::mem::take(&mut login.nonce);
                }
                self.login = None;
                self.caps = caps;
                self.tracker = ResponseTracker::new(caps);
                self.phase = Phase::Setup;
                self.state.schema = self.cred.db.clone().map(String::into_bytes);
                let mut pkt = Vec::new();
                write_packet(&mut pkt, 0, &[&[COM_QUERY][..], SETUP].concat());
                self.send(Job::Setup, pkt, out);
                let _ = done;
                Ok(())
            }
            Err(LoginError::Server { code, message }) => {
                let e = format!("login refused: {code} {message}");
                self.last_error = Some((code, message));
                Err(e)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn on_response_bytes(
        &mut self,
        data: &[u8],
        out: &mut Vec<Action>,
        done: &mut Vec<Done>,
    ) -> Result<(), String> {
        // The bytes belong to the job in front until its response ends; then, when commands were
        // pipelined behind it, to the next one's response (the tracker starts on it at the first
        // packet after the end, and the pieces from there on are counted as the next one's).
        let mut pieces = std::mem::take(&mut self.pieces);
        let begun = std::cell::Cell::new(0usize);
        let r = {
            let (tracker, ending, riders) = (&mut self.tracker, &mut self.ending, &self.riders);
            // A client prepare's response is captured whole too (its metadata is cached).
            let internal =
                riders.is_empty() && !matches!(self.job, Some(Job::Client { prepare: None }));
            let mut between = self.job.is_none();
            let mut decide = |p: &PacketHead<'_>| {
                if *ending || between {
                    if let Some(next) = riders.get(begun.get()) {
                        tracker.on_client_packet(&next.packet_head())?;
                        begun.set(begun.get() + 1);
                        (*ending, between) = (false, false);
                    }
                }
                decide_packet(tracker, internal, ending, p)
            };
            let mut keep = |piece| pieces.push((begun.get(), piece));
            self.relay.feed(data, &mut decide, &mut keep)
        };
        let mut result = r.map_err(|e: ProtoError| format!("protocol error: {e}"));
        let mut started = 0;
        for (before, piece) in pieces.drain(..) {
            for _ in started..before {
                self.next_rider(done, out);
            }
            started = started.max(before);
            if result.is_ok() {
                result = self.on_piece(piece, out);
            }
        }
        for _ in started..begun.get() {
            self.next_rider(done, out);
        }
        self.pieces = pieces;
        result?;
        if self.ending && self.relay.at_boundary() {
            self.finish(done, out);
        }
        self.next_job(out);
        Ok(())
    }

    /// The response of the first pipelined command begins: the one before it is finished, and
    /// what follows goes to the rider's session (announced to the service).
    fn next_rider(&mut self, done: &mut Vec<Done>, out: &mut Vec<Action>) {
        if self.job.is_some() {
            self.complete(done, out);
        }
        let Some(r) = self.riders.pop_front() else {
            return;
        };
        self.session = r.session;
        self.client_caps = r.client_caps;
        self.job = Some(Job::Client { prepare: None });
        self.answered = false;
        self.outcome = Outcome::default();
        out.push(Action::Responder(r.session));
    }

    /// A piece of the response in front: client bytes go on; captured packets are read.
    fn on_piece(&mut self, piece: Piece, out: &mut Vec<Action>) -> Result<(), String> {
        if self.job.is_none() {
            return Err("the server sent data with nothing asked".into());
        }
        let internal = !matches!(self.job, Some(Job::Client { .. }));
        match piece {
            Piece::Packet(pkt) if internal => self.packets.push(pkt),
            Piece::Packet(pkt) => self.client_packet(pkt, out),
            other if !internal => out.extend(other.forward_action()),
            _ => {}
        }
        self.answered = true;
        Ok(())
    }

    fn finish(&mut self, done: &mut Vec<Done>, out: &mut Vec<Action>) {
        self.ending = false;
        self.complete(done, out);
    }

    /// The job in front is answered whole: reported (`ending` is left alone: it may be about a
    /// later pipelined response of the same chunk).
    fn complete(&mut self, done: &mut Vec<Done>, out: &mut Vec<Action>) {
        match self.job {
            Some(Job::Client { .. }) => self.finish_client(done),
            Some(_) => self.finish_internal(done, out),
            None => {}
        }
    }

    /// A captured packet of a client response: read for status and state, sent on (rewritten
    /// for the client where needed).
    fn client_packet(&mut self, mut pkt: Vec<u8>, out: &mut Vec<Action>) {
        if let Some(Job::Client { prepare: Some(_) }) = self.job {
            self.prepare_packet(&mut pkt, out);
            self.outcome.prepare_response.extend_from_slice(&pkt);
            return out.push(Action::SendPeer(pkt));
        }
        if pkt.get(HEADER_LEN) == Some(&ERR_HEADER) {
            let code = pkt.get(HEADER_LEN + 1..HEADER_LEN + 3);
            self.outcome.error = code.map(|c| u16::from_le_bytes([c[0], c[1]]));
        }
        if matches!(pkt.get(HEADER_LEN), Some(&(OK_HEADER | EOF_HEADER))) {
            self.read_status(&mut pkt);
        }
        out.push(Action::SendPeer(pkt));
    }

    /// A packet of a client prepare's response: the prepare-OK's statement id becomes the
    /// client's (the server's is recorded for the statement's key).
    fn prepare_packet(&mut self, pkt: &mut [u8], out: &mut Vec<Action>) {
        let Some(Job::Client {
            prepare: Some((client_id, key)),
        }) = self.job
        else {
            return;
        };
        match pkt.get(HEADER_LEN).copied() {
            Some(ERR_HEADER) => {
                let code = pkt.get(HEADER_LEN + 1..HEADER_LEN + 3);
                self.outcome.error = code.map(|c| u16::from_le_bytes([c[0], c[1]]));
            }
            Some(OK_HEADER) if !self.answered => {
                if let Some((server_id, params)) = prepare_ok(&pkt[HEADER_LEN..]) {
                    self.remember_stmt(key, server_id, out);
                    self.outcome.prepared = Some((server_id, params));
                    pkt[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&client_id.to_le_bytes());
                }
            }
            _ => {}
        }
    }

    /// Records server statement `id` for `key`; a statement it replaces, and the least recently
    /// prepared one past the bound, are closed on the server.
    fn remember_stmt(&mut self, key: u64, id: u32, out: &mut Vec<Action>) {
        if let Some(old) = self.prepared.insert(key, id) {
            self.prepared_order.retain(|k| *k != key);
            self.run(Job::Quiet, close_packet(old), out);
        }
        self.prepared_order.push_back(key);
        while self.prepared.len() > MAX_STMTS_PER_CONN {
            let Some(k) = self.prepared_order.pop_front() else {
                break;
            };
            if let Some(old) = self.prepared.remove(&k) {
                self.evicted += 1;
                self.run(Job::Quiet, close_packet(old), out);
            }
        }
    }

    /// Whether the server waits for client data (a LOAD DATA LOCAL file's contents).
    pub fn awaits_client_data(&self) -> bool {
        self.tracker.awaiting_client()
    }

    /// A packet of the client's LOAD DATA LOCAL contents: sent on as the client numbered it.
    pub fn client_data(
        &mut self,
        seq: u8,
        payload: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let head = PacketHead {
            len: payload.len() as u32,
            seq,
            head: &payload[..payload.len().min(64)],
            continuation: false,
            at: None,
            start: 0,
        };
        self.tracker
            .on_client_packet(&head)
            .map_err(|e| format!("client data: {e}"))?;
        let mut pkt = Vec::with_capacity(payload.len() + HEADER_LEN);
        write_packet(&mut pkt, seq, payload);
        out.push(Action::SendBackend(pkt));
        Ok(())
    }

    /// Reads the status flags, warnings, last insert id and tracked state of an OK or EOF, and
    /// re-encodes it without the tracking block for a client that did not ask for it.
    fn read_status(&mut self, pkt: &mut Vec<u8>) {
        let payload = &pkt[HEADER_LEN..];
        let eof = self.caps & CLIENT_DEPRECATE_EOF == 0;
        if payload.first() == Some(&EOF_HEADER) && eof {
            if let Ok(eof) = crate::protocol::packets::parse_eof(payload) {
                self.outcome.status = eof.status;
                self.outcome.warnings = eof.warnings;
            }
            return;
        }
        let Ok(ok) = track::parse_ok_tracked(payload, self.caps) else {
            return;
        };
        self.outcome.status = ok.status;
        self.outcome.warnings = ok.warnings;
        if ok.last_insert_id != 0 {
            self.outcome.last_insert_id = ok.last_insert_id;
            self.state.last_insert_id = ok.last_insert_id;
        }
        if !ok.state.is_empty() {
            self.apply_state(ok.state.to_vec());
        }
        let client_tracks = self.client_caps & CLIENT_SESSION_TRACK != 0;
        if !client_tracks && self.caps & CLIENT_SESSION_TRACK != 0 {
            let mut plain = Vec::with_capacity(pkt.len());
            if track::untracked_ok(&pkt[HEADER_LEN..], self.caps, &mut plain).is_ok() {
                let seq = pkt[3];
                pkt.clear();
                write_packet(pkt, seq, &plain);
            }
        }
    }

    /// Applies a tracked state block to the connection's state.
    fn apply_state(&mut self, state: Vec<u8>) {
        log::trace!("state block {:?}", String::from_utf8_lossy(&state));
        let mut explained = false;
        let mut said_changed = false;
        for change in track::state_changes(&state).flatten() {
            match change {
                StateChange::SystemVariable { name, value } => {
                    self.state.set_var(name, value);
                    explained = true;
                }
                StateChange::Schema(s) => {
                    self.state.schema = Some(s.to_vec());
                    explained = true;
                }
                StateChange::StateChanged(true) => said_changed = true,
                StateChange::TransactionCharacteristics(c) => {
                    self.outcome.trx_characteristics = !c.is_empty();
                    explained = true;
                }
                _ => {}
            }
        }
        self.outcome.changed |= explained;
        self.outcome.untracked_change |= said_changed && !explained;
    }

    fn finish_client(&mut self, done: &mut Vec<Done>) {
        self.job = None;
        done.push(Done::Client {
            session: self.session,
            outcome: std::mem::take(&mut self.outcome),
        });
    }

    /// An internal job's response is whole: read it.
    fn finish_internal(&mut self, done: &mut Vec<Done>, out: &mut Vec<Action>) {
        let packets = std::mem::take(&mut self.packets);
        let job = self.job.take();
        let failed = packets
            .last()
            .and_then(|p| p.get(HEADER_LEN))
            .is_some_and(|b| *b == ERR_HEADER);
        // A replay's reports restate what the replay set (the service records the connection as
        // in the session's state: a variable set back to DEFAULT is "not set" there).
        let replay = matches!(job, Some(Job::Replay));
        let d = match job {
            Some(Job::Setup) => {
                self.tracking = !failed;
                Done::Ready {
                    tracking: self.tracking,
                }
            }
            Some(Job::Replay) if failed => {
                Done::Replayed(Err(packets.last().cloned().unwrap_or_default()))
            }
            Some(Job::Replay) => Done::Replayed(Ok(())),
            Some(Job::ReadVars(names)) => Done::Vars(self.take_user_vars(&names, &packets)),
            Some(Job::ReadSysVars(names)) if !failed => {
                self.take_sysvars(&names, &packets);
                Done::SysVars(true)
            }
            Some(Job::ReadSysVars(_)) => Done::SysVars(false),
            Some(Job::Prepare(key)) => {
                let first = packets.first().map(|p| &p[HEADER_LEN..]).unwrap_or(&[]);
                match prepare_ok(first) {
                    Some((id, params)) => {
                        self.remember_stmt(key, id, out);
                        Done::Prepared(Ok((id, params)))
                    }
                    None => Done::Prepared(Err(packets.last().cloned().unwrap_or_default())),
                }
            }
            Some(Job::Ping) => Done::Pinged(!failed),
            Some(Job::Reset) if !failed => return self.was_reset(),
            Some(Job::Reset) => Done::Ready { tracking: false },
            Some(Job::Client { .. } | Job::Quiet) | None => return,
        };

        // Tracked state of other internal OKs (a read-back's SELECT, a prepare's USE) counts.
        for p in packets.iter().filter(|_| !replay) {
            if p.get(HEADER_LEN) == Some(&OK_HEADER) {
                if let Ok(ok) = track::parse_ok_tracked(&p[HEADER_LEN..], self.caps) {
                    if !ok.state.is_empty() {
                        self.apply_state(ok.state.to_vec());
                    }
                }
            }
        }
        self.outcome = Outcome::default();
        if matches!(d, Done::Ready { .. }) {
            self.baseline = Arc::new(self.state.clone());
        }
        done.push(d);
    }

    /// The read-back of user variables `names`: the connection has these values now.
    fn take_user_vars(
        &mut self,
        names: &[Vec<u8>],
        packets: &[Vec<u8>],
    ) -> Vec<(Vec<u8>, UserVar)> {
        let vars = read_user_vars(names, packets);
        for (name, var) in &vars {
            self.state.user_vars.insert(name.clone(), var.clone());
        }
        vars
    }

    /// The read-back of system variables `names`: the connection has these values now.
    fn take_sysvars(&mut self, names: &[Vec<u8>], packets: &[Vec<u8>]) {
        for (name, value) in read_sysvars(names, packets) {
            if let Some(v) = value {
                self.state.set_var(&name, &v);
            }
        }
    }

    /// COM_RESET_CONNECTION worked: the server dropped the session's state (the schema stays)
    /// and its statements, and session tracking with them, which the setup turns on again.
    fn was_reset(&mut self) {
        let schema = self.state.schema.take();
        self.server_session_dropped(schema);
        let mut pkt = Vec::new();
        write_packet(&mut pkt, 0, &[&[COM_QUERY][..], SETUP].concat());
        self.queued.push_front((Job::Setup, pkt));
        self.outcome = Outcome::default();
    }

    pub fn end(&mut self) {
        self.phase = Phase::Ended;
    }
}

/// The fate of a response packet: status packets (and every packet of internal responses) are
/// captured; the rest of a client response goes on. Marks `ending` when the packet ends the
/// response.
fn decide_packet(
    tracker: &mut ResponseTracker,
    internal: bool,
    ending: &mut bool,
    p: &PacketHead<'_>,
) -> Result<Fate, ProtoError> {
    let first = p.head.first().copied();
    let at_start = tracker.at_response_start();
    let r = tracker.on_server_packet(p)?;
    let end = match r {
        ServerPacket::Unsolicited { .. } => return Ok(Fate::Drop),
        ServerPacket::ResponseEnd { .. } => true,
        _ => false,
    };
    *ending |= end;
    let small = p.len <= CAPTURE_MAX && !p.continuation;
    // Status packets: OK/ERR (and prepare-OK) opening a response or result, and the last
    // packet of a response (an OK, EOF or ERR); a row starting with 0x00 is not one.
    let status = end || (at_start && matches!(first, Some(OK_HEADER | ERR_HEADER)));
    Ok(match (internal, small) {
        (true, true) => Fate::Capture,
        (true, false) => Fate::Drop,
        (false, true) if status => Fate::Capture,
        (false, _) => Fate::Forward,
    })
}

/// The column definitions and the values of the one row of a `SELECT` of `n` columns.
fn one_row(packets: &[Vec<u8>], n: usize) -> (&[Vec<u8>], Vec<Option<Vec<u8>>>) {
    // Column count, n definitions, [EOF], one row, terminator.
    let defs = packets.get(1..1 + n).unwrap_or(&[]);
    let row = packets.iter().skip(1 + n).find(|p| {
        let f = p.get(HEADER_LEN).copied();
        f != Some(EOF_HEADER) || p.len() - HEADER_LEN >= 9
    });
    let mut c = Cursor::new(row.map_or(&[][..], |r| &r[HEADER_LEN..]));
    let values = (0..n)
        .map(|_| match c.peek_u8() {
            Ok(0xfb) => c.skip(1).ok().and(None),
            _ => c.lenenc_bytes().ok().map(<[u8]>::to_vec),
        })
        .collect();
    (defs, values)
}

/// The values of a `SELECT @@session.a, @@session.b…` response.
fn read_sysvars(names: &[Vec<u8>], packets: &[Vec<u8>]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let (_, values) = one_row(packets, names.len());
    names.iter().cloned().zip(values).collect()
}

/// The values of the user-variable read-back (`user_var_columns` for each name): the column
/// definitions give the types, a string is taken from its hexadecimal form (exact bytes) with
/// its character set and collation.
fn read_user_vars(names: &[Vec<u8>], packets: &[Vec<u8>]) -> Vec<(Vec<u8>, UserVar)> {
    let (defs, values) = one_row(packets, names.len() * 4);
    let mut values = values.into_iter();
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let mut next = || values.next().flatten();
        let (value, hex, charset, collation) = (next(), next(), next(), next());
        let ty = defs
            .get(i * 4)
            .map_or(VarType::Text, |d| column_type(&d[HEADER_LEN..]));
        let mut var = UserVar {
            value,
            ty,
            charset: None,
        };
        if ty == VarType::Text && var.value.is_some() {
            if let (Some(bytes), Some(cs), Some(coll)) = (
                hex.and_then(|h| crate::protocol::hex::decode(&h)),
                charset,
                collation,
            ) {
                var.value = Some(bytes);
                var.charset = Some((cs, coll));
            }
        }
        out.push((name.clone(), var));
    }
    out
}

/// The columns that read user variable `@name` back: value, HEX(), CHARSET(), COLLATION().
pub fn user_var_columns(quoted: &[u8]) -> Vec<u8> {
    let v = [&b"@"[..], quoted].concat();
    [
        &v[..],
        b", HEX(",
        &v,
        b"), CHARSET(",
        &v,
        b"), COLLATION(",
        &v,
        b")",
    ]
    .concat()
}

/// The value type of a column definition (protocol 4.1).
fn column_type(def: &[u8]) -> VarType {
    let mut c = Cursor::new(def);
    for _ in 0..6 {
        if c.lenenc_bytes().is_err() {
            return VarType::Text;
        }
    }
    // Fixed fields: length 0x0c, charset (2), column length (4), type (1).
    let ty = c.skip(1 + 2 + 4).and_then(|_| c.u8());
    match ty {
        Ok(0x01..=0x03 | 0x08 | 0x09) => VarType::Integer,
        Ok(0x00 | 0xf6) => VarType::Decimal,
        Ok(0x04 | 0x05) => VarType::Double,
        _ => VarType::Text,
    }
}

#[cfg(test)]
mod pipeline_tests {
    use super::*;
    use crate::protocol::resultset::{encode, Column};
    use crate::runtime::Key;

    const CAPS: u32 = CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SESSION_TRACK;

    fn sid(i: u32) -> PooledId {
        PooledId(Key {
            index: i,
            generation: 0,
        })
    }

    /// A connection past its login and setup, idle.
    fn ready() -> PooledBackend {
        let key = PoolKey {
            user: "app".into(),
            caps: CAPS,
            charset: 45,
        };
        let cred = Credentials {
            user: "app".into(),
            password: "app".into(),
            stage1: None,
            db: None,
        };
        let sock = Key {
            index: 1,
            generation: 0,
        };
        let addr = "127.0.0.1:3306".parse().unwrap();
        let mut b = PooledBackend::new(sock, addr, 0, key, cred, Instant::now());
        b.login = None;
        b.caps = CAPS;
        b.client_caps = CAPS;
        b.tracker = ResponseTracker::new(CAPS);
        b.tracking = true;
        b.phase = Phase::Idle;
        b
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut p = Vec::new();
        write_packet(&mut p, 0, &[&[COM_QUERY][..], sql.as_bytes()].concat());
        p
    }

    /// The wire bytes of a one-column, one-row resultset holding `v`.
    fn result(v: &str) -> Vec<u8> {
        let col = Column {
            name: b"c".to_vec(),
            kind: 253,
        };
        let mut wire = Vec::new();
        let rows = [vec![Some(v.as_bytes().to_vec())]];
        for (i, p) in encode(&[col], &rows, SERVER_STATUS_AUTOCOMMIT)
            .iter()
            .enumerate()
        {
            write_packet(&mut wire, (i + 1) as u8, p);
        }
        wire
    }

    #[test]
    fn pipelined_responses_go_to_their_sessions_in_order_whatever_the_chunking() {
        let wires = [result("a"), result("bb"), result("ccc")];
        let all: Vec<u8> = wires.concat();
        for cut in (1..=all.len()).rev() {
            let mut b = ready();
            let mut out = Vec::new();
            b.session = Some(sid(0));
            b.run(Job::Client { prepare: None }, query("SELECT 'a'"), &mut out);
            b.share();
            assert!(b.takes_rider(8, false));
            b.ride(sid(1), CAPS, query("SELECT 'bb'"), &mut out);
            b.ride(sid(2), CAPS, query("SELECT 'ccc'"), &mut out);
            assert_eq!(out.len(), 3, "three sends");
            assert!(!b.is_idle());
            // Bytes each session got, and the order responses ended in.
            let mut got: Vec<Vec<u8>> = vec![Vec::new(); 3];
            let mut ended = Vec::new();
            let mut to = 0usize;
            for chunk in all.chunks(cut) {
                let (mut acts, mut done) = (Vec::new(), Vec::new());
                b.on_bytes(chunk, &mut acts, &mut done).unwrap();
                for a in acts {
                    match a {
                        Action::Responder(Some(s)) => to = s.0.index as usize,
                        Action::Forward { from, to: end } => {
                            got[to].extend_from_slice(&chunk[from..end])
                        }
                        Action::SendPeer(v) => got[to].extend_from_slice(&v),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                for d in done {
                    match d {
                        Done::Client { session, outcome } => {
                            assert_eq!(outcome.error, None);
                            ended.push(session.unwrap().0.index);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert_eq!(ended, [0, 1, 2], "cut {cut}");
            for (i, w) in wires.iter().enumerate() {
                assert_eq!(&got[i], w, "cut {cut}: session {i}");
            }
            assert!(b.is_idle(), "cut {cut}");
            assert!(
                !b.takes_rider(8, false),
                "an idle connection is no pipeline"
            );
        }
    }

    #[test]
    fn a_rider_whose_client_left_has_its_response_dropped_and_depth_is_bounded() {
        let mut b = ready();
        let mut out = Vec::new();
        b.session = Some(sid(0));
        b.run(Job::Client { prepare: None }, query("SELECT 'a'"), &mut out);
        b.share();
        b.ride(sid(1), CAPS, query("SELECT 'bb'"), &mut out);
        assert!(!b.takes_rider(1, false), "depth 1 is full");
        assert!(b.takes_rider(8, false));
        assert!(!b.takes_rider(8, true) || b.streak < 32);
        b.drop_rider(sid(1));
        assert!(!b.carries(sid(1)));
        let (mut acts, mut done) = (Vec::new(), Vec::new());
        let wire = [result("a"), result("bb")].concat();
        b.on_bytes(&wire, &mut acts, &mut done).unwrap();
        assert!(acts.contains(&Action::Responder(None)));
        let sessions: Vec<_> = done
            .iter()
            .map(|d| match d {
                Done::Client { session, .. } => *session,
                _ => panic!(),
            })
            .collect();
        assert_eq!(sessions, [Some(sid(0)), None]);
        assert!(b.is_idle());
    }

    #[test]
    fn riders_are_handed_back_when_the_connection_fails() {
        let mut b = ready();
        let mut out = Vec::new();
        b.session = Some(sid(0));
        b.run(Job::Client { prepare: None }, query("SELECT 1"), &mut out);
        b.share();
        b.ride(sid(1), CAPS, query("SELECT 2"), &mut out);
        b.ride(sid(2), CAPS, query("SELECT 3"), &mut out);
        b.drop_rider(sid(2));
        assert_eq!(b.take_riders(), [sid(1)]);
        assert!(!b.has_riders());
    }
}
