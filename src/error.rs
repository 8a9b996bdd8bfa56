//! Errors of the proxy's data path: each says which side failed (the client, a backend, or the
//! proxy itself), whether the statement may safely be retried on another backend, what the client
//! is told, and what only the log is told. The one errno map ([`Error::io`]) and the one
//! error-to-ERR-packet map ([`Error::write_err_packet`]) live here.
//!
//! Client-facing codes are server-range (1xxx) or ringproxy's own (9xxx), never the 2xxx client
//! range: libmariadb (3.3.8+, CONC-648) rejects ERR packets carrying client codes as "malformed
//! packet" at any point of a connection, so where a client library would report its own error
//! (a lost connection) the proxy closes the connection and lets it.

use std::io;

use crate::protocol::constants::*;
use crate::protocol::packets;

/// Which side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    /// The proxy itself (limits, shutdown, its own bugs).
    Proxy,
}

/// Whether the failed statement may be sent again, to this or another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing of it reached a server (or it was refused before it ran).
    Safe,
    /// It may have run, partly or wholly.
    Unsafe,
}

/// An error of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub side: Side,
    pub retry: Retry,
    /// MySQL error code the client gets.
    pub code: u16,
    pub sqlstate: [u8; 5],
    /// What the client is told.
    pub message: String,
    /// What only the log says (addresses, errno, internals); empty when nothing more.
    pub detail: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} error {} ({}): {}",
            self.side,
            self.code,
            if self.retry == Retry::Safe {
                "retry safe"
            } else {
                "retry unsafe"
            },
            self.message
        )?;
        if !self.detail.is_empty() {
            write!(f, " [{}]", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl Error {
    fn new(side: Side, retry: Retry, code: u16, state: &[u8; 5], message: String) -> Error {
        Error {
            side,
            retry,
            code,
            sqlstate: *state,
            message,
            detail: String::new(),
        }
    }

    /// Adds log-only detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Error {
        self.detail = detail.into();
        self
    }

    /// The one errno map: an I/O failure on `side`, doing `what`.
    pub fn io(side: Side, what: &str, e: &io::Error) -> Error {
        let retry = match e.raw_os_error() {
            // Refused, unreachable, no route, timed out connecting: nothing was sent.
            Some(libc::ECONNREFUSED | libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENFILE) => {
                Retry::Safe
            }
            _ if e.kind() == io::ErrorKind::TimedOut && what.contains("connect") => Retry::Safe,
            _ => Retry::Unsafe,
        };
        let code = match side {
            Side::Backend => ER_PROXY_BACKEND_UNREACHABLE,
            Side::Client | Side::Proxy => ER_NET_READ_ERROR,
        };
        Error::new(
            side,
            retry,
            code,
            b"08S01",
            format!("ringproxy: {what} failed"),
        )
        .detail(e.to_string())
    }

    /// No backend could be connected to (the client is told no address).
    pub fn backend_unreachable(detail: impl Into<String>) -> Error {
        Error::new(
            Side::Backend,
            Retry::Safe,
            ER_PROXY_BACKEND_UNREACHABLE,
            b"HY000",
            "ringproxy: can't connect to a backend MySQL server".into(),
        )
        .detail(detail)
    }

    /// The backend broke the protocol or went away in the middle of something.
    pub fn backend_failed(retry: Retry, detail: impl Into<String>) -> Error {
        Error::new(
            Side::Backend,
            retry,
            ER_PROXY_BACKEND_UNREACHABLE,
            b"08S01",
            "ringproxy: the backend connection failed".into(),
        )
        .detail(detail)
    }

    /// The client's bytes are not the MySQL protocol.
    pub fn client_protocol(detail: impl Into<String>) -> Error {
        let detail = detail.into();
        Error::new(
            Side::Client,
            Retry::Safe,
            ER_NET_READ_ERROR,
            b"08S01",
            format!("ringproxy: malformed packet from client: {detail}"),
        )
    }

    /// The client's handshake is not acceptable.
    pub fn bad_handshake(message: impl Into<String>) -> Error {
        Error::new(
            Side::Client,
            Retry::Safe,
            ER_HANDSHAKE_ERROR,
            b"08S01",
            message.into(),
        )
    }

    /// A client packet over `max_packet_size`.
    pub fn packet_too_large(max: u64) -> Error {
        Error::new(
            Side::Client,
            Retry::Safe,
            ER_NET_PACKET_TOO_LARGE,
            b"08S01",
            format!("Got a packet bigger than 'max_packet_size' ({max} bytes) of ringproxy"),
        )
    }

    /// A connection refused by a limit of the proxy.
    pub fn too_many_connections(message: impl Into<String>) -> Error {
        Error::new(
            Side::Proxy,
            Retry::Safe,
            ER_CON_COUNT_ERROR,
            b"08004",
            message.into(),
        )
    }

    /// The client took too long to log in.
    pub fn handshake_timeout() -> Error {
        Error::new(
            Side::Client,
            Retry::Safe,
            ER_HANDSHAKE_ERROR,
            b"08S01",
            "Bad handshake: ringproxy's handshake timeout passed".into(),
        )
    }

    /// A KILL of the session (ER_CONNECTION_KILLED, as MariaDB words it).
    pub fn connection_killed() -> Error {
        Error::new(
            Side::Proxy,
            Retry::Unsafe,
            1927,
            b"70100",
            "Connection was killed".into(),
        )
    }

    /// The proxy is stopping.
    pub fn shutting_down() -> Error {
        Error::new(
            Side::Proxy,
            Retry::Safe,
            ER_SERVER_SHUTDOWN,
            b"08S01",
            "ringproxy is shutting down".into(),
        )
    }

    /// The one error-to-ERR-packet map: appends this error as an ERR packet with sequence id
    /// `seq` (protocol 4.1 layout, with the SQL state).
    pub fn write_err_packet(&self, seq: u8, out: &mut Vec<u8>) {
        packets::write_err_packet(out, seq, self.code, &self.sqlstate, self.message.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packets::parse_err;

    #[test]
    fn client_range_codes_are_never_sent() {
        let errs = [
            Error::io(
                Side::Backend,
                "connect",
                &io::Error::from_raw_os_error(libc::ECONNRESET),
            ),
            Error::io(
                Side::Client,
                "recv",
                &io::Error::from_raw_os_error(libc::EPIPE),
            ),
            Error::backend_unreachable("x"),
            Error::backend_failed(Retry::Unsafe, "x"),
            Error::client_protocol("x"),
            Error::bad_handshake("x"),
            Error::packet_too_large(1),
            Error::too_many_connections("x"),
            Error::handshake_timeout(),
            Error::shutting_down(),
        ];
        for e in errs {
            assert!(!(2000..3000).contains(&e.code), "{e}");
        }
    }

    #[test]
    fn the_errno_map_says_which_failures_are_safe_to_retry() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            Error::io(Side::Backend, "connect", &refused).retry,
            Retry::Safe
        );
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(
            Error::io(Side::Backend, "recv", &reset).retry,
            Retry::Unsafe
        );
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        assert_eq!(
            Error::io(Side::Backend, "connect", &timeout).retry,
            Retry::Safe
        );
    }

    #[test]
    fn detail_stays_out_of_the_err_packet() {
        let e = Error::backend_unreachable("10.0.0.5:3306: Connection refused");
        let mut out = Vec::new();
        e.write_err_packet(3, &mut out);
        assert_eq!(out[3], 3);
        let p = parse_err(&out[4..], CLIENT_PROTOCOL_41).unwrap();
        assert_eq!(p.code, ER_PROXY_BACKEND_UNREACHABLE);
        let msg = String::from_utf8_lossy(p.message);
        assert!(!msg.contains("10.0.0.5"), "{msg}");
        assert!(e.to_string().contains("10.0.0.5"));
    }
}
