//! The worker's coarse timer wheel: handshake, idle, linger and pool deadlines without a timeout
//! SQE per operation. Two levels: a fine wheel of [`FINE_SLOTS`] ticks of [`TICK_MS`] ms and a
//! coarse wheel whose slots each span one turn of the fine wheel; coarse entries move to the fine
//! wheel when their span comes. A deadline fires within one tick after it is due.
//!
//! There is no cancel: a timer carries a `u64` token and its owner checks, when it fires, whether
//! the deadline still matters (a connection keeps its own deadline and re-arms if it moved). That
//! keeps one entry per connection at most and no allocation per query.

use std::time::{Duration, Instant};

/// Resolution of the wheel.
pub const TICK_MS: u64 = 10;
/// Slots of the fine wheel (its turn spans `FINE_SLOTS * TICK_MS` ms).
pub const FINE_SLOTS: u64 = 128;
/// Slots of the coarse wheel; deadlines further out than one coarse turn wait in their slot
/// for the right round.
pub const COARSE_SLOTS: u64 = 256;

#[derive(Debug, Clone, Copy)]
struct Entry {
    due: u64,
    token: u64,
}

/// Deadlines by tick, each with the token that is handed back when it fires.
pub struct TimerWheel {
    origin: Instant,
    /// Every tick up to and including this one has fired.
    done: u64,
    fine: Vec<Vec<Entry>>,
    coarse: Vec<Vec<Entry>>,
    pending: usize,
}

impl TimerWheel {
    pub fn new(now: Instant) -> TimerWheel {
        TimerWheel {
            origin: now,
            done: 0,
            fine: (0..FINE_SLOTS).map(|_| Vec::new()).collect(),
            coarse: (0..COARSE_SLOTS).map(|_| Vec::new()).collect(),
            pending: 0,
        }
    }

    /// The first tick at or after `at` (microseconds count: a deadline in the middle of a
    /// millisecond must not round down into a tick that fires before it).
    fn tick_of(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_micros() as u64).div_ceil(TICK_MS * 1000)
    }

    fn instant_of(&self, tick: u64) -> Instant {
        self.origin + Duration::from_millis(tick * TICK_MS)
    }

    /// Timers waiting.
    pub fn len(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Hands `token` back from [`TimerWheel::expire`] once `at` has passed.
    pub fn insert(&mut self, at: Instant, token: u64) {
        let due = self.tick_of(at).max(self.done + 1);
        self.place(Entry { due, token });
        self.pending += 1;
    }

    fn place(&mut self, e: Entry) {
        if e.due - self.done <= FINE_SLOTS {
            self.fine[(e.due % FINE_SLOTS) as usize].push(e);
        } else {
            self.coarse[((e.due / FINE_SLOTS) % COARSE_SLOTS) as usize].push(e);
        }
    }

    /// Fires every timer due at `now` or earlier, appending their tokens to `out` in deadline
    /// order (ties in insertion order).
    pub fn expire(&mut self, now: Instant, out: &mut Vec<u64>) {
        let target =
            (now.saturating_duration_since(self.origin).as_micros() as u64) / (TICK_MS * 1000);
        while self.done < target {
            if self.pending == 0 {
                self.done = target;
                return;
            }
            let tick = self.done + 1;
            if tick.is_multiple_of(FINE_SLOTS) {
                self.cascade(tick);
            }
            // Every entry of this slot is due now: it was placed less than one turn ahead.
            let slot = &mut self.fine[(tick % FINE_SLOTS) as usize];
            self.pending -= slot.len();
            out.extend(slot.drain(..).map(|e| e.token));
            self.done = tick;
        }
    }

    /// The fine wheel starts a new turn at `tick`: entries of the coarse slot whose deadline
    /// falls in this turn move to the fine wheel.
    fn cascade(&mut self, tick: u64) {
        let idx = ((tick / FINE_SLOTS) % COARSE_SLOTS) as usize;
        let entries = std::mem::take(&mut self.coarse[idx]);
        let mut keep = Vec::new();
        for e in entries {
            if e.due < tick + FINE_SLOTS {
                self.fine[(e.due % FINE_SLOTS) as usize].push(e);
            } else {
                keep.push(e);
            }
        }
        self.coarse[idx] = keep;
    }

    /// When the next timer may fire: the deadline of the earliest non-empty fine slot, or the
    /// start of the next fine turn when only coarse entries wait; `None` when nothing waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        for k in 1..=FINE_SLOTS {
            let tick = self.done + k;
            if !self.fine[(tick % FINE_SLOTS) as usize].is_empty() {
                return Some(self.instant_of(tick));
            }
        }
        let next_turn = (self.done / FINE_SLOTS + 1) * FINE_SLOTS;
        Some(self.instant_of(next_turn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_inside_a_millisecond_never_fires_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let at = t0 + Duration::from_micros(1_000_500);
        w.insert(at, 7);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_micros(1_000_200), &mut out);
        assert!(out.is_empty(), "fired 300 µs before its deadline");
        w.expire(t0 + Duration::from_millis(1_010), &mut out);
        assert_eq!(out, [7]);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_in_deadline_order_and_not_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(t0 + ms(35), 3);
        w.insert(t0 + ms(12), 1);
        w.insert(t0 + ms(20), 2);
        let mut out = Vec::new();
        w.expire(t0 + ms(11), &mut out);
        assert!(out.is_empty(), "nothing is due at 11 ms");
        w.expire(t0 + ms(40), &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn far_deadlines_cascade_through_the_coarse_wheel() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        // One inside the fine horizon, one a few turns out, one beyond a whole coarse turn.
        let far = FINE_SLOTS * TICK_MS * (COARSE_SLOTS + 3);
        w.insert(t0 + ms(50), 1);
        w.insert(t0 + ms(5_000), 2);
        w.insert(t0 + ms(far), 3);
        let mut out = Vec::new();
        w.expire(t0 + ms(4_990), &mut out);
        assert_eq!(out, vec![1]);
        w.expire(t0 + ms(5_000), &mut out);
        assert_eq!(out, vec![1, 2]);
        w.expire(t0 + ms(far - TICK_MS), &mut out);
        assert_eq!(out, vec![1, 2], "the far one is not due before its round");
        w.expire(t0 + ms(far), &mut out);
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick_and_next_deadline_tracks_them() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut out = Vec::new();
        w.expire(t0 + ms(100), &mut out);
        w.insert(t0, 9);
        let next = w.next_deadline().unwrap();
        assert!(next > t0 + ms(100) && next <= t0 + ms(110), "{next:?}");
        w.expire(next, &mut out);
        assert_eq!(out, vec![9]);
    }

    #[test]
    fn many_timers_all_fire_once() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        for i in 0..10_000u64 {
            w.insert(t0 + ms((i * 7919) % 60_000), i);
        }
        let mut out = Vec::new();
        let mut t = t0;
        while !w.is_empty() {
            t += ms(333);
            w.expire(t, &mut out);
        }
        out.sort_unstable();
        assert_eq!(out, (0..10_000).collect::<Vec<_>>());
    }
}
