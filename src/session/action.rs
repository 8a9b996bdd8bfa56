//! What the connection state machines ask for: [`Action`]s. A machine's step takes an event and
//! appends actions to a caller-provided vector (no allocation per step); the proxy service
//! ([`super::proxy`]) carries them out in order, with I/O, and routes the notifications to the
//! machine on the other side.

use crate::error::Error;
use crate::protocol::compress::Algorithm;

/// One thing to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes on the client's socket.
    SendClient(Vec<u8>),
    /// Send these bytes on the backend's socket.
    SendBackend(Vec<u8>),
    /// Send bytes `from..to` of the input being stepped to the other side, as they are.
    Forward { from: usize, to: usize },
    /// Send these bytes to the other side (bytes the machine held back or rewrote).
    SendPeer(Vec<u8>),
    /// (backend) The greeting arrived and is kept: the connection is ready for a client.
    Greeting,
    /// (client) The handshake response went to the backend: it relays the authentication now,
    /// with these negotiated capabilities and compression.
    LoginRelayed {
        caps: u32,
        mariadb_ext: u32,
        compress: Option<Algorithm>,
    },
    /// (backend) The server asks the client for authentication data.
    AuthMoreWanted,
    /// (client) The client's answer to the server's authentication request: send it to the
    /// backend, which then no longer waits.
    AuthAnswer(Vec<u8>),
    /// (backend) The authentication ended: the server's OK (`true`) or ERR was relayed.
    AuthDone(bool),
    /// (client) Keep the input from this offset on and feed it again later; stop reading.
    Stall(usize),
    /// (client) Stop reading until told otherwise (held input is at its bound).
    PauseRead,
    /// (backend) A response ended; the tracker has room again.
    ResponseEnd,
    /// (pooled backend) The response of a pipelined command begins: what follows goes to this
    /// session (`None`: its client left, drop it).
    Responder(Option<super::PooledId>),
    /// End the session.
    End(End),
}

/// How a session ends.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Close now (the client left, or nothing may be said to it).
    Quiet,
    /// Send what is queued, then close (the server's own answer ended it).
    Flush,
    /// Tell the client (an ERR packet, where the protocol allows one now), then close.
    Error(Error),
}
