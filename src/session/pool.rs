//! A worker's pool of backend connections for pooled sessions: idle connections by [`PoolKey`]
//! (what makes two connections interchangeable for a session), and the sessions waiting for
//! one. Worker-local and lock-free; the limit on connections per backend server is global
//! ([`Limits`], shared by all workers through atomics).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::BackendId;

/// What a pooled connection is fixed to: the account it is logged in as, and the capability
/// bits that change what the server sends (EOF packets or not, FOUND_ROWS, multi-results...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub user: Arc<str>,
    pub caps: u32,
    /// The character set the connection logged in with.
    pub charset: u8,
}

/// A session waiting for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter<S> {
    pub session: S,
    pub key: PoolKey,
    pub since: Instant,
}

/// Idle connections and waiting sessions of one worker.
#[derive(Debug)]
pub struct Pool<S> {
    idle: HashMap<PoolKey, Vec<BackendId>>,
    waiting: VecDeque<Waiter<S>>,
    idle_count: usize,
}

impl<S: PartialEq + Copy> Default for Pool<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: PartialEq + Copy> Pool<S> {
    pub fn new() -> Pool<S> {
        Pool {
            idle: HashMap::new(),
            waiting: VecDeque::new(),
            idle_count: 0,
        }
    }

    /// An idle connection for `key` that `fits` (the backend a session's script routes it to):
    /// the most recently used one `prefer` accepts (one already in the session's state), else
    /// the most recently used.
    pub fn take(
        &mut self,
        key: &PoolKey,
        fits: impl Fn(BackendId) -> bool,
        prefer: impl Fn(BackendId) -> bool,
    ) -> Option<BackendId> {
        let list = self.idle.get_mut(key)?;
        let pos = list
            .iter()
            .rposition(|b| fits(*b) && prefer(*b))
            .or_else(|| list.iter().rposition(|b| fits(*b)))?;
        self.idle_count -= 1;
        Some(list.remove(pos))
    }

    /// `id` is idle again.
    pub fn put(&mut self, key: PoolKey, id: BackendId) {
        self.idle.entry(key).or_default().push(id);
        self.idle_count += 1;
    }

    /// Takes `id` out of the idle set (it is closing); true if it was there.
    pub fn remove(&mut self, key: &PoolKey, id: BackendId) -> bool {
        let Some(list) = self.idle.get_mut(key) else {
            return false;
        };
        let Some(pos) = list.iter().position(|b| *b == id) else {
            return false;
        };
        list.remove(pos);
        self.idle_count -= 1;
        true
    }

    /// Idle connections of every key, oldest first per key (for timeouts).
    pub fn idle(&self) -> impl Iterator<Item = (&PoolKey, BackendId)> {
        self.idle
            .iter()
            .flat_map(|(k, list)| list.iter().map(move |b| (k, *b)))
    }

    /// Idle connections of `key`.
    pub fn idle_of(&self, key: &PoolKey) -> usize {
        self.idle.get(key).map_or(0, Vec::len)
    }

    pub fn idle_len(&self) -> usize {
        self.idle_count
    }

    /// An idle connection of any key that `fits`, the oldest of its key, to be re-logged in
    /// for a waiter or closed.
    pub fn take_any(&mut self, fits: impl Fn(BackendId) -> bool) -> Option<(PoolKey, BackendId)> {
        let (key, pos) = self
            .idle
            .iter()
            .find_map(|(k, l)| l.iter().position(|b| fits(*b)).map(|p| (k.clone(), p)))?;
        let id = self.idle.get_mut(&key)?.remove(pos);
        self.idle_count -= 1;
        Some((key, id))
    }

    /// `w` waits for a connection.
    pub fn wait(&mut self, w: Waiter<S>) {
        self.waiting.push_back(w);
    }

    /// The first session waiting for `key` that `fits` takes.
    pub fn next_waiter(
        &mut self,
        key: &PoolKey,
        fits: impl Fn(&Waiter<S>) -> bool,
    ) -> Option<Waiter<S>> {
        let pos = self.waiting.iter().position(|w| &w.key == key && fits(w))?;
        self.waiting.remove(pos)
    }

    /// Since when the longest-waiting session waits, if any waits.
    pub fn oldest_wait(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.since).min()
    }

    /// The first session waiting for any key.
    pub fn first_waiter(&mut self) -> Option<Waiter<S>> {
        self.waiting.pop_front()
    }

    /// `w` (taken with [`Pool::first_waiter`]) goes back to the head of the line.
    pub fn wait_first(&mut self, w: Waiter<S>) {
        self.waiting.push_front(w);
    }

    /// `session` no longer waits (it left or timed out).
    pub fn cancel_wait(&mut self, session: S) {
        self.waiting.retain(|w| w.session != session);
    }

    /// Sessions waiting since before `deadline`.
    pub fn waited_since(&self, deadline: Instant) -> Vec<S> {
        self.waiting
            .iter()
            .filter(|w| w.since <= deadline)
            .map(|w| w.session)
            .collect()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// The global limit on pooled connections per backend server, shared by all workers.
#[derive(Debug)]
pub struct Limits {
    max: usize,
    open: Vec<AtomicUsize>,
}

impl Limits {
    pub fn new(backends: usize, max_per_backend: usize) -> Limits {
        Limits {
            max: max_per_backend,
            open: (0..backends).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Counts one more connection to backend `i`, unless it is at its limit.
    pub fn acquire(&self, i: usize) -> bool {
        self.open[i]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self, i: usize) {
        self.open[i].fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections open to backend `i` now.
    pub fn open(&self, i: usize) -> usize {
        self.open[i].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Key;

    fn b(i: u32) -> BackendId {
        BackendId(Key {
            index: i,
            generation: 0,
        })
    }

    fn key(user: &str) -> PoolKey {
        PoolKey {
            user: user.into(),
            caps: 7,
            charset: 45,
        }
    }

    #[test]
    fn take_prefers_a_matching_connection_then_the_most_recent() {
        let mut p: Pool<u32> = Pool::new();
        p.put(key("a"), b(1));
        p.put(key("a"), b(2));
        p.put(key("a"), b(3));
        let any = |_: BackendId| true;
        assert_eq!(p.take(&key("a"), any, |x| x == b(1)), Some(b(1)));
        assert_eq!(p.take(&key("a"), any, |_| false), Some(b(3)));
        assert_eq!(p.take(&key("b"), any, |_| true), None);
        assert_eq!(p.idle_len(), 1);
        // A connection that does not fit (another backend than the session is routed to) stays.
        assert_eq!(p.take(&key("a"), |x| x != b(2), |_| true), None);
        assert_eq!(p.take_any(|x| x != b(2)), None);
        assert!(p.remove(&key("a"), b(2)));
        assert!(!p.remove(&key("a"), b(2)));
        assert_eq!(p.idle_len(), 0);
    }

    #[test]
    fn waiters_are_served_in_order_per_key() {
        let mut p: Pool<u32> = Pool::new();
        let t = Instant::now();
        for (s, u) in [(1, "a"), (2, "b"), (3, "a")] {
            p.wait(Waiter {
                session: s,
                key: key(u),
                since: t,
            });
        }
        assert_eq!(
            p.next_waiter(&key("a"), |w| w.session != 1)
                .map(|w| w.session),
            Some(3)
        );
        assert_eq!(
            p.next_waiter(&key("a"), |_| true).map(|w| w.session),
            Some(1)
        );
        assert_eq!(p.next_waiter(&key("a"), |_| true), None);
        assert_eq!(p.first_waiter().map(|w| w.session), Some(2));
    }

    #[test]
    fn the_limit_is_per_backend_and_exact() {
        let l = Limits::new(2, 2);
        assert!(l.acquire(0) && l.acquire(0));
        assert!(!l.acquire(0));
        assert!(l.acquire(1));
        l.release(0);
        assert!(l.acquire(0));
        assert_eq!((l.open(0), l.open(1)), (2, 1));
    }
}
