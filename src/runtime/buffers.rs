//! The provided-buffer ring of one worker: `count` receive buffers of `size` bytes registered with
//! the kernel as buffer group [`BGID`]. A multishot recv takes a buffer only when data arrives, so
//! an idle connection holds none. A buffer handed to the session may be referenced by queued sends
//! (zero-copy forwarding); it goes back to the kernel when the last reference is dropped.
//!
//! Returned buffers are written into the ring immediately but published (the tail store the
//! kernel reads) once per loop turn, in [`BufRing::publish`].

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The buffer group id every worker uses for its receive buffers.
pub const BGID: u16 = 0;

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
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
        // SAFETY: ptr/len are exactly what mmap returned, and nothing uses the mapping after drop
        // (the owning BufRing unregisters from the ring first; see BufRing's Drop note).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// One worker's provided-buffer ring and the reference counts of its buffers.
pub struct BufRing {
    ring: Mapping,
    bufs: Mapping,
    size: u32,
    count: u16,
    mask: u16,
    /// Local tail: entries written but maybe not yet published.
    tail: u16,
    published: u16,
    /// References to each buffer held by the user side (delivery + queued sends).
    refs: Vec<u16>,
    /// Buffers currently in the kernel's hands (available for receives).
    free: u32,
}

// The raw pointers refer to mappings owned by this struct alone; moving it to another thread
// before the loop starts is fine (it is never shared).
// SAFETY: BufRing owns its mappings exclusively and is used by one thread at a time.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Maps `count` buffers of `size` bytes plus the ring, registers them with `ring` and hands
    /// all buffers to the kernel. `count` must be a power of two ≤ 32768.
    pub fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer_count {count} must be a power of two <= 32768"),
            ));
        }
        let ring_bytes = count as usize * std::mem::size_of::<BufRingEntry>();
        let ring_map = Mapping::new(ring_bytes.max(4096))?;
        let bufs = Mapping::new(count as usize * size as usize)?;
        // SAFETY: ring_map is page aligned (mmap), sized for `count` entries, and lives as long as
        // this BufRing; Drop unregisters the group before the mapping is released.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ring_map.ptr as u64, count, BGID, 0)?;
        }
        let mut br = BufRing {
            ring: ring_map,
            bufs,
            size,
            count,
            mask: count - 1,
            tail: 0,
            published: 0,
            refs: vec![0; count as usize],
            free: 0,
        };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Buffers the kernel can currently fill.
    pub fn free(&self) -> u32 {
        self.free
    }

    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count and the mapping holds `count` entries; the kernel does not read
        // entries at or past the published tail, so writing here races with nothing.
        unsafe {
            let e = &mut *self.entries().add(idx);
            e.set_addr(self.bufs.ptr.add(bid as usize * self.size as usize) as u64);
            e.set_len(self.size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.free += 1;
    }

    /// Makes every buffer returned since the last call visible to the kernel (one store).
    pub fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail field lives in the first (initialised) entry of the page-aligned ring;
        // the kernel reads it with acquire semantics, so a release store publishes the entries
        // written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }

    /// The kernel filled buffer `bid` with `len` bytes: the user side now holds one reference.
    pub fn take(&mut self, bid: u16) {
        self.refs[bid as usize] = 1;
        self.free -= 1;
    }

    /// The bytes of a buffer the user side holds.
    pub fn slice(&self, bid: u16, off: u32, len: u32) -> &[u8] {
        let start = bid as usize * self.size as usize + off as usize;
        debug_assert!(off as usize + len as usize <= self.size as usize);
        // SAFETY: bid < count (it came from the kernel or from our own references), the range lies
        // inside that buffer, and the kernel does not write a buffer we hold (refs > 0) because it
        // is not in the ring until `release` pushes it back.
        unsafe { std::slice::from_raw_parts(self.bufs.ptr.add(start), len as usize) }
    }

    /// A raw pointer to a held buffer's bytes, for iovecs of sends in flight.
    pub fn ptr(&self, bid: u16, off: u32) -> *const u8 {
        // SAFETY: same bounds as `slice`; pointer arithmetic stays inside the mapping.
        unsafe {
            self.bufs
                .ptr
                .add(bid as usize * self.size as usize + off as usize)
        }
    }

    /// One more reference to a held buffer (a queued send points into it).
    pub fn retain(&mut self, bid: u16) {
        self.refs[bid as usize] += 1;
    }

    /// Drops one reference; the last one gives the buffer back to the kernel.
    pub fn release(&mut self, bid: u16) {
        let r = &mut self.refs[bid as usize];
        debug_assert!(*r > 0, "release of a buffer nobody holds");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.push(bid);
        }
    }
}
