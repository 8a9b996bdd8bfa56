//! The client connection of a pass-through session, as an I/O-free state machine: it relays the
//! backend's greeting (patched), the client's handshake response and authentication answers, then
//! splits the client's command stream into packets, has each classified by the backend side
//! (a [`CommandSink`]: the response tracker lives with the backend connection) and says which
//! bytes to forward. Bytes in, [`Action`]s out; the proxy service does the I/O.
//!
//! Phases: `AwaitGreeting` (the backend's greeting has not come) → `AwaitResponse` (greeting
//! relayed) → `Auth` (handshake response relayed; client packets are held unless the server asked
//! for authentication data, so commands a driver pipelines behind its handshake response wait for
//! the end of authentication) → `Command` → `Ended`. An oversized command switches to
//! `Discarding`: the rest of that packet is read and dropped, then the client gets ERR 1153 with
//! the sequence id it expects, so a client that writes a whole packet before reading sees the
//! error rather than a broken pipe.

use std::net::SocketAddr;
use std::time::Instant;

use super::action::{Action, End};
use super::BackendId;
use crate::error::Error;
use crate::protocol::compress::{self, Algorithm, Inflater};
use crate::protocol::constants::*;
use crate::protocol::framing::{Fed, PacketHead, PacketStream};
use crate::protocol::handshake;
use crate::protocol::scanner::ClientPacket;
use crate::protocol::ProtoError;
use crate::runtime::{BufRef, SockId};

/// Capability bits cleared in the relayed greeting and handshake response: TLS (not offered
/// yet) and MySQL's optional resultset metadata.
pub const CLEAR_CAPS: u32 = CLIENT_SSL | CLIENT_OPTIONAL_RESULTSET_METADATA;
/// MariaDB extended capability bits cleared: progress reports, COM_MULTI, metadata caching.
pub const CLEAR_MARIADB_EXT: u32 =
    MARIADB_CLIENT_PROGRESS | MARIADB_CLIENT_COM_MULTI | MARIADB_CLIENT_CACHE_METADATA;
/// Largest packet accepted during the handshake and authentication (attributes, RSA keys), and
/// most client bytes held while authentication runs.
pub const AUTH_PACKET_MAX: usize = 1 << 20;

/// Where the client's command packets go: the side that tracks responses classifies each one.
pub trait CommandSink {
    /// Classifies one physical client packet of the command phase (and registers commands).
    fn client_packet(&mut self, p: &PacketHead<'_>) -> Result<ClientPacket, ProtoError>;
    /// How many more commands may be sent before the client must wait for answers.
    fn room(&self) -> usize;
    /// True when the next client packet is data the server asked for, not a new command.
    fn awaits_client_data(&self) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitGreeting,
    AwaitResponse,
    /// `server_asked`: the server asked for authentication data, which the next client packet is.
    Auth {
        server_asked: bool,
    },
    Command,
    /// An oversized packet is being read and dropped.
    Discarding,
    Ended,
}

/// Packet and command counts since the last [`ClientConn::take_counts`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub commands: u64,
}

/// Command-phase bookkeeping, apart from the stream so both can be borrowed at once.
#[derive(Debug)]
struct CmdState {
    max_packet: u64,
    /// Logical length so far of the client packet in flight (continuations add up).
    logical_len: u64,
    /// Sequence id of the last packet the client sent.
    last_seq: u8,
    /// A packet crossed `max_packet_size`: the rest of it is being dropped.
    oversized: bool,
    counts: Counts,
}

/// One client connection.
pub struct ClientConn {
    pub sock: SockId,
    pub peer: Option<SocketAddr>,
    /// The session's backend connection, once it has one.
    pub backend: Option<BackendId>,
    pub accepted_at: Instant,
    /// Last time a command started or a response ended (the idle timeout counts from here).
    pub last_active: Instant,
    /// Client input held back (a stall), fed again when the backend has room; held buffers.
    pub stalled: Vec<BufRef>,
    /// The session ended; the entry stays until the socket is released.
    closed: bool,
    phase: Phase,
    stream: PacketStream,
    inflater: Option<Box<Inflater>>,
    /// Handshake reassembly, then client bytes held while authentication runs.
    held: Vec<u8>,
    cmd: CmdState,
    server_caps: u32,
    /// Compressed sequence id of the last compressed packet the client sent.
    compressed_seq: u8,
    /// A client the pooled listener greeted itself and handed over: the server's greeting is
    /// not sent to it (its handshake response is held already).
    adopted: bool,
}

impl ClientConn {
    pub fn new(sock: SockId, peer: Option<SocketAddr>, max_packet: u64, now: Instant) -> Self {
        ClientConn {
            sock,
            peer,
            backend: None,
            accepted_at: now,
            last_active: now,
            stalled: Vec::new(),
            closed: false,
            phase: Phase::AwaitGreeting,
            stream: PacketStream::new(),
            inflater: None,
            held: Vec::new(),
            cmd: CmdState {
                max_packet,
                logical_len: 0,
                last_seq: 0,
                oversized: false,
                counts: Counts::default(),
            },
            server_caps: 0,
            compressed_seq: 0,
            adopted: false,
        }
    }

    /// A client a pooled listener greeted and cannot serve itself (its account's plugin is one
    /// the proxy cannot log in with): `response` is its handshake response (whole packet),
    /// rewritten to name mysql_native_password with an empty answer, so that the server asks
    /// the client for its own plugin's answer, which is then relayed as in any pass-through
    /// session.
    pub fn adopted(
        sock: SockId,
        peer: Option<SocketAddr>,
        max_packet: u64,
        now: Instant,
        response: Vec<u8>,
    ) -> Self {
        let mut c = ClientConn::new(sock, peer, max_packet, now);
        c.held = response;
        c.adopted = true;
        c
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once the client has sent its handshake response.
    pub fn responded(&self) -> bool {
        !matches!(self.phase, Phase::AwaitGreeting | Phase::AwaitResponse)
    }

    /// Bytes held while authentication runs (counted against the memory limit).
    pub fn held_bytes(&self) -> usize {
        self.held.capacity()
    }

    /// Counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.cmd.counts)
    }

    /// Frees the inflate state between commands (it is rebuilt for the next compressed packet).
    pub fn release_idle_memory(&mut self) {
        if let Some(i) = self.inflater.as_mut() {
            i.release_idle_memory();
        }
    }

    /// The sequence id a proxy-made reply to the client's current command must carry.
    pub fn next_seq(&self) -> u8 {
        match self.phase {
            Phase::AwaitGreeting => 0,
            _ => self.cmd.last_seq.wrapping_add(1),
        }
    }

    /// `err` as the client must receive it now: an ERR packet with the right sequence id,
    /// inside a compressed packet when compression is on.
    pub fn err_bytes(&self, err: &Error) -> Vec<u8> {
        let mut pkt = Vec::with_capacity(err.message.len() + 16);
        err.write_err_packet(self.next_seq(), &mut pkt);
        if self.inflater.is_none() {
            return pkt;
        }
        let mut out = Vec::with_capacity(pkt.len() + 7);
        compress::write_uncompressed_frame(&mut out, self.compressed_seq.wrapping_add(1), &pkt);
        out
    }

    /// The backend's greeting (one whole packet) arrived: relay it, patched.
    pub fn on_greeting(&mut self, packet: &[u8], out: &mut Vec<Action>) {
        if self.phase != Phase::AwaitGreeting {
            return;
        }
        let mut pkt = packet.to_vec();
        match handshake::patch_server_greeting(
            &mut pkt[HEADER_LEN..],
            CLEAR_CAPS,
            CLEAR_MARIADB_EXT,
        ) {
            Ok(summary) => self.server_caps = summary.capabilities,
            Err(e) => {
                let err =
                    Error::backend_failed(crate::error::Retry::Safe, format!("bad greeting: {e}"));
                out.push(Action::End(End::Error(err)));
                return;
            }
        }
        self.phase = Phase::AwaitResponse;
        if !self.adopted {
            out.push(Action::SendClient(pkt));
        }
        // A client that spoke before the greeting (it should not) is handled now.
        self.relay_response(out);
    }

    /// Bytes from the client. `sink` classifies command-phase packets.
    pub fn on_bytes(&mut self, data: &[u8], sink: &mut dyn CommandSink, out: &mut Vec<Action>) {
        match self.phase {
            Phase::AwaitGreeting | Phase::AwaitResponse | Phase::Auth { .. } => {
                self.hold(data, out);
                if self.phase == Phase::AwaitResponse {
                    self.relay_response(out);
                } else {
                    self.relay_auth_answer(out);
                }
            }
            Phase::Command => self.on_command_bytes(data, sink, out),
            Phase::Discarding => self.discard(data, out),
            Phase::Ended => {}
        }
    }

    /// The server asked for authentication data: the next client packet goes to it.
    pub fn on_auth_more_wanted(&mut self, out: &mut Vec<Action>) {
        if let Phase::Auth { .. } = self.phase {
            self.phase = Phase::Auth { server_asked: true };
            self.relay_auth_answer(out);
        }
    }

    /// The authentication ended with the server's OK (`ok`) or ERR, already relayed. On OK the
    /// client bytes held meanwhile (pipelined commands) are fed to the command phase.
    pub fn on_auth_done(
        &mut self,
        ok: bool,
        compress: Option<Algorithm>,
        sink: &mut dyn CommandSink,
        out: &mut Vec<Action>,
    ) {
        if !ok {
            self.phase = Phase::Ended;
            out.push(Action::End(End::Flush));
            return;
        }
        self.phase = Phase::Command;
        self.inflater = compress.map(|alg| Box::new(Inflater::new(alg)));
        self.feed_held(sink, out);
    }

    /// True while command-phase bytes wait in the held buffer (pipelined behind the handshake
    /// response, more than the backend had room for).
    pub fn has_held(&self) -> bool {
        self.phase == Phase::Command && !self.held.is_empty()
    }

    /// Feeds the held bytes to the command phase. They are owned here, not part of a received
    /// buffer, so what is forwarded goes as copies; what does not fit stays held.
    pub fn feed_held(&mut self, sink: &mut dyn CommandSink, out: &mut Vec<Action>) {
        if self.phase != Phase::Command || self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let start = out.len();
        self.on_command_bytes(&held, sink, out);
        for a in &mut out[start..] {
            match *a {
                Action::Forward { from, to } => *a = Action::SendBackend(held[from..to].to_vec()),
                Action::Stall(at) => {
                    self.held = held[at..].to_vec();
                    *a = Action::PauseRead;
                }
                _ => {}
            }
        }
    }

    /// Appends handshake-phase bytes to the held buffer, within its bound.
    fn hold(&mut self, data: &[u8], out: &mut Vec<Action>) {
        if self.held.len() + data.len() > AUTH_PACKET_MAX {
            if self.responded() {
                // Commands pipelined behind the handshake: wait for the end of authentication.
                out.push(Action::PauseRead);
            } else {
                return self.end_with(out, Error::bad_handshake("Bad handshake: packet too large"));
            }
        }
        self.held.extend_from_slice(data);
    }

    /// The client's handshake response, once complete: patched and relayed.
    fn relay_response(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::AwaitResponse {
            return;
        }
        let Some(mut pkt) = self.take_held_packet(out) else {
            return;
        };
        self.cmd.last_seq = pkt[3];
        let payload = &mut pkt[HEADER_LEN..];
        if handshake::is_ssl_request(payload) {
            let msg = "ringproxy does not offer TLS yet: connect without SSL \
                       (e.g. --ssl=0 / ssl-mode=DISABLED)";
            return self.end_with(out, Error::bad_handshake(msg));
        }
        let (caps, mariadb_ext) =
            match handshake::patch_handshake_response(payload, CLEAR_CAPS, CLEAR_MARIADB_EXT) {
                Ok(v) => v,
                Err(e) => {
                    return self.end_with(out, Error::bad_handshake(format!("Bad handshake: {e}")))
                }
            };
        let negotiated = caps & self.server_caps;
        let compress = Algorithm::negotiated(negotiated);
        self.phase = Phase::Auth {
            server_asked: false,
        };
        out.push(Action::SendBackend(pkt));
        out.push(Action::LoginRelayed {
            caps: negotiated,
            mariadb_ext,
            compress,
        });
    }

    /// Relays one held authentication answer if the server asked for one.
    fn relay_auth_answer(&mut self, out: &mut Vec<Action>) {
        if self.phase != (Phase::Auth { server_asked: true }) {
            return;
        }
        if let Some(pkt) = self.take_held_packet(out) {
            self.cmd.last_seq = pkt[3];
            self.phase = Phase::Auth {
                server_asked: false,
            };
            out.push(Action::AuthAnswer(pkt));
        }
    }

    /// One whole packet off the front of the held bytes; refuses a packet whose header announces
    /// more than any handshake packet may hold as soon as the header is there.
    fn take_held_packet(&mut self, out: &mut Vec<Action>) -> Option<Vec<u8>> {
        let head = self.held.first_chunk::<HEADER_LEN>()?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        if len > AUTH_PACKET_MAX {
            self.cmd.last_seq = head[3];
            let msg = format!(
                "Bad handshake: a {len}-byte packet during authentication (ringproxy allows {AUTH_PACKET_MAX})"
            );
            self.end_with(out, Error::bad_handshake(msg));
            return None;
        }
        if self.held.len() < HEADER_LEN + len {
            return None;
        }
        let rest = self.held.split_off(HEADER_LEN + len);
        Some(std::mem::replace(&mut self.held, rest))
    }

    fn end_with(&mut self, out: &mut Vec<Action>, err: Error) {
        self.phase = Phase::Ended;
        out.push(Action::End(End::Error(err)));
    }

    /// Command-phase bytes: every packet is checked and classified; the bytes are forwarded,
    /// up to where the backend's room for commands ends (the rest stalls).
    fn on_command_bytes(&mut self, data: &[u8], sink: &mut dyn CommandSink, out: &mut Vec<Action>) {
        if self.inflater.is_some() {
            return self.on_compressed_bytes(data, sink, out);
        }
        let cmd = &mut self.cmd;
        let fed = self
            .stream
            .feed_until(data, |p| cmd.on_packet(&p, sink, true));
        if self.cmd.oversized {
            return self.discarded(fed, out);
        }
        match fed {
            Ok(Fed::All) => out.push(Action::Forward {
                from: 0,
                to: data.len(),
            }),
            Ok(Fed::StoppedAt(at)) => {
                if at > 0 {
                    out.push(Action::Forward { from: 0, to: at });
                }
                out.push(Action::Stall(at));
            }
            Err(e) => self.end_with(out, Error::client_protocol(e.to_string())),
        }
    }

    /// Compressed command-phase bytes: forwarded whole (compressed packets are relayed as they
    /// are); inflated only for the packet checks. A stall happens between compressed packets.
    fn on_compressed_bytes(
        &mut self,
        data: &[u8],
        sink: &mut dyn CommandSink,
        out: &mut Vec<Action>,
    ) {
        let inflater = self.inflater.as_mut().expect("compressed");
        if sink.room() == 0 && inflater.at_frame_boundary() {
            out.push(Action::Stall(0));
            return;
        }
        let (stream, cmd) = (&mut self.stream, &mut self.cmd);
        let r = inflater.feed(data, &mut |plain: &[u8]| {
            stream.feed(plain, |p| cmd.on_packet(&p, sink, false).map(|_| ()))
        });
        self.compressed_seq = inflater.last_seq().unwrap_or(0);
        match r {
            // Inflating the rest of an oversized packet only to drop it is not worth it.
            Ok(()) if self.cmd.oversized => {
                let err = Error::packet_too_large(self.cmd.max_packet);
                self.end_with(out, err)
            }
            Ok(()) => out.push(Action::Forward {
                from: 0,
                to: data.len(),
            }),
            Err(compress::InflateError::Sink(e)) => {
                self.end_with(out, Error::client_protocol(e.to_string()))
            }
            Err(e) => self.end_with(
                out,
                Error::client_protocol(format!("compressed packet: {e}")),
            ),
        }
    }

    /// More bytes while an oversized packet is dropped.
    fn discard(&mut self, data: &[u8], out: &mut Vec<Action>) {
        let cmd = &mut self.cmd;
        let mut unused = Discard;
        let fed = self
            .stream
            .feed_until(data, |p| cmd.on_packet(&p, &mut unused, false));
        self.discarded(fed, out);
    }

    /// The client crossed `max_packet_size`: it gets ERR 1153 at once, as from the server,
    /// and the connection stays open, reading and dropping the rest of that packet, so a client
    /// that writes a whole packet before it reads gets to read the error instead of a broken
    /// pipe. It ends when the packet has (a new packet began, or the bytes end with it).
    fn discarded(&mut self, fed: Result<Fed, ProtoError>, out: &mut Vec<Action>) {
        if self.phase != Phase::Discarding {
            self.phase = Phase::Discarding;
            let err = Error::packet_too_large(self.cmd.max_packet);
            out.push(Action::SendClient(self.err_bytes(&err)));
        }
        let ended = matches!(fed, Ok(Fed::StoppedAt(_))) || self.stream.at_logical_boundary();
        if ended {
            self.phase = Phase::Ended;
            out.push(Action::End(End::Flush));
        }
    }

    /// True once the authentication has ended well (the handshake timeout no longer applies).
    pub fn authenticated(&self) -> bool {
        matches!(self.phase, Phase::Command | Phase::Discarding)
    }

    /// The session ended: what the connection held goes now; the entry stays until the socket
    /// is released (it still counts against the limits while its output drains).
    pub fn end(&mut self) {
        self.phase = Phase::Ended;
        self.closed = true;
        self.backend = None;
        self.held = Vec::new();
        self.inflater = None;
        self.stalled = Vec::new();
    }

    /// True once the session ended (its socket may still be draining).
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The sink while an oversized packet is dropped: nothing is classified.
struct Discard;

impl CommandSink for Discard {
    fn client_packet(&mut self, _p: &PacketHead<'_>) -> Result<ClientPacket, ProtoError> {
        Ok(ClientPacket::Continuation)
    }
    fn room(&self) -> usize {
        usize::MAX
    }
    fn awaits_client_data(&self) -> bool {
        false
    }
}

impl CmdState {
    /// Checks and classifies one physical client packet; `Ok(false)` means "not this packet
    /// yet": a new command the backend has no room for (with `may_stall`), or the first packet
    /// after an oversized one. A packet that crosses `max_packet_size` sets `oversized`; it and
    /// its continuations are then only counted, not classified.
    fn on_packet(
        &mut self,
        p: &PacketHead<'_>,
        sink: &mut dyn CommandSink,
        may_stall: bool,
    ) -> Result<bool, ProtoError> {
        if self.oversized {
            if !p.continuation {
                return Ok(false);
            }
            self.last_seq = p.seq;
            return Ok(true);
        }
        let new_command = !p.continuation && !sink.awaits_client_data();
        if new_command && may_stall && sink.room() == 0 {
            return Ok(false);
        }
        self.last_seq = p.seq;
        if !p.continuation {
            self.logical_len = 0;
        }
        self.logical_len += u64::from(p.len);
        if self.logical_len > self.max_packet {
            self.oversized = true;
            return Ok(true);
        }
        self.counts.packets += 1;
        if let ClientPacket::Command { .. } = sink.client_packet(p)? {
            self.counts.commands += 1;
        }
        Ok(true)
    }
}
