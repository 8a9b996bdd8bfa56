//! Every operation the worker submits, one function to start it and one to complete it, and the
//! in-flight count of each socket kept here and only here: `push_for` counts an operation in,
//! `complete` counts it out (a multishot recv once, when it ends). Completions become
//! [`Event`]s for the service; completions for freed sockets only give back their buffer.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::driver::{Cqe, Link, Op};
use super::io::{Event, Io, ACCEPTS_PER_LISTENER, IOV_PER_SEND, RUNTIME_TIMER, SENDS_PER_TURN};
use super::op::{self, OpKind, NO_SOCKET};
use super::placement;
use super::slab::Key;
use super::socks::{Recv, SockId, SockState};

/// Set once the first failure to set TCP_NODELAY on a backend socket has been logged.
static NODELAY_WARNED: AtomicBool = AtomicBool::new(false);

/// How long a listener waits before accepting again after the fixed-file table was full.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl Io {
    /// Makes room for `n` submissions: submits what is queued, and if the kernel took nothing
    /// (its completion queue overflowed), reaps completions for later dispatch and tries again.
    fn ensure_space(&mut self, n: usize) {
        while self.driver.sq_space() < n {
            self.stats.enter_calls += 1;
            if let Err(e) = self.driver.submit() {
                log::error!("worker {}: io_uring submit failed: {e}", self.worker);
            }
            if self.driver.sq_space() < n {
                self.driver.reap(&mut self.deferred);
            }
        }
    }

    fn push(&mut self, op: Op, user_data: u64, link: Link) {
        self.stats.sqes += 1;
        self.driver.push(op, user_data, link);
    }

    /// Submits an operation of socket `id`, counting it in flight.
    fn push_for(&mut self, id: SockId, kind: OpKind, op: Op, link: Link) {
        if let Some(s) = self.socks.get_mut(id) {
            s.inflight += 1;
        }
        self.push(op, Io::user_data(kind, id), link);
    }

    pub(crate) fn submit_socket(&mut self, id: SockId, domain: i32) {
        self.ensure_space(1);
        self.push_for(id, OpKind::Socket, Op::Socket { domain }, Link::None);
    }

    /// Arms the multishot recv of an open socket that is not paused.
    pub(crate) fn arm_recv(&mut self, id: SockId) {
        let Some(s) = self.socks.get(id) else { return };
        if s.recv != Recv::Off || s.paused || s.state != SockState::Open {
            return;
        }
        let slot = s.slot.expect("open sockets have a slot");
        self.ensure_space(1);
        self.socks.get_mut(id).expect("live").recv = Recv::Armed;
        self.push_for(id, OpKind::Recv, Op::RecvMulti { slot }, Link::None);
    }

    /// Cancels an armed recv (reading paused); its completion (ECANCELED) ends it.
    pub(crate) fn cancel_recv(&mut self, id: SockId) {
        let Some(s) = self.socks.get(id) else { return };
        if s.recv != Recv::Armed {
            return;
        }
        self.ensure_space(1);
        self.socks.get_mut(id).expect("live").recv = Recv::Cancelling;
        let target = Io::user_data(OpKind::Recv, id);
        self.push_for(id, OpKind::Cancel, Op::Cancel { target }, Link::None);
    }

    /// Submits the close of a socket that has a slot (or is connecting), ending what is in
    /// flight on it first.
    pub(crate) fn submit_close(&mut self, id: SockId) {
        let Some(s) = self.socks.get(id) else { return };
        let Some(slot) = s.slot else { return };
        let connecting = s.connect.is_some();
        let busy = s.recv != Recv::Off || s.send.in_flight() || s.inflight > 0;
        self.ensure_space(2);
        if busy && connecting {
            // Abort the connect chain in flight.
            self.push_for(id, OpKind::Cancel, Op::CancelSlot { slot }, Link::None);
        } else if busy {
            // Shutting the socket down ends the armed multishot recv (EOF) and any send in
            // flight on their own; cancelling by descriptor instead walks every request armed
            // on the ring, which makes closing N connections O(N^2). Hard-linked: the close must
            // not run first (a shutdown punted to a kernel worker would then find no file), yet
            // must run if the shutdown fails.
            self.push_for(id, OpKind::Shutdown, Op::Shutdown { slot }, Link::Hard);
        }
        self.push_for(id, OpKind::Close, Op::Close { slot }, Link::None);
    }

    /// The socket op completed: chain socket options, bind and connect with its timeout.
    fn start_connect(&mut self, id: SockId, slot: u32) {
        let s = self.socks.get(id).expect("live");
        let addrs = s
            .connect
            .as_ref()
            .expect("connect addresses kept until completion");
        let dst = (
            &addrs.dst.0 as *const libc::sockaddr_storage as *const libc::sockaddr,
            addrs.dst.1,
        );
        let src = addrs.src.as_ref().map(|(ss, len)| {
            (
                ss as *const libc::sockaddr_storage as *const libc::sockaddr,
                *len,
            )
        });
        let one: *const libc::c_int = &*self.setopt_one;
        let timeout: *const super::driver::Timeout = &*self.connect_timeout;
        // The whole chain goes into one submission: a submit in the middle would cut the links.
        self.ensure_space(5);
        let opt = |level, name| Op::SetSockOpt {
            slot,
            level,
            name,
            value: one,
        };
        // Chain: NODELAY ⇒ [BIND_ADDRESS_NO_PORT ⇒ bind] → connect → timeout. Hard links keep
        // the chain going when a socket option cannot be set; a failed bind cancels the connect.
        let nodelay = opt(libc::IPPROTO_TCP, libc::TCP_NODELAY);
        self.push_for(id, OpKind::SetOpt, nodelay, Link::Hard);
        if let Some((addr, len)) = src {
            let no_port = opt(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT);
            self.push_for(id, OpKind::SetOpt, no_port, Link::Hard);
            self.push_for(id, OpKind::Bind, Op::Bind { slot, addr, len }, Link::Soft);
        }
        let (addr, len) = dst;
        self.push_for(
            id,
            OpKind::Connect,
            Op::Connect { slot, addr, len },
            Link::Soft,
        );
        self.push_for(
            id,
            OpKind::ConnectTimeout,
            Op::LinkTimeout { timeout },
            Link::None,
        );
    }

    /// Arms accept `k` of listener `li`.
    pub(crate) fn arm_accept(&mut self, li: usize, k: usize) {
        let l = &mut self.listeners[li];
        if !l.open || l.accepts[k].armed {
            return;
        }
        let a = &mut l.accepts[k];
        a.armed = true;
        a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let op = Op::Accept {
            listener: l.id,
            addr: &mut a.addr,
            addrlen: &mut a.len,
        };
        let ud = op::encode(OpKind::Accept, op::accept_key(li as u32, k as u32));
        self.ensure_space(1);
        self.push(op, ud, Link::None);
    }

    /// Arms every accept of every open listener that is not armed and not waiting to retry.
    pub(crate) fn arm_accepts(&mut self) {
        let now = self.now;
        for li in 0..self.listeners.len() {
            let l = &self.listeners[li];
            if !l.open || l.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            self.listeners[li].retry_at = None;
            for k in 0..ACCEPTS_PER_LISTENER {
                self.arm_accept(li, k);
            }
        }
    }

    /// Closes every listener (shutdown): their accepts are cancelled.
    pub(crate) fn close_listeners(&mut self) {
        for li in 0..self.listeners.len() {
            if !self.listeners[li].open {
                continue;
            }
            self.listeners[li].open = false;
            for k in 0..ACCEPTS_PER_LISTENER {
                if self.listeners[li].accepts[k].armed {
                    let target = op::encode(OpKind::Accept, op::accept_key(li as u32, k as u32));
                    self.ensure_space(1);
                    self.push(
                        Op::Cancel { target },
                        op::encode(OpKind::Cancel, NO_SOCKET),
                        Link::None,
                    );
                }
            }
            let id = self.listeners[li].id;
            self.driver.close_listener(id);
        }
    }

    /// Arms the read on the inbox's eventfd.
    pub(crate) fn arm_wake(&mut self) {
        let Some(w) = self.wake.as_mut() else { return };
        if w.armed {
            return;
        }
        w.armed = true;
        let op = Op::ReadWake {
            fd: w.fd,
            buf: &mut *w.buf,
        };
        self.ensure_space(1);
        self.push(op, op::encode(OpKind::Wake, NO_SOCKET), Link::None);
    }

    /// Builds one vectored send per socket with output and no send in flight (up to
    /// [`IOV_PER_SEND`] chunks each). MSG_MORE only when more of this socket's queue is left
    /// for a later send: never from protocol state, so streamed bytes are never held back.
    pub(crate) fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut later = Vec::new();
        for id in dirty.drain(..) {
            let Some(s) = self.socks.get_mut(id) else {
                continue;
            };
            s.dirty = false;
            let sendable = matches!(s.state, SockState::Open | SockState::Flushing);
            if !sendable || s.send.in_flight() || s.send.is_empty() {
                continue;
            }
            let arena_full = self.msg_arena.len() == SENDS_PER_TURN
                || self.iov_arena.len() + IOV_PER_SEND > self.iov_arena.capacity();
            if arena_full {
                s.dirty = true;
                later.push(id);
                continue;
            }
            self.start_send(id);
        }
        // Keep the list's allocation: sends queued since are in `self.dirty` now.
        dirty.append(&mut self.dirty);
        dirty.append(&mut later);
        self.dirty = dirty;
    }

    fn start_send(&mut self, id: SockId) {
        let s = self.socks.get_mut(id).expect("live");
        let slot = s.slot.expect("open sockets have a slot");
        let start = self.iov_arena.len();
        let bufs = &self.bufs;
        let all = s.send.start_send(&mut self.iov_arena, IOV_PER_SEND, |b| {
            bufs.slice(b).as_ptr()
        });
        // SAFETY: msghdr is plain old data; zero is a valid "no name, no control" value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = self.iov_arena[start..].as_mut_ptr();
        msg.msg_iovlen = self.iov_arena.len() - start;
        // The arenas have fixed capacities (checked above), so these pointers stay put until
        // the enter that submits them; the arenas are cleared only after it.
        self.msg_arena.push(msg);
        let msg: *const libc::msghdr = self.msg_arena.last().expect("just pushed");
        let mut flags = libc::MSG_NOSIGNAL;
        if !all {
            flags |= libc::MSG_MORE;
        }
        self.stats.sends += 1;
        self.ensure_space(1);
        self.push_for(
            id,
            OpKind::Send,
            Op::SendMsg { slot, msg, flags },
            Link::None,
        );
    }

    /// Handles one completion.
    pub(crate) fn complete(&mut self, cqe: Cqe) {
        let Some((kind, key)) = op::decode(cqe.user_data) else {
            log::error!("completion with unknown user_data {:#x}", cqe.user_data);
            return;
        };
        match kind {
            OpKind::Accept => return self.on_accept(key, cqe.result),
            OpKind::Wake => return self.on_wake(),
            OpKind::Cancel if key == NO_SOCKET => return,
            _ => {}
        }
        if !self.live(key) {
            // A completion for an entry already freed: only a buffer it carries matters.
            if let Some(bid) = cqe.buffer() {
                self.bufs.take(bid);
                self.release_buf(bid);
            }
            log::debug!("stale completion {kind:?} for socket {key:?}");
            return;
        }
        let ends = kind != OpKind::Recv || !cqe.more();
        if ends {
            self.socks.get_mut(key).expect("live").inflight -= 1;
        }
        match kind {
            OpKind::Recv => self.on_recv(key, cqe),
            OpKind::Send => self.on_send(key, cqe.result),
            OpKind::Socket => self.on_socket(key, cqe.result),
            OpKind::Connect => self.on_connect(key, cqe.result),
            OpKind::SetOpt => warn_nodelay(cqe.result),
            OpKind::Bind if cqe.result < 0 => {
                self.socks.get_mut(key).expect("live").bind_error = -cqe.result;
            }
            OpKind::Close if cqe.result < 0 => {
                let e = io::Error::from_raw_os_error(-cqe.result);
                log::debug!("close of a direct descriptor: {e}");
            }
            // -ETIME when the connect timeout fired (the connect then completes with
            // -ECANCELED and is reported as timed out), -ECANCELED when it finished first.
            _ => {}
        }
        self.free_if_done(key);
    }

    fn on_accept(&mut self, key: Key, res: i32) {
        let (li, k) = op::accept_of(key);
        let (li, k) = (li as usize, k as usize);
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        l.accepts[k].armed = false;
        if res < 0 {
            match -res {
                libc::ENFILE | libc::EMFILE => self.table_full(li),
                libc::ECANCELED => {}
                e => {
                    log::warn!("accept failed: {}", io::Error::from_raw_os_error(e));
                    self.listeners[li].retry_at = Some(self.now + ACCEPT_RETRY);
                }
            }
            return;
        }
        let a = &self.listeners[li].accepts[k];
        let peer = placement::socket_addr(&a.addr, a.len);
        let mut sock = super::socks::Sock::new(SockState::Open, 0);
        sock.slot = Some(res as u32);
        let id = self.socks.insert(sock);
        self.stats.accepted += 1;
        self.arm_recv(id);
        if self.listeners[li].retry_at.is_none() {
            self.arm_accept(li, k);
        }
        self.events.push_back(Event::Accepted {
            listener: li,
            sock: id,
            peer,
        });
    }

    fn table_full(&mut self, li: usize) {
        self.stats.refused += 1;
        self.listeners[li].retry_at = Some(self.now + ACCEPT_RETRY);
        let now = self.now;
        let quiet = self
            .table_full_logged
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(5));
        if !quiet {
            self.table_full_logged = Some(now);
            log::warn!(
                "worker {}: fixed-file table full ({} slots, the soft RLIMIT_NOFILE): refusing new connections",
                self.worker,
                self.socks.fixed_slots()
            );
        }
    }

    fn on_wake(&mut self) {
        if let Some(w) = self.wake.as_mut() {
            w.armed = false;
            w.fired = true;
        }
    }

    fn on_socket(&mut self, id: SockId, res: i32) {
        if res >= 0 {
            self.socks.set_slot(id, res as u32);
        }
        let s = self.socks.get(id).expect("live");
        if s.state == SockState::Closing {
            // Closed while the socket op was in flight: close what it created.
            if res >= 0 {
                self.ensure_space(1);
                let slot = res as u32;
                self.push_for(id, OpKind::Close, Op::Close { slot }, Link::None);
            }
            return;
        }
        if res < 0 {
            let err = if -res == libc::ENFILE {
                io::Error::other(format!(
                    "no free fixed-file slot for a backend socket ({} slots, capped by RLIMIT_NOFILE)",
                    self.socks.fixed_slots()
                ))
            } else {
                io::Error::from_raw_os_error(-res)
            };
            let owner = s.owner;
            self.socks.get_mut(id).expect("live").detached = true;
            self.socks.set_state(id, SockState::Closing);
            self.events.push_back(Event::Connected {
                sock: id,
                owner,
                result: Err(err),
            });
            return;
        }
        self.socks.set_state(id, SockState::Connecting);
        self.start_connect(id, res as u32);
    }

    fn on_connect(&mut self, id: SockId, res: i32) {
        let s = self.socks.get_mut(id).expect("live");
        s.connect = None;
        if s.state != SockState::Connecting || s.detached {
            return;
        }
        let owner = s.owner;
        if res < 0 {
            let err = if res == -libc::ECANCELED && s.bind_error != 0 {
                let e = io::Error::from_raw_os_error(s.bind_error);
                io::Error::new(e.kind(), format!("bind to the source address failed: {e}"))
            } else if res == -libc::ECANCELED {
                io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
            } else {
                io::Error::from_raw_os_error(-res)
            };
            self.close(id);
            self.events.push_back(Event::Connected {
                sock: id,
                owner,
                result: Err(err),
            });
            return;
        }
        self.socks.set_state(id, SockState::Open);
        let s = self.socks.get_mut(id).expect("live");
        if !s.send.is_empty() && !s.dirty {
            s.dirty = true;
            self.dirty.push(id);
        }
        self.arm_recv(id);
        self.events.push_back(Event::Connected {
            sock: id,
            owner,
            result: Ok(()),
        });
    }

    fn on_recv(&mut self, id: SockId, cqe: Cqe) {
        let bid = cqe.buffer();
        if let Some(bid) = bid {
            self.bufs.take(bid);
        }
        let s = self.socks.get_mut(id).expect("live");
        if !cqe.more() {
            s.recv = Recv::Off;
        }
        let (deliver, owner) = (s.delivers(), s.owner);
        let res = cqe.result;
        if res > 0 {
            let bid = bid.expect("a recv with data carries a buffer");
            self.stats.recvs += 1;
            self.stats.bytes_in += res as u64;
            if deliver {
                let buf = super::buffers::BufRef {
                    bid,
                    off: 0,
                    len: res as u32,
                };
                self.events.push_back(Event::Data {
                    sock: id,
                    owner,
                    buf,
                });
            } else {
                self.release_buf(bid);
            }
            if !cqe.more() {
                self.arm_recv(id);
            }
            return;
        }
        if let Some(bid) = bid {
            self.release_buf(bid);
        }
        match -res {
            0 if deliver => self.events.push_back(Event::Eof {
                sock: id,
                owner,
                error: None,
            }),
            0 => {}
            libc::ENOBUFS => {
                self.stats.recv_nobufs += 1;
                self.rearm.push(id);
            }
            libc::ECANCELED => self.arm_recv(id),
            e if deliver => self.events.push_back(Event::Eof {
                sock: id,
                owner,
                error: Some(io::Error::from_raw_os_error(e)),
            }),
            _ => {}
        }
    }

    fn on_send(&mut self, id: SockId, res: i32) {
        let s = self.socks.get_mut(id).expect("live");
        let closing = s.state == SockState::Closing;
        let mut q = std::mem::take(&mut s.send);
        q.finish_send(res.max(0) as usize, res < 0, |c| self.drop_chunk(c));
        if closing {
            // Closed while this send was in flight: what it did not send goes too.
            q.drop_unsent(|c| self.drop_chunk(c));
        }
        let queued = q.queued();
        let s = self.socks.get_mut(id).expect("live");
        s.send = q;
        if res > 0 {
            self.stats.bytes_out += res as u64;
        }
        let (state, owner, deliver) = (s.state, s.owner, s.delivers());
        match state {
            SockState::Closing => {}
            _ if res < 0 => {
                let err = io::Error::from_raw_os_error(-res);
                if deliver {
                    self.events.push_back(Event::Eof {
                        sock: id,
                        owner,
                        error: Some(err),
                    });
                } else {
                    self.close(id);
                }
            }
            SockState::Flushing if queued == 0 => self.close(id),
            _ => {
                if queued > 0 && !s.dirty {
                    s.dirty = true;
                    self.dirty.push(id);
                }
                if deliver {
                    self.events.push_back(Event::Sent {
                        sock: id,
                        owner,
                        queued,
                    });
                }
            }
        }
    }

    /// A runtime timer fired: a flushing socket whose linger deadline passed is closed hard.
    pub(crate) fn on_runtime_timer(&mut self, token: u64) {
        let id = Key::unpack(token & !RUNTIME_TIMER);
        if self
            .socks
            .get(id)
            .is_some_and(|s| s.state == SockState::Flushing)
        {
            self.stats.linger_timeouts += 1;
            self.close(id);
        }
    }

    /// Re-arms the recvs that ended for lack of buffers, once buffers are back.
    pub(crate) fn rearm_starved(&mut self) {
        if self.rearm.is_empty() || self.bufs.free() == 0 {
            return;
        }
        for id in std::mem::take(&mut self.rearm) {
            self.arm_recv(id);
        }
    }
}

fn warn_nodelay(res: i32) {
    if res < 0 && res != -libc::ECANCELED && !NODELAY_WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "TCP_NODELAY on backend sockets failed: {} (setting socket options through io_uring \
             needs Linux 6.7); backend sockets keep Nagle's algorithm",
            io::Error::from_raw_os_error(-res)
        );
    }
}
