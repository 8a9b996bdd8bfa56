//! `loadgen serve`: a mock MySQL server on ringproxy's io_uring core, fast enough that it is never
//! the bottleneck of a proxy benchmark.
//!
//! It owns the `serve` workload: its options ([`ServeArgs`]), the worker threads (one
//! [`ringproxy::runtime::Worker`] each, sharing the listen port through SO_REUSEPORT), and the
//! per-connection protocol state machine ([`MockService`]). A connection gets a HandshakeV10
//! greeting (mysql_native_password, 20-byte scramble), any user and password is accepted, and
//! every command is answered from byte strings built once at start and leaked, so the steady
//! state sends them with [`Io::send_static`] and allocates nothing per query:
//!
//! - COM_QUERY: the configured text resultset (or OK with `--ok`);
//! - COM_STMT_PREPARE: prepare-OK with a per-connection statement id, no parameters and the
//!   configured columns; COM_STMT_EXECUTE: the same rows as a binary resultset;
//!   COM_STMT_CLOSE / COM_STMT_SEND_LONG_DATA: no reply; COM_STMT_RESET: OK;
//! - COM_PING, COM_INIT_DB, COM_RESET_CONNECTION: OK; COM_SET_OPTION: EOF (OK under
//!   CLIENT_DEPRECATE_EOF); COM_QUIT: close; anything else: ERR 1047.
//!
//! Every response variant exists twice, with and without CLIENT_DEPRECATE_EOF, as negotiated per
//! connection. Commands are found with [`PacketStream`], which handles several commands in one
//! receive and packets split across receives without buffering them; a command is answered when
//! its last byte has arrived, as a real server would. Only the handshake response is reassembled
//! (it is parsed whole with ringproxy's parser).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};

use ringproxy::metrics::WorkerStats;
use ringproxy::protocol::auth::new_scramble;
use ringproxy::protocol::constants::*;
use ringproxy::protocol::cursor::{put_lenenc_bytes, put_lenenc_int};
use ringproxy::protocol::framing::{split_packet, write_packet, PacketStream};
use ringproxy::protocol::handshake::{
    is_ssl_request, parse_handshake_response41, write_greeting, HandshakeV10,
};
use ringproxy::protocol::packets::{write_eof_packet, write_err_packet, write_ok_packet};
use ringproxy::runtime::spawn::{self, Running, Spec};
use ringproxy::runtime::{
    placement, ring, BufRef, Io, MemoryBudget, Service, SockId, WorkerConfig,
};

/// Options of `loadgen serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to accept clients on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:3307")]
    pub listen: SocketAddr,
    /// Rows in the resultset answered to every COM_QUERY / COM_STMT_EXECUTE
    #[arg(long, default_value_t = 1)]
    pub rows: u64,
    /// Columns in that resultset (1..=65535)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub columns: u16,
    /// Bytes in each value: 1 answers the value "1", any other size that many 'x'
    #[arg(long = "value-size", default_value_t = 1)]
    pub value_size: usize,
    /// Answer COM_QUERY / COM_STMT_EXECUTE with OK instead of a resultset
    #[arg(long)]
    pub ok: bool,
    /// Worker threads, one io_uring ring each [default: number of cores]
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 3307)),
            rows: 1,
            columns: 1,
            value_size: 1,
            ok: false,
            threads: None,
        }
    }
}

/// Server version in the greeting (clients parse 5.7.99 from it).
pub const SERVER_VERSION: &str = "5.7.99-ringproxy-mock";

/// Capabilities the greeting offers. No SSL, compression, LOCAL INFILE or multi-statements (the
/// mock answers every query with one resultset), no session tracking.
pub const SERVER_CAPABILITIES: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_DEPRECATE_EOF;

/// utf8_general_ci: the collation of the greeting and of every column.
const CHARSET: u8 = 33;
const STATUS: u16 = SERVER_STATUS_AUTOCOMMIT;
/// Largest handshake response accepted (they are a few hundred bytes).
const MAX_HANDSHAKE_RESPONSE: usize = 64 * 1024;
/// Largest prebuilt response: the resultset is held in memory once per variant.
const MAX_RESPONSE_BYTES: u64 = 1 << 30;
const NOT_NULL_FLAG: u16 = 1;

const ER_UNKNOWN_STMT_HANDLER: u16 = 1243;
const ER_NET_PACKETS_OUT_OF_ORDER: u16 = 1156;

/// Connection ids handed out in greetings, across all workers and mock instances.
static NEXT_CONNECTION_ID: AtomicU32 = AtomicU32::new(1);

/// Every response the mock sends more than once per connection, built once and leaked. Arrays
/// are indexed by `deprecate_eof as usize`.
#[derive(Debug)]
struct Responses {
    /// OK, sequence id 1.
    ok: &'static [u8],
    /// OK, sequence id 2: the end of a login (the handshake response has sequence id 1).
    login_ok: &'static [u8],
    /// EOF, sequence id 1 (COM_SET_OPTION without CLIENT_DEPRECATE_EOF).
    eof: &'static [u8],
    /// ERR 1047, sequence id 1.
    unknown_command: &'static [u8],
    /// Reply to COM_QUERY: the text resultset, or OK with `--ok`.
    query: [&'static [u8]; 2],
    /// Reply to COM_STMT_EXECUTE: the binary resultset, or OK with `--ok`.
    execute: [&'static [u8]; 2],
    /// What follows the first packet of a prepare-OK: the column definitions (and EOF) from
    /// sequence id 2; empty with `--ok`.
    prepare_columns: [&'static [u8]; 2],
    /// Column count announced by prepare-OK (0 with `--ok`).
    columns: u16,
}

fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

/// The value of every cell.
fn cell_value(value_size: usize) -> Vec<u8> {
    if value_size == 1 {
        b"1".to_vec()
    } else {
        vec![b'x'; value_size]
    }
}

/// One ColumnDefinition41 payload.
fn column_definition(index: u32, value_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(48);
    put_lenenc_bytes(&mut p, b"def");
    put_lenenc_bytes(&mut p, b""); // schema
    put_lenenc_bytes(&mut p, b""); // table
    put_lenenc_bytes(&mut p, b""); // org_table
    put_lenenc_bytes(&mut p, format!("c{index}").as_bytes());
    put_lenenc_bytes(&mut p, b""); // org_name
    put_lenenc_int(&mut p, 0x0c);
    p.extend_from_slice(&u16::from(CHARSET).to_le_bytes());
    p.extend_from_slice(&u32::try_from(value_len).unwrap_or(u32::MAX).to_le_bytes());
    p.push(MYSQL_TYPE_VAR_STRING);
    p.extend_from_slice(&NOT_NULL_FLAG.to_le_bytes());
    p.push(0); // decimals
    p.extend_from_slice(&[0, 0]);
    p
}

/// Appends the column definitions (and the EOF after them unless `deprecate_eof`) from `seq`;
/// returns the next sequence id.
fn put_columns(out: &mut Vec<u8>, mut seq: u8, columns: u16, value_len: usize, eof: bool) -> u8 {
    for i in 1..=u32::from(columns) {
        seq = write_packet(out, seq, &column_definition(i, value_len));
    }
    if eof {
        write_eof_packet(out, seq, 0, STATUS);
        seq = seq.wrapping_add(1);
    }
    seq
}

/// A whole resultset from sequence id 1: column count, definitions, [EOF], rows, EOF or the
/// 0xfe-headed OK that replaces it under CLIENT_DEPRECATE_EOF.
fn resultset(args: &ServeArgs, binary: bool, deprecate_eof: bool) -> Vec<u8> {
    let value = cell_value(args.value_size);
    let mut row = Vec::new();
    if binary {
        row.push(0x00);
        row.resize(1 + (usize::from(args.columns) + 7 + 2) / 8, 0);
    }
    for _ in 0..args.columns {
        put_lenenc_bytes(&mut row, &value);
    }
    let mut out = Vec::new();
    let mut count = Vec::new();
    put_lenenc_int(&mut count, u64::from(args.columns));
    let mut seq = write_packet(&mut out, 1, &count);
    seq = put_columns(&mut out, seq, args.columns, value.len(), !deprecate_eof);
    out.reserve(
        row.len()
            .saturating_add(8)
            .saturating_mul(args.rows as usize),
    );
    for _ in 0..args.rows {
        seq = write_packet(&mut out, seq, &row);
    }
    if deprecate_eof {
        let mut term = vec![EOF_HEADER, 0, 0];
        term.extend_from_slice(&STATUS.to_le_bytes());
        term.extend_from_slice(&0u16.to_le_bytes());
        write_packet(&mut out, seq, &term);
    } else {
        write_eof_packet(&mut out, seq, 0, STATUS);
    }
    out
}

impl Responses {
    fn build(args: &ServeArgs) -> anyhow::Result<Responses> {
        if args.columns == 0 {
            bail!("--columns must be at least 1");
        }
        let value = cell_value(args.value_size).len() as u64;
        let row = u64::from(args.columns) * (value + 9) + 16;
        let size = row.saturating_mul(args.rows);
        if size > MAX_RESPONSE_BYTES {
            bail!(
                "a resultset of {} rows × {} columns × {} bytes is about {size} bytes; the mock \
                 holds every response in memory and accepts at most {MAX_RESPONSE_BYTES}",
                args.rows,
                args.columns,
                args.value_size
            );
        }
        let mut ok = Vec::new();
        write_ok_packet(&mut ok, 1, 0, 0, STATUS, 0);
        let ok = leak(ok);
        let mut login_ok = Vec::new();
        write_ok_packet(&mut login_ok, 2, 0, 0, STATUS, 0);
        let mut eof = Vec::new();
        write_eof_packet(&mut eof, 1, 0, STATUS);
        let mut unknown = Vec::new();
        write_err_packet(
            &mut unknown,
            1,
            ER_UNKNOWN_COM_ERROR,
            b"08S01",
            b"Unknown command",
        );
        let variant = |binary: bool, deprecate: bool| {
            if args.ok {
                ok
            } else {
                leak(resultset(args, binary, deprecate))
            }
        };
        let prepare_columns = |deprecate: bool| {
            let mut v = Vec::new();
            if !args.ok {
                put_columns(&mut v, 2, args.columns, value as usize, !deprecate);
            }
            leak(v)
        };
        Ok(Responses {
            ok,
            login_ok: leak(login_ok),
            eof: leak(eof),
            unknown_command: leak(unknown),
            query: [variant(false, false), variant(false, true)],
            execute: [variant(true, false), variant(true, true)],
            prepare_columns: [prepare_columns(false), prepare_columns(true)],
            columns: if args.ok { 0 } else { args.columns },
        })
    }
}

/// A command whose first bytes have been seen, answered once its last byte has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    code: u8,
    seq: u8,
    /// Bytes 1..5 of the payload as a little-endian integer (statement id, option), when present.
    arg: Option<u32>,
    /// Bytes 1..3 present (COM_SET_OPTION's option is a u16).
    arg16: Option<u16>,
}

impl Pending {
    fn from_head(head: &[u8], seq: u8) -> Option<Pending> {
        let code = *head.first()?;
        Some(Pending {
            code,
            seq,
            arg: head
                .get(1..5)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            arg16: head.get(1..3).map(|b| u16::from_le_bytes([b[0], b[1]])),
        })
    }
}

#[derive(Debug)]
enum Phase {
    /// Greeting sent; the handshake response is reassembled here.
    Handshake(Vec<u8>),
    Command,
}

#[derive(Debug)]
struct Conn {
    generation: u32,
    phase: Phase,
    deprecate_eof: bool,
    stream: PacketStream,
    /// The command whose head has been seen and whose end has not (yet) arrived. `None` while
    /// `in_command` is set means the command packet is empty (0 bytes, no command byte).
    pending: Option<Pending>,
    /// A command packet has started and not been answered.
    in_command: bool,
    next_stmt_id: u32,
    stmts: HashSet<u32>,
}

/// What happens to the connection after a batch of input.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Close,
}

/// The mock server's [`Service`]: one per worker thread.
pub struct MockService {
    responses: &'static Responses,
    conns: Vec<Option<Conn>>,
    live: usize,
    shutting_down: bool,
    rng: u64,
}

impl MockService {
    fn new(responses: &'static Responses, worker: usize) -> MockService {
        let seed = (std::process::id() as u64) << 32
            ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        MockService {
            responses,
            conns: Vec::new(),
            live: 0,
            shutting_down: false,
            rng: seed | 1,
        }
    }

    /// xorshift64*: scramble bytes need to differ between connections, not to be secret.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn greeting(&mut self) -> Vec<u8> {
        let scramble = new_scramble(|| self.next_random());
        let h = HandshakeV10 {
            protocol_version: 10,
            server_version: SERVER_VERSION.as_bytes(),
            connection_id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            auth_data_1: &scramble[..8],
            capabilities: SERVER_CAPABILITIES,
            charset: CHARSET,
            status: STATUS,
            auth_data_len: 21,
            mariadb_ext_capabilities: 0,
            auth_data_2: &scramble[8..],
            auth_plugin_name: Some(b"mysql_native_password"),
        };
        let mut out = Vec::with_capacity(100);
        write_greeting(&mut out, &h);
        out
    }

    fn drop_conn(&mut self, io: &mut Io, sock: SockId, flush: bool) {
        if let Some(slot) = self.conns.get_mut(sock.index as usize) {
            if slot
                .as_ref()
                .is_some_and(|c| c.generation == sock.generation)
            {
                *slot = None;
                self.live -= 1;
                io.stats.active = io.stats.active.saturating_sub(1);
            }
        }
        if flush {
            io.close_after_flush(sock);
        } else {
            io.close(sock);
        }
    }

    fn close_all(&mut self, io: &mut Io, flush: bool) {
        for index in 0..self.conns.len() {
            if let Some(c) = &self.conns[index] {
                let sock = SockId {
                    index: index as u32,
                    generation: c.generation,
                };
                self.drop_conn(io, sock, flush);
            }
        }
    }
}

/// Queues an ERR packet built for this occasion (rare paths only).
fn send_err(io: &mut Io, sock: SockId, seq: u8, code: u16, state: &[u8; 5], msg: &str) {
    let mut out = Vec::with_capacity(msg.len() + 13);
    write_err_packet(&mut out, seq, code, state, msg.as_bytes());
    io.send_owned(sock, out);
}

/// Handles the handshake response at the front of `buf`, if it is complete. Returns the verdict
/// and how many bytes it used (0 while incomplete).
fn handle_handshake_response(
    io: &mut Io,
    sock: SockId,
    conn: &mut Conn,
    r: &Responses,
    buf: &[u8],
) -> (Verdict, usize) {
    let Some((h, payload, used)) = split_packet(buf) else {
        if buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize;
            if len > MAX_HANDSHAKE_RESPONSE {
                io.stats.protocol_errors += 1;
                send_err(
                    io,
                    sock,
                    buf[3].wrapping_add(1),
                    ER_HANDSHAKE_ERROR,
                    b"08S01",
                    "Bad handshake",
                );
                return (Verdict::Close, 0);
            }
        }
        return (Verdict::Keep, 0);
    };
    let seq = h.seq.wrapping_add(1);
    if is_ssl_request(payload) {
        io.stats.protocol_errors += 1;
        send_err(
            io,
            sock,
            seq,
            ER_HANDSHAKE_ERROR,
            b"08S01",
            "Bad handshake: this mock server does not offer SSL",
        );
        return (Verdict::Close, used);
    }
    match parse_handshake_response41(payload) {
        Ok(resp) => {
            conn.deprecate_eof =
                resp.capabilities & SERVER_CAPABILITIES & CLIENT_DEPRECATE_EOF != 0;
            conn.phase = Phase::Command;
            if seq == 2 {
                io.send_static(sock, r.login_ok);
            } else {
                let mut out = Vec::with_capacity(11);
                write_ok_packet(&mut out, seq, 0, 0, STATUS, 0);
                io.send_owned(sock, out);
            }
            (Verdict::Keep, used)
        }
        Err(e) => {
            io.stats.protocol_errors += 1;
            send_err(
                io,
                sock,
                seq,
                ER_HANDSHAKE_ERROR,
                b"08S01",
                &format!("Bad handshake: {e}"),
            );
            (Verdict::Close, used)
        }
    }
}

/// Answers one complete command. `Verdict::Close` for COM_QUIT and protocol errors.
fn answer(
    io: &mut Io,
    sock: SockId,
    r: &Responses,
    deprecate_eof: bool,
    next_stmt_id: &mut u32,
    stmts: &mut HashSet<u32>,
    cmd: Option<Pending>,
) -> Verdict {
    io.stats.commands += 1;
    let eofi = usize::from(deprecate_eof);
    let Some(cmd) = cmd else {
        // An empty command packet.
        io.send_static(sock, r.unknown_command);
        io.stats.responses += 1;
        return Verdict::Keep;
    };
    if cmd.seq != 0 {
        io.stats.protocol_errors += 1;
        send_err(
            io,
            sock,
            cmd.seq.wrapping_add(1),
            ER_NET_PACKETS_OUT_OF_ORDER,
            b"08S01",
            "Got packets out of order",
        );
        return Verdict::Close;
    }
    match cmd.code {
        COM_QUERY => io.send_static(sock, r.query[eofi]),
        COM_PING | COM_INIT_DB => io.send_static(sock, r.ok),
        COM_RESET_CONNECTION => {
            stmts.clear();
            io.send_static(sock, r.ok);
        }
        COM_SET_OPTION => match cmd.arg16 {
            Some(0 | 1) if deprecate_eof => io.send_static(sock, r.ok),
            Some(0 | 1) => io.send_static(sock, r.eof),
            _ => io.send_static(sock, r.unknown_command),
        },
        COM_STMT_PREPARE => {
            let id = *next_stmt_id;
            *next_stmt_id = next_stmt_id.wrapping_add(1).max(1);
            stmts.insert(id);
            let mut first = Vec::with_capacity(16);
            let mut p = [0u8; 12];
            p[1..5].copy_from_slice(&id.to_le_bytes());
            p[5..7].copy_from_slice(&r.columns.to_le_bytes());
            write_packet(&mut first, 1, &p);
            io.send_owned(sock, first);
            io.send_static(sock, r.prepare_columns[eofi]);
        }
        COM_STMT_EXECUTE | COM_STMT_RESET => match cmd.arg {
            Some(id) if stmts.contains(&id) => {
                let reply = if cmd.code == COM_STMT_EXECUTE {
                    r.execute[eofi]
                } else {
                    r.ok
                };
                io.send_static(sock, reply);
            }
            arg => {
                let what = if cmd.code == COM_STMT_EXECUTE {
                    "mysqld_stmt_execute"
                } else {
                    "mysqld_stmt_reset"
                };
                let id = arg.map_or_else(|| "?".to_owned(), |id| id.to_string());
                send_err(
                    io,
                    sock,
                    1,
                    ER_UNKNOWN_STMT_HANDLER,
                    b"HY000",
                    &format!("Unknown prepared statement handler ({id}) given to {what}"),
                );
            }
        },
        COM_STMT_CLOSE => {
            if let Some(id) = cmd.arg {
                stmts.remove(&id);
            }
            return Verdict::Keep;
        }
        COM_STMT_SEND_LONG_DATA => return Verdict::Keep,
        COM_QUIT => return Verdict::Close,
        _ => io.send_static(sock, r.unknown_command),
    }
    io.stats.responses += 1;
    Verdict::Keep
}

/// Feeds bytes of the command phase: answers every command whose last byte is in `data`.
fn feed_commands(
    io: &mut Io,
    sock: SockId,
    conn: &mut Conn,
    r: &Responses,
    data: &[u8],
) -> Verdict {
    let Conn {
        stream,
        pending,
        in_command,
        deprecate_eof,
        next_stmt_id,
        stmts,
        ..
    } = conn;
    let deprecate_eof = *deprecate_eof;
    let fed = stream.feed(data, |p| {
        if p.continuation {
            // More of the command already announced (payloads of 16 MiB and more).
            return Ok(());
        }
        if *in_command {
            // A new command starts: the previous one is complete.
            *in_command = false;
            let cmd = pending.take();
            if answer(io, sock, r, deprecate_eof, next_stmt_id, stmts, cmd) == Verdict::Close {
                return Err(());
            }
        }
        // None for an empty packet (no command byte): answered as an unknown command.
        *pending = Pending::from_head(p.head, p.seq);
        *in_command = true;
        Ok(())
    });
    if fed.is_err() {
        return Verdict::Close;
    }
    if *in_command && stream.at_logical_boundary() {
        *in_command = false;
        let cmd = pending.take();
        return answer(io, sock, r, deprecate_eof, next_stmt_id, stmts, cmd);
    }
    Verdict::Keep
}

impl Service for MockService {
    type Msg = ();

    fn on_accept(
        &mut self,
        io: &mut Io,
        _listener: usize,
        sock: SockId,
        _peer: Option<SocketAddr>,
    ) {
        if self.shutting_down {
            io.close(sock);
            return;
        }
        let greeting = self.greeting();
        let index = sock.index as usize;
        if self.conns.len() <= index {
            self.conns.resize_with(index + 1, || None);
        }
        self.conns[index] = Some(Conn {
            generation: sock.generation,
            phase: Phase::Handshake(Vec::new()),
            deprecate_eof: false,
            stream: PacketStream::new(),
            pending: None,
            in_command: false,
            next_stmt_id: 1,
            stmts: HashSet::new(),
        });
        self.live += 1;
        io.stats.active += 1;
        io.send_owned(sock, greeting);
    }

    fn on_connect(&mut self, io: &mut Io, sock: SockId, _owner: u64, _result: io::Result<()>) {
        // The mock opens no connections.
        io.close(sock);
    }

    fn on_data(&mut self, io: &mut Io, sock: SockId, _owner: u64, data: &[u8], _buf: BufRef) {
        let r = self.responses;
        let Some(conn) = self
            .conns
            .get_mut(sock.index as usize)
            .and_then(|c| c.as_mut())
            .filter(|c| c.generation == sock.generation)
        else {
            io.close(sock);
            return;
        };
        let verdict = match &mut conn.phase {
            Phase::Command => feed_commands(io, sock, conn, r, data),
            Phase::Handshake(buf) => {
                let mut buf = std::mem::take(buf);
                let (verdict, used) = if buf.is_empty() {
                    handle_handshake_response(io, sock, conn, r, data)
                } else {
                    buf.extend_from_slice(data);
                    handle_handshake_response(io, sock, conn, r, &buf)
                };
                let from_data = buf.is_empty();
                match (verdict, &mut conn.phase) {
                    (Verdict::Close, _) => Verdict::Close,
                    (Verdict::Keep, Phase::Handshake(b)) => {
                        // Still incomplete: keep what arrived.
                        if from_data {
                            b.extend_from_slice(data);
                        } else {
                            *b = buf;
                        }
                        Verdict::Keep
                    }
                    (Verdict::Keep, Phase::Command) => {
                        // Commands pipelined right behind the handshake response.
                        let rest = if from_data {
                            &data[used..]
                        } else {
                            &buf[used..]
                        };
                        feed_commands(io, sock, conn, r, rest)
                    }
                }
            }
        };
        if verdict == Verdict::Close {
            self.drop_conn(io, sock, true);
        }
    }

    fn on_eof(&mut self, io: &mut Io, sock: SockId, _owner: u64, _error: Option<io::Error>) {
        self.drop_conn(io, sock, false);
    }

    fn on_shutdown(&mut self, io: &mut Io) {
        self.shutting_down = true;
        self.close_all(io, true);
    }

    fn is_drained(&self) -> bool {
        self.live == 0
    }

    fn abort_all(&mut self, io: &mut Io) {
        self.close_all(io, false);
    }
}

/// A running mock started by [`spawn`]; dropping it (or [`MockHandle::stop`]) shuts it down.
pub struct MockHandle {
    running: Running<MockService>,
}

impl MockHandle {
    /// Counters summed over the workers (published about every 50 ms).
    pub fn stats(&self) -> WorkerStats {
        self.running.totals()
    }

    /// Closes every connection, stops the workers and waits for them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.running.stop()?;
        Ok(())
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        let _ = self.running.stop();
    }
}

/// Starts the workers; returns once every one has its ring and listener (or the first failure).
fn start(args: &ServeArgs, shutdown: Arc<AtomicBool>) -> anyhow::Result<(SocketAddr, MockHandle)> {
    ring::probe().context("io_uring feature probe")?;
    let responses: &'static Responses = Box::leak(Box::new(Responses::build(args)?));
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let listen = placement::claim_listen_addr(&args.listen)?;
    let fixed_slots = ringproxy::config::fixed_file_slots_per_worker();
    let spec = Spec {
        name: "mock".into(),
        workers: (0..threads)
            .map(|i| WorkerConfig::basic(i, fixed_slots))
            .collect(),
        listen: vec![listen],
        shutdown,
        budget: Arc::new(MemoryBudget::new(0)),
        inboxes: false,
    };
    let running = spawn::spawn(spec, move |i| MockService::new(responses, i))
        .map_err(|e| anyhow!("mock worker failed to start: {e}"))?;
    Ok((listen, MockHandle { running }))
}

/// Starts the mock in this process (for tests): returns the bound address (port 0 resolved) and
/// a handle that shuts it down when stopped or dropped.
// The binary itself only calls `run`; tests start the mock in-process.
#[cfg_attr(not(test), allow(dead_code))]
pub fn spawn(args: ServeArgs) -> anyhow::Result<(SocketAddr, MockHandle)> {
    start(&args, Arc::new(AtomicBool::new(false)))
}

/// `loadgen serve`: runs the mock until SIGINT/SIGTERM, then closes its connections and returns.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown))
            .context("installing signal handlers")?;
    }
    let (addr, mut handle) = start(&args, shutdown)?;
    let threads = handle.running.stats.len();
    let shape = if args.ok {
        "OK".to_owned()
    } else {
        format!(
            "{} row(s) × {} column(s) of {} byte(s)",
            args.rows,
            args.columns,
            cell_value(args.value_size).len()
        )
    };
    eprintln!(
        "mock MySQL server ({SERVER_VERSION}) listening on {addr}: {} thread(s), answering {shape}",
        threads
    );
    let result = handle.running.join().map(drop).map_err(anyhow::Error::from);
    let total = handle.stats();
    eprintln!(
        "mock stopped: {} connections accepted, {} commands, {} responses, {} protocol errors",
        total.accepted, total.commands, total.responses, total.protocol_errors
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql::prelude::*;
    use mysql::{Conn, OptsBuilder};
    use ringproxy::protocol::handshake::{
        encode_handshake_response41, native_password_scramble, parse_handshake_v10,
        HandshakeResponse41,
    };
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn mock(rows: u64, columns: u16, value_size: usize, ok: bool) -> (SocketAddr, MockHandle) {
        spawn(ServeArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            rows,
            columns,
            value_size,
            ok,
            threads: Some(2),
        })
        .unwrap()
    }

    /// A `mysql` crate connection. The crate cannot run with CLIENT_DEPRECATE_EOF (it always
    /// skips a packet after the column definitions, which then swallows the first row), so that
    /// mode is covered by the raw-client tests below.
    fn connect(addr: SocketAddr) -> Conn {
        let opts = OptsBuilder::new()
            .ip_or_hostname(Some(addr.ip().to_string()))
            .tcp_port(addr.port())
            .user(Some("anyone"))
            .pass(Some("whatever"))
            .db_name(Some("app"))
            .prefer_socket(false)
            // The mock answers `SELECT @@max_allowed_packet` with its resultset too.
            .max_allowed_packet(Some(64 << 20));
        Conn::new(opts).unwrap()
    }

    #[test]
    fn text_query_default_shape() {
        let (addr, h) = mock(1, 1, 1, false);
        let mut c = connect(addr);
        assert_eq!(c.server_version(), (5, 7, 99));
        let v: Vec<i64> = c.query("SELECT 1").unwrap();
        assert_eq!(v, [1]);
        let one: Option<String> = c.query_first("SELECT anything").unwrap();
        assert_eq!(one.as_deref(), Some("1"));
        h.stop().unwrap();
    }

    #[test]
    fn text_query_configured_shape() {
        let (addr, h) = mock(5, 3, 7, false);
        {
            let mut c = connect(addr);
            let rows: Vec<(String, String, String)> = c.query("SELECT * FROM t").unwrap();
            assert_eq!(rows.len(), 5);
            for r in &rows {
                assert_eq!(r.0, "xxxxxxx");
                assert_eq!((&r.1, &r.2), (&r.0, &r.0));
            }
            let result = c.query_iter("SELECT * FROM t").unwrap();
            let names: Vec<String> = result
                .columns()
                .as_ref()
                .iter()
                .map(|c| c.name_str().into_owned())
                .collect();
            assert_eq!(names, ["c1", "c2", "c3"]);
            assert_eq!(result.count(), 5);
        }
        h.stop().unwrap();
    }

    #[test]
    fn prepared_statements_binary_rows() {
        // 9 columns: a 2-byte null bitmap in every binary row.
        let (addr, h) = mock(4, 9, 3, false);
        {
            let mut c = connect(addr);
            let stmt = c.prep("SELECT * FROM t").unwrap();
            assert_eq!(stmt.num_columns(), 9);
            assert_eq!(stmt.num_params(), 0);
            for _ in 0..3 {
                let rows: Vec<mysql::Row> = c.exec(&stmt, ()).unwrap();
                assert_eq!(rows.len(), 4);
                for r in rows {
                    assert_eq!(r.len(), 9);
                    for i in 0..9 {
                        let v: String = r.get(i).unwrap();
                        assert_eq!(v, "xxx");
                    }
                }
            }
            let other = c.prep("SELECT 2").unwrap();
            assert_ne!(other.id(), stmt.id());
            c.close(stmt).unwrap();
            let rows: Vec<mysql::Row> = c.exec(&other, ()).unwrap();
            assert_eq!(rows.len(), 4);
        }
        h.stop().unwrap();
    }

    #[test]
    fn ping_init_db_reset_and_ok_mode() {
        let (addr, h) = mock(1, 1, 1, true);
        for _ in 0..2 {
            let mut c = connect(addr);
            c.ping().unwrap();
            c.select_db("other").unwrap();
            c.reset().unwrap();
            c.query_drop("UPDATE t SET a = 1").unwrap();
            assert_eq!(c.affected_rows(), 0);
            let stmt = c.prep("UPDATE t SET a = 2").unwrap();
            assert_eq!(stmt.num_columns(), 0);
            c.exec_drop(&stmt, ()).unwrap();
            let rows: Vec<i64> = c.query("SELECT 1").unwrap();
            assert!(rows.is_empty());
        }
        h.stop().unwrap();
    }

    #[test]
    fn many_connections_on_several_threads() {
        let (addr, h) = mock(2, 2, 1, false);
        let clients: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut total = 0usize;
                    for _ in 0..4 {
                        let mut c = connect(addr);
                        for _ in 0..50 {
                            let rows: Vec<(i64, i64)> = c.query("SELECT 1, 1").unwrap();
                            assert_eq!(rows, [(1, 1), (1, 1)]);
                            total += 1;
                        }
                    }
                    total
                })
            })
            .collect();
        let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(total, 8 * 4 * 50);
        std::thread::sleep(Duration::from_millis(150));
        let stats = h.stats();
        assert_eq!(stats.accepted, 32);
        assert!(stats.commands >= 1600, "{stats:?}");
        h.stop().unwrap();
    }

    // ---- raw clients: exact bytes ----

    /// Frames a payload (test-side, independent of the mock's builders).
    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let l = payload.len() as u32;
        let mut v = vec![l as u8, (l >> 8) as u8, (l >> 16) as u8, seq];
        v.extend_from_slice(payload);
        v
    }

    fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        (h[3], p)
    }

    /// Reads the greeting and returns the handshake response packet (seq 1) to send.
    fn greeting_and_response(s: &mut TcpStream, deprecate_eof: bool) -> Vec<u8> {
        let (seq, g) = read_packet(s);
        assert_eq!(seq, 0);
        let g = parse_handshake_v10(&g).unwrap();
        assert_eq!(g.server_version, SERVER_VERSION.as_bytes());
        assert_eq!(g.auth_plugin_name, Some(&b"mysql_native_password"[..]));
        let scramble = g.scramble();
        assert_eq!(scramble.len(), 20);
        assert!(!scramble.contains(&0));
        for f in [
            CLIENT_PROTOCOL_41,
            CLIENT_SECURE_CONNECTION,
            CLIENT_PLUGIN_AUTH,
            CLIENT_DEPRECATE_EOF,
            CLIENT_MULTI_RESULTS,
            CLIENT_TRANSACTIONS,
            CLIENT_CONNECT_WITH_DB,
        ] {
            assert_ne!(g.capabilities & f, 0, "capability {f:#x}");
        }
        let mut caps = CLIENT_PROTOCOL_41
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH
            | CLIENT_LONG_PASSWORD
            | CLIENT_CONNECT_WITH_DB;
        if deprecate_eof {
            caps |= CLIENT_DEPRECATE_EOF;
        }
        let auth = native_password_scramble(b"secret", &scramble);
        let r = HandshakeResponse41 {
            capabilities: caps,
            max_packet_size: 1 << 24,
            charset: 33,
            mariadb_ext_capabilities: 0,
            username: b"raw",
            auth_response: &auth,
            database: Some(b"app"),
            auth_plugin_name: Some(b"mysql_native_password"),
            connect_attrs: None,
        };
        let mut p = Vec::new();
        encode_handshake_response41(&r, &mut p);
        pkt(1, &p)
    }

    fn raw_connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    const OK1: &[u8] = b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00";
    const UNKNOWN1: &[u8] = b"\x18\x00\x00\x01\xff\x17\x04#08S01Unknown command";

    fn ok(seq: u8) -> Vec<u8> {
        pkt(seq, b"\x00\x00\x00\x02\x00\x00\x00")
    }
    fn eof(seq: u8) -> Vec<u8> {
        pkt(seq, b"\xfe\x00\x00\x02\x00")
    }
    fn terminator(seq: u8, deprecate: bool) -> Vec<u8> {
        if deprecate {
            pkt(seq, b"\xfe\x00\x00\x02\x00\x00\x00")
        } else {
            eof(seq)
        }
    }
    /// Column definition of the default shape: "c1", VAR_STRING, utf8_general_ci, length 1.
    fn coldef(seq: u8) -> Vec<u8> {
        pkt(
            seq,
            b"\x03def\x00\x00\x00\x02c1\x00\x0c\x21\x00\x01\x00\x00\x00\xfd\x01\x00\x00\x00\x00",
        )
    }

    /// The commands of the scripted session, and the exact bytes the mock must answer.
    fn script(deprecate: bool) -> (Vec<u8>, Vec<u8>) {
        let mut send = Vec::new();
        let mut want = ok(2); // login
        let d = deprecate;
        let seq_after_cols = |want: &mut Vec<u8>, first: u8| -> u8 {
            want.extend(coldef(first));
            if d {
                first + 1
            } else {
                want.extend(eof(first + 1));
                first + 2
            }
        };
        // COM_QUERY: text resultset.
        send.extend(pkt(0, b"\x03SELECT 1"));
        want.extend(pkt(1, b"\x01"));
        let s = seq_after_cols(&mut want, 2);
        want.extend(pkt(s, b"\x011"));
        want.extend(terminator(s + 1, d));
        // COM_PING, COM_INIT_DB.
        send.extend(pkt(0, b"\x0e"));
        want.extend(OK1);
        send.extend(pkt(0, b"\x02otherdb"));
        want.extend(OK1);
        // COM_STMT_PREPARE: id 1, 1 column, 0 params.
        send.extend(pkt(0, b"\x16SELECT 1"));
        want.extend(pkt(1, b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"));
        seq_after_cols(&mut want, 2);
        // COM_STMT_EXECUTE 1: binary resultset.
        let execute = pkt(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00");
        send.extend(&execute);
        want.extend(pkt(1, b"\x01"));
        let s = seq_after_cols(&mut want, 2);
        want.extend(pkt(s, b"\x00\x00\x011"));
        want.extend(terminator(s + 1, d));
        // COM_STMT_SEND_LONG_DATA: no reply; COM_STMT_RESET: OK; COM_STMT_CLOSE: no reply.
        send.extend(pkt(0, b"\x18\x01\x00\x00\x00\x00\x00abc"));
        send.extend(pkt(0, b"\x1a\x01\x00\x00\x00"));
        want.extend(OK1);
        send.extend(pkt(0, b"\x19\x01\x00\x00\x00"));
        // Executing the closed statement fails.
        send.extend(&execute);
        want.extend(pkt(
            1,
            b"\xff\xdb\x04#HY000Unknown prepared statement handler (1) given to mysqld_stmt_execute",
        ));
        // COM_SET_OPTION: EOF, or OK under CLIENT_DEPRECATE_EOF.
        send.extend(pkt(0, b"\x1b\x00\x00"));
        want.extend(if d { ok(1) } else { eof(1) });
        // COM_RESET_CONNECTION, an unknown command, an empty packet.
        send.extend(pkt(0, b"\x1f"));
        want.extend(OK1);
        send.extend(pkt(0, b"\x7f"));
        want.extend(UNKNOWN1);
        send.extend(pkt(0, b""));
        want.extend(UNKNOWN1);
        // COM_QUIT: the mock closes after flushing.
        send.extend(pkt(0, b"\x01"));
        (send, want)
    }

    fn run_script(addr: SocketAddr, deprecate: bool, byte_delay: Option<Duration>) {
        let mut s = raw_connect(addr);
        let mut send = greeting_and_response(&mut s, deprecate);
        let (cmds, want) = script(deprecate);
        send.extend(cmds);
        match byte_delay {
            None => s.write_all(&send).unwrap(),
            Some(d) => {
                for b in &send {
                    s.write_all(std::slice::from_ref(b)).unwrap();
                    if !d.is_zero() {
                        std::thread::sleep(d);
                    }
                }
            }
        }
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, want, "deprecate_eof={deprecate}");
    }

    #[test]
    fn pipelined_commands_in_one_write() {
        let (addr, h) = mock(1, 1, 1, false);
        run_script(addr, false, None);
        run_script(addr, true, None);
        h.stop().unwrap();
    }

    #[test]
    fn pipelined_commands_split_byte_by_byte() {
        let (addr, h) = mock(1, 1, 1, false);
        run_script(addr, false, Some(Duration::ZERO));
        let before = h.stats().recvs;
        // A pause after every byte: every byte arrives in its own receive.
        run_script(addr, true, Some(Duration::from_micros(500)));
        std::thread::sleep(Duration::from_millis(150));
        let recvs = h.stats().recvs - before;
        assert!(recvs > 200, "only {recvs} receives");
        h.stop().unwrap();
    }

    #[test]
    fn command_of_16_mib_and_more_gets_one_reply() {
        let (addr, h) = mock(1, 1, 1, true);
        let mut s = raw_connect(addr);
        let login = greeting_and_response(&mut s, false);
        s.write_all(&login).unwrap();
        assert_eq!(read_packet(&mut s), (2, ok(2)[4..].to_vec()));
        // A COM_QUERY of 0xFF_FFFF + 10 payload bytes: a full packet and a continuation.
        let mut first = vec![0xff, 0xff, 0xff, 0x00, COM_QUERY];
        first.resize(4 + 0xff_ffff, b'x');
        s.write_all(&first).unwrap();
        s.write_all(&pkt(1, b"0123456789")).unwrap();
        s.write_all(&pkt(0, b"\x0e")).unwrap();
        let mut got = [0u8; 22];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got[..11], OK1);
        assert_eq!(&got[11..], OK1);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut more = [0u8; 1];
        assert!(s.read(&mut more).is_err(), "a reply too many");
        h.stop().unwrap();
    }

    #[test]
    fn out_of_order_command_and_ssl_request_are_refused() {
        let (addr, h) = mock(1, 1, 1, false);
        let mut s = raw_connect(addr);
        let login = greeting_and_response(&mut s, false);
        s.write_all(&login).unwrap();
        read_packet(&mut s);
        s.write_all(&pkt(3, b"\x0e")).unwrap();
        let (seq, p) = read_packet(&mut s);
        assert_eq!(seq, 4);
        assert_eq!(&p[..3], b"\xff\x84\x04");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        let mut s = raw_connect(addr);
        read_packet(&mut s);
        let mut ssl = (CLIENT_PROTOCOL_41 | CLIENT_SSL).to_le_bytes().to_vec();
        ssl.resize(32, 0);
        s.write_all(&pkt(1, &ssl)).unwrap();
        let (seq, p) = read_packet(&mut s);
        assert_eq!(seq, 2);
        assert_eq!(&p[..3], b"\xff\x13\x04");
        h.stop().unwrap();
    }

    #[test]
    fn stop_closes_idle_connections_and_frees_the_port() {
        let (addr, h) = mock(1, 1, 1, false);
        let mut s = raw_connect(addr);
        let login = greeting_and_response(&mut s, true);
        s.write_all(&login).unwrap();
        read_packet(&mut s);
        let t = std::time::Instant::now();
        h.stop().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        // The kernel releases a listener that had a multishot accept armed when it tears the
        // ring down, asynchronously: allow it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while TcpStream::connect(addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "still accepting on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The port can be claimed again.
        let again = spawn(ServeArgs {
            listen: addr,
            threads: Some(1),
            ..ServeArgs::default()
        });
        drop(again.unwrap().1);
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let too_big = ServeArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            rows: 1 << 20,
            value_size: 4096,
            ..ServeArgs::default()
        };
        let err = spawn(too_big).err().expect("refused").to_string();
        assert!(err.contains("at most"), "{err}");
        let zero_threads = ServeArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: Some(0),
            ..ServeArgs::default()
        };
        assert!(spawn(zero_threads).is_err());
    }
}
