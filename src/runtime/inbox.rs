//! A worker's control inbox: other threads (the main thread, the admin interface, other workers)
//! send it messages such as configuration snapshots, and wake its ring through an eventfd that
//! the worker keeps a read armed on. Messages are handed to `Service::on_message` between
//! completions, on the worker's own thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Messages for one worker, and the eventfd that wakes it.
pub struct Inbox<M> {
    queue: Mutex<Vec<M>>,
    efd: OwnedFd,
}

impl<M> Inbox<M> {
    pub fn new() -> io::Result<Inbox<M>> {
        // SAFETY: plain eventfd(2) call; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inbox {
            queue: Mutex::new(Vec::new()),
            // SAFETY: fd was just returned by eventfd(2) and is owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Queues `msg` and wakes the worker.
    pub fn send(&self, msg: M) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg);
        self.wake();
    }

    /// Wakes the worker without a message (its loop turn runs at once).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: efd is a live eventfd; the buffer is 8 readable bytes. A full counter
        // (EAGAIN) means a wake-up is already pending, which is all we need.
        unsafe {
            libc::write(
                self.efd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Moves every queued message to `out`.
    pub(crate) fn drain(&self, out: &mut Vec<M>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut q);
    }

    /// Clears a pending wake-up without the ring (tests).
    #[cfg(test)]
    fn clear_wake(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: efd is a live non-blocking eventfd; v is 8 writable bytes.
        let n = unsafe {
            libc::read(
                self.efd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        n == 8 && v > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_and_wake_the_eventfd() {
        let inbox = Inbox::new().unwrap();
        assert!(!inbox.clear_wake());
        inbox.send(1);
        inbox.send(2);
        assert!(inbox.clear_wake());
        assert!(!inbox.clear_wake(), "one read clears every wake-up");
        let mut out = Vec::new();
        inbox.drain(&mut out);
        assert_eq!(out, vec![1, 2]);
        inbox.drain(&mut out);
        assert_eq!(out.len(), 2);
    }
}
