//! The MySQL/MariaDB wire codec: pure and I/O-free. Bytes in, typed views that borrow from the
//! packet out; encoders write into caller-provided buffers. Nothing here panics on any input.
//!
//! - [`auth`]: authentication plugins' answers (native, caching_sha2 fast path) and checks.
//! - [`auth_server`]: authentication, server side: credentials, checks, the login state machine.
//! - [`binary`]: the binary protocol's parameter values (COM_STMT_EXECUTE), decoded.
//! - [`cursor`]: the one bounds-checked reader (fixed ints, length-encoded ints and strings).
//! - [`framing`]: packet headers, 16 MiB continuation packets, the streaming packet splitter.
//! - [`handshake`]: HandshakeV10, HandshakeResponse41, AuthSwitchRequest, AuthMoreData.
//! - [`packets`]: OK / ERR / EOF.
//! - [`resultset`]: text resultsets as whole packets: encoding generated ones, decoding received ones.
//! - [`command`]: client commands as borrowed views.
//! - [`compress`]: the compressed protocol (zlib/zstd): streaming inflate with bounded memory.
//! - [`scanner`]: finds where each response ends without decoding rows.
//! - [`sql`]: a statement classifier (not a parser) for COM_QUERY text: kind and pooling flags.
//! - [`track`]: OK packets with session-state tracking (CLIENT_SESSION_TRACK): the tracked items,
//!   and the same OK re-encoded for a client that did not negotiate tracking.

pub mod auth;
pub mod auth_server;
pub mod binary;
pub mod command;
pub mod compress;
pub mod constants;
pub mod cursor;
pub mod error;
pub mod framing;
pub mod handshake;
pub mod hex;
pub mod packets;
pub mod resultset;
pub mod scanner;
pub mod sql;
pub mod track;

pub use error::{ProtoError, Result};
