//! Where a worker's hook calls run. Sessions queue [`Call`]s as they decode packets; decisions
//! come back as [`Decision`]s, taken by the worker once per loop turn.
//! - Inline: the worker's own VM runs the turn's calls at the end of the turn (after every
//!   completion of the turn was decoded), then their decisions are applied.
//! - Thread: a thread of the worker's own holds the VM and takes calls from a bounded queue
//!   (`lua_queue_depth`); while a script runs, the worker goes on receiving and decoding. The
//!   thread wakes the worker (its inbox eventfd) when the first decision of a batch is ready.
//!   A call that finds the queue full waits in the worker until there is room.
//!
//! An inline VM lives in a thread-local map of the worker's thread (a Lua state may not move
//! between threads, and the worker's service is handed back to the spawning thread at exit).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::vm::{Vm, VmCounts};
use super::{Call, Decision, ScriptShared};

/// Something that can wake the worker from another thread.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// A worker's executor.
pub enum Executor {
    Inline(Inline),
    Thread(Threaded),
}

thread_local! {
    /// The inline VMs of this thread, by [`Inline::id`].
    static VMS: RefCell<HashMap<u64, Vm>> = RefCell::new(HashMap::new());
}
static NEXT_INLINE: AtomicU64 = AtomicU64::new(0);

pub struct Inline {
    id: u64,
    queue: VecDeque<Call>,
}

impl Inline {
    fn new(shared: Arc<ScriptShared>) -> Inline {
        let id = NEXT_INLINE.fetch_add(1, Ordering::Relaxed);
        if let Some(vm) = make_vm(shared) {
            VMS.with(|m| m.borrow_mut().insert(id, vm));
        }
        Inline {
            id,
            queue: VecDeque::new(),
        }
    }

    fn run(&self, call: Call) -> Decision {
        VMS.with(|m| match m.borrow_mut().get_mut(&self.id) {
            Some(vm) => vm.run(call),
            None => Decision::none(call.conn),
        })
    }

    fn counts(&self) -> VmCounts {
        VMS.with(|m| m.borrow().get(&self.id).map(|vm| vm.counts))
            .unwrap_or_default()
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        let _ = VMS.try_with(|m| m.borrow_mut().remove(&self.id));
    }
}

pub struct Threaded {
    tx: Option<SyncSender<Call>>,
    /// Calls the full queue did not take yet, oldest first.
    waiting: VecDeque<Call>,
    done: Arc<Mutex<Vec<Decision>>>,
    counts: Arc<Mutex<VmCounts>>,
    thread: Option<JoinHandle<()>>,
}

fn make_vm(shared: Arc<ScriptShared>) -> Option<Vm> {
    match Vm::new(shared) {
        Ok(vm) => Some(vm),
        Err(e) => {
            log::error!("lua: the VM could not start: {e}");
            None
        }
    }
}

impl Executor {
    /// The executor `shared` asks for; `wake` wakes the worker (thread mode).
    pub fn new(shared: Arc<ScriptShared>, wake: Option<Waker>) -> Executor {
        match (shared.executor_thread, wake) {
            (true, Some(wake)) => Executor::Thread(Threaded::start(shared, wake)),
            _ => Executor::Inline(Inline::new(shared)),
        }
    }

    /// Queues a call.
    pub fn submit(&mut self, call: Call) {
        match self {
            Executor::Inline(i) => i.queue.push_back(call),
            Executor::Thread(t) => {
                t.waiting.push_back(call);
                t.feed();
            }
        }
    }

    /// Runs (inline) or collects (thread) what is decided; appends the decisions to `out`.
    pub fn turn(&mut self, out: &mut Vec<Decision>) {
        match self {
            Executor::Inline(i) => {
                while let Some(call) = i.queue.pop_front() {
                    out.push(i.run(call));
                }
            }
            Executor::Thread(t) => {
                t.feed();
                out.append(&mut t.done.lock().unwrap_or_else(|p| p.into_inner()));
            }
        }
    }

    /// What the VM did so far.
    pub fn counts(&self) -> VmCounts {
        match self {
            Executor::Inline(i) => i.counts(),
            Executor::Thread(t) => *t.counts.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl Threaded {
    fn start(shared: Arc<ScriptShared>, wake: Waker) -> Threaded {
        let (tx, rx) = sync_channel::<Call>(shared.queue_depth);
        let done = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new(VmCounts::default()));
        let (done2, counts2) = (Arc::clone(&done), Arc::clone(&counts));
        let name = std::thread::current()
            .name()
            .map(|n| format!("{n}-lua"))
            .unwrap_or_else(|| "rp-lua".into());
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut vm = make_vm(shared);
            for call in rx {
                let d = match vm.as_mut() {
                    Some(vm) => vm.run(call),
                    None => Decision::none(call.conn),
                };
                let first = {
                    let mut q = done2.lock().unwrap_or_else(|p| p.into_inner());
                    q.push(d);
                    q.len() == 1
                };
                if first {
                    wake();
                }
                if let Some(vm) = &vm {
                    *counts2.lock().unwrap_or_else(|p| p.into_inner()) = vm.counts;
                }
            }
        });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!("lua: the executor thread could not start: {e}");
                None
            }
        };
        Threaded {
            tx: Some(tx),
            waiting: VecDeque::new(),
            done,
            counts,
            thread,
        }
    }

    /// Moves waiting calls into the queue while it has room.
    fn feed(&mut self) {
        let Some(tx) = &self.tx else { return };
        while let Some(call) = self.waiting.pop_front() {
            match tx.try_send(call) {
                Ok(()) => {}
                Err(TrySendError::Full(call)) => {
                    self.waiting.push_front(call);
                    return;
                }
                Err(TrySendError::Disconnected(call)) => {
                    let mut q = self.done.lock().unwrap_or_else(|p| p.into_inner());
                    q.push(Decision::none(call.conn));
                }
            }
        }
    }
}

impl Drop for Threaded {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
