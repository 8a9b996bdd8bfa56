//! Lua scripts on pooled listeners: the script's `read_query` sees each command of a pooled
//! session before the session runs it, and decides as on pass-through listeners: no decision
//! (the command runs as the client sent it), PROXY_SEND_RESULT (the script's `proxy.response`
//! goes to the client; nothing runs), or PROXY_SEND_QUERY (the queries of `proxy.queries` run in
//! its place, one after another, each as a command of the session, their results forwarded).
//! `proxy.connection.backend_ndx`, when the script sets it, routes the session's commands to that
//! backend's connections (read/write splitting), except while the session holds a connection
//! (a transaction, a lock...): its commands stay there.
//!
//! The proxy authenticated the client itself and picks backend connections from its pool, so
//! the hooks of the connection phase (connect_server, read_handshake, read_auth,
//! read_auth_result) are not called, nor is read_query_result: injected queries' results go to
//! the client. The environment is made at the end of the login; disconnect_client runs when the
//! session ends.

use std::collections::VecDeque;

use super::{Pooled, Session};
use crate::protocol::constants::COM_QUIT;
use crate::runtime::Io;
use crate::script::{Call, ConnInfo, Decision, Hook, HookName, Hooks, Ret, Update};
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
    /// decision, then the script's injections.
    ready: VecDeque<(u8, Vec<u8>)>,
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
        if let Some((seq, payload)) = self.ready.pop_front() {
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
        let Some((seq, payload)) = script.held.take() else {
            script.hooks = d.hooks;
            return self.drive(io, sid);
        };
        s.route = d.backend_ndx.filter(|&i| i < self.shared.backends.len());
        match (d.ret, d.response) {
            (Ret::SendResult, Some(packets)) => {
                let mut out = Vec::new();
                for (i, p) in packets.iter().enumerate() {
                    crate::protocol::framing::write_packet(
                        &mut out,
                        seq.wrapping_add(1 + i as u8),
                        p,
                    );
                }
                self.send_client(io, sid, out, None);
                if payload.first() == Some(&COM_QUIT) {
                    return self.close_session(io, sid, true);
                }
            }
            (Ret::SendQuery, _) if !d.queries.is_empty() => {
                let ready = d.queries.into_iter().map(|q| (seq, q.packet));
                script.ready.extend(ready);
            }
            _ => script.ready.push_back((seq, payload)),
        }
        self.drive(io, sid);
    }
}
