//! Sessions: one owner per client connection. This module holds the worker's [`Proxy`] service
//! (the [`crate::runtime::Service`] of a proxy worker) and the pass-through session it runs for
//! each client, MySQL Proxy style: the client gets its own backend connection, the server's
//! greeting and the whole authentication exchange are relayed (so any auth plugin both ends
//! agree on works), then every command is relayed and the response tracker follows where each
//! response ends.
//!
//! The data path forwards received buffers by reference (no copy); only the handshake and auth
//! packets, which the proxy patches or must see whole, are copied. Capability bits the proxy
//! cannot relay yet are cleared in both directions: TLS (until TLS is built), compression, MySQL's
//! optional resultset metadata, and MariaDB's progress reports, COM_MULTI and metadata caching.
//!
//! Failure handling: an unreachable backend gets the client an ERR packet; a backend that
//! vanishes mid-response gets the client an ERR if nothing of that response was forwarded yet,
//! else a closed connection; a client's malformed or oversized packet ends that client only.
//! Backpressure: when one side's unsent output passes `send_high_water`, the proxy stops
//! reading the other side until the output drains below half of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::protocol::constants::*;
use crate::protocol::framing::{PacketHead, PacketStream};
use crate::protocol::handshake;
use crate::protocol::packets::write_err_packet;
use crate::protocol::scanner::{ClientPacket, ResponseTracker, ServerPacket};
use crate::protocol::ProtoError;
use crate::runtime::{BufRef, Io, Service, SockId};

/// Capability bits the proxy clears in the relayed greeting and handshake response.
pub const CLEAR_CAPS: u32 = CLIENT_SSL
    | CLIENT_COMPRESS
    | CLIENT_ZSTD_COMPRESSION_ALGORITHM
    | CLIENT_OPTIONAL_RESULTSET_METADATA;
/// MariaDB extended capability bits the proxy clears.
pub const CLEAR_MARIADB_EXT: u32 =
    MARIADB_CLIENT_PROGRESS | MARIADB_CLIENT_COM_MULTI | MARIADB_CLIENT_CACHE_METADATA;

/// Largest packet accepted during the handshake and authentication (attributes, RSA keys).
const AUTH_PACKET_MAX: usize = 1 << 20;

/// What all workers share: the backends, the limits and the global connection count.
#[derive(Debug)]
pub struct Shared {
    pub backends: Vec<SocketAddr>,
    pub max_connections: usize,
    pub max_packet_size: usize,
    pub send_high_water: usize,
    next_backend: AtomicUsize,
    /// Client connections open across all workers.
    pub active: AtomicUsize,
}

impl Shared {
    pub fn new(config: &crate::config::Config) -> Shared {
        Shared {
            backends: config.backends.clone(),
            max_connections: config.max_connections,
            max_packet_size: config.max_packet_size,
            send_high_water: config.send_high_water,
            next_backend: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn pick_backend(&self) -> SocketAddr {
        let i = self.next_backend.fetch_add(1, Ordering::Relaxed);
        self.backends[i % self.backends.len()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Backend socket being connected.
    Connecting,
    /// Waiting for the server's greeting.
    Greeting,
    /// Greeting relayed; waiting for the client's HandshakeResponse.
    ClientResponse,
    /// Relaying the authentication exchange until the server's OK or ERR.
    Auth,
    /// Relaying commands and responses.
    Command,
}

struct Session {
    client: SockId,
    backend: SockId,
    backend_addr: SocketAddr,
    phase: Phase,
    c_stream: PacketStream,
    s_stream: PacketStream,
    tracker: ResponseTracker,
    /// Whole-packet reassembly during the handshake (emptied and freed afterwards).
    auth_c: Vec<u8>,
    auth_s: Vec<u8>,
    server_caps: u32,
    negotiated: u32,
    /// Logical length so far of the client packet in flight (continuations add up).
    logical_len: u64,
    /// Sequence id of the last packet the client sent.
    last_client_seq: u8,
    /// Server packets seen for the oldest response in progress.
    resp_packets: u32,
    draining: bool,
}

const CLIENT_SIDE: u32 = 0;
const BACKEND_SIDE: u32 = 1;

fn token(idx: u32, side: u32) -> u32 {
    idx << 1 | side
}

/// Why a session ends, for the log and the ERR packet the client may get.
enum End {
    /// Quietly: the client left or the exchange is over.
    Quiet,
    /// Send the client this ERR (sequence id, code, state, message), then close.
    Err(u8, u16, &'static [u8; 5], String),
    /// Close the client after what is queued has been sent.
    Flush,
}

/// The proxy service of one worker: its sessions and their slab.
pub struct Proxy {
    shared: Arc<Shared>,
    sessions: Vec<Option<Session>>,
    free: Vec<u32>,
    live: usize,
    draining: bool,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Proxy {
        Proxy {
            shared,
            sessions: Vec::new(),
            free: Vec::new(),
            live: 0,
            draining: false,
        }
    }

    fn refuse(&mut self, io: &mut Io, client: SockId, code: u16, msg: String) {
        let mut out = Vec::with_capacity(msg.len() + 16);
        write_err_packet(&mut out, 0, code, b"08004", msg.as_bytes());
        io.send_owned(client, out, false);
        io.close_after_flush(client);
        io.stats.refused += 1;
    }

    fn end(&mut self, io: &mut Io, idx: u32, how: End) {
        let Some(s) = self.sessions.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(idx);
        self.live -= 1;
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        io.stats.active = io.stats.active.saturating_sub(1);
        io.close(s.backend);
        match how {
            End::Quiet => io.close(s.client),
            End::Flush => io.close_after_flush(s.client),
            End::Err(seq, code, state, msg) => {
                log::debug!("session {idx}: ending with ERR {code}: {msg}");
                let mut out = Vec::with_capacity(msg.len() + 16);
                write_err_packet(&mut out, seq, code, state, msg.as_bytes());
                io.send_owned(s.client, out, false);
                io.close_after_flush(s.client);
            }
        }
    }

    fn client_data(&mut self, io: &mut Io, idx: u32, data: &[u8], buf: BufRef) {
        let max = self.shared.max_packet_size as u64;
        let high = self.shared.send_high_water;
        let Some(s) = self.sessions[idx as usize].as_mut() else {
            return;
        };
        match s.phase {
            Phase::Connecting | Phase::Greeting | Phase::ClientResponse | Phase::Auth => {
                if s.auth_c.len() + data.len() > AUTH_PACKET_MAX {
                    io.stats.protocol_errors += 1;
                    let seq = s.last_client_seq.wrapping_add(1);
                    return self.end(
                        io,
                        idx,
                        End::Err(
                            seq,
                            ER_HANDSHAKE_ERROR,
                            b"08S01",
                            "Bad handshake: packet too large".into(),
                        ),
                    );
                }
                s.auth_c.extend_from_slice(data);
                let mut result = Ok(());
                if matches!(s.phase, Phase::ClientResponse | Phase::Auth) {
                    result = relay_client_auth(io, s);
                }
                // What is left is at most one incomplete packet: refuse it as soon as its header
                // announces more than any handshake packet may hold, instead of waiting for it.
                if let (Ok(()), Some(len)) = (&result, announced_len(&s.auth_c)) {
                    if len > AUTH_PACKET_MAX {
                        let seq = s.auth_c[3].wrapping_add(1);
                        result = Err(End::Err(
                            seq,
                            ER_HANDSHAKE_ERROR,
                            b"08S01",
                            format!("Bad handshake: a {len}-byte packet during authentication (ringproxy allows {AUTH_PACKET_MAX})"),
                        ));
                    }
                }
                if let Err(end) = result {
                    io.stats.protocol_errors += 1;
                    self.end(io, idx, end);
                }
            }
            Phase::Command => {
                let result = feed_client(io, s, data, max);
                match result {
                    Ok(()) => {
                        let more = !s.c_stream.at_boundary();
                        io.send_buf(s.backend, buf, more);
                        if io.queued(s.backend) > high {
                            io.pause_read(s.client);
                        }
                    }
                    Err(end) => {
                        io.stats.protocol_errors += 1;
                        self.end(io, idx, end);
                    }
                }
            }
        }
    }

    fn backend_data(&mut self, io: &mut Io, idx: u32, data: &[u8], buf: BufRef) {
        let high = self.shared.send_high_water;
        let Some(s) = self.sessions[idx as usize].as_mut() else {
            return;
        };
        match s.phase {
            Phase::Connecting | Phase::Greeting | Phase::ClientResponse | Phase::Auth => {
                if s.auth_s.len() + data.len() > AUTH_PACKET_MAX {
                    io.stats.protocol_errors += 1;
                    let seq = s.last_client_seq.wrapping_add(1);
                    return self.end(
                        io,
                        idx,
                        End::Err(
                            seq,
                            CR_SERVER_LOST,
                            b"08S01",
                            "ringproxy: oversized handshake packet from the backend".into(),
                        ),
                    );
                }
                s.auth_s.extend_from_slice(data);
                let mut result = relay_server_auth(io, s);
                if let (Ok(false), Some(len)) = (&result, announced_len(&s.auth_s)) {
                    if len > AUTH_PACKET_MAX {
                        let seq = s.last_client_seq.wrapping_add(1);
                        result = Err(End::Err(
                            seq,
                            CR_SERVER_LOST,
                            b"08S01",
                            format!(
                                "ringproxy: backend {} announced a {len}-byte handshake packet",
                                s.backend_addr
                            ),
                        ));
                    }
                }
                match result {
                    Ok(false) => {}
                    Ok(true) => self.end(io, idx, End::Flush),
                    Err(end) => {
                        io.stats.protocol_errors += 1;
                        self.end(io, idx, end);
                    }
                }
            }
            Phase::Command => match feed_server(io, s, data) {
                Ok(()) => {
                    let in_progress = !s.tracker.is_idle() && !s.tracker.awaiting_client();
                    let more = in_progress || !s.s_stream.at_boundary();
                    io.send_buf(s.client, buf, more);
                    if io.queued(s.client) > high {
                        io.pause_read(s.backend);
                    }
                    if s.draining && s.tracker.is_idle() && s.s_stream.at_boundary() {
                        self.end(io, idx, End::Flush);
                    }
                }
                Err(e) => {
                    io.stats.protocol_errors += 1;
                    log::warn!(
                        "session {idx}: protocol error from backend {}: {e}; closing the session",
                        s.backend_addr
                    );
                    self.end(io, idx, End::Quiet);
                }
            },
        }
    }
}

/// The payload length announced by the header at the front of `buf`, once it is complete.
fn announced_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= HEADER_LEN).then(|| u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize)
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

/// Relays the client's handshake response and later auth packets, patched where needed.
fn relay_client_auth(io: &mut Io, s: &mut Session) -> Result<(), End> {
    while s.phase == Phase::ClientResponse || s.phase == Phase::Auth {
        let Some(mut pkt) = take_packet(&mut s.auth_c) else {
            break;
        };
        let seq = pkt[3];
        s.last_client_seq = seq;
        if s.phase == Phase::ClientResponse {
            let payload = &mut pkt[HEADER_LEN..];
            if handshake::is_ssl_request(payload) {
                return Err(End::Err(
                    seq.wrapping_add(1),
                    ER_HANDSHAKE_ERROR,
                    b"08S01",
                    "ringproxy does not offer TLS yet: connect without SSL (e.g. --ssl=0 / ssl-mode=DISABLED)".into(),
                ));
            }
            let (caps, _ext) =
                handshake::patch_handshake_response(payload, CLEAR_CAPS, CLEAR_MARIADB_EXT)
                    .map_err(|e| {
                        End::Err(
                            seq.wrapping_add(1),
                            ER_HANDSHAKE_ERROR,
                            b"08S01",
                            format!("Bad handshake: {e}"),
                        )
                    })?;
            s.negotiated = caps & s.server_caps;
            s.phase = Phase::Auth;
        }
        io.stats.packets_c2s += 1;
        io.send_owned(s.backend, pkt, false);
    }
    Ok(())
}

/// Relays the server's greeting and auth packets. Returns Ok(true) when the server refused the
/// client (its ERR was relayed and the session should end after flushing).
fn relay_server_auth(io: &mut Io, s: &mut Session) -> Result<bool, End> {
    loop {
        match s.phase {
            Phase::Greeting => {
                let Some(mut pkt) = take_packet(&mut s.auth_s) else {
                    return Ok(false);
                };
                io.stats.packets_s2c += 1;
                if pkt.get(HEADER_LEN) == Some(&ERR_HEADER) {
                    // The server refused the connection outright (too many connections, host
                    // blocked...): the client gets the server's own ERR.
                    io.send_owned(s.client, pkt, false);
                    return Ok(true);
                }
                let summary = handshake::patch_server_greeting(
                    &mut pkt[HEADER_LEN..],
                    CLEAR_CAPS,
                    CLEAR_MARIADB_EXT,
                )
                .map_err(|e| {
                    End::Err(
                        0,
                        CR_SERVER_LOST,
                        b"08S01",
                        format!(
                            "ringproxy: bad greeting from backend {}: {e}",
                            s.backend_addr
                        ),
                    )
                })?;
                s.server_caps = summary.capabilities;
                s.phase = Phase::ClientResponse;
                io.send_owned(s.client, pkt, false);
                // A client that spoke early (it should not) is handled now.
                relay_client_auth(io, s)?;
            }
            Phase::Auth => {
                let Some(pkt) = take_packet(&mut s.auth_s) else {
                    return Ok(false);
                };
                io.stats.packets_s2c += 1;
                let first = pkt.get(HEADER_LEN).copied();
                io.send_owned(s.client, pkt, false);
                match first {
                    Some(OK_HEADER) => {
                        s.phase = Phase::Command;
                        s.tracker = ResponseTracker::new(s.negotiated);
                        s.auth_c = Vec::new();
                        let leftover = std::mem::take(&mut s.auth_s);
                        if !leftover.is_empty() {
                            return Err(End::Err(
                                s.last_client_seq.wrapping_add(1),
                                CR_SERVER_LOST,
                                b"08S01",
                                "ringproxy: backend sent data after authentication without a command".into(),
                            ));
                        }
                        return Ok(false);
                    }
                    Some(ERR_HEADER) => return Ok(true),
                    _ => {}
                }
            }
            _ => return Ok(false),
        }
    }
}

fn feed_client(io: &mut Io, s: &mut Session, data: &[u8], max: u64) -> Result<(), End> {
    let tracker = &mut s.tracker;
    let logical_len = &mut s.logical_len;
    let last_seq = &mut s.last_client_seq;
    let resp_packets = &mut s.resp_packets;
    let stats = &mut io.stats;
    s.c_stream.feed(data, |p: PacketHead<'_>| {
        *last_seq = p.seq;
        if !p.continuation {
            *logical_len = 0;
        }
        *logical_len += u64::from(p.len);
        if *logical_len > max {
            return Err(End::Err(
                p.seq.wrapping_add(1),
                ER_NET_PACKET_TOO_LARGE,
                b"08S01",
                format!("Got a packet bigger than 'max_packet_size' ({max} bytes) of ringproxy"),
            ));
        }
        stats.packets_c2s += 1;
        match tracker.on_client_packet(&p) {
            Ok(ClientPacket::Command { .. }) => {
                stats.commands += 1;
                if tracker.pending() == 1 {
                    *resp_packets = 0;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(client_proto_error(p.seq, e)),
        }
    })
}

fn client_proto_error(seq: u8, e: ProtoError) -> End {
    End::Err(
        seq.wrapping_add(1),
        ER_NET_READ_ERROR,
        b"08S01",
        format!("ringproxy: malformed packet from client: {e}"),
    )
}

fn feed_server(io: &mut Io, s: &mut Session, data: &[u8]) -> Result<(), ProtoError> {
    let tracker = &mut s.tracker;
    let resp_packets = &mut s.resp_packets;
    let stats = &mut io.stats;
    s.s_stream.feed(data, |p: PacketHead<'_>| {
        stats.packets_s2c += 1;
        *resp_packets += 1;
        if let ServerPacket::ResponseEnd { .. } = tracker.on_server_packet(&p)? {
            stats.responses += 1;
            *resp_packets = 0;
        }
        Ok(())
    })
}

impl Service for Proxy {
    fn on_accept(&mut self, io: &mut Io, client: SockId) {
        if self.draining {
            return self.refuse(
                io,
                client,
                ER_SERVER_SHUTDOWN,
                "ringproxy is shutting down".into(),
            );
        }
        let active = self.shared.active.fetch_add(1, Ordering::Relaxed);
        if active >= self.shared.max_connections {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            let msg = format!(
                "Too many connections (ringproxy max_connections = {})",
                self.shared.max_connections
            );
            return self.refuse(io, client, ER_CON_COUNT_ERROR, msg);
        }
        if io.free_slots() <= crate::config::RESERVED_SLOTS_PER_WORKER {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            log::warn!(
                "worker {}: fixed-file table nearly full ({} slots, the soft RLIMIT_NOFILE); refusing a client",
                io.worker,
                io.fixed_slots()
            );
            let msg = format!(
                "Too many connections (ringproxy worker {} has no free fixed-file slot: its table of {} is capped by RLIMIT_NOFILE)",
                io.worker,
                io.fixed_slots()
            );
            return self.refuse(io, client, ER_CON_COUNT_ERROR, msg);
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.sessions.push(None);
                (self.sessions.len() - 1) as u32
            }
        };
        let addr = self.shared.pick_backend();
        let backend = io.connect(&addr, token(idx, BACKEND_SIDE));
        io.set_owner(client, token(idx, CLIENT_SIDE));
        self.sessions[idx as usize] = Some(Session {
            client,
            backend,
            backend_addr: addr,
            phase: Phase::Connecting,
            c_stream: PacketStream::new(),
            s_stream: PacketStream::new(),
            tracker: ResponseTracker::new(0),
            auth_c: Vec::new(),
            auth_s: Vec::new(),
            server_caps: 0,
            negotiated: 0,
            logical_len: 0,
            last_client_seq: 0,
            resp_packets: 0,
            draining: false,
        });
        self.live += 1;
        io.stats.active += 1;
    }

    fn on_connect(&mut self, io: &mut Io, _sock: SockId, owner: u32, result: std::io::Result<()>) {
        let idx = owner >> 1;
        let Some(s) = self.sessions.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        match result {
            Ok(()) => s.phase = Phase::Greeting,
            Err(e) => {
                io.stats.backend_connect_errors += 1;
                let msg = format!(
                    "ringproxy: can't connect to backend MySQL server on '{}' ({e})",
                    s.backend_addr
                );
                log::warn!("{msg}");
                self.end(
                    io,
                    idx,
                    End::Err(0, ER_PROXY_BACKEND_UNREACHABLE, b"HY000", msg),
                );
            }
        }
    }

    fn on_data(&mut self, io: &mut Io, _sock: SockId, owner: u32, data: &[u8], buf: BufRef) {
        let idx = owner >> 1;
        if self.sessions.get(idx as usize).is_none_or(Option::is_none) {
            return;
        }
        if owner & 1 == CLIENT_SIDE {
            self.client_data(io, idx, data, buf);
        } else {
            self.backend_data(io, idx, data, buf);
        }
    }

    fn on_eof(&mut self, io: &mut Io, _sock: SockId, owner: u32, error: Option<std::io::Error>) {
        let idx = owner >> 1;
        let Some(s) = self.sessions.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        if owner & 1 == CLIENT_SIDE {
            if let Some(e) = error {
                log::debug!("session {idx}: client connection failed: {e}");
            }
            return self.end(io, idx, End::Quiet);
        }
        // The backend went away.
        let why = error.map_or_else(|| "closed the connection".to_string(), |e| e.to_string());
        log::info!("session {idx}: backend {} {why}", s.backend_addr);
        let seq = s.last_client_seq.wrapping_add(1);
        let how = match s.phase {
            Phase::Connecting | Phase::Greeting => End::Err(
                0,
                ER_PROXY_BACKEND_UNREACHABLE,
                b"08S01",
                format!(
                    "ringproxy: backend {} {why} before its greeting",
                    s.backend_addr
                ),
            ),
            Phase::ClientResponse | Phase::Auth => End::Err(
                seq,
                CR_SERVER_LOST,
                b"08S01",
                format!(
                    "ringproxy: backend {} {why} during authentication",
                    s.backend_addr
                ),
            ),
            Phase::Command
                if s.tracker.pending() > 0 && s.resp_packets == 0 && s.s_stream.at_boundary() =>
            {
                End::Err(
                    seq,
                    CR_SERVER_LOST,
                    b"08S01",
                    format!(
                        "Lost connection to backend server {} during query ({why})",
                        s.backend_addr
                    ),
                )
            }
            Phase::Command => End::Flush,
        };
        self.end(io, idx, how);
    }

    fn on_sent(&mut self, io: &mut Io, _sock: SockId, owner: u32, queued: usize) {
        let idx = owner >> 1;
        let Some(s) = self.sessions.get(idx as usize).and_then(Option::as_ref) else {
            return;
        };
        if queued <= self.shared.send_high_water / 2 {
            let peer = if owner & 1 == CLIENT_SIDE {
                s.backend
            } else {
                s.client
            };
            if io.is_paused(peer) {
                io.resume_read(peer);
            }
        }
    }

    fn on_shutdown(&mut self, io: &mut Io) {
        self.draining = true;
        for idx in 0..self.sessions.len() as u32 {
            let Some(s) = self.sessions[idx as usize].as_mut() else {
                continue;
            };
            s.draining = true;
            match s.phase {
                Phase::Command if s.tracker.is_idle() && s.s_stream.at_boundary() => {
                    self.end(io, idx, End::Flush)
                }
                Phase::Command => {}
                _ => {
                    let seq = if s.phase == Phase::Connecting || s.phase == Phase::Greeting {
                        0
                    } else {
                        s.last_client_seq.wrapping_add(1)
                    };
                    self.end(
                        io,
                        idx,
                        End::Err(
                            seq,
                            ER_SERVER_SHUTDOWN,
                            b"08S01",
                            "ringproxy is shutting down".into(),
                        ),
                    )
                }
            }
        }
    }

    fn is_drained(&self) -> bool {
        self.live == 0
    }

    fn abort_all(&mut self, io: &mut Io) {
        for idx in 0..self.sessions.len() as u32 {
            if self.sessions[idx as usize].is_some() {
                self.end(io, idx, End::Quiet);
            }
        }
    }
}
