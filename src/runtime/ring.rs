//! The real [`Driver`]: one io_uring instance (SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN,
//! kernel 6.1+), its provided-buffer ring and its listening sockets. [`Uring::push`] is the only
//! place in ringproxy where SQEs are built. [`probe`] checks once at start that the kernel has
//! every operation and feature the runtime uses, naming the first one missing and the kernel
//! version that brought it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::BufRingEntry;
use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::buffers::Mapping;
use super::driver::{Batch, Cqe, Driver, Link, Op};
use super::placement;

/// The buffer group id every worker uses for its receive buffers.
pub const BGID: u16 = 0;

/// An io_uring operation or feature the runtime needs, with the kernel that introduced it.
struct Need {
    what: &'static str,
    since: &'static str,
    opcode: u8,
}

const NEEDS: &[Need] = &[
    Need {
        what: "IORING_OP_ACCEPT (accept into direct descriptors)",
        since: "5.19",
        opcode: opcode::Accept::CODE,
    },
    Need {
        what: "IORING_OP_RECV (multishot recv with provided-buffer rings)",
        since: "6.0",
        opcode: opcode::RecvMulti::CODE,
    },
    Need {
        what: "IORING_OP_SENDMSG",
        since: "5.3",
        opcode: opcode::SendMsg::CODE,
    },
    Need {
        what: "IORING_OP_SOCKET (sockets created as direct descriptors)",
        since: "5.19",
        opcode: opcode::Socket::CODE,
    },
    Need {
        what: "IORING_OP_CONNECT",
        since: "5.5",
        opcode: opcode::Connect::CODE,
    },
    Need {
        what: "IORING_OP_LINK_TIMEOUT",
        since: "5.5",
        opcode: opcode::LinkTimeout::CODE,
    },
    Need {
        what: "IORING_OP_CLOSE (closing direct descriptors)",
        since: "5.15",
        opcode: opcode::Close::CODE,
    },
    Need {
        what: "IORING_OP_SHUTDOWN (closing sockets without cancel walks)",
        since: "5.11",
        opcode: opcode::Shutdown::CODE,
    },
    Need {
        what: "IORING_OP_ASYNC_CANCEL",
        since: "5.5",
        opcode: opcode::AsyncCancel::CODE,
    },
    Need {
        what: "IORING_OP_READ",
        since: "5.6",
        opcode: opcode::Read::CODE,
    },
    // The opcode exists since 5.19; its SOCKET_URING_OP_SETSOCKOPT sub-command (TCP_NODELAY on
    // backend sockets) since 6.7. The sub-command cannot be probed: on 5.19-6.6 the first
    // attempt fails, the worker warns once, and backend sockets keep Nagle's algorithm.
    Need {
        what: "IORING_OP_URING_CMD (socket options through the ring)",
        since: "5.19",
        opcode: opcode::UringCmd16::CODE,
    },
];

/// Builds a ring: `entries` SQEs, a CQ four times as large (multishot operations post many
/// completions per submission), single issuer, deferred and cooperative task running.
pub fn build(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_submit_all()
        .setup_cqsize(entries.saturating_mul(4))
        .build(entries)
        .map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => {
                    " (io_uring is disabled for this process: see /proc/sys/kernel/io_uring_disabled and seccomp policies)"
                }
                Some(libc::EINVAL) => {
                    " (the kernel lacks IORING_SETUP_DEFER_TASKRUN / SINGLE_ISSUER: kernel 6.1 or newer is required)"
                }
                Some(libc::ENOMEM) => " (locked-memory limit too small for the ring: raise RLIMIT_MEMLOCK)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("cannot create an io_uring instance: {e}{hint}"))
        })
}

/// Checks at start that this kernel has everything the runtime uses; the error names the first
/// missing operation or feature and the kernel version that introduced it.
pub fn probe() -> io::Result<()> {
    let ring = build(64)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(missing(
            "IORING_FEAT_EXT_ARG (timeouts on io_uring_enter)",
            "5.11",
        ));
    }
    if !ring.params().is_feature_submit_stable() {
        return Err(missing("IORING_FEAT_SUBMIT_STABLE", "5.5"));
    }
    if !ring.params().is_feature_nodrop() {
        return Err(missing("IORING_FEAT_NODROP", "5.5"));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("io_uring opcode probe failed: {e} (kernel 5.6 or newer is required)"),
        )
    })?;
    for need in NEEDS {
        if !probe.is_supported(need.opcode) {
            return Err(missing(need.what, need.since));
        }
    }
    ring.submitter()
        .register_files_sparse(8)
        .map_err(|e| io::Error::new(e.kind(), format!("sparse fixed-file tables are not supported: {e} (kernel 5.19 or newer is required)")))?;
    Ok(())
}

fn missing(what: &str, since: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("this kernel lacks {what}, which ringproxy needs (Linux {since} or newer)"),
    )
}

/// The kernel-facing half of the provided buffers: the ring of entries the kernel takes
/// buffers from. Returned buffers are written at once and published (one tail store) per turn.
struct ProvidedRing {
    entries: Mapping,
    base: *mut u8,
    size: u32,
    mask: u16,
    tail: u16,
    published: u16,
}

impl ProvidedRing {
    fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count and the mapping holds `count` entries; the kernel does not read
        // entries at or past the published tail, so writing here races with nothing. The
        // address lies inside the buffer memory registered with this ring.
        unsafe {
            let e = &mut *self.entries.ptr.cast::<BufRingEntry>().add(idx);
            e.set_addr(self.base.add(bid as usize * self.size as usize) as u64);
            e.set_len(self.size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail field lives in the first entry of the page-aligned ring; the kernel
        // reads it with acquire semantics, so a release store publishes the entries before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.ptr.cast()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }
}

/// One worker's io_uring, as a [`Driver`].
pub struct Uring {
    // Field order matters for drop: the ring goes before the buffer ring mapping it reads.
    ring: IoUring,
    provided: Option<ProvidedRing>,
    listeners: Vec<Option<OwnedFd>>,
    /// The kernel takes a min-wait with its waits (IORING_FEAT_MIN_TIMEOUT, 6.12+).
    min_wait: bool,
}

impl Uring {
    /// A ring of `entries` SQEs with a sparse fixed-file table of `fixed_slots` slots.
    pub fn new(entries: u32, fixed_slots: u32) -> io::Result<Uring> {
        let ring = build(entries)?;
        ring.submitter()
            .register_files_sparse(fixed_slots)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot register a fixed-file table of {fixed_slots} slots: {e} (the kernel caps it at RLIMIT_NOFILE)"
                    ),
                )
            })?;
        let min_wait = ring.params().is_feature_min_timeout();
        Ok(Uring {
            ring,
            provided: None,
            listeners: Vec::new(),
            min_wait,
        })
    }

    fn listener_fd(&self, listener: u32) -> i32 {
        self.listeners
            .get(listener as usize)
            .and_then(|l| l.as_ref())
            .map_or(-1, |fd| fd.as_raw_fd())
    }

    /// The SQE for `op`.
    fn sqe(&self, op: Op) -> squeue::Entry {
        match op {
            Op::Accept {
                listener,
                addr,
                addrlen,
            } => opcode::Accept::new(types::Fd(self.listener_fd(listener)), addr.cast(), addrlen)
                .file_index(Some(types::DestinationSlot::auto_target()))
                .build(),
            Op::RecvMulti { slot } => opcode::RecvMulti::new(types::Fixed(slot), BGID).build(),
            Op::SendMsg { slot, msg, flags } => opcode::SendMsg::new(types::Fixed(slot), msg)
                .flags(flags as u32)
                .build(),
            // No SOCK_CLOEXEC: the kernel rejects it (EINVAL) for sockets created as direct
            // descriptors, which are not in the process fd table anyway.
            Op::Socket { domain } => opcode::Socket::new(domain, libc::SOCK_STREAM, 0)
                .file_index(Some(types::DestinationSlot::auto_target()))
                .build(),
            Op::SetSockOpt {
                slot,
                level,
                name,
                value,
            } => opcode::SetSockOpt::new(
                types::Fixed(slot),
                level as u32,
                name as u32,
                value.cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
            .build(),
            Op::Bind { slot, addr, len } => {
                opcode::Bind::new(types::Fixed(slot), addr, len).build()
            }
            Op::Connect { slot, addr, len } => {
                opcode::Connect::new(types::Fixed(slot), addr, len).build()
            }
            Op::LinkTimeout { timeout } => {
                // `Timeout` has the layout of the kernel's timespec, which `types::Timespec`
                // wraps; the pointer stays valid until the completion (the worker owns it).
                opcode::LinkTimeout::new(timeout.cast::<types::Timespec>()).build()
            }
            Op::Shutdown { slot } => {
                opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_RDWR).build()
            }
            Op::Close { slot } => opcode::Close::new(types::Fixed(slot)).build(),
            Op::Cancel { target } => opcode::AsyncCancel::new(target).build(),
            Op::CancelSlot { slot } => {
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(slot)).all())
                    .build()
            }
            Op::ReadWake { fd, buf } => opcode::Read::new(types::Fd(fd), buf.cast(), 8).build(),
        }
    }
}

impl Driver for Uring {
    fn sq_space(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    fn push(&mut self, op: Op, user_data: u64, link: Link) {
        let flags = match link {
            Link::None => squeue::Flags::empty(),
            Link::Soft => squeue::Flags::IO_LINK,
            Link::Hard => squeue::Flags::IO_HARDLINK,
        };
        let e = self.sqe(op).flags(flags).user_data(user_data);
        // SAFETY: every pointer an SQE carries (msghdr/iovecs, sockaddrs, the setsockopt value,
        // timeouts, the eventfd word, buffer memory) is owned by the worker and outlives its use:
        // msghdrs until the next submit, the rest until the operation's completion (ops.rs).
        let pushed = unsafe { self.ring.submission().push(&e) };
        assert!(
            pushed.is_ok(),
            "submission queue full: the worker checks sq_space before every push"
        );
    }

    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn submit_and_wait(&mut self, timeout: Duration, batch: Batch) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        let batched = self.min_wait && batch.want > 1 && !batch.min_wait.is_zero();
        let (want, args) = if batched {
            let us = batch.min_wait.as_micros().min(u32::MAX as u128) as u32;
            (batch.want, args.min_wait_usec(us))
        } else {
            (1, args)
        };
        match self.ring.submitter().submit_with_args(want as usize, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reap(&mut self, out: &mut Vec<Cqe>) {
        for cqe in self.ring.completion() {
            out.push(Cqe {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    fn register_buffers(&mut self, base: *mut u8, size: u32, count: u16) -> io::Result<()> {
        let ring_bytes = count as usize * std::mem::size_of::<BufRingEntry>();
        let entries = Mapping::new(ring_bytes.max(4096))?;
        // SAFETY: the mapping is page aligned (mmap), sized for `count` entries, and lives as
        // long as this Uring, whose ring is dropped first.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                entries.ptr as u64,
                count,
                BGID,
                0,
            )?;
        }
        let mut p = ProvidedRing {
            entries,
            base,
            size,
            mask: count - 1,
            tail: 0,
            published: 0,
        };
        for bid in 0..count {
            p.push(bid);
        }
        p.publish();
        self.provided = Some(p);
        Ok(())
    }

    fn provide(&mut self, bid: u16) {
        if let Some(p) = self.provided.as_mut() {
            p.push(bid);
        }
    }

    fn publish_buffers(&mut self) {
        if let Some(p) = self.provided.as_mut() {
            p.publish();
        }
    }

    fn listen(&mut self, addr: &SocketAddr) -> io::Result<u32> {
        // The kernel caps the backlog at net.core.somaxconn, which then governs.
        let fd = placement::reuseport_listener(addr, i32::MAX)?;
        self.listeners.push(Some(fd));
        Ok((self.listeners.len() - 1) as u32)
    }

    fn close_listener(&mut self, listener: u32) {
        if let Some(l) = self.listeners.get_mut(listener as usize) {
            // Closing the listener makes new connection attempts fail at once (RST).
            *l = None;
        }
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_every_feature_we_use() {
        // The project's machines run 6.18; if this fails the error names what is missing.
        super::probe().unwrap();
    }
}
