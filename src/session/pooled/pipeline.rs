//! Pipelined multiplexing on pooled connections. A session's plain SELECT (or the EXECUTE of
//! one) that finds no free connection and may open none is sent at once behind the SELECTs of
//! other sessions on a busy connection in the same state, instead of waiting
//! ([`Pooled::try_ride`]). The server answers in order: the connection's machine hands each
//! response to its session ([`PooledBackend::ride`], [`Action::Responder`]) and reports each
//! end; [`Pooled::pipelined_done`] then finishes the command like any other, except that the
//! connection is not the session's to give back (it serves the next response).
//!
//! What may ride, and what may be ridden behind:
//! - statements that can change nothing of the session and read nothing of it beyond schema and
//!   variables ([`sql::pipeline_shape`]), from sessions nothing pins or holds, in autocommit, with
//!   no script (its hooks see one command at a time) and no routing of their own;
//! - whose shape is known not to be slow: the worker keeps, per shape, a moving average of how
//!   long it took on a connection of its own ([`Pooled::learn`]); a shape never run alone yet
//!   waits like any command, one above [`SLOW`] too, so one slow query cannot hold others up;
//! - at most `pipeline_depth` per connection, on a connection whose session state equals the
//!   rider's for reads ([`SessionState::same_for_reads`]).
//!
//! A shape that turns out to change the session (a stored function, say: the server's tracking
//! says so) is never pipelined again, and the session takes the connection's state. A pipelined
//! command whose connection fails before its response began is sent again elsewhere: it only
//! reads, so running it twice is safe.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{status_of, Pooled, Running, Session, Statements};
use crate::protocol::constants::*;
use crate::protocol::framing::write_packet;
use crate::protocol::sql;
use crate::runtime::Io;
#[cfg(doc)]
use crate::session::action::Action;
use crate::session::pooled_backend::Outcome;
#[cfg(doc)]
use crate::session::pooled_backend::PooledBackend;
use crate::session::pooled_stmt::{opens_cursor, stmt_id};
#[cfg(doc)]
use crate::session::state::SessionState;
use crate::session::{BackendId, PooledId};

/// A shape whose average time on a connection of its own is above this is not pipelined.
pub(super) const SLOW: Duration = Duration::from_millis(5);
/// Shapes a worker keeps the latency of (past it, the record starts over).
const MAX_SHAPES: usize = 10_000;
/// The latency recorded for a shape that must never be pipelined again.
const NEVER: u32 = u32::MAX;

/// The shape of session command `payload` when it is one that may be pipelined (see the
/// module header); for an EXECUTE, its statement's key. `depth`: the pipeline depth (0: none).
pub(super) fn shape_of(
    stmts: &Statements,
    depth: usize,
    s: &Session,
    payload: &[u8],
) -> Option<u64> {
    if depth == 0 || s.script.is_some() {
        return None;
    }
    match payload.first().copied() {
        Some(COM_QUERY) => sql::pipeline_shape(&payload[1..]),
        Some(COM_STMT_EXECUTE) => {
            let st = stmt_id(payload).and_then(|id| s.stmts.get(&id))?;
            if st.long_data || st.cursor || opens_cursor(payload) {
                return None;
            }
            sql::pipeline_shape(&stmts.get(st.key)?.sql).map(|_| st.key)
        }
        _ => None,
    }
}

impl Pooled {
    /// Whether the command the session runs may share a connection with other sessions'
    /// commands: nothing of the session keeps it apart, and its shape is known to be quick.
    pub(super) fn shareable(&self, s: &Session, run: &Running) -> bool {
        let quick = run
            .shape
            .and_then(|k| self.shapes.get(&k))
            .is_some_and(|us| u128::from(*us) < SLOW.as_micros());
        quick
            && !run.login
            && run.prepare.is_none()
            && run.vars.is_empty()
            && run.sysvars.is_empty()
            && s.route.is_none()
            && !s.pinned()
            && s.held.is_none()
            && status_of(s) & SERVER_STATUS_AUTOCOMMIT != 0
    }

    /// Sends the session's command behind others on a busy connection of its pool, when it may
    /// ride and such a connection takes it; false leaves the session as it was.
    pub(super) fn try_ride(&mut self, io: &mut Io, sid: PooledId) -> bool {
        let Some(s) = self.sessions.get(sid.0) else {
            return false;
        };
        let fits = s.conn.is_none()
            && s.running
                .as_deref()
                .is_some_and(|r| !r.sent && self.shareable(s, r));
        if !fits {
            return false;
        }
        let Some(bid) = self.pipeline_for(sid) else {
            return false;
        };
        let (Some(s), Some(b)) = (self.sessions.get_mut(sid.0), self.conns.get_mut(bid.0)) else {
            return false;
        };
        let Some(run) = s.running.as_deref_mut() else {
            return false;
        };
        let Ok(payload) = super::command_packet(run, &mut s.stmts, b) else {
            return false;
        };
        let mut packet = Vec::with_capacity(HEADER_LEN + payload.len());
        write_packet(&mut packet, 0, &payload);
        if run.payload.is_empty() {
            // Kept: should the connection fail before the response, the command runs again.
            run.payload = payload;
        }
        let mut acts = Vec::new();
        b.ride(sid, s.client.caps, packet, &mut acts);
        run.sent = true;
        run.rode = true;
        s.riding = Some(bid);
        io.stats.pool_pipelined += 1;
        self.conn_actions(io, bid, None, &[], acts);
        true
    }

    /// A busy connection session `s` may pipeline its command on: of its pool, taking riders,
    /// in its state, with its statement prepared (for an EXECUTE).
    fn pipeline_for(&mut self, sid: PooledId) -> Option<BackendId> {
        let depth = self.ps.pipeline_depth;
        let others_wait = self.pool.waiting() > 0;
        let conns = &self.conns;
        self.pipelines.retain(|b| {
            conns
                .get(b.0)
                .is_some_and(|c| c.takes_rider(usize::MAX, false))
        });
        let s = self.sessions.get(sid.0)?;
        let run = s.running.as_deref()?;
        let exec = (run.code == COM_STMT_EXECUTE)
            .then_some(run.shape)
            .flatten();
        let key = s.key.as_ref()?;
        self.pipelines.iter().copied().find(|b| {
            conns.get(b.0).is_some_and(|c| {
                c.key == *key
                    && c.takes_rider(depth, others_wait)
                    && s.state.same_for_reads(&c.state)
                    && exec.is_none_or(|k| c.prepared.contains_key(&k))
            })
        })
    }

    /// The command just sent on `bid` for session `sid` may have others pipelined behind it.
    pub(super) fn offer_pipeline(&mut self, sid: PooledId, bid: BackendId) {
        let ok = self
            .sessions
            .get(sid.0)
            .and_then(|s| s.running.as_deref().map(|r| self.shareable(s, r)))
            .unwrap_or(false);
        let Some(b) = self.conns.get_mut(bid.0).filter(|_| ok) else {
            return;
        };
        b.share();
        if !self.pipelines.contains(&bid) {
            self.pipelines.push(bid);
        }
    }

    /// The response of session `sid`'s pipelined command begins on `bid`: the session holds
    /// the connection while it lasts (as any session whose command runs).
    pub(super) fn rider_starts(&mut self, io: &mut Io, sid: PooledId, bid: BackendId) {
        let thread = self.conns.get(bid.0).map_or(0, |b| b.thread_id);
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        s.riding = None;
        s.conn = Some(bid);
        s.kill.thread.store(thread, Ordering::Relaxed);
        io.stats.pooled_conns_held += 1;
    }

    /// A command's response ended on `bid` while the connection goes on with pipelined
    /// commands (or is about to): the session's command is done, and the connection is not its
    /// to give back.
    pub(super) fn pipelined_done(
        &mut self,
        io: &mut Io,
        sid: PooledId,
        bid: BackendId,
        outcome: Outcome,
    ) {
        if let Some(b) = self.conns.get_mut(bid.0) {
            if b.session == Some(sid) {
                b.session = None;
            }
            // Paused for this session's client (backpressure): nothing more of it comes, and
            // the responses behind it must not wait for that client.
            if io.is_paused(b.sock) {
                io.resume_read(b.sock);
            }
        }
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        if s.conn == Some(bid) {
            s.conn = None;
            io.stats.pooled_conns_held = io.stats.pooled_conns_held.saturating_sub(1);
        }
        s.last_conn = Some(bid);
        s.kill.thread.store(0, Ordering::Relaxed);
        let run = s.running.take();
        let changed = outcome.changed || outcome.untracked_change;
        if changed {
            // The statement changed the session after all: the session follows the server,
            // and the shape is never pipelined again.
            if let Some(b) = self.conns.get(bid.0) {
                s.state.take_reads_from(&b.state);
            }
        }
        if let Some(run) = &run {
            self.learn(run, io.now());
            if let Some(shape) = run.shape.filter(|_| changed) {
                log::warn!("a pipelined statement changed its session's state; its shape is no longer pipelined");
                self.shapes.insert(shape, NEVER);
            }
        }
        self.script_result(io, sid);
        self.unpause(io, sid);
        self.drive(io, sid);
    }

    /// Records how long the command took on a connection of its own (not ridden), for its
    /// shape.
    pub(super) fn learn(&mut self, run: &Running, now: Instant) {
        let (Some(shape), Some(at), false) = (run.shape, run.sent_at, run.rode) else {
            return;
        };
        if self.shapes.len() >= MAX_SHAPES && !self.shapes.contains_key(&shape) {
            self.shapes.clear();
        }
        let us = now
            .saturating_duration_since(at)
            .as_micros()
            .min(u128::from(NEVER - 1)) as u64;
        let avg = self.shapes.entry(shape).or_insert(us as u32);
        if *avg != NEVER {
            *avg = ((u64::from(*avg) * 3 + us) / 4) as u32;
        }
    }

    /// The sessions pipelined on a connection that is gone: their commands had no response
    /// yet and only read, so each runs again elsewhere.
    pub(super) fn resend_riders(&mut self, io: &mut Io, riders: Vec<PooledId>) {
        for sid in riders {
            let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
                continue;
            };
            s.riding = None;
            let Some(run) = s.running.as_deref_mut() else {
                continue;
            };
            run.sent = false;
            io.stats.pool_pipeline_retries += 1;
            self.acquire(io, sid);
        }
    }
}
