//! The worker's socket table: one [`Sock`] per socket the ring knows, in a generation-checked
//! slab (so [`SockId`]s of closed sockets find nothing), with its life-cycle state, its receive
//! state, its send queue and the count of operations in flight that still reference it. An entry
//! is freed only when it is closing and nothing in flight references it.
//!
//! [`SockTable::invariants`] checks the bookkeeping (debug builds run it every loop turn; the
//! simulation tests after every step).

use super::buffers::SendQueue;
use super::slab::{Key, Slab};

/// A socket of the worker, as services name it.
pub type SockId = Key;

/// Where a socket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockState {
    /// IORING_OP_SOCKET in flight.
    Creating,
    /// Socket options, bind, connect and its timeout in flight.
    Connecting,
    Open,
    /// Closing once the queued output is sent (no events are delivered any more); a deadline
    /// timer forces the close.
    Flushing,
    /// Close submitted (or about to be); waiting for the operations in flight.
    Closing,
}

/// The multishot receive of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    Off,
    Armed,
    /// Armed, with a cancel (pause) in flight.
    Cancelling,
}

/// Destination and optional source of a connect, alive until the connect completes.
pub struct ConnectAddrs {
    pub dst: (libc::sockaddr_storage, libc::socklen_t),
    pub src: Option<(libc::sockaddr_storage, libc::socklen_t)>,
}

/// One socket.
pub struct Sock {
    pub state: SockState,
    /// Fixed-file slot (from Connecting or Open on).
    pub slot: Option<u32>,
    /// The service's token, delivered with every event.
    pub owner: u64,
    /// Operations in flight that reference this entry.
    pub inflight: u16,
    pub recv: Recv,
    /// Reading paused (backpressure) by the service.
    pub paused: bool,
    /// The service dropped its interest: no events are delivered.
    pub detached: bool,
    /// In the worker's list of sockets with output to send this turn.
    pub dirty: bool,
    pub send: SendQueue,
    pub connect: Option<Box<ConnectAddrs>>,
    /// Errno of a failed bind to the source address (the linked connect then reports it).
    pub bind_error: i32,
}

impl Sock {
    pub fn new(state: SockState, owner: u64) -> Sock {
        Sock {
            state,
            slot: None,
            owner,
            inflight: 0,
            recv: Recv::Off,
            paused: false,
            detached: false,
            dirty: false,
            send: SendQueue::default(),
            connect: None,
            bind_error: 0,
        }
    }

    /// True while the service gets this socket's events.
    pub fn delivers(&self) -> bool {
        !self.detached && matches!(self.state, SockState::Open | SockState::Connecting)
    }

    /// True when data may be queued for sending.
    pub fn accepts_output(&self) -> bool {
        matches!(self.state, SockState::Open | SockState::Connecting)
    }
}

/// Every socket of one worker, and the fixed-file slots they occupy.
pub struct SockTable {
    socks: Slab<Sock>,
    slots_in_use: u32,
    fixed_slots: u32,
    /// Sockets in [`SockState::Flushing`].
    flushing: usize,
    /// Where [`SockTable::release_idle`] goes on.
    sweep_at: usize,
}

impl SockTable {
    pub fn new(fixed_slots: u32) -> SockTable {
        SockTable {
            socks: Slab::with_capacity(fixed_slots.min(1 << 16) as usize),
            slots_in_use: 0,
            fixed_slots,
            flushing: 0,
            sweep_at: 0,
        }
    }

    pub fn insert(&mut self, sock: Sock) -> SockId {
        if sock.slot.is_some() {
            self.slots_in_use += 1;
        }
        self.socks.insert(sock)
    }

    /// Walks the next `n` places of the table (wrapping around) and frees the send-queue storage
    /// of sockets that queued nothing since the walk last passed them. Returns how many it freed.
    pub fn release_idle(&mut self, n: usize) -> usize {
        let places = self.socks.places();
        let mut freed = 0;
        for _ in 0..n.min(places) {
            self.sweep_at = if self.sweep_at + 1 >= places {
                0
            } else {
                self.sweep_at + 1
            };
            if let Some(sock) = self.socks.at_mut(self.sweep_at) {
                freed += usize::from(sock.send.release_if_idle());
            }
        }
        freed
    }

    pub fn get(&self, id: SockId) -> Option<&Sock> {
        self.socks.get(id)
    }

    pub fn get_mut(&mut self, id: SockId) -> Option<&mut Sock> {
        self.socks.get_mut(id)
    }

    /// Records that `id` now occupies fixed-file slot `slot`.
    pub fn set_slot(&mut self, id: SockId, slot: u32) {
        if let Some(s) = self.socks.get_mut(id) {
            debug_assert!(s.slot.is_none());
            s.slot = Some(slot);
            self.slots_in_use += 1;
        }
    }

    /// Moves `id` to `state`, keeping the count of flushing sockets.
    pub fn set_state(&mut self, id: SockId, state: SockState) {
        if let Some(s) = self.socks.get_mut(id) {
            if s.state == SockState::Flushing {
                self.flushing -= 1;
            }
            if state == SockState::Flushing {
                self.flushing += 1;
            }
            s.state = state;
        }
    }

    /// Frees the entry if it is closing and nothing in flight references it; returns its owner
    /// when it was freed.
    pub fn free_if_done(&mut self, id: SockId) -> Option<u64> {
        let s = self.socks.get(id)?;
        if s.state != SockState::Closing || s.inflight != 0 {
            return None;
        }
        let s = self.socks.remove(id).expect("present");
        debug_assert!(s.send.is_empty(), "freed with output queued");
        if s.slot.is_some() {
            self.slots_in_use -= 1;
        }
        Some(s.owner)
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn slots_in_use(&self) -> u32 {
        self.slots_in_use
    }

    pub fn fixed_slots(&self) -> u32 {
        self.fixed_slots
    }

    pub fn flushing(&self) -> usize {
        self.flushing
    }

    pub fn ids(&self) -> Vec<SockId> {
        self.socks.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SockId, &Sock)> {
        self.socks.iter()
    }

    /// Checks the table's bookkeeping; returns what is wrong.
    pub fn invariants(&self) -> Result<(), String> {
        let mut slots = 0;
        let mut flushing = 0;
        for (id, s) in self.socks.iter() {
            let bad = |what: &str| Err(format!("socket {id:?} ({:?}): {what}", s.state));
            s.send.check().or_else(|e| bad(&e))?;
            if s.slot.is_some() {
                slots += 1;
            }
            if s.state == SockState::Flushing {
                flushing += 1;
            }
            let recv_ops = u16::from(s.recv != Recv::Off);
            let send_ops = u16::from(s.send.in_flight());
            if s.inflight < recv_ops + send_ops {
                return bad(&format!(
                    "{} operations in flight counted, recv {recv_ops} + send {send_ops} at least",
                    s.inflight
                ));
            }
            match s.state {
                SockState::Creating if s.slot.is_some() => return bad("slot before socket op"),
                SockState::Open | SockState::Flushing if s.slot.is_none() => {
                    return bad("open without a slot")
                }
                SockState::Creating | SockState::Connecting if s.recv != Recv::Off => {
                    return bad("receiving before connected")
                }
                SockState::Closing if !s.send.is_empty() && !s.send.in_flight() => {
                    return bad("closing with output nobody will send")
                }
                _ => {}
            }
        }
        if slots != self.slots_in_use {
            return Err(format!(
                "slots in use {} but {slots} sockets hold one",
                self.slots_in_use
            ));
        }
        if flushing != self.flushing {
            return Err(format!("flushing {} but {flushing} counted", self.flushing));
        }
        if self.slots_in_use > self.fixed_slots {
            return Err("more slots in use than the table has".into());
        }
        Ok(())
    }
}
