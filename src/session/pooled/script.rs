//! Lua scripts on pooled listeners: the script's `read_query` sees each command of a pooled
//! session before the session runs it, and decides as on pass-through listeners: no decision
//! (the command runs as the client sent it), PROXY_SEND_RESULT (the script's `proxy.response`
//! goes to the client; nothing runs), or PROXY_SEND_QUERY (the queries of `proxy.queries` run in
//! its place, one after another, each as a command of the session, their results forwarded).
//! `proxy.connection.backend_ndx`, when the script sets it, routes the session's commands to that
//! backend's connections (read/write splitting), except while the session holds a connection
//! (a transaction, a lock...): its commands stay there.
//!
//! An injected query's result, when the script defines read_query_result, is captured (the
//! bytes the client would get) and given to it once the command is done (the session's state
//! was updated from it as from any command), then forwarded, replaced or hidden as it decides.
//!
//! The proxy authenticated the client itself and picks backend connections from its pool, so
//! the hooks of the connection phase (connect_server, read_handshake, read_auth,
//! read_auth_result) are not called. The environment is made at the end of the login;
//! disconnect_client runs when the session ends.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Pooled, Session};
use crate::protocol::constants::COM_QUIT;
use crate::runtime::Io;
use crate::script::session::{frame_all, micros, payloads, RESULT_MAX};
use crate::script::{
    Call, ConnInfo, Decision, Hook, HookName, Hooks, Injected, Injection, Ret, Update,
};
use crate::session::{Owner, PooledId};

/// A pooled session's scripting state.
#[derive(Debug, Default)]
pub(super) struct SessionScript {
    hooks: Hooks,
    /// A call is out: the session takes no command until its decision.
    awaiting: bool,
    /// The command read_query was called with (sequence id, payload).
    held: Option<(u8, Vec<u8>)>,
    /// Commands that run without going through read_query again: the held one after no
    /// decision, then the script's injections (with what read_query_result needs of them).
    ready: VecDeque<(u8, Vec<u8>, Option<Injection>)>,
    /// The result of the running injection, being captured for read_query_result.
    capture: Option<Capture>,
    /// A captured result whose read_query_result call is out (its bytes, framed for the client).
    result: Option<Vec<u8>>,
}

/// An injected query's result, as the client would get it.
#[derive(Debug)]
pub(super) struct Capture {
    inj: Injection,
    sent_at: Instant,
    first_at: Option<Instant>,
    bytes: Vec<u8>,
    too_big: bool,
}

/// What a session does next.
pub(super) enum Next {
    /// Run this command.
    Run(u8, Vec<u8>),
    /// Wait for the script's decision.
    Wait,
    /// Nothing to do.
    Idle,
}

impl SessionScript {
    /// The session's next command, through read_query when the script has one.
    fn next(&mut self, queue: &mut VecDeque<(u8, Vec<u8>)>, ask: &mut Option<Vec<u8>>) -> Next {
        if self.awaiting {
            return Next::Wait;
        }
        if let Some((seq, payload, inj)) = self.ready.pop_front() {
            if let Some(inj) = inj.filter(|_| self.hooks.has(HookName::ReadQueryResult)) {
                self.capture = Some(Capture {
                    inj,
                    sent_at: Instant::now(),
                    first_at: None,
                    bytes: Vec::new(),
                    too_big: false,
                });
            }
            return Next::Run(seq, payload);
        }
        let Some((seq, payload)) = queue.pop_front() else {
            return Next::Idle;
        };
        if !self.hooks.has(HookName::ReadQuery) {
            return Next::Run(seq, payload);
        }
        self.awaiting = true;
        *ask = Some(payload.clone());
        self.held = Some((seq, payload));
        Next::Wait
    }
}

impl Session {
    /// The next command (see [`SessionScript::next`]); a read_query call it needs goes to `calls`.
    pub(super) fn next_command(&mut self, sid: PooledId, calls: &mut Vec<Call>) -> Next {
        let Some(script) = self.script.as_mut() else {
            return match self.queue.pop_front() {
                Some((seq, payload)) => Next::Run(seq, payload),
                None => Next::Idle,
            };
        };
        let mut ask = None;
        let next = script.next(&mut self.queue, &mut ask);
        if let Some(packet) = ask {
            calls.push(Call {
                conn: Owner::Pooled(sid).token(),
                hook: Hook::Query(packet),
                updates: Vec::new(),
            });
        }
        next
    }
}

impl Pooled {
    /// Moves the hook calls queued since the last turn to `out`.
    pub fn take_calls(&mut self, out: &mut Vec<Call>) {
        out.append(&mut self.calls);
    }

    /// The login ended: the session's script environment is made (commands wait for it).
    pub(super) fn script_open(&mut self, sid: PooledId) {
        if !self.scripting {
            return;
        }
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        s.script = Some(Box::new(SessionScript {
            awaiting: true,
            ..SessionScript::default()
        }));
        let identity = Update::Identity {
            username: s
                .key
                .as_ref()
                .map(|k| k.user.as_bytes().to_vec())
                .unwrap_or_default(),
            default_db: s.state.schema.clone().unwrap_or_default(),
        };
        let info = ConnInfo {
            client: s.client.peer,
            proxy: None,
            pooled: true,
        };
        self.calls.push(Call {
            conn: Owner::Pooled(sid).token(),
            hook: Hook::Open(Box::new(info)),
            updates: vec![identity],
        });
    }

    /// The session ended: its environment goes (after disconnect_client).
    pub(super) fn script_close(&mut self, sid: PooledId) {
        let scripted = self
            .sessions
            .get_mut(sid.0)
            .and_then(|s| s.script.take())
            .is_some();
        if scripted {
            self.calls.push(Call {
                conn: Owner::Pooled(sid).token(),
                hook: Hook::Close,
                updates: Vec::new(),
            });
        }
    }

    /// A decision for a session's call: the environment is ready, or read_query decided.
    pub fn script_decided(&mut self, io: &mut Io, sid: PooledId, d: Decision) {
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        let Some(script) = s.script.as_mut() else {
            return;
        };
        script.awaiting = false;
        if let Some(bytes) = script.result.take() {
            return self.result_decided(io, sid, bytes, d);
        }
        let Some((seq, payload)) = script.held.take() else {
            script.hooks = d.hooks;
            return self.drive(io, sid);
        };
        s.route = d.backend_ndx.filter(|&i| i < self.shared.backends.len());
        match (d.ret, d.response) {
            (Ret::SendResult, Some(packets)) => {
                self.send_client(io, sid, frame_all(seq.wrapping_add(1), &packets), None);
                if payload.first() == Some(&COM_QUIT) {
                    return self.close_session(io, sid, true);
                }
            }
            (Ret::SendQuery, _) if !d.queries.is_empty() => {
                let ready = d
                    .queries
                    .into_iter()
                    .map(|q| (seq, q.packet.clone(), Some(q)));
                script.ready.extend(ready);
            }
            _ => script.ready.push_back((seq, payload, None)),
        }
        self.drive(io, sid);
    }

    /// read_query_result decided about a captured result: it goes to the client, is replaced
    /// or dropped; queries the hook appended run next.
    fn result_decided(&mut self, io: &mut Io, sid: PooledId, bytes: Vec<u8>, d: Decision) {
        match (d.ret, d.response) {
            (Ret::IgnoreResult, _) => {}
            (Ret::SendResult, Some(packets)) => {
                self.send_client(io, sid, frame_all(1, &packets), None)
            }
            _ => self.send_client(io, sid, bytes, None),
        }
        if let Some(script) = self.sessions.get_mut(sid.0).and_then(|s| s.script.as_mut()) {
            let ready = d
                .queries
                .into_iter()
                .map(|q| (0, q.packet.clone(), Some(q)));
            script.ready.extend(ready);
        }
        self.drive(io, sid);
    }

    /// Bytes for the client of session `sid`'s running command: kept instead when its result is
    /// being captured for read_query_result (true), else left to the caller to send (false).
    pub(super) fn captured(&mut self, sid: PooledId, bytes: &[u8], now: Instant) -> bool {
        if !self.scripting {
            return false;
        }
        let capture = self
            .sessions
            .get_mut(sid.0)
            .and_then(|s| s.script.as_mut())
            .and_then(|x| x.capture.as_mut());
        let Some(c) = capture else {
            return false;
        };
        c.first_at.get_or_insert(now);
        if c.bytes.len() + bytes.len() > RESULT_MAX {
            c.too_big = true;
        } else {
            c.bytes.extend_from_slice(bytes);
        }
        true
    }

    /// The running command is done: a captured result goes to read_query_result (the session
    /// takes no command until its decision).
    pub(super) fn script_result(&mut self, io: &mut Io, sid: PooledId) {
        if !self.scripting {
            return;
        }
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        let caps = s.client.caps;
        let Some(script) = s.script.as_mut() else {
            return;
        };
        let Some(c) = script.capture.take() else {
            return;
        };
        if c.too_big {
            let e =
                crate::error::Error::client_protocol("a result too large for read_query_result");
            return self.end_session(io, sid, Some(e));
        }
        let now = io.now();
        let inj = Injected {
            id: c.inj.id,
            query: c.inj.packet,
            resultset_is_needed: c.inj.resultset_is_needed,
            query_time_us: micros(c.first_at.unwrap_or(now) - c.sent_at),
            response_time_us: micros(now - c.sent_at),
            packets: payloads(&c.bytes),
            caps,
        };
        script.result = Some(c.bytes);
        script.awaiting = true;
        self.calls.push(Call {
            conn: Owner::Pooled(sid).token(),
            hook: Hook::Result(Box::new(inj)),
            updates: Vec::new(),
        });
    }
}
