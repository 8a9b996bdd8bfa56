//! A minimal blocking raw-socket MySQL client for integration tests that need to misbehave on the wire.
//!
//! It owns only what the fault tests need: the socket side of framing (read/write one packet, with
//! 16 MiB continuation on read), the protocol-41 handshake with a `mysql_native_password` login,
//! `COM_QUERY` with a resultset reader that counts rows without keeping them, and an optional read
//! throttle that makes the client a deliberately slow reader. Every socket operation has a timeout so
//! a test can fail but never hang. The codec itself (packet headers and splitting, greeting,
//! handshake response, auth switch, OK/ERR/EOF packets, length-encoded integers, the native
//! password scramble) is the library's, `ringproxy::protocol`.
#![allow(dead_code)] // each test binary that includes this module uses a different subset

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use ringproxy::protocol::auth::native_password_scramble;
use ringproxy::protocol::constants::{
    CLIENT_CONNECT_WITH_DB, CLIENT_LONG_FLAG, CLIENT_LONG_PASSWORD, CLIENT_MULTI_RESULTS,
    CLIENT_PLUGIN_AUTH, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION, CLIENT_TRANSACTIONS,
    EOF_HEADER, ERR_HEADER, HEADER_LEN, LOCAL_INFILE_HEADER, MAX_PAYLOAD_LEN, OK_HEADER,
    SERVER_MORE_RESULTS_EXISTS,
};
use ringproxy::protocol::cursor::Cursor;
use ringproxy::protocol::framing::{parse_header, write_packet};
use ringproxy::protocol::handshake::{
    encode_handshake_response41, parse_auth_switch_request, parse_handshake_v10,
    HandshakeResponse41,
};
use ringproxy::protocol::packets::{is_eof_packet, parse_eof, parse_ok};

/// The native-password answer to greeting `g` for `password`.
fn auth_for(g: &Greeting, password: &str) -> Vec<u8> {
    native_password_scramble(password.as_bytes(), &g.scramble)
}

/// The HandshakeResponse41 this client sends to greeting `g`: protocol 4.1, native password,
/// the capabilities both sides have, plus `extra_caps` (e.g. CLIENT_COMPRESS) as given.
fn response_fields<'a>(
    g: &Greeting,
    user: &'a str,
    auth: &'a [u8],
    db: Option<&'a str>,
    extra_caps: u32,
) -> HandshakeResponse41<'a> {
    let mut caps = CLIENT_LONG_PASSWORD
        | CLIENT_LONG_FLAG
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_MULTI_RESULTS
        | CLIENT_PLUGIN_AUTH;
    if db.is_some() {
        caps |= CLIENT_CONNECT_WITH_DB;
    }
    caps &= g.capabilities | CLIENT_LONG_PASSWORD;
    HandshakeResponse41 {
        capabilities: caps | extra_caps,
        max_packet_size: 16 << 20,
        charset: 33, // utf8_general_ci
        mariadb_ext_capabilities: 0,
        username: user.as_bytes(),
        auth_response: auth,
        database: db.map(str::as_bytes),
        auth_plugin_name: Some(b"mysql_native_password"),
        connect_attrs: None,
    }
}

/// A whole HandshakeResponse41 packet (sequence id 1) answering greeting `g`, for tests that
/// write it themselves (pipelined behind, cut short, with extra capabilities).
pub fn handshake_response(
    g: &Greeting,
    user: &str,
    password: &str,
    db: Option<&str>,
    extra_caps: u32,
) -> Vec<u8> {
    let auth = auth_for(g, password);
    let mut p = Vec::with_capacity(128);
    encode_handshake_response41(&response_fields(g, user, &auth, db, extra_caps), &mut p);
    let mut out = Vec::with_capacity(p.len() + HEADER_LEN);
    write_packet(&mut out, 1, &p);
    out
}

/// Reads one physical packet from a plain stream: (sequence id, payload).
pub fn read_packet_from(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; HEADER_LEN];
    s.read_exact(&mut hdr)?;
    let h = parse_header(hdr);
    let mut p = vec![0; h.len as usize];
    s.read_exact(&mut p)?;
    Ok((h.seq, p))
}

/// Reads the greeting from a plain stream (10 s at most).
pub fn read_greeting_from(s: &mut TcpStream) -> Greeting {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (_, p) = read_packet_from(s).expect("a greeting packet");
    parse_greeting(&p).expect("a greeting")
}

/// Command bytes the tests send by hand.
pub use ringproxy::protocol::constants::{COM_QUERY, COM_QUIT};

/// Default read/write timeout for every socket operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// An ERR packet as the peer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: u16,
    pub sql_state: Option<String>,
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sql_state {
            Some(state) => write!(f, "ERROR {} ({}): {}", self.code, state, self.message),
            None => write!(f, "ERROR {}: {}", self.code, self.message),
        }
    }
}

/// Why a raw-client operation failed.
#[derive(Debug)]
pub enum RawError {
    /// The socket failed, timed out, or the peer closed it (`UnexpectedEof`).
    Io(io::Error),
    /// The peer answered with an ERR packet.
    Server(ServerError),
    /// The peer sent bytes this client does not understand.
    Protocol(String),
}

impl RawError {
    /// True when the peer closed the connection (EOF or reset) rather than timing out.
    pub fn is_closed(&self) -> bool {
        match self {
            RawError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// True when a socket operation ran into its timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            RawError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawError::Io(e) => write!(f, "i/o: {e} ({:?})", e.kind()),
            RawError::Server(e) => write!(f, "server: {e}"),
            RawError::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

impl std::error::Error for RawError {}

impl From<io::Error> for RawError {
    fn from(e: io::Error) -> Self {
        RawError::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, RawError>;

/// What the server's initial handshake packet told us.
#[derive(Debug, Clone)]
pub struct Greeting {
    pub protocol_version: u8,
    pub server_version: String,
    pub connection_id: u32,
    pub capabilities: u32,
    pub scramble: Vec<u8>,
    pub auth_plugin: String,
}

/// Parses an ERR packet payload (first byte 0xff); `None` if it is not one.
pub fn parse_err(payload: &[u8]) -> Option<ServerError> {
    let e = ringproxy::protocol::packets::parse_err(payload, CLIENT_PROTOCOL_41).ok()?;
    Some(ServerError {
        code: e.code,
        sql_state: e
            .sql_state
            .map(|s| String::from_utf8_lossy(&s).into_owned()),
        message: String::from_utf8_lossy(e.message).into_owned(),
    })
}

/// The column count that starts a resultset.
fn column_count(payload: &[u8]) -> Option<u64> {
    Cursor::new(payload).lenenc_int().ok()
}

/// Status flags of an OK packet, if it parses.
fn ok_status(payload: &[u8]) -> Option<u16> {
    parse_ok(payload, CLIENT_PROTOCOL_41)
        .ok()
        .map(|ok| ok.status)
}

/// True for a classic EOF packet (0xfe, shorter than 9 bytes).
fn is_eof(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|&b| is_eof_packet(payload.len() as u32, b))
}

/// Status flags of an EOF packet (0 for the short forms).
fn eof_status(payload: &[u8]) -> u16 {
    parse_eof(payload).map_or(0, |eof| eof.status)
}

/// Totals of a whole `COM_QUERY` response (all result sets of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOutcome {
    /// Rows over all result sets.
    pub rows: u64,
    /// Bytes of row payloads over all result sets.
    pub row_bytes: u64,
    /// Result sets (0 for a plain OK).
    pub result_sets: u32,
    /// The first column of the first row, as text, if any row came (`None` for SQL NULL too).
    pub first_value: Option<String>,
}

/// One blocking connection speaking the client side of the protocol by hand.
pub struct RawConn {
    stream: TcpStream,
    /// Sequence id expected on the next packet read / used for the next write.
    seq: u8,
    /// When set, each socket read asks for at most `.0` bytes and is followed by a sleep of `.1`.
    throttle: Option<(usize, Duration)>,
    /// Set while a resultset is being streamed by `next_row`.
    in_rows: bool,
    /// The greeting, once read.
    pub greeting: Option<Greeting>,
}

impl RawConn {
    /// Opens a TCP connection to 127.0.0.1:`port` (connect, read and write timeouts set).
    pub fn connect(port: u16) -> io::Result<RawConn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            seq: 0,
            throttle: None,
            in_rows: false,
            greeting: None,
        })
    }

    /// Connects, reads the greeting and logs in with `mysql_native_password`.
    pub fn login(port: u16, user: &str, password: &str, db: Option<&str>) -> Result<RawConn> {
        let mut conn = RawConn::connect(port)?;
        conn.read_greeting()?;
        conn.authenticate(user, password, db)?;
        Ok(conn)
    }

    /// Changes the read timeout of the socket.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// Makes every later socket read small and slow (`None` restores full speed).
    pub fn set_throttle(&mut self, throttle: Option<(usize, Duration)>) {
        self.throttle = throttle;
    }

    /// Writes raw bytes (no framing) and flushes.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let want = match self.throttle {
                Some((chunk, _)) => chunk.min(buf.len() - done),
                None => buf.len() - done,
            };
            let n = match self.stream.read(&mut buf[done..done + want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("peer closed after {done} of {} bytes", buf.len()),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            done += n;
            if let Some((_, pause)) = self.throttle {
                thread::sleep(pause);
            }
        }
        Ok(())
    }

    /// Reads one logical packet (joining 16 MiB continuations); returns (first sequence id, payload).
    pub fn read_packet(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut payload = Vec::new();
        let mut first_seq = None;
        loop {
            let mut header = [0u8; HEADER_LEN];
            self.fill(&mut header)?;
            let h = parse_header(header);
            let (len, seq) = (h.len as usize, h.seq);
            first_seq.get_or_insert(seq);
            self.seq = seq.wrapping_add(1);
            let start = payload.len();
            payload.resize(start + len, 0);
            self.fill(&mut payload[start..])?;
            if len < MAX_PAYLOAD_LEN {
                break;
            }
        }
        Ok((first_seq.unwrap_or(0), payload))
    }

    /// Writes one logical packet with sequence id `seq` (splitting at 16 MiB).
    pub fn write_packet(&mut self, seq: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        self.seq = write_packet(&mut out, seq, payload);
        self.write_raw(&out)
    }

    /// Reads the server greeting; an ERR packet in its place becomes `RawError::Server`.
    pub fn read_greeting(&mut self) -> Result<Greeting> {
        let (_, p) = self.read_packet()?;
        if let Some(e) = parse_err(&p) {
            return Err(RawError::Server(e));
        }
        let g = parse_greeting(&p).ok_or_else(|| {
            RawError::Protocol(format!("bad greeting: {:02x?}", &p[..p.len().min(64)]))
        })?;
        self.greeting = Some(g.clone());
        Ok(g)
    }

    /// Sends a HandshakeResponse41 and completes `mysql_native_password` (including an auth switch).
    pub fn authenticate(&mut self, user: &str, password: &str, db: Option<&str>) -> Result<()> {
        let g = self
            .greeting
            .clone()
            .ok_or_else(|| RawError::Protocol("authenticate before greeting".into()))?;
        let mut p = Vec::with_capacity(128);
        encode_handshake_response41(
            &response_fields(&g, user, &auth_for(&g, password), db, 0),
            &mut p,
        );
        let seq = self.seq;
        self.write_packet(seq, &p)?;
        loop {
            let (_, r) = self.read_packet()?;
            match r.first() {
                Some(&OK_HEADER) => return Ok(()),
                Some(&ERR_HEADER) => {
                    return Err(RawError::Server(parse_err(&r).unwrap_or(ServerError {
                        code: 0,
                        sql_state: None,
                        message: "short ERR".into(),
                    })))
                }
                Some(&EOF_HEADER) => {
                    let switch = parse_auth_switch_request(&r)
                        .map_err(|e| RawError::Protocol(format!("bad auth switch: {e}")))?;
                    if switch.plugin_name != b"mysql_native_password" {
                        return Err(RawError::Protocol(format!(
                            "auth switch to unsupported plugin {}",
                            String::from_utf8_lossy(switch.plugin_name)
                        )));
                    }
                    let resp = native_password_scramble(password.as_bytes(), switch.plugin_data);
                    let seq = self.seq;
                    self.write_packet(seq, &resp)?;
                }
                other => {
                    return Err(RawError::Protocol(format!(
                        "unexpected auth reply starting {other:02x?}"
                    )))
                }
            }
        }
    }

    /// Sends `COM_QUERY sql` without reading the answer.
    pub fn send_query(&mut self, sql: &str) -> io::Result<()> {
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(COM_QUERY);
        p.extend_from_slice(sql.as_bytes());
        self.in_rows = false;
        self.write_packet(0, &p)
    }

    /// Reads the start of a response: `Ok(Some(columns))` when a resultset follows (column definitions
    /// and their EOF already consumed), `Ok(None)` for an OK packet that ends the response.
    /// An OK/EOF with SERVER_MORE_RESULTS_EXISTS is followed by another `start_result` by `read_all`.
    fn start_result(&mut self) -> Result<(Option<u64>, u16)> {
        let (_, p) = self.read_packet()?;
        match p.first() {
            Some(&OK_HEADER) => Ok((None, ok_status(&p).unwrap_or(0))),
            Some(&ERR_HEADER) => Err(RawError::Server(parse_err(&p).unwrap_or(ServerError {
                code: 0,
                sql_state: None,
                message: "short ERR".into(),
            }))),
            Some(&LOCAL_INFILE_HEADER) => Err(RawError::Protocol(
                "LOCAL INFILE request not supported by the raw client".into(),
            )),
            Some(_) => {
                let columns = column_count(&p)
                    .ok_or_else(|| RawError::Protocol("bad column count".into()))?;
                for _ in 0..columns {
                    self.read_packet()?;
                }
                let (_, eof) = self.read_packet()?;
                if !is_eof(&eof) {
                    return Err(RawError::Protocol(format!(
                        "expected EOF after column definitions, got {:02x?}",
                        &eof[..eof.len().min(16)]
                    )));
                }
                self.in_rows = true;
                Ok((Some(columns), 0))
            }
            None => Err(RawError::Protocol("empty response packet".into())),
        }
    }

    /// Reads the header of the response to a query sent by `send_query`; returns the column count
    /// (0 for an OK response). After a non-zero count, call `next_row` until it returns `None`.
    pub fn read_result_header(&mut self) -> Result<u64> {
        let (cols, _) = self.start_result()?;
        Ok(cols.unwrap_or(0))
    }

    /// Reads the next row of the current resultset: its payload, or `None` at the closing EOF.
    pub fn next_row(&mut self) -> Result<Option<Vec<u8>>> {
        if !self.in_rows {
            return Ok(None);
        }
        let (_, p) = self.read_packet()?;
        if is_eof(&p) {
            self.in_rows = false;
            return Ok(None);
        }
        if let Some(e) = parse_err(&p) {
            self.in_rows = false;
            return Err(RawError::Server(e));
        }
        Ok(Some(p))
    }

    /// Reads the rest of a response whose first resultset has begun: counts rows, follows further
    /// result sets.
    fn finish(&mut self, out: &mut QueryOutcome) -> Result<()> {
        loop {
            let (_, p) = self.read_packet()?;
            if is_eof(&p) {
                self.in_rows = false;
                if eof_status(&p) & SERVER_MORE_RESULTS_EXISTS == 0 {
                    return Ok(());
                }
                let (cols, status) = self.start_result()?;
                match cols {
                    Some(_) => out.result_sets += 1,
                    None if status & SERVER_MORE_RESULTS_EXISTS == 0 => return Ok(()),
                    None => return self.finish_after_ok(out),
                }
                continue;
            }
            if let Some(e) = parse_err(&p) {
                self.in_rows = false;
                return Err(RawError::Server(e));
            }
            if out.rows == 0 && out.first_value.is_none() {
                // A text-protocol row: length-encoded strings, 0xfb for NULL (left as None).
                if let Ok(value) = Cursor::new(&p).lenenc_bytes() {
                    out.first_value = Some(String::from_utf8_lossy(value).into_owned());
                }
            }
            out.rows += 1;
            out.row_bytes += p.len() as u64;
        }
    }

    fn finish_after_ok(&mut self, out: &mut QueryOutcome) -> Result<()> {
        loop {
            let (cols, status) = self.start_result()?;
            match cols {
                Some(_) => {
                    out.result_sets += 1;
                    return self.finish(out);
                }
                None if status & SERVER_MORE_RESULTS_EXISTS == 0 => return Ok(()),
                None => continue,
            }
        }
    }

    /// Reads everything left of the current response (after `read_result_header` and any
    /// `next_row` calls), adding to `out`.
    pub fn read_rest(&mut self, out: &mut QueryOutcome) -> Result<()> {
        if self.in_rows {
            self.finish(out)
        } else {
            Ok(())
        }
    }

    /// Runs one query and reads its whole response, counting rows.
    pub fn query(&mut self, sql: &str) -> Result<QueryOutcome> {
        self.send_query(sql)?;
        let mut out = QueryOutcome::default();
        let (cols, status) = self.start_result()?;
        match cols {
            Some(_) => {
                out.result_sets = 1;
                self.finish(&mut out)?;
            }
            None if status & SERVER_MORE_RESULTS_EXISTS != 0 => self.finish_after_ok(&mut out)?,
            None => {}
        }
        Ok(out)
    }

    /// Runs a query expected to return one value and returns it as text.
    pub fn query_value(&mut self, sql: &str) -> Result<String> {
        let out = self.query(sql)?;
        out.first_value
            .ok_or_else(|| RawError::Protocol(format!("no value returned by {sql}")))
    }

    /// Sends COM_QUIT (errors ignored: the peer may already be gone).
    pub fn quit(mut self) {
        let _ = self.write_packet(0, &[COM_QUIT]);
    }
}

/// Parses a protocol-10 greeting payload.
pub fn parse_greeting(p: &[u8]) -> Option<Greeting> {
    let h = parse_handshake_v10(p).ok()?;
    Some(Greeting {
        protocol_version: h.protocol_version,
        server_version: String::from_utf8_lossy(h.server_version).into_owned(),
        connection_id: h.connection_id,
        capabilities: h.capabilities,
        scramble: h.scramble(),
        auth_plugin: h
            .auth_plugin_name
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .unwrap_or_default(),
    })
}
