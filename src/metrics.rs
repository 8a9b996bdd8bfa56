//! Per-worker counters. The hot path bumps plain `u64` fields of [`WorkerStats`] owned by its
//! worker; about every tick the worker copies them into its [`SharedStats`] (relaxed atomics), from
//! which other threads (shutdown summary, benchmarks, later the admin interface) read snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one worker, owned by its thread.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct WorkerStats { $($(#[$doc])* pub $name: u64,)* }

        /// The last published copy of one worker's counters.
        #[derive(Debug, Default)]
        pub struct SharedStats { $($name: AtomicU64,)* }

        impl SharedStats {
            pub fn store(&self, s: &WorkerStats) {
                $(self.$name.store(s.$name, Ordering::Relaxed);)*
            }
            pub fn load(&self) -> WorkerStats {
                WorkerStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl WorkerStats {
            /// Adds another worker's counters (gauges add up too: totals across workers).
            pub fn add(&mut self, o: &WorkerStats) {
                $(self.$name += o.$name;)*
            }
            /// (name, value) pairs, for printing.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

stats! {
    /// Client connections accepted.
    accepted,
    /// Client connections open now (gauge).
    active,
    /// Client connections refused (limits, full fixed-file table).
    refused,
    /// Backend connections that failed to connect.
    backend_connect_errors,
    /// Packets client → backend and backend → client (physical packets).
    packets_c2s,
    packets_s2c,
    /// Bytes received and sent on all sockets.
    bytes_in,
    bytes_out,
    /// Bytes copied into owned send buffers (zero-copy forwarding copies none).
    bytes_copied,
    /// Commands the clients sent, and responses that ended.
    commands,
    responses,
    /// io_uring_enter calls, SQEs submitted, CQEs reaped.
    enter_calls,
    sqes,
    cqes,
    /// Send operations (one vectored send each) and recv completions with data.
    sends,
    recvs,
    /// Multishot recvs ended for lack of a provided buffer.
    recv_nobufs,
    /// Times reading a socket was paused for backpressure.
    read_pauses,
    /// Sessions ended by a protocol error or an oversized packet.
    protocol_errors,
    /// Receive buffers free at the last publication (gauge).
    buffers_free,
    /// Fixed-file slots in use at the last publication (gauge).
    fixed_slots_in_use,
    /// Heap bytes held by this worker's I/O at the last publication (gauge).
    memory_bytes,
    /// Sockets closed hard because their output did not drain before the linger deadline.
    linger_timeouts,
    /// Backend connections that failed or broke the protocol during a session.
    backend_errors,
    /// Backend connections retired with a finished handshake (prewarmed ones that aged, or ones
    /// whose client left mid-handshake).
    backend_retired,
    /// Clients ended by the handshake timeout, and by the idle timeout.
    handshake_timeouts,
    idle_timeouts,
    /// Times a client's input was held back because its backend had no room for more commands.
    client_stalls,
    /// Pooled sessions open now, and pooled backend connections open and held by a session
    /// now (gauges): sessions / held is the multiplexing ratio.
    pooled_sessions,
    pooled_conns,
    pooled_conns_held,
    /// Pooled logins that succeeded, and that were refused (wrong password, unknown user...).
    pooled_logins,
    pooled_login_failures,
    /// A session got an idle connection already in its state (hit), one it had to change
    /// (replay), or none (miss: a new connection or a wait).
    pool_hits,
    pool_replays,
    pool_misses,
    /// Sessions that waited for a connection, and waits that ran out (the query got an error).
    pool_waits,
    pool_wait_timeouts,
    /// Commands pipelined behind other sessions' commands on a busy connection (instead of a
    /// wait), and pipelined commands sent again on another connection after theirs failed.
    pool_pipelined,
    pool_pipeline_retries,
    /// Connections reset (COM_RESET_CONNECTION) before going back to the pool, and closed
    /// instead of pooled (state that cannot be reset, or the pool is past its limits).
    pool_resets,
    pool_closes,
    /// Idle connections of one user handed to another's session with COM_CHANGE_USER.
    pool_user_changes,
    /// Connections with a default schema closed (and replaced) because a session without one
    /// was to run on them.
    pooled_schema_swaps,
    /// Statements prepared again on a connection that had not seen them (lazy re-prepares),
    /// and server statements closed to keep a connection under its bound.
    reprepares,
    stmt_evictions,
    /// Prepares answered from the proxy's cache of prepare responses (no backend).
    prepare_cache_hits,
    /// User-variable read-backs after statements that assigned them.
    user_var_reads,
    /// Commands after which the session kept its connection, by reason.
    pin_transaction,
    pin_autocommit,
    pin_locks,
    pin_temp_table,
    pin_text_prepare,
    pin_cursor,
    pin_long_data,
    pin_warnings,
    pin_found_rows,
    pin_untracked,
    pin_other,
    /// Sessions that fell back to pass-through (a plugin the proxy cannot verify).
    pooled_passthrough,
    /// Scripted sessions started; Lua hook calls run, and those that failed (an error, the
    /// instruction budget, the memory limit).
    script_sessions,
    lua_calls,
    lua_errors,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_round_trips_and_add_sums() {
        let s = WorkerStats {
            accepted: 3,
            bytes_in: 10,
            ..Default::default()
        };
        let shared = SharedStats::default();
        shared.store(&s);
        assert_eq!(shared.load(), s);
        let mut total = WorkerStats::default();
        total.add(&s);
        total.add(&s);
        assert_eq!(total.accepted, 6);
        assert_eq!(total.bytes_in, 20);
        assert!(total.fields().contains(&("accepted", 6)));
    }
}
