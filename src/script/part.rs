//! [`Scripted`]: the scripted sessions of one worker and their I/O. It accepts the clients of
//! pass-through listeners when a script is configured, connects their backend connections,
//! carries out what their machines ([`Session`]) ask, and queues their hook calls; once per loop
//! turn the worker's service hands the calls to its executor and each decision back to its
//! session ([`Scripted::decided`]).
//!
//! Backpressure: a side whose peer has more than `send_high_water` bytes queued is not read until
//! the queue drains. The handshake timeout applies until the session reaches its command phase.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::session::{Out, Phase, Session};
use super::{Call, ConnInfo, Decision, Hook, ScriptShared, Update};
use crate::error::Error;
use crate::runtime::{Io, Key, Slab, SockId};
use crate::session::{Owner, ScriptId, Shared};

/// A scripted session and its sockets.
struct Entry {
    s: Session,
    client: SockId,
    peer: Option<SocketAddr>,
    backend: Option<SockId>,
    /// The backend (index into `ScriptShared::backends`) whose connected_clients counts us.
    counted: Option<usize>,
    /// The client socket was closed; the entry waits for its release.
    closed: bool,
}

/// The scripted part of a worker.
pub struct Scripted {
    shared: Arc<Shared>,
    script: Arc<ScriptShared>,
    sessions: Slab<Entry>,
    /// Hook calls queued this turn.
    calls: Vec<Call>,
    /// A spare vector for a step's [`Out`]s (no allocation per step).
    scratch: Vec<Out>,
    draining: bool,
}

impl Scripted {
    pub fn new(shared: Arc<Shared>, script: Arc<ScriptShared>) -> Scripted {
        Scripted {
            shared,
            script,
            sessions: Slab::new(),
            calls: Vec::new(),
            scratch: Vec::new(),
            draining: false,
        }
    }

    /// Moves the hook calls queued since the last turn to `out`.
    pub fn take_calls(&mut self, out: &mut Vec<Call>) {
        out.append(&mut self.calls);
    }

    /// Sessions open (client sockets not released yet).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// A client of a pass-through listener: its session starts with connect_server.
    pub fn accept(&mut self, io: &mut Io, sock: SockId, peer: Option<SocketAddr>) {
        let entry = Entry {
            s: Session::new(self.shared.max_packet_size as usize),
            client: sock,
            peer,
            backend: None,
            counted: None,
            closed: false,
        };
        let id = ScriptId(self.sessions.insert(entry));
        io.set_owner(sock, Owner::Script(id).token());
        io.stats.active += 1;
        io.stats.script_sessions += 1;
        io.set_timer(
            io.now() + self.shared.handshake_timeout,
            Owner::Script(id).token(),
        );
        let info = ConnInfo {
            client: peer,
            proxy: None,
            pooled: false,
        };
        self.submit(id, Hook::Open(Box::new(info)), Vec::new());
    }

    fn submit(&mut self, id: ScriptId, hook: Hook, updates: Vec<Update>) {
        self.calls.push(Call {
            conn: Owner::Script(id).token(),
            hook,
            updates,
        });
    }

    /// Steps a session with `f` and carries out what it asks.
    fn step(&mut self, io: &mut Io, id: ScriptId, f: impl FnOnce(&mut Session, &mut Vec<Out>)) {
        let Some(e) = self.sessions.get_mut(id.0).filter(|e| !e.closed) else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        f(&mut e.s, &mut out);
        for o in out.drain(..) {
            self.carry_out(io, id, o);
        }
        self.scratch = out;
        self.backpressure(io, id);
    }

    fn carry_out(&mut self, io: &mut Io, id: ScriptId, o: Out) {
        let Some(e) = self.sessions.get_mut(id.0) else {
            return;
        };
        match o {
            Out::Client(bytes) => io.send_owned(e.client, bytes),
            Out::Backend(bytes) => {
                if let Some(b) = e.backend {
                    io.send_owned(b, bytes);
                }
            }
            Out::Call(hook, updates) => self.submit(id, hook, updates),
            Out::Connect(ndx) => self.connect(io, id, ndx),
            Out::End { flush } => self.end(io, id, flush),
        }
    }

    /// Connects the session's backend: the script's choice, else the next one round-robin.
    fn connect(&mut self, io: &mut Io, id: ScriptId, ndx: Option<usize>) {
        let n = self.script.backends.len();
        let ndx = ndx
            .filter(|i| *i < n)
            .unwrap_or_else(|| self.shared.pick_index());
        let addr = self.script.backends[ndx].addr;
        let token = Owner::ScriptConn(id).token();
        let sock = io.connect_from(&addr, self.shared.source_for(&addr), token);
        self.script.backends[ndx]
            .connected_clients
            .fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.sessions.get_mut(id.0) {
            e.backend = Some(sock);
            e.counted = Some(ndx);
        }
    }

    pub fn on_connected(&mut self, io: &mut Io, id: ScriptId, result: std::io::Result<()>) {
        let Some(e) = self.sessions.get_mut(id.0) else {
            return;
        };
        let ndx = e.counted.unwrap_or(0);
        let addr = self.script.backends[ndx].addr;
        match result {
            Ok(()) => e.s.backend_connected(ndx, addr),
            Err(err) => {
                io.stats.backend_connect_errors += 1;
                e.backend = None;
                let err = Error::backend_unreachable(format!("{addr}: {err}"));
                self.step(io, id, |s, out| s.backend_lost(&err, out));
            }
        }
    }

    pub fn on_client_data(&mut self, io: &mut Io, id: ScriptId, data: &[u8]) {
        let now = io.now();
        self.step(io, id, |s, out| s.client_bytes(data, now, out));
    }

    pub fn on_backend_data(&mut self, io: &mut Io, id: ScriptId, data: &[u8]) {
        let now = io.now();
        self.step(io, id, |s, out| s.backend_bytes(data, now, out));
    }

    pub fn on_client_eof(&mut self, io: &mut Io, id: ScriptId) {
        self.end(io, id, false);
    }

    pub fn on_backend_eof(&mut self, io: &mut Io, id: ScriptId, error: Option<std::io::Error>) {
        let Some(e) = self.sessions.get_mut(id.0) else {
            return;
        };
        if let Some(b) = e.backend.take() {
            io.close(b);
        }
        let detail = error.map_or_else(
            || "the backend closed the connection".into(),
            |e| e.to_string(),
        );
        let err = Error::backend_failed(crate::error::Retry::Unsafe, detail);
        self.step(io, id, |s, out| s.backend_lost(&err, out));
    }

    /// Ends a session: its sockets are closed, its script environment is dropped
    /// (disconnect_client runs first when the script defines it).
    fn end(&mut self, io: &mut Io, id: ScriptId, flush: bool) {
        let Some(e) = self.sessions.get_mut(id.0).filter(|e| !e.closed) else {
            return;
        };
        e.closed = true;
        if let Some(b) = e.backend.take() {
            io.close_after_flush(b);
        }
        if let Some(ndx) = e.counted.take() {
            self.script.backends[ndx]
                .connected_clients
                .fetch_sub(1, Ordering::Relaxed);
        }
        if flush {
            io.close_after_flush(e.client);
        } else {
            io.close(e.client);
        }
        self.submit(id, Hook::Close, Vec::new());
    }

    /// The client socket is gone: the entry goes.
    pub fn on_released(&mut self, io: &mut Io, id: ScriptId) {
        if let Some(e) = self.sessions.remove(id.0) {
            io.stats.active = io.stats.active.saturating_sub(1);
            self.shared.release(e.peer.map(|p| p.ip()));
        }
    }

    /// Stops reading a side whose peer has too much queued; resumes it once drained.
    fn backpressure(&mut self, io: &mut Io, id: ScriptId) {
        let Some(e) = self.sessions.get(id.0).filter(|e| !e.closed) else {
            return;
        };
        let high = self.shared.send_high_water;
        for (dst, src) in [(Some(e.client), e.backend), (e.backend, Some(e.client))] {
            let (Some(dst), Some(src)) = (dst, src) else {
                continue;
            };
            let full = io.queued(dst) > high;
            if full && !io.is_paused(src) {
                io.pause_read(src);
            } else if !full && io.is_paused(src) {
                io.resume_read(src);
            }
        }
    }

    pub fn on_sent(&mut self, io: &mut Io, owner: Owner) {
        match owner {
            Owner::Script(id) | Owner::ScriptConn(id) => self.backpressure(io, id),
            _ => {}
        }
    }

    /// The handshake timeout: a session not in its command phase by now ends.
    pub fn on_timer(&mut self, io: &mut Io, id: ScriptId) {
        let late = self
            .sessions
            .get(id.0)
            .is_some_and(|e| !e.closed && !matches!(e.s.phase(), Phase::Command | Phase::Ended));
        if late {
            let err = Error::handshake_timeout();
            let mut bytes = Vec::new();
            err.write_err_packet(0, &mut bytes);
            if let Some(e) = self.sessions.get(id.0) {
                io.send_owned(e.client, bytes);
            }
            self.end(io, id, true);
        }
    }

    /// The decision of a session's hook call.
    pub fn decided(&mut self, io: &mut Io, id: ScriptId, d: Decision) {
        let now = io.now();
        self.step(io, id, |s, out| s.decided(d, now, out));
    }

    /// After the turn's decisions: a draining worker ends the sessions that became idle.
    pub fn after_turn(&mut self, io: &mut Io) {
        if self.draining {
            self.end_idle(io);
        }
    }

    /// Shutdown: sessions between commands end now, the others when their command is done.
    pub fn shutdown(&mut self, io: &mut Io) {
        self.draining = true;
        self.end_idle(io);
    }

    fn end_idle(&mut self, io: &mut Io) {
        let idle: Vec<Key> = self
            .sessions
            .iter()
            .filter(|(_, e)| !e.closed && e.s.is_idle())
            .map(|(k, _)| k)
            .collect();
        for k in idle {
            self.end(io, ScriptId(k), true);
        }
    }

    pub fn abort_all(&mut self, io: &mut Io) {
        for k in self.sessions.keys() {
            self.end(io, ScriptId(k), false);
        }
    }
}
