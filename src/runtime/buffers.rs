//! Memory the worker owns for I/O: the receive buffers ([`BufMem`]: `count` buffers of `size`
//! bytes, lent to the kernel as provided buffers, with reference counts on the user side) and the
//! per-socket send queues ([`SendQueue`] of [`Chunk`]s).
//!
//! A multishot recv takes a receive buffer only when data arrives, so an idle connection holds
//! none. A received buffer is referenced by its delivery, by every queued send that points into
//! it (zero-copy forwarding) and by every hold a service takes; it goes back to the kernel when
//! the last reference is dropped. A send queue keeps every chunk that a send in flight covers
//! until that send completes, even if the socket is closed meanwhile, so the kernel never reads
//! memory that was freed or reused.

use std::collections::VecDeque;
use std::io;

/// An anonymous private mapping, unmapped on drop.
pub(crate) struct Mapping {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Mapping {
    pub fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and whoever reads the mapping (the
        // kernel, through a registered buffer ring) is gone before its owner drops it: a ring's
        // fields drop in order, the ring before the mappings it reads.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Part of a received buffer: forwardable without a copy, holdable past the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufRef {
    pub bid: u16,
    pub off: u32,
    pub len: u32,
}

impl BufRef {
    /// Bytes `from..to` of this part (offsets relative to it).
    pub fn slice(self, from: usize, to: usize) -> BufRef {
        debug_assert!(from <= to && to <= self.len as usize);
        BufRef {
            bid: self.bid,
            off: self.off + from as u32,
            len: (to - from) as u32,
        }
    }

    /// Everything from `from` on.
    pub fn tail(self, from: usize) -> BufRef {
        self.slice(from, self.len as usize)
    }
}

/// The receive buffers of one worker and their reference counts.
pub struct BufMem {
    mem: Mapping,
    size: u32,
    count: u16,
    refs: Vec<u16>,
    /// Buffers in the kernel's hands (available for receives).
    free: u32,
}

impl BufMem {
    /// `count` buffers of `size` bytes; `count` must be a power of two ≤ 32768. All start in the
    /// kernel's hands (see `Driver::register_buffers`).
    pub fn new(count: u16, size: u32) -> io::Result<BufMem> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer_count {count} must be a power of two <= 32768"),
            ));
        }
        Ok(BufMem {
            mem: Mapping::new(count as usize * size as usize)?,
            size,
            count,
            refs: vec![0; count as usize],
            free: u32::from(count),
        })
    }

    pub fn base(&self) -> *mut u8 {
        self.mem.ptr
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Buffers the kernel can currently fill.
    pub fn free(&self) -> u32 {
        self.free
    }

    /// References held on `bid` by the user side.
    pub fn refs(&self, bid: u16) -> u16 {
        self.refs[bid as usize]
    }

    /// The kernel filled buffer `bid`: the user side now holds its delivery reference.
    pub fn take(&mut self, bid: u16) {
        debug_assert_eq!(self.refs[bid as usize], 0, "kernel filled a held buffer");
        self.refs[bid as usize] = 1;
        self.free -= 1;
    }

    /// One more reference to a held buffer.
    pub fn retain(&mut self, bid: u16) {
        debug_assert!(
            self.refs[bid as usize] > 0,
            "retain of a buffer nobody holds"
        );
        self.refs[bid as usize] += 1;
    }

    /// Drops one reference; true when it was the last one and the buffer must go back to the
    /// kernel. A release of a buffer nobody holds is refused (and logged) in every build: giving
    /// it to the kernel twice would let two receives fill it at once.
    #[must_use]
    pub fn release(&mut self, bid: u16) -> bool {
        let r = &mut self.refs[bid as usize];
        if *r == 0 {
            log::error!(
                "runtime bug: release of receive buffer {bid}, which nobody holds; ignored"
            );
            return false;
        }
        *r -= 1;
        if *r == 0 {
            self.free += 1;
            return true;
        }
        false
    }

    /// The bytes of a part of a held buffer.
    pub fn slice(&self, b: BufRef) -> &[u8] {
        assert!(
            b.bid < self.count && b.off as usize + b.len as usize <= self.size as usize,
            "buffer reference {b:?} out of bounds"
        );
        debug_assert!(
            self.refs[b.bid as usize] > 0,
            "read of a buffer nobody holds"
        );
        let start = b.bid as usize * self.size as usize + b.off as usize;
        // SAFETY: the range lies inside the mapping (checked above), and the kernel does not
        // write a buffer the user side holds: it is not in the provided ring until its last
        // reference is released.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.add(start), b.len as usize) }
    }
}

/// One piece of a socket's outgoing bytes.
pub enum Chunk {
    /// Part of a received buffer (a reference is held while queued).
    Buf(BufRef),
    /// Bytes built or copied by the service.
    Owned(Vec<u8>),
    /// Bytes that live for the whole program.
    Static(&'static [u8]),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Buf(b) => b.len as usize,
            Chunk::Owned(v) => v.len(),
            Chunk::Static(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes this chunk owns (what counts against the memory limit).
    pub fn owned_bytes(&self) -> usize {
        match self {
            Chunk::Owned(v) => v.capacity(),
            Chunk::Buf(_) | Chunk::Static(_) => 0,
        }
    }
}

/// A socket's outgoing bytes in order, and which of them a send in flight covers.
#[derive(Default)]
pub struct SendQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    sent_off: usize,
    /// Bytes not yet acknowledged by a send completion.
    queued: usize,
    /// Chunks, from the front, that the send in flight covers (0: no send in flight).
    in_flight: u16,
    /// Heap bytes of the Owned chunks queued.
    owned: usize,
    /// Something was queued since the last [`SendQueue::release_if_idle`].
    used: bool,
}

impl SendQueue {
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn owned(&self) -> usize {
        self.owned
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Frees the queue's storage when nothing was queued since the last call and nothing is
    /// queued now, so an idle connection holds no send-queue memory while a busy one keeps its
    /// storage (no allocation per response). Returns whether storage was freed.
    pub fn release_if_idle(&mut self) -> bool {
        let idle = !std::mem::take(&mut self.used) && self.chunks.is_empty();
        if idle && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
            return true;
        }
        false
    }

    pub fn push(&mut self, chunk: Chunk) {
        self.used = true;
        self.queued += chunk.len();
        self.owned += chunk.owned_bytes();
        self.chunks.push_back(chunk);
    }

    /// Appends up to `max` iovecs for the next send to `iovs`, marks those chunks in flight and
    /// returns whether they are the whole queue. `resolve` gives a buffer part's address.
    pub fn start_send(
        &mut self,
        iovs: &mut Vec<libc::iovec>,
        max: usize,
        resolve: impl Fn(BufRef) -> *const u8,
    ) -> bool {
        debug_assert!(self.in_flight == 0 && !self.chunks.is_empty());
        let mut n = 0u16;
        for (i, c) in self.chunks.iter().take(max).enumerate() {
            let skip = if i == 0 { self.sent_off } else { 0 };
            let ptr = match c {
                Chunk::Buf(b) => resolve(*b),
                Chunk::Owned(v) => v.as_ptr(),
                Chunk::Static(s) => s.as_ptr(),
            };
            iovs.push(libc::iovec {
                // SAFETY: skip < len (sent_off never reaches a chunk's length: fully sent chunks
                // are popped), so the pointer stays inside the chunk.
                iov_base: unsafe { ptr.add(skip) } as *mut libc::c_void,
                iov_len: c.len() - skip,
            });
            n += 1;
        }
        self.in_flight = n;
        usize::from(n) == self.chunks.len()
    }

    /// The send in flight completed having sent `sent` bytes (or failed: `sent` = 0). Chunks
    /// fully sent, and with `failed` every chunk the send covered, are passed to `drop_chunk`.
    pub fn finish_send(&mut self, sent: usize, failed: bool, mut drop_chunk: impl FnMut(Chunk)) {
        let mut left = sent;
        let mut covered = self.in_flight;
        self.in_flight = 0;
        while covered > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let avail = front.len() - self.sent_off;
            if left >= avail || failed {
                left = left.saturating_sub(avail);
                self.queued -= avail;
                self.sent_off = 0;
                covered -= 1;
                let c = self.chunks.pop_front().expect("front exists");
                self.owned -= c.owned_bytes();
                drop_chunk(c);
            } else {
                self.sent_off += left;
                self.queued -= left;
                break;
            }
        }
    }

    /// Drops every chunk no send in flight covers (the socket is closing); the covered ones
    /// stay until [`SendQueue::finish_send`].
    pub fn drop_unsent(&mut self, mut drop_chunk: impl FnMut(Chunk)) {
        let keep = usize::from(self.in_flight);
        while self.chunks.len() > keep {
            // The front chunk may be partly sent already.
            let sent = if self.chunks.len() == 1 {
                self.sent_off
            } else {
                0
            };
            let c = self.chunks.pop_back().expect("len > keep");
            self.queued -= c.len() - sent;
            self.owned -= c.owned_bytes();
            drop_chunk(c);
        }
        if keep == 0 {
            self.sent_off = 0;
            self.chunks = VecDeque::new();
        }
    }

    /// Buffer references the queue holds, per buffer id (for the invariants check).
    pub fn buf_refs(&self) -> impl Iterator<Item = u16> + '_ {
        self.chunks.iter().filter_map(|c| match c {
            Chunk::Buf(b) => Some(b.bid),
            _ => None,
        })
    }

    /// Checks the queue's own bookkeeping; returns what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let total: usize = self.chunks.iter().map(Chunk::len).sum();
        if total - self.sent_off != self.queued {
            return Err(format!(
                "queued {} != chunk bytes {} - sent {}",
                self.queued, total, self.sent_off
            ));
        }
        let owned: usize = self.chunks.iter().map(Chunk::owned_bytes).sum();
        if owned != self.owned {
            return Err(format!("owned {} != {}", self.owned, owned));
        }
        if usize::from(self.in_flight) > self.chunks.len() {
            return Err("more chunks in flight than queued".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(n: usize) -> Chunk {
        Chunk::Owned(vec![7; n])
    }

    fn iovs(q: &mut SendQueue, max: usize) -> (Vec<usize>, bool) {
        let mut v = Vec::new();
        let all = q.start_send(&mut v, max, |_| std::ptr::null());
        (v.iter().map(|i| i.iov_len).collect(), all)
    }

    #[test]
    fn idle_send_queue_storage_is_freed_only_after_a_quiet_period() {
        let mut q = SendQueue::default();
        q.push(Chunk::Static(b"abc"));
        assert_eq!(iovs(&mut q, 8), (vec![3], true));
        // Queued since the last look, and still queued: kept.
        assert!(!q.release_if_idle());
        q.finish_send(3, false, |_| {});
        q.push(Chunk::Static(b"x"));
        assert_eq!(iovs(&mut q, 8), (vec![1], true));
        q.finish_send(1, false, |_| {});
        // Empty now, but used since the last look: kept (a busy socket keeps its storage).
        assert!(!q.release_if_idle());
        assert!(q.chunks.capacity() > 0);
        // Nothing queued since: freed, and the queue still works afterwards.
        assert!(q.release_if_idle());
        assert_eq!(q.chunks.capacity(), 0);
        assert!(!q.release_if_idle());
        q.push(Chunk::Static(b"de"));
        assert_eq!(iovs(&mut q, 8), (vec![2], true));
    }

    #[test]
    fn partial_sends_advance_within_chunks() {
        let mut q = SendQueue::default();
        q.push(owned(10));
        q.push(Chunk::Static(b"abcdef"));
        assert_eq!(iovs(&mut q, 64), (vec![10, 6], true));
        let mut dropped = 0;
        q.finish_send(12, false, |_| dropped += 1);
        assert_eq!((dropped, q.queued()), (1, 4));
        assert_eq!(iovs(&mut q, 64), (vec![4], true));
        q.finish_send(4, false, |_| dropped += 1);
        assert_eq!((dropped, q.queued(), q.is_empty()), (2, 0, true));
        q.check().unwrap();
    }

    #[test]
    fn closing_keeps_the_chunks_a_send_in_flight_covers() {
        let mut q = SendQueue::default();
        q.push(owned(5));
        q.push(owned(5));
        assert_eq!(iovs(&mut q, 1), (vec![5], false));
        q.push(owned(3));
        let mut dropped = Vec::new();
        q.drop_unsent(|c| dropped.push(c.len()));
        assert_eq!(dropped, vec![3, 5], "only the unsent chunks go");
        assert!(q.in_flight());
        assert_eq!(q.queued(), 5);
        q.finish_send(0, true, |c| dropped.push(c.len()));
        assert_eq!(dropped, vec![3, 5, 5]);
        assert!(q.is_empty() && q.queued() == 0 && q.owned() == 0);
        q.check().unwrap();
    }

    #[test]
    fn dropping_a_partly_sent_queue_accounts_for_what_was_sent() {
        let mut q = SendQueue::default();
        q.push(owned(10));
        q.push(owned(4));
        iovs(&mut q, 64);
        q.finish_send(3, false, |_| panic!("nothing fully sent"));
        assert_eq!(q.queued(), 11);
        let mut dropped = 0;
        q.drop_unsent(|_| dropped += 1);
        assert_eq!((dropped, q.queued(), q.owned()), (2, 0, 0));
        q.check().unwrap();
    }

    #[test]
    fn a_double_release_is_refused() {
        let mut m = BufMem::new(16, 4096).unwrap();
        m.take(3);
        assert!(m.release(3));
        assert_eq!(m.free(), 16);
        assert!(
            !m.release(3),
            "the second release must not return it to the kernel"
        );
        assert_eq!(m.free(), 16);
    }
}
