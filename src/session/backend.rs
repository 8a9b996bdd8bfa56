//! A backend connection, as an I/O-free state machine. It owns what belongs to the connection
//! rather than to a client: the server's greeting, the response tracker and the server-side
//! packet stream, the compression state of server → proxy. Bytes in, [`Action`]s out.
//!
//! Phases: `Connecting` → `Greeting` (waiting for the server's greeting) → `Ready` (greeting
//! kept; the connection waits for a client, in the worker's prewarmed set or for the client that
//! asked for it) → `RelayAuth` (a client's authentication is relayed) → `Idle` / `Busy` (commands
//! and responses) → `Ended`. A connection that must go before its handshake ended goes through
//! `Retiring`: it finishes the handshake with a login the server refuses (or, if the server
//! accepts it, a COM_QUIT), because a handshake left unfinished counts against the proxy's host
//! in the server's `max_connect_errors` and a host over it is refused for everybody (MariaDB
//! counts handshake errors there, not authentication errors; a successful login resets it).

use std::net::SocketAddr;
use std::time::Instant;

use super::action::{Action, End};
use super::client::{CommandSink, AUTH_PACKET_MAX};
use super::ClientId;
use crate::error::{Error, Retry};
use crate::protocol::compress::{self, Algorithm, Inflater};
use crate::protocol::constants::*;
use crate::protocol::framing::{write_packet, PacketHead, PacketStream};
use crate::protocol::handshake::{self, HandshakeResponse41};
use crate::protocol::scanner::{ClientPacket, ResponseTracker, ServerPacket};
use crate::protocol::ProtoError;
use crate::runtime::SockId;

/// The user a retiring connection logs in as: a name no account should have. If one does and
/// the login succeeds, the connection quits cleanly instead, which is just as good.
const RETIRE_USER: &[u8] = b"ringproxy-retired-handshake";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Greeting,
    Ready,
    /// `server_waits`: the server asked the client for authentication data.
    RelayAuth {
        server_waits: bool,
    },
    Idle,
    Busy,
    /// Finishing the handshake so the server counts no error, then closing.
    Retiring,
    Ended,
}

/// One backend connection.
pub struct BackendConn {
    pub sock: SockId,
    pub addr: SocketAddr,
    /// The session using this connection.
    pub client: Option<ClientId>,
    /// When the connection was opened (its handshake deadline counts from here).
    pub opened_at: Instant,
    phase: Phase,
    /// The greeting, kept whole until a client takes it.
    greeting: Vec<u8>,
    /// Handshake and authentication reassembly.
    reasm: Vec<u8>,
    stream: PacketStream,
    tracker: ResponseTracker,
    inflater: Option<Box<Inflater>>,
    compress: Option<Algorithm>,
    /// Something of the response in progress went to the client already.
    response_started: bool,
    /// Sequence id of the last server packet of the handshake.
    last_seq: u8,
    packets: u64,
    responses: u64,
}

impl BackendConn {
    pub fn new(sock: SockId, addr: SocketAddr, now: Instant) -> BackendConn {
        BackendConn {
            sock,
            addr,
            client: None,
            opened_at: now,
            phase: Phase::Connecting,
            greeting: Vec::new(),
            reasm: Vec::new(),
            stream: PacketStream::new(),
            tracker: ResponseTracker::new(0),
            inflater: None,
            compress: None,
            response_started: false,
            last_seq: 0,
            packets: 0,
            responses: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The greeting packet, while the connection is `Ready`.
    pub fn greeting(&self) -> &[u8] {
        &self.greeting
    }

    /// True when no command is in flight and nothing is half-relayed either way.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle && self.tracker.is_idle() && self.stream.at_boundary()
    }

    /// True when nothing of the response in progress reached the client: a reply made by the
    /// proxy (an ERR) would be the first thing the client reads for its command.
    pub fn response_untouched(&self) -> bool {
        !self.response_started && self.stream.at_boundary()
    }

    /// The compression the authentication negotiated.
    pub fn compression(&self) -> Option<Algorithm> {
        self.compress
    }

    /// Commands whose responses have not ended.
    pub fn pending(&self) -> usize {
        self.tracker.pending()
    }

    /// Server packets and ended responses since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.packets),
            std::mem::take(&mut self.responses),
        )
    }

    /// Bytes held for the handshake (counted against the memory limit).
    pub fn held_bytes(&self) -> usize {
        self.reasm.capacity() + self.greeting.capacity()
    }

    pub fn on_connected(&mut self) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Greeting;
        }
    }

    /// A client takes the greeting of this `Ready` connection.
    pub fn attach(&mut self, client: ClientId) {
        self.client = Some(client);
    }

    /// The client left before sending its handshake response: the connection is `Ready` again.
    pub fn detach(&mut self) {
        self.client = None;
    }

    /// The client's handshake response was sent: relay the authentication now.
    pub fn on_login_relayed(&mut self, caps: u32, mariadb_ext: u32, compress: Option<Algorithm>) {
        self.phase = Phase::RelayAuth {
            server_waits: false,
        };
        self.tracker = ResponseTracker::new(caps);
        self.tracker.set_mariadb_capabilities(mariadb_ext);
        self.compress = compress;
        self.greeting = Vec::new();
    }

    /// Bytes from the server.
    pub fn on_bytes(&mut self, data: &[u8], out: &mut Vec<Action>) {
        match self.phase {
            Phase::Greeting | Phase::RelayAuth { .. } | Phase::Retiring => {
                if self.reasm.len() + data.len() > AUTH_PACKET_MAX {
                    let why = "oversized handshake packet from the backend";
                    return self.fail(out, Retry::Safe, why.into());
                }
                self.reasm.extend_from_slice(data);
                self.handshake_packets(out);
            }
            Phase::Idle | Phase::Busy => self.on_response_bytes(data, out),
            Phase::Ready => self.fail(out, Retry::Safe, "data before any command".into()),
            Phase::Connecting | Phase::Ended => {}
        }
    }

    /// Handles every whole handshake packet reassembled so far.
    fn handshake_packets(&mut self, out: &mut Vec<Action>) {
        while let Some(pkt) = take_packet(&mut self.reasm) {
            self.last_seq = pkt[3];
            match self.phase {
                Phase::Greeting => self.on_greeting(pkt, out),
                Phase::RelayAuth { .. } => self.on_auth_packet(pkt, out),
                Phase::Retiring => self.on_retire_answer(&pkt, out),
                _ => return self.fail(out, Retry::Unsafe, "data after authentication".into()),
            }
            if matches!(self.phase, Phase::Ended | Phase::Idle) {
                break;
            }
        }
        if self.phase == Phase::Idle && !self.reasm.is_empty() {
            // The server speaks only when spoken to.
            self.fail(
                out,
                Retry::Unsafe,
                "data after authentication without a command".into(),
            );
        }
        if let Some(len) = announced_len(&self.reasm) {
            if len > AUTH_PACKET_MAX {
                let why = format!("backend announced a {len}-byte handshake packet");
                self.fail(out, Retry::Safe, why);
            }
        }
    }

    fn on_greeting(&mut self, pkt: Vec<u8>, out: &mut Vec<Action>) {
        if pkt.get(HEADER_LEN) == Some(&ERR_HEADER) {
            // The server refused the connection (too many connections, host blocked): the
            // client gets the server's own ERR.
            self.phase = Phase::Ended;
            out.push(Action::SendClient(pkt));
            out.push(Action::End(End::Flush));
            return;
        }
        if let Err(e) = handshake::parse_handshake_v10(&pkt[HEADER_LEN..]) {
            return self.fail(out, Retry::Safe, format!("bad greeting: {e}"));
        }
        self.greeting = pkt;
        self.phase = Phase::Ready;
        out.push(Action::Greeting);
    }

    fn on_auth_packet(&mut self, pkt: Vec<u8>, out: &mut Vec<Action>) {
        let first = pkt.get(HEADER_LEN).copied();
        let second = pkt.get(HEADER_LEN + 1).copied();
        out.push(Action::SendClient(pkt));
        match first {
            Some(OK_HEADER) => {
                self.phase = Phase::Idle;
                self.inflater = self.compress.map(|a| Box::new(Inflater::new(a)));
                out.push(Action::AuthDone(true));
            }
            Some(ERR_HEADER) => {
                self.phase = Phase::Ended;
                out.push(Action::AuthDone(false));
            }
            // caching_sha2's "fast authentication succeeded": an OK follows, nothing is asked.
            Some(AUTH_MORE_DATA_HEADER) if second == Some(3) => {}
            _ => {
                self.phase = Phase::RelayAuth { server_waits: true };
                out.push(Action::AuthMoreWanted);
            }
        }
    }

    /// The client's answer to an authentication request went to the server.
    pub fn on_auth_answer_sent(&mut self) {
        if let Phase::RelayAuth { .. } = self.phase {
            self.phase = Phase::RelayAuth {
                server_waits: false,
            };
        }
    }

    /// Response bytes: the tracker follows them; all of them go to the client.
    fn on_response_bytes(&mut self, data: &[u8], out: &mut Vec<Action>) {
        let ended_before = self.responses;
        let mut c = Counters {
            packets: &mut self.packets,
            responses: &mut self.responses,
            response_started: &mut self.response_started,
        };
        let (stream, tracker) = (&mut self.stream, &mut self.tracker);
        let r = match self.inflater.as_mut() {
            None => feed_responses(stream, tracker, data, &mut c),
            Some(inflater) => inflater
                .feed(data, &mut |plain: &[u8]| {
                    feed_responses(stream, tracker, plain, &mut c)
                })
                .map_err(|e| match e {
                    compress::InflateError::Sink(e) => e,
                    other => ProtoError::malformed("compressed packet", other.to_string()),
                }),
        };
        if let Err(e) = r {
            return self.fail(out, Retry::Unsafe, format!("protocol error: {e}"));
        }
        out.push(Action::Forward {
            from: 0,
            to: data.len(),
        });
        self.phase = if self.tracker.is_idle() {
            Phase::Idle
        } else {
            Phase::Busy
        };
        if self.responses > ended_before {
            out.push(Action::ResponseEnd);
        }
    }

    /// Starts retiring a connection whose handshake has not ended: finish it with a login the
    /// server refuses. False when there is nothing to finish (close it right away).
    pub fn retire(&mut self, out: &mut Vec<Action>) -> bool {
        let answer = match self.phase {
            Phase::Ready => retire_login(&self.greeting),
            // The server waits for the client's authentication data: give it something wrong.
            Phase::RelayAuth { server_waits: true } => {
                let mut pkt = Vec::new();
                write_packet(&mut pkt, self.last_seq.wrapping_add(1), &[0u8; 32]);
                Some(pkt)
            }
            // The server is checking what it has: its answer ends the handshake by itself.
            Phase::RelayAuth {
                server_waits: false,
            } => Some(Vec::new()),
            _ => None,
        };
        let Some(pkt) = answer else {
            return false;
        };
        self.client = None;
        self.phase = Phase::Retiring;
        if !pkt.is_empty() {
            out.push(Action::SendBackend(pkt));
        }
        true
    }

    /// The server's answer to a retiring connection: anything final ends it (after a COM_QUIT
    /// when the login went through); another auth request gets a wrong answer.
    fn on_retire_answer(&mut self, pkt: &[u8], out: &mut Vec<Action>) {
        match pkt.get(HEADER_LEN).copied() {
            Some(OK_HEADER) => {
                let mut quit = Vec::new();
                write_packet(&mut quit, 0, &[COM_QUIT]);
                out.push(Action::SendBackend(quit));
                self.phase = Phase::Ended;
                out.push(Action::End(End::Flush));
            }
            Some(AUTH_SWITCH_HEADER | AUTH_MORE_DATA_HEADER) => {
                let mut wrong = Vec::new();
                write_packet(&mut wrong, pkt[3].wrapping_add(1), &[0u8; 32]);
                out.push(Action::SendBackend(wrong));
            }
            _ => {
                self.phase = Phase::Ended;
                out.push(Action::End(End::Quiet));
            }
        }
    }

    fn fail(&mut self, out: &mut Vec<Action>, retry: Retry, why: String) {
        self.phase = Phase::Ended;
        let detail = format!("backend {}: {why}", self.addr);
        out.push(Action::End(End::Error(Error::backend_failed(
            retry, detail,
        ))));
    }

    /// Frees the inflate state between commands (it is rebuilt for the next compressed packet).
    pub fn release_idle_memory(&mut self) {
        if let Some(i) = self.inflater.as_mut() {
            i.release_idle_memory();
        }
    }

    /// Marks the connection ended (the socket goes with it).
    pub fn end(&mut self) {
        self.phase = Phase::Ended;
    }
}

/// The counters a response feed updates.
struct Counters<'a> {
    packets: &'a mut u64,
    responses: &'a mut u64,
    response_started: &'a mut bool,
}

fn feed_responses(
    stream: &mut PacketStream,
    tracker: &mut ResponseTracker,
    data: &[u8],
    c: &mut Counters<'_>,
) -> Result<(), ProtoError> {
    stream.feed(data, |p: PacketHead<'_>| {
        *c.packets += 1;
        *c.response_started = true;
        if let ServerPacket::ResponseEnd { .. } = tracker.on_server_packet(&p)? {
            *c.responses += 1;
            *c.response_started = false;
        }
        Ok(())
    })
}

impl CommandSink for BackendConn {
    fn client_packet(&mut self, p: &PacketHead<'_>) -> Result<ClientPacket, ProtoError> {
        let r = self.tracker.on_client_packet(p)?;
        if let ClientPacket::Command { .. } = r {
            if self.phase == Phase::Idle && self.tracker.pending() > 0 {
                self.phase = Phase::Busy;
            }
            if self.tracker.pending() == 1 {
                self.response_started = false;
            }
        }
        Ok(r)
    }

    fn room(&self) -> usize {
        self.tracker.room()
    }

    fn awaits_client_data(&self) -> bool {
        self.tracker.awaiting_client()
    }
}

/// The payload length announced by the header at the front of `buf`, once it is complete.
fn announced_len(buf: &[u8]) -> Option<usize> {
    let h = buf.first_chunk::<HEADER_LEN>()?;
    Some(u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize)
}

/// Takes one whole packet (header + payload) off the front of `buf`, if complete.
fn take_packet(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let len = announced_len(buf)?;
    if buf.len() < HEADER_LEN + len {
        return None;
    }
    let rest = buf.split_off(HEADER_LEN + len);
    Some(std::mem::replace(buf, rest))
}

/// A well-formed handshake response for [`RETIRE_USER`] with a wrong password, answering
/// `greeting` (a whole packet).
fn retire_login(greeting: &[u8]) -> Option<Vec<u8>> {
    let g = handshake::parse_handshake_v10(greeting.get(HEADER_LEN..)?).ok()?;
    let want = CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_LONG_PASSWORD
        | CLIENT_TRANSACTIONS;
    let r = HandshakeResponse41 {
        capabilities: want & g.capabilities | CLIENT_PROTOCOL_41,
        max_packet_size: 1 << 24,
        charset: 33,
        mariadb_ext_capabilities: 0,
        username: RETIRE_USER,
        auth_response: &[0x5a; 20],
        database: None,
        auth_plugin_name: g.auth_plugin_name,
        connect_attrs: None,
    };
    let mut payload = Vec::with_capacity(96);
    handshake::encode_handshake_response41(&r, &mut payload);
    let mut pkt = Vec::with_capacity(payload.len() + HEADER_LEN);
    write_packet(&mut pkt, 1, &payload);
    Some(pkt)
}
