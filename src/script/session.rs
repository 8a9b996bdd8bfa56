//! One scripted session as an I/O-free machine: a client connection, at most one backend
//! connection, whole packets (payloads copied out of the received bytes), and at most one hook
//! call in flight. Bytes and decisions in, [`Out`]s out; [`super::part`] does the I/O and runs
//! the calls.
//!
//! Phases: `Opening` (connect_server's call is out) → `Connecting` → `Greeting` (the backend's
//! greeting, then read_handshake) → `ClientAuth` (the client's handshake response, then
//! read_auth) → `AuthRelay` (the server's answers relayed, then read_auth_result) → `Command` →
//! `Ended`. A script that answers connect_server itself has no backend: the session goes from
//! `Opening` to `ClientAuth` and its read_auth must answer the login.
//!
//! In `Command`, each client command goes to read_query (when the script defines it); what it
//! decides becomes a queue of queries for the backend, run one after another: the client's own
//! packet (no decision), the script's injections (PROXY_SEND_QUERY), or none (PROXY_SEND_RESULT:
//! the script's answer goes to the client). An injected query's result is held whole and given to
//! read_query_result when the script defines it, then forwarded, replaced or hidden; other
//! results stream to the client packet by packet. Client commands that arrive meanwhile wait.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Decision, Hook, HookName, Hooks, Injected, Injection, Ret, Update};
use crate::error::Error;
use crate::protocol::constants::*;
use crate::protocol::framing::{split_logical, write_packet, PacketHead, HEAD_CAP};
use crate::protocol::handshake::{parse_handshake_response41, patch_server_greeting};
use crate::protocol::packets::write_err_packet;
use crate::protocol::scanner::{ClientPacket, ResponseTracker, ServerPacket};
use crate::protocol::ProtoError;
use crate::session::client::{CLEAR_CAPS, CLEAR_MARIADB_EXT};

/// Capabilities cleared in the greeting a scripted client sees, besides [`CLEAR_CAPS`]: no
/// compression (scripts read packets), no CLIENT_DEPRECATE_EOF (generated resultsets end with
/// EOF, as MySQL Proxy's do).
const SCRIPT_CLEAR_CAPS: u32 =
    CLEAR_CAPS | CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION_ALGORITHM | CLIENT_DEPRECATE_EOF;
/// MariaDB extended capabilities cleared besides [`CLEAR_MARIADB_EXT`]: extended type info, whose
/// extra column-definition field generated resultsets do not have.
const SCRIPT_CLEAR_MARIADB_EXT: u32 = CLEAR_MARIADB_EXT | MARIADB_CLIENT_EXTENDED_TYPE_INFO;
/// Input buffer capacity a session keeps between packets.
const KEEP_BUFFER: usize = 4096;
/// Largest result held whole for read_query_result.
pub const RESULT_MAX: usize = 64 << 20;
/// Error code of the proxy's own refusals in scripted sessions (ER_UNKNOWN_ERROR).
const ER_SCRIPT: u16 = 1105;

/// What the session asks for.
#[derive(Debug)]
pub enum Out {
    /// Framed bytes for the client.
    Client(Vec<u8>),
    /// Framed bytes for the backend.
    Backend(Vec<u8>),
    /// A hook call to run, with what the connection learned since the last one.
    Call(Hook, Vec<Update>),
    /// Connect to backend number `ndx` (None: the next one, round-robin).
    Connect(Option<usize>),
    /// Close the session; `flush`: after what is queued for the client was sent.
    End { flush: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Opening,
    Connecting,
    Greeting,
    ClientAuth,
    AuthRelay,
    Command,
    Ended,
}

/// The query whose response the backend is sending.
#[derive(Debug)]
struct Current {
    inj: Injection,
    /// The result is held whole for read_query_result.
    held: bool,
    sent_at: Instant,
    first_at: Option<Instant>,
    packets: Vec<Vec<u8>>,
    bytes: usize,
}

/// One scripted session.
pub struct Session {
    phase: Phase,
    hooks: Hooks,
    /// The hook whose decision is awaited.
    waiting: Option<HookName>,
    /// The packet the awaited hook is about (forwarded when there is no decision).
    held: Option<Vec<u8>>,
    cin: InBuf,
    bin: InBuf,
    /// Queries to run, each with whether it is the client's own packet.
    queue: VecDeque<(Injection, bool)>,
    current: Option<Current>,
    tracker: ResponseTracker,
    backend: Option<(usize, SocketAddr)>,
    /// Sequence id of the client's last packet.
    client_seq: u8,
    /// Capabilities the client and the backend agreed on.
    caps: u32,
    max_packet: usize,
    /// What `proxy.connection` learned since the last call.
    updates: Vec<Update>,
    /// Client bytes of the current step (see [`Session::client`]).
    cout: Vec<u8>,
    /// The backend went away while a hook call was out (reported after its decision).
    backend_closed: Option<Error>,
}

/// `payload` framed (sequence id `seq`) for the backend.
fn send_backend(out: &mut Vec<Out>, seq: u8, payload: &[u8]) {
    let mut bytes = Vec::with_capacity(payload.len() + 4);
    write_packet(&mut bytes, seq, payload);
    out.push(Out::Backend(bytes));
}

/// Payloads framed as packets, sequence ids from `first_seq` (16 MiB and more split).
pub fn frame_all(first_seq: u8, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packets.iter().map(|p| p.len() + 4).sum());
    let mut seq = first_seq;
    for p in packets {
        seq = write_packet(&mut out, seq, p);
    }
    out
}

fn err_bytes(seq: u8, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write_err_packet(&mut out, seq, ER_SCRIPT, b"HY000", message.as_bytes());
    out
}

/// Received bytes not consumed yet: whole packets are taken from the front (a read position, so
/// taking one costs no move of the rest).
#[derive(Debug, Default)]
struct InBuf {
    data: Vec<u8>,
    pos: usize,
}

/// The payloads of framed packets (continuations joined; an incomplete tail is ignored).
pub fn payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut b = InBuf::default();
    b.push(bytes);
    std::iter::from_fn(|| b.take(usize::MAX).ok().flatten().map(|l| l.payload)).collect()
}

impl InBuf {
    fn push(&mut self, bytes: &[u8]) {
        if self.pos == self.data.len() {
            self.data.clear();
            self.pos = 0;
        } else if self.pos > self.data.len() / 2 {
            self.data.drain(..self.pos);
            self.pos = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// Once everything was consumed, a buffer grown past [`KEEP_BUFFER`] is freed: an idle
    /// session keeps at most that much.
    fn trim(&mut self) {
        if self.pos == self.data.len() && self.data.capacity() > KEEP_BUFFER {
            self.data = Vec::new();
            self.pos = 0;
        }
    }

    /// The next whole logical packet (its 0xFF_FFFF-byte pieces joined: the sequence id of the
    /// first piece and of the last, the payload), `Ok(None)` until all of it is here, an error
    /// as soon as its headers announce more than `max_len` bytes.
    fn take(&mut self, max_len: usize) -> Result<Option<Logical>, ProtoError> {
        let Some(p) = split_logical(&self.data[self.pos..], max_len)? else {
            return Ok(None);
        };
        self.pos += p.consumed;
        Ok(Some(Logical {
            seq: p.first_seq,
            last_seq: p.last_seq,
            payload: p.payload.into_owned(),
        }))
    }
}

/// A whole logical packet.
#[derive(Debug, PartialEq, Eq)]
struct Logical {
    /// Sequence id of its first physical packet, and of its last.
    seq: u8,
    last_seq: u8,
    payload: Vec<u8>,
}

/// The physical packets of a logical payload (as [`write_packet`] frames them): pieces of
/// 0xFF_FFFF bytes and the shorter one that ends it (empty when the length is a multiple).
fn pieces(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let n = payload.len() / MAX_PAYLOAD_LEN + 1;
    (0..n).map(move |i| {
        &payload[(i * MAX_PAYLOAD_LEN).min(payload.len())
            ..((i + 1) * MAX_PAYLOAD_LEN).min(payload.len())]
    })
}

/// The heads the response tracker sees of a logical packet's physical packets.
fn heads(payload: &[u8], seq: u8) -> impl Iterator<Item = PacketHead<'_>> {
    pieces(payload).enumerate().map(move |(i, p)| PacketHead {
        len: p.len() as u32,
        seq: seq.wrapping_add(i as u8),
        head: &p[..p.len().min(HEAD_CAP)],
        continuation: i > 0,
        at: Some(0),
        start: 0,
    })
}

/// A client packet to the tracker: what its first physical packet is.
fn track_client(
    t: &mut ResponseTracker,
    payload: &[u8],
    seq: u8,
) -> Result<ClientPacket, ProtoError> {
    let mut first = None;
    for h in heads(payload, seq) {
        let kind = t.on_client_packet(&h)?;
        first.get_or_insert(kind);
    }
    Ok(first.expect("a logical packet has a physical one"))
}

/// A server packet to the tracker: what its last physical packet is (where a response ends).
fn track_server(
    t: &mut ResponseTracker,
    payload: &[u8],
    seq: u8,
) -> Result<ServerPacket, ProtoError> {
    let mut last = None;
    for h in heads(payload, seq) {
        last = Some(t.on_server_packet(&h)?);
    }
    Ok(last.expect("a logical packet has a physical one"))
}

impl Session {
    pub fn new(max_packet: usize) -> Session {
        Session {
            phase: Phase::Opening,
            hooks: Hooks::default(),
            waiting: Some(HookName::ConnectServer),
            held: None,
            cin: InBuf::default(),
            bin: InBuf::default(),
            queue: VecDeque::new(),
            current: None,
            tracker: ResponseTracker::new(CLIENT_PROTOCOL_41),
            backend: None,
            client_seq: 0,
            caps: CLIENT_PROTOCOL_41,
            max_packet,
            updates: Vec::new(),
            cout: Vec::new(),
            backend_closed: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True while nothing is in flight: no call, no query (a drain may end it).
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Command
            && self.waiting.is_none()
            && self.current.is_none()
            && self.queue.is_empty()
    }

    /// The backend to connect to was chosen and connected.
    pub fn backend_connected(&mut self, ndx: usize, addr: SocketAddr) {
        self.backend = Some((ndx, addr));
        self.phase = Phase::Greeting;
    }

    /// Queues framed bytes for the client: the bytes of one step leave as one [`Out::Client`].
    fn client(&mut self, bytes: Vec<u8>) {
        if self.cout.is_empty() {
            self.cout = bytes;
        } else {
            self.cout.extend_from_slice(&bytes);
        }
    }

    /// Queues `payload` framed (sequence id `seq`) for the client.
    fn queue_client(&mut self, seq: u8, payload: &[u8]) {
        write_packet(&mut self.cout, seq, payload);
    }

    /// Hands the client bytes queued by this step over.
    fn flush(&mut self, out: &mut Vec<Out>) {
        if !self.cout.is_empty() {
            out.push(Out::Client(std::mem::take(&mut self.cout)));
        }
    }

    fn end(&mut self, out: &mut Vec<Out>, flush: bool) {
        self.flush(out);
        self.phase = Phase::Ended;
        out.push(Out::End { flush });
    }

    /// Tells the client (when a packet may go to it now) and ends.
    fn fail(&mut self, out: &mut Vec<Out>, seq: u8, message: &str) {
        self.client(err_bytes(seq, message));
        self.end(out, true);
    }

    /// The backend could not be reached or went away. While a hook call is out, this waits for
    /// its decision (the server may have closed after its last word, e.g. an ERR to a login,
    /// which the decision then passes on).
    pub fn backend_lost(&mut self, err: &Error, out: &mut Vec<Out>) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.waiting.is_some() {
            self.backend_closed = Some(err.clone());
            return;
        }
        let seq = match self.phase {
            Phase::Connecting | Phase::Greeting => 0,
            _ => self.client_seq.wrapping_add(1),
        };
        err.write_err_packet(seq, &mut self.cout);
        self.end(out, true);
    }

    fn call(&mut self, name: HookName, hook: Hook, held: Option<Vec<u8>>, out: &mut Vec<Out>) {
        self.waiting = Some(name);
        self.held = held;
        out.push(Out::Call(hook, std::mem::take(&mut self.updates)));
    }

    /// A decision for the awaited call.
    pub fn decided(&mut self, d: Decision, now: Instant, out: &mut Vec<Out>) {
        let Some(name) = self.waiting.take() else {
            return;
        };
        if self.phase == Phase::Ended {
            return;
        }
        let held = self.held.take();
        match name {
            HookName::ConnectServer => self.connect_decided(d, out),
            HookName::ReadHandshake => self.handshake_decided(d, held, out),
            HookName::ReadAuth => self.auth_decided(d, held, out),
            HookName::ReadAuthResult => self.auth_result_decided(d, held, out),
            HookName::ReadQuery => self.query_decided(d, held, now, out),
            HookName::ReadQueryResult => self.result_decided(d, held, now, out),
            HookName::DisconnectClient => {}
        }
        self.pump(now, out);
        if let Some(err) = self.backend_closed.take() {
            self.backend_lost(&err, out);
        }
        self.flush(out);
    }

    fn connect_decided(&mut self, d: Decision, out: &mut Vec<Out>) {
        self.hooks = d.hooks;
        match (d.ret, d.response) {
            (Ret::SendResult, Some(packets)) => {
                self.client(frame_all(0, &packets));
                self.phase = Phase::ClientAuth;
            }
            _ => {
                self.phase = Phase::Connecting;
                out.push(Out::Connect(d.backend_ndx));
            }
        }
    }

    fn handshake_decided(&mut self, d: Decision, held: Option<Vec<u8>>, out: &mut Vec<Out>) {
        if let (Ret::SendResult, Some(packets)) = (d.ret, d.response) {
            self.client(frame_all(0, &packets));
            return self.end(out, true);
        }
        self.queue_client(0, &held.unwrap_or_default());
        self.phase = Phase::ClientAuth;
    }

    fn auth_decided(&mut self, d: Decision, held: Option<Vec<u8>>, out: &mut Vec<Out>) {
        let seq = self.client_seq.wrapping_add(1);
        if let (Ret::SendResult, Some(packets)) = (d.ret, d.response) {
            let ok = packets.first().and_then(|p| p.first()) == Some(&OK_HEADER);
            self.client(frame_all(seq, &packets));
            if !ok {
                return self.end(out, true);
            }
            self.phase = Phase::Command;
            return;
        }
        if self.backend.is_none() {
            return self.fail(
                out,
                seq,
                "ringproxy: the script answered no login and there is no backend",
            );
        }
        // PROXY_SEND_QUERY from read_auth: the script's packet replaces the client's handshake
        // response (e.g. other credentials, made with mysql.password).
        let packet = match (d.ret, d.queries.into_iter().next()) {
            (Ret::SendQuery, Some(q)) => q.packet,
            _ => held.unwrap_or_default(),
        };
        send_backend(out, self.client_seq, &packet);
        self.phase = Phase::AuthRelay;
    }

    fn auth_result_decided(&mut self, d: Decision, held: Option<Vec<u8>>, out: &mut Vec<Out>) {
        let (seq, packet) = (self.client_seq.wrapping_add(1), held.unwrap_or_default());
        let packets = match (d.ret, d.response) {
            (Ret::SendResult, Some(p)) => p,
            _ => vec![packet],
        };
        let ok = packets.first().and_then(|p| p.first()) == Some(&OK_HEADER);
        self.client(frame_all(seq, &packets));
        if ok {
            self.phase = Phase::Command;
        } else {
            self.end(out, true);
        }
    }

    fn query_decided(
        &mut self,
        d: Decision,
        held: Option<Vec<u8>>,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let packet = held.unwrap_or_default();
        let quit = packet.first() == Some(&COM_QUIT);
        if quit && self.backend.is_none() {
            return self.end(out, false);
        }
        match (d.ret, d.response) {
            (Ret::SendResult, Some(packets)) => {
                self.client(frame_all(1, &packets));
                if quit {
                    self.end(out, true);
                }
                return;
            }
            (Ret::SendQuery, _) if !d.queries.is_empty() => {
                self.queue.extend(d.queries.into_iter().map(|q| (q, false)))
            }
            _ => {
                let own = Injection {
                    id: 0,
                    packet,
                    resultset_is_needed: false,
                };
                self.queue.push_back((own, true));
            }
        }
        self.start_next(now, out);
    }

    fn result_decided(
        &mut self,
        d: Decision,
        held: Option<Vec<u8>>,
        now: Instant,
        out: &mut Vec<Out>,
    ) {
        let Some(cur) = self.current.take() else {
            return;
        };
        drop(held);
        match (d.ret, d.response) {
            (Ret::IgnoreResult, _) => {}
            (Ret::SendResult, Some(packets)) => self.client(frame_all(1, &packets)),
            _ => self.client(frame_all(1, &cur.packets)),
        }
        self.queue.extend(d.queries.into_iter().map(|q| (q, false)));
        self.start_next(now, out);
    }

    /// Sends the next query of the queue to the backend.
    fn start_next(&mut self, now: Instant, out: &mut Vec<Out>) {
        let Some((inj, original)) = self.queue.pop_front() else {
            return;
        };
        if self.backend.is_none() {
            self.queue.clear();
            return self.client(err_bytes(
                1,
                "ringproxy: no backend (the script answered connect_server itself)",
            ));
        }
        let quit = inj.packet.first() == Some(&COM_QUIT);
        send_backend(out, 0, &inj.packet);
        if quit {
            self.queue.clear();
            return self.end(out, false);
        }
        let expect = track_client(&mut self.tracker, &inj.packet, 0);
        let expects_nothing = matches!(
            expect,
            Ok(ClientPacket::Command {
                expect: crate::protocol::scanner::Expect::Nothing,
                ..
            })
        );
        let held = !original && self.hooks.has(HookName::ReadQueryResult);
        self.current = Some(Current {
            inj,

            held,
            sent_at: now,
            first_at: None,
            packets: Vec::new(),
            bytes: 0,
        });
        if expects_nothing {
            self.current = None;
            self.start_next(now, out);
        }
    }

    /// The client's bytes.
    pub fn client_bytes(&mut self, data: &[u8], now: Instant, out: &mut Vec<Out>) {
        self.cin.push(data);
        self.pump(now, out);
        self.flush(out);
    }

    /// The backend's bytes.
    pub fn backend_bytes(&mut self, data: &[u8], now: Instant, out: &mut Vec<Out>) {
        self.bin.push(data);
        self.pump(now, out);
        self.flush(out);
    }

    /// Consumes whole packets while nothing is awaited.
    fn pump(&mut self, now: Instant, out: &mut Vec<Out>) {
        loop {
            if self.phase == Phase::Ended || self.waiting.is_some() {
                break;
            }
            let progressed = self.pump_backend(now, out) || self.pump_client(now, out);
            if !progressed {
                break;
            }
        }
        self.cin.trim();
        self.bin.trim();
    }

    /// A packet over `max_packet_size`: the client is told, the session ends.
    fn too_large(&mut self, out: &mut Vec<Out>) -> bool {
        let seq = self.client_seq.wrapping_add(1);
        self.fail(
            out,
            seq,
            "ringproxy: packet too large for a scripted session",
        );
        true
    }

    fn pump_backend(&mut self, now: Instant, out: &mut Vec<Out>) -> bool {
        let Some(Logical { seq, payload, .. }) = (match self.bin.take(self.max_packet) {
            Ok(packet) => packet,
            Err(_) => return self.too_large(out),
        }) else {
            return false;
        };
        match self.phase {
            Phase::Greeting => self.on_greeting(payload, out),
            Phase::AuthRelay => self.on_auth_packet(seq, payload, out),
            Phase::Command => self.on_response_packet(seq, payload, now, out),
            _ => {
                let seq = self.client_seq.wrapping_add(1);
                self.fail(out, seq, "ringproxy: the backend sent a packet out of turn");
            }
        }
        true
    }

    fn pump_client(&mut self, now: Instant, out: &mut Vec<Out>) -> bool {
        let may_read = match self.phase {
            Phase::ClientAuth | Phase::AuthRelay => true,
            Phase::Command => {
                self.tracker.awaiting_client() || (self.current.is_none() && self.queue.is_empty())
            }
            _ => false,
        };
        if !may_read {
            return false;
        }
        let taken = match self.cin.take(self.max_packet) {
            Ok(packet) => packet,
            Err(_) => return self.too_large(out),
        };
        let Some(Logical {
            seq,
            last_seq,
            payload,
        }) = taken
        else {
            return false;
        };
        self.client_seq = last_seq;
        match self.phase {
            Phase::ClientAuth => self.on_login(payload, out),
            Phase::AuthRelay => {
                send_backend(out, seq, &payload);
            }
            _ if self.tracker.awaiting_client() => self.on_client_data(seq, payload, out),
            _ => self.on_command(payload, now, out),
        }
        true
    }

    fn on_greeting(&mut self, mut payload: Vec<u8>, out: &mut Vec<Out>) {
        if payload.first() == Some(&ERR_HEADER) {
            self.queue_client(0, &payload);
            return self.end(out, true);
        }
        if let Err(e) =
            patch_server_greeting(&mut payload, SCRIPT_CLEAR_CAPS, SCRIPT_CLEAR_MARIADB_EXT)
        {
            return self.fail(
                out,
                0,
                &format!("ringproxy: bad greeting from the backend: {e}"),
            );
        }
        let (ndx, addr) = self.backend.expect("greeting phase has a backend");
        self.updates.push(Update::Server {
            greeting: payload.clone(),
            ndx,
            addr,
        });
        if self.hooks.has(HookName::ReadHandshake) {
            return self.call(HookName::ReadHandshake, Hook::Handshake, Some(payload), out);
        }
        self.queue_client(0, &payload);
        self.phase = Phase::ClientAuth;
    }

    fn on_login(&mut self, payload: Vec<u8>, out: &mut Vec<Out>) {
        let Ok(resp) = parse_handshake_response41(&payload) else {
            let seq = self.client_seq.wrapping_add(1);
            return self.fail(out, seq, "ringproxy: bad handshake response");
        };
        self.caps = resp.capabilities & !SCRIPT_CLEAR_CAPS;
        self.tracker = ResponseTracker::new(self.caps);
        self.updates.push(Update::Client {
            response: payload.clone(),
        });
        if self.hooks.has(HookName::ReadAuth) {
            return self.call(HookName::ReadAuth, Hook::Auth, Some(payload), out);
        }
        let d = Decision::none(0);
        self.auth_decided(d, Some(payload), out);
    }

    fn on_auth_packet(&mut self, seq: u8, payload: Vec<u8>, out: &mut Vec<Out>) {
        self.client_seq = seq.wrapping_sub(1);
        let end = matches!(payload.first(), Some(&OK_HEADER) | Some(&ERR_HEADER));
        if end && self.hooks.has(HookName::ReadAuthResult) {
            let hook = Hook::AuthResult(payload.clone());
            return self.call(HookName::ReadAuthResult, hook, Some(payload), out);
        }
        if end {
            return self.auth_result_decided(Decision::none(0), Some(payload), out);
        }
        self.queue_client(seq, &payload);
    }

    fn on_command(&mut self, payload: Vec<u8>, now: Instant, out: &mut Vec<Out>) {
        if payload.is_empty() {
            return self.fail(out, 1, "ringproxy: empty command packet");
        }
        if self.hooks.has(HookName::ReadQuery) {
            let hook = Hook::Query(payload.clone());
            return self.call(HookName::ReadQuery, hook, Some(payload), out);
        }
        self.query_decided(Decision::none(0), Some(payload), now, out);
    }

    /// Data the server asked the client for (LOAD DATA LOCAL contents, a COM_CHANGE_USER's
    /// authentication answers): to the server as it is.
    fn on_client_data(&mut self, seq: u8, payload: Vec<u8>, out: &mut Vec<Out>) {
        if let Err(e) = track_client(&mut self.tracker, &payload, seq) {
            return self.fail(out, seq.wrapping_add(1), &format!("ringproxy: {e}"));
        }
        send_backend(out, seq, &payload);
    }

    fn on_response_packet(&mut self, seq: u8, payload: Vec<u8>, now: Instant, out: &mut Vec<Out>) {
        let kind = track_server(&mut self.tracker, &payload, seq);
        let Some(cur) = self.current.as_mut() else {
            let seq = self.client_seq.wrapping_add(1);
            return self.fail(
                out,
                seq,
                "ringproxy: the backend sent a packet with no query pending",
            );
        };
        cur.first_at.get_or_insert(now);
        cur.bytes += payload.len() + 4;
        if cur.held && matches!(kind, Ok(ServerPacket::AwaitClient)) {
            // LOAD DATA LOCAL: the client must answer the server, so what was held goes to it
            // now and the rest of this result streams (read_query_result is not called for it).
            cur.held = false;
            self.cout
                .extend(frame_all(1, &std::mem::take(&mut cur.packets)));
        }
        if cur.held {
            if cur.bytes > RESULT_MAX {
                return self.fail(out, 1, "ringproxy: result too large for read_query_result");
            }
            cur.packets.push(payload);
        } else {
            self.queue_client(seq, &payload);
        }
        match kind {
            Ok(ServerPacket::Part) => {}
            Ok(ServerPacket::AwaitClient) => {}
            Ok(ServerPacket::ResponseEnd { .. }) => self.response_ended(now, out),
            Ok(ServerPacket::Unsolicited { .. }) | Err(_) => {
                let seq = self.client_seq.wrapping_add(1);
                self.fail(out, seq, "ringproxy: the backend broke the protocol");
            }
        }
    }

    fn response_ended(&mut self, now: Instant, out: &mut Vec<Out>) {
        let held = self.current.as_ref().is_some_and(|c| c.held);
        if !held {
            self.current = None;
            return self.start_next(now, out);
        }
        let cur = self.current.as_mut().expect("checked above");
        let inj = Injected {
            id: cur.inj.id,
            query: cur.inj.packet.clone(),
            resultset_is_needed: cur.inj.resultset_is_needed,
            query_time_us: micros(cur.first_at.unwrap_or(now) - cur.sent_at),
            response_time_us: micros(now - cur.sent_at),
            packets: std::mem::take(&mut cur.packets),
            caps: self.caps,
        };
        cur.packets = inj.packets.clone();
        self.call(
            HookName::ReadQueryResult,
            Hook::Result(Box::new(inj)),
            None,
            out,
        );
    }
}

/// A duration in microseconds (saturating).
pub fn micros(d: std::time::Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::{encode_handshake_response41, HandshakeResponse41};

    fn hooks(list: &[HookName]) -> Hooks {
        Hooks(list.iter().fold(0, |b, h| b | 1 << *h as u8))
    }

    fn decision(ret: Ret, response: Option<Vec<Vec<u8>>>, hooks: Hooks) -> Decision {
        Decision {
            ret,
            response,
            hooks,
            ..Decision::none(0)
        }
    }

    fn client_bytes(out: &[Out]) -> Vec<u8> {
        out.iter()
            .filter_map(|o| match o {
                Out::Client(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn logical(seq: u8, last_seq: u8, payload: &[u8]) -> Option<Logical> {
        Some(Logical {
            seq,
            last_seq,
            payload: payload.to_vec(),
        })
    }

    #[test]
    fn packets_are_taken_whole_across_chunks() {
        let mut b = InBuf::default();
        b.push(&[3, 0, 0, 7, b'a']);
        assert_eq!(b.take(usize::MAX).unwrap(), None);
        b.push(&[b'b', b'c', 1, 0]);
        assert_eq!(b.take(usize::MAX).unwrap(), logical(7, 7, b"abc"));
        assert_eq!(b.take(usize::MAX).unwrap(), None);
        b.push(&[0, 9, b'z']);
        assert_eq!(b.take(usize::MAX).unwrap(), logical(9, 9, b"z"));
        assert_eq!(b.pos, b.data.len(), "everything consumed");
    }

    #[test]
    fn packets_of_16_mib_and_more_are_joined_and_split_again() {
        let payload: Vec<u8> = (0..MAX_PAYLOAD_LEN + 10).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        assert_eq!(write_packet(&mut wire, 3, &payload), 5);
        let mut b = InBuf::default();
        b.push(&wire[..MAX_PAYLOAD_LEN]);
        assert_eq!(b.take(usize::MAX).unwrap(), None);
        b.push(&wire[MAX_PAYLOAD_LEN..]);
        assert_eq!(b.take(usize::MAX).unwrap(), logical(3, 4, &payload));
        assert_eq!(
            pieces(&payload).map(<[u8]>::len).collect::<Vec<_>>(),
            [MAX_PAYLOAD_LEN, 10]
        );
        // Exactly 0xFF_FFFF bytes: an empty packet ends it.
        let exact = vec![1u8; MAX_PAYLOAD_LEN];
        assert_eq!(
            pieces(&exact).map(<[u8]>::len).collect::<Vec<_>>(),
            [MAX_PAYLOAD_LEN, 0]
        );
        assert_eq!(frame_all(1, &[exact]).len(), MAX_PAYLOAD_LEN + 8);
    }

    #[test]
    fn a_script_can_be_the_whole_server() {
        let now = Instant::now();
        let mut s = Session::new(1 << 20);
        let mut out = Vec::new();
        // connect_server answered with a greeting: no backend.
        let all = hooks(&[
            HookName::ConnectServer,
            HookName::ReadAuth,
            HookName::ReadQuery,
        ]);
        let greeting = vec![10, b'5', 0];
        s.decided(
            decision(Ret::SendResult, Some(vec![greeting]), all),
            now,
            &mut out,
        );
        assert_eq!(client_bytes(&out), [3, 0, 0, 0, 10, b'5', 0]);
        assert!(!out.iter().any(|o| matches!(o, Out::Connect(_))));
        // The client's login goes to read_auth, with what proxy.connection learns from it.
        let resp = HandshakeResponse41 {
            capabilities: CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION,
            max_packet_size: 1 << 24,
            charset: 33,
            mariadb_ext_capabilities: 0,
            username: b"u",
            auth_response: b"",
            database: None,
            auth_plugin_name: None,
            connect_attrs: None,
        };
        let mut payload = Vec::new();
        encode_handshake_response41(&resp, &mut payload);
        let mut bytes = Vec::new();
        write_packet(&mut bytes, 1, &payload);
        out.clear();
        s.client_bytes(&bytes, now, &mut out);
        assert!(
            matches!(&out[..], [Out::Call(Hook::Auth, u)] if matches!(u[..], [Update::Client { .. }]))
        );
        // Its OK ends the login (sequence id 2), and a query goes to read_query.
        out.clear();
        let ok = vec![0, 0, 0, 2, 0, 0, 0];
        s.decided(
            decision(Ret::SendResult, Some(vec![ok]), all),
            now,
            &mut out,
        );
        assert_eq!(client_bytes(&out), [7, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(s.phase(), Phase::Command);
        out.clear();
        s.client_bytes(&[2, 0, 0, 0, COM_QUERY, b'x'], now, &mut out);
        assert!(matches!(&out[..], [Out::Call(Hook::Query(p), _)] if p == &[COM_QUERY, b'x']));
        // No decision and no backend: the client is told, the session goes on.
        out.clear();
        s.decided(Decision::none(0), now, &mut out);
        let err = client_bytes(&out);
        assert_eq!((err[3], err[4]), (1, ERR_HEADER));
        assert!(s.is_idle());
    }
}
