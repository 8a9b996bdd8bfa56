//! A minimal blocking raw-socket MySQL client for integration tests that need to misbehave on the wire.
//!
//! It owns only what the fault tests need: framing (read/write one packet, with 16 MiB continuation
//! on read), the protocol-41 handshake with a `mysql_native_password` login, `COM_QUERY` with a
//! resultset reader that counts rows without keeping them, ERR packet parsing, and an optional read
//! throttle that makes the client a deliberately slow reader. Every socket operation has a timeout so
//! a test can fail but never hang.
#![allow(dead_code)] // each test binary that includes this module uses a different subset

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use sha1::{Digest, Sha1};

/// Default read/write timeout for every socket operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

const MAX_PAYLOAD: usize = 0xff_ffff;

const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_LONG_FLAG: u32 = 0x4;
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_MULTI_RESULTS: u32 = 0x2_0000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// `COM_QUERY` command byte.
pub const COM_QUERY: u8 = 0x03;
/// `COM_QUIT` command byte.
pub const COM_QUIT: u8 = 0x01;

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
    if payload.len() < 3 || payload[0] != 0xff {
        return None;
    }
    let code = u16::from_le_bytes([payload[1], payload[2]]);
    let mut rest = &payload[3..];
    let mut sql_state = None;
    if rest.len() >= 6 && rest[0] == b'#' {
        sql_state = Some(String::from_utf8_lossy(&rest[1..6]).into_owned());
        rest = &rest[6..];
    }
    Some(ServerError {
        code,
        sql_state,
        message: String::from_utf8_lossy(rest).into_owned(),
    })
}

/// `mysql_native_password`: SHA1(pw) XOR SHA1(scramble ++ SHA1(SHA1(pw))); empty for an empty password.
pub fn native_password_scramble(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password);
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// Reads a length-encoded integer at `*pos`, advancing it.
fn lenenc(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let (len, val) = match first {
        0..=0xfa => (1, u64::from(first)),
        0xfc => (3, 0),
        0xfd => (4, 0),
        0xfe => (9, 0),
        _ => return None,
    };
    if len == 1 {
        *pos += 1;
        return Some(val);
    }
    let bytes = buf.get(*pos + 1..*pos + len)?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    *pos += len;
    Some(v)
}

/// Status flags of an OK packet (after affected rows and last insert id), if present.
fn ok_status(payload: &[u8]) -> Option<u16> {
    let mut pos = 1;
    lenenc(payload, &mut pos)?;
    lenenc(payload, &mut pos)?;
    let b = payload.get(pos..pos + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// True for a classic EOF packet (0xfe, shorter than 9 bytes).
fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}

/// Status flags of an EOF packet.
fn eof_status(payload: &[u8]) -> u16 {
    if payload.len() >= 5 {
        u16::from_le_bytes([payload[3], payload[4]])
    } else {
        0
    }
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
            let mut header = [0u8; 4];
            self.fill(&mut header)?;
            let len =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            let seq = header[3];
            first_seq.get_or_insert(seq);
            self.seq = seq.wrapping_add(1);
            let start = payload.len();
            payload.resize(start + len, 0);
            self.fill(&mut payload[start..])?;
            if len < MAX_PAYLOAD {
                break;
            }
        }
        Ok((first_seq.unwrap_or(0), payload))
    }

    /// Writes one logical packet with sequence id `seq` (splitting at 16 MiB).
    pub fn write_packet(&mut self, seq: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        let mut seq = seq;
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_PAYLOAD);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
            out.push(seq);
            out.extend_from_slice(&rest[..n]);
            seq = seq.wrapping_add(1);
            rest = &rest[n..];
            if n < MAX_PAYLOAD {
                break;
            }
        }
        self.seq = seq;
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
        let auth = native_password_scramble(password.as_bytes(), &g.scramble);
        let mut p = Vec::with_capacity(128);
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&(16u32 << 20).to_le_bytes());
        p.push(33); // utf8_general_ci
        p.extend_from_slice(&[0u8; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(auth.len() as u8);
        p.extend_from_slice(&auth);
        if let Some(db) = db {
            p.extend_from_slice(db.as_bytes());
            p.push(0);
        }
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            p.extend_from_slice(b"mysql_native_password\0");
        }
        let seq = self.seq;
        self.write_packet(seq, &p)?;
        loop {
            let (_, r) = self.read_packet()?;
            match r.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => {
                    return Err(RawError::Server(parse_err(&r).unwrap_or(ServerError {
                        code: 0,
                        sql_state: None,
                        message: "short ERR".into(),
                    })))
                }
                Some(0xfe) => {
                    let body = &r[1..];
                    let nul = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    let plugin = String::from_utf8_lossy(&body[..nul]).into_owned();
                    if plugin != "mysql_native_password" {
                        return Err(RawError::Protocol(format!(
                            "auth switch to unsupported plugin {plugin}"
                        )));
                    }
                    let mut data = body.get(nul + 1..).unwrap_or(&[]).to_vec();
                    if data.last() == Some(&0) {
                        data.pop();
                    }
                    let resp = native_password_scramble(password.as_bytes(), &data);
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
            Some(0x00) => Ok((None, ok_status(&p).unwrap_or(0))),
            Some(0xff) => Err(RawError::Server(parse_err(&p).unwrap_or(ServerError {
                code: 0,
                sql_state: None,
                message: "short ERR".into(),
            }))),
            Some(0xfb) => Err(RawError::Protocol(
                "LOCAL INFILE request not supported by the raw client".into(),
            )),
            Some(_) => {
                let mut pos = 0;
                let columns = lenenc(&p, &mut pos)
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
                let mut pos = 0;
                if let Some(n) = lenenc(&p, &mut pos) {
                    let end = (pos + n as usize).min(p.len());
                    out.first_value = Some(String::from_utf8_lossy(&p[pos..end]).into_owned());
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
    let protocol_version = *p.first()?;
    if protocol_version != 10 {
        return None;
    }
    let mut pos = 1;
    let nul = p[pos..].iter().position(|&b| b == 0)?;
    let server_version = String::from_utf8_lossy(&p[pos..pos + nul]).into_owned();
    pos += nul + 1;
    let id = p.get(pos..pos + 4)?;
    let connection_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    pos += 4;
    let mut scramble = p.get(pos..pos + 8)?.to_vec();
    pos += 9; // 8 bytes of scramble + filler
    let lo = p.get(pos..pos + 2)?;
    let mut capabilities = u32::from(u16::from_le_bytes([lo[0], lo[1]]));
    pos += 2;
    let mut auth_plugin = String::new();
    if p.len() > pos {
        pos += 3; // charset, status flags
        let hi = p.get(pos..pos + 2)?;
        capabilities |= u32::from(u16::from_le_bytes([hi[0], hi[1]])) << 16;
        pos += 2;
        let auth_len = usize::from(*p.get(pos)?);
        pos += 1 + 10; // length byte + reserved
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let part2 = auth_len.saturating_sub(8).max(13);
            let bytes = p.get(pos..(pos + part2).min(p.len()))?;
            // The last byte of part 2 is a terminating NUL, not scramble.
            scramble.extend_from_slice(&bytes[..bytes.len().min(part2 - 1)]);
            pos += part2;
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 && pos < p.len() {
            let rest = &p[pos..];
            let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            auth_plugin = String::from_utf8_lossy(&rest[..nul]).into_owned();
        }
    }
    Some(Greeting {
        protocol_version,
        server_version,
        connection_id,
        capabilities,
        scramble,
        auth_plugin,
    })
}
