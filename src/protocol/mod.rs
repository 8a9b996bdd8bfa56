//! The MySQL/MariaDB wire codec: pure and I/O-free. Bytes in, typed views that borrow from the
//! packet out; encoders write into caller-provided buffers. Nothing here panics on any input.
//!
//! - [`auth`]: authentication plugins' answers (native, caching_sha2 fast path) and checks.
//! - [`cursor`]: the one bounds-checked reader (fixed ints, length-encoded ints and strings).
//! - [`framing`]: packet headers, 16 MiB continuation packets, the streaming packet splitter.
//! - [`handshake`]: HandshakeV10, HandshakeResponse41, AuthSwitchRequest, AuthMoreData.
//! - [`packets`]: OK / ERR / EOF.
//! - [`command`]: client commands as borrowed views.
//! - [`compress`]: the compressed protocol (zlib/zstd): streaming inflate with bounded memory.
//! - [`scanner`]: finds where each response ends without decoding rows.

pub mod auth;
pub mod command;
pub mod compress;
pub mod constants;
pub mod cursor;
pub mod error;
pub mod framing;
pub mod handshake;
pub mod packets;
pub mod scanner;

pub use error::{ProtoError, Result};
