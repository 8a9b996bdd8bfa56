//! The response scanner: follows a command-phase conversation packet by packet and says exactly
//! where each server response ends, without decoding rows. It owns [`ResponseTracker`], the
//! command → response-shape table [`expect_for_command`], and nothing else (no I/O, no buffers).
//!
//! # How it is used
//! The session splits each direction's byte stream into physical packets (`framing::PacketStream`)
//! and hands every [`PacketHead`] to [`ResponseTracker::on_client_packet`] or
//! [`ResponseTracker::on_server_packet`]. The tracker keeps a small state: a FIFO ring of
//! [`MAX_PIPELINE`] pending commands (clients may pipeline) with a growable overflow behind it
//! that stays unallocated unless a client pipelines further, the phase of the response in
//! progress, and the last server status flags. It never panics; bytes it cannot make sense of are
//! a [`ProtoError`], after which the session should drop the connection.
//! It starts in the command phase: the handshake and the initial authentication are not its job.
//!
//! # The rules, and where they come from
//! From the MySQL source documentation (dev.mysql.com/doc/dev/mysql-server, pages "Text
//! Resultset", "COM_STMT_PREPARE", "COM_STMT_EXECUTE Response", "OK_Packet", "EOF_Packet",
//! "LOCAL INFILE Request", "Authentication Methods / caching_sha2") and the MariaDB knowledge
//! base ("Result Set Packets", "ERR_Packet", "MariaDB protocol differences with MySQL"):
//!
//! - A resultset is a column-count packet (a length-encoded integer), that many column
//!   definitions, an EOF unless `CLIENT_DEPRECATE_EOF`, rows, then a terminator: an EOF, or with
//!   `CLIENT_DEPRECATE_EOF` an OK packet whose header byte is 0xfe, or an ERR. A text row can start
//!   with 0xfe only as the 8-byte length prefix of a value of 16 MiB or more, which makes its first
//!   physical packet exactly 0xFF_FFFF bytes long, so "0xfe and shorter than 0xFF_FFFF" is a
//!   terminator (without `CLIENT_DEPRECATE_EOF` the EOF is further known to be shorter than 9).
//!   Rows never start with 0xff, column definitions start with the catalog "def", so 0xff is an ERR.
//! - OK: header, affected rows and last insert id (length-encoded), then the 2-byte status flags.
//!   EOF: 0xfe, 2-byte warnings, 2-byte status. Both fit in [`HEAD_CAP`] bytes. A terminator or OK
//!   carrying `SERVER_MORE_RESULTS_EXISTS` means another result of the same command follows
//!   (multi-statements, `CALL`); an ERR ends the whole response.
//! - `CLIENT_OPTIONAL_RESULTSET_METADATA` (MySQL 8, `Protocol_classic::start_result_metadata`)
//!   appends a `metadata_follows` byte to the column count; MariaDB's
//!   `MARIADB_CLIENT_CACHE_METADATA` (extended capability, see [`ResponseTracker::set_mariadb_capabilities`])
//!   does the same. When it is 0 the column definitions are skipped; the EOF after them is not.
//!   For the prepare-OK (byte 12 carries the flag) the MySQL docs attach both the definition
//!   blocks and their EOFs to "metadata follows"; this module skips both when it is 0.
//! - A binary resultset opened with a cursor: the packet right after the column definitions (an
//!   EOF, or with `CLIENT_DEPRECATE_EOF` an OK-0xfe) carries `SERVER_STATUS_CURSOR_EXISTS` and ends
//!   the response; rows then come by `COM_STMT_FETCH`. Stored procedures that use cursors leave
//!   `SERVER_STATUS_CURSOR_EXISTS` set on intermediate results too (reported against the myxql
//!   driver), so the flag ends the response only together with a clear
//!   `SERVER_MORE_RESULTS_EXISTS`, and only for binary resultsets.
//! - MariaDB sends progress reports (long `ALTER TABLE`, `LOAD DATA`) as ERR packets with error code
//!   0xFFFF in the middle of a command; they are parts, not ends.
//! - `COM_CHANGE_USER` runs an authentication exchange: OK or ERR ends it; an auth switch (0xfe),
//!   AuthMoreData (0x01) or, for MariaDB plugins such as PAM's dialog, any other plugin packet
//!   asks the client for data, except `01 03` (caching_sha2 fast-auth success, an OK follows).
//!   Each client answer is one logical packet.
//! - LOCAL INFILE: the server's 0xfb packet asks for the file; the client sends packets and ends
//!   with an empty packet. An empty packet that follows a packet of exactly 0xFF_FFFF bytes is the
//!   continuation of that packet, not the end marker. The server then answers OK or ERR (the OK
//!   may announce more results of a multi-statement).
//! - MySQL 8.0.24+ sends an ERR before closing an idle connection: with nothing pending, an ERR
//!   is [`ServerPacket::Unsolicited`]; anything else is an error.
//! - A response that would end on a packet of exactly 0xFF_FFFF bytes ends on the last packet of
//!   that logical packet instead: the end (or the request for client data) is reported on the
//!   final continuation packet.
//! - `COM_BINLOG_DUMP(_GTID)` turns the connection into a replication stream: every packet is a
//!   part until an ERR (or, with `BINLOG_DUMP_NON_BLOCK`, an EOF) ends it; otherwise the
//!   connection is never idle again.

use super::constants::*;
use super::cursor::Cursor;
use super::error::{ProtoError, Result};
use super::framing::PacketHead;

/// How many pending commands (sent, response not ended) the tracker holds inline. A proxy stops
/// reading a client that has this many pending; more (a compressed frame full of commands) go to
/// a growable overflow, up to [`MAX_PENDING`].
pub const MAX_PIPELINE: usize = 32;

/// Most commands pending at once; one more is an error. Far above what a client that waits for
/// its answers can reach: only pipelining without limit, inside one compressed frame, gets near.
pub const MAX_PENDING: usize = 1 << 20;

const MAX_LEN: u32 = MAX_PAYLOAD_LEN as u32;

/// What kind of response a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No response at all (`COM_QUIT`, `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`).
    Nothing,
    /// One OK or ERR packet.
    OkOrErr,
    /// OK, ERR, LOCAL INFILE request or one or more resultsets (text or binary rows).
    Resultset { binary: bool },
    /// Prepare-OK with parameter and column definitions, or ERR.
    StmtPrepare,
    /// Column definitions until an EOF, or ERR.
    FieldList,
    /// Exactly one packet (a human-readable string), or ERR.
    Statistics,
    /// Binary rows until an EOF/OK terminator, or ERR.
    StmtFetch,
    /// An authentication exchange (`COM_CHANGE_USER`).
    AuthExchange,
    /// One EOF (or OK-0xfe), OK or ERR packet.
    EofOrErr,
    /// A replication stream that does not end on its own.
    Stream,
}

/// The response shape of command byte `cmd`. Unknown commands get an ERR from the server, so they
/// are [`Expect::OkOrErr`].
pub fn expect_for_command(cmd: u8) -> Expect {
    match cmd {
        COM_QUIT | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => Expect::Nothing,
        COM_QUERY | COM_PROCESS_INFO => Expect::Resultset { binary: false },
        COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => Expect::Resultset { binary: true },
        COM_STMT_PREPARE => Expect::StmtPrepare,
        COM_FIELD_LIST => Expect::FieldList,
        COM_STATISTICS => Expect::Statistics,
        COM_STMT_FETCH => Expect::StmtFetch,
        COM_CHANGE_USER => Expect::AuthExchange,
        COM_SET_OPTION | COM_DEBUG | COM_SHUTDOWN => Expect::EofOrErr,
        COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID => Expect::Stream,
        _ => Expect::OkOrErr,
    }
}

/// What a client packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPacket {
    /// The first packet of a new command (`cmd` is its first byte).
    Command { cmd: u8, expect: Expect },
    /// A continuation packet of a command of 16 MiB or more.
    Continuation,
    /// Data the server asked for (LOCAL INFILE content, an authentication answer).
    Data,
    /// The empty packet that ends LOCAL INFILE content.
    EndOfData,
}

/// What a server packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPacket {
    /// A packet in the middle of a response: more packets of the same response follow.
    Part,
    /// The last packet of the response to the oldest pending command. `status` holds the status
    /// flags of this packet when it carries them, else the last known ones; `error` the error code
    /// of an ERR.
    ResponseEnd { status: u16, error: Option<u16> },
    /// The server waits for client data (LOCAL INFILE, authentication) before it goes on.
    AwaitClient,
    /// An ERR with no command pending (e.g. the server closing an idle connection).
    Unsolicited { error: Option<u16> },
}

/// Where in the response to the oldest pending command the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Next is the first packet of a response, or of the next result of a multi-result response.
    Start,
    /// Column definitions still to come.
    Columns { left: u64 },
    /// The EOF after the column definitions (without `CLIENT_DEPRECATE_EOF`).
    ColumnsEof,
    /// Rows until a terminator.
    Rows,
    /// After LOCAL INFILE data: the server's OK or ERR.
    InfileResult,
    /// Prepare: parameter definitions still to come, then `columns` column definitions.
    PrepareParams { left: u16, columns: u16 },
    /// Prepare: the EOF after the parameter definitions.
    PrepareParamsEof { columns: u16 },
    /// Prepare: column definitions still to come.
    PrepareColumns { left: u16 },
    /// Prepare: the EOF after the column definitions.
    PrepareColumnsEof,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Start => "response start",
            Phase::Columns { .. } => "column definitions",
            Phase::ColumnsEof => "EOF after column definitions",
            Phase::Rows => "rows",
            Phase::InfileResult => "LOCAL INFILE result",
            Phase::PrepareParams { .. } => "prepare parameter definitions",
            Phase::PrepareParamsEof { .. } => "EOF after prepare parameters",
            Phase::PrepareColumns { .. } => "prepare column definitions",
            Phase::PrepareColumnsEof => "EOF after prepare columns",
        }
    }
}

/// Which kind of client data the server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Await {
    /// LOCAL INFILE content: packets until an empty one.
    Infile,
    /// One logical authentication packet.
    Auth,
}

/// The effect of a server packet, applied when its logical packet is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Part,
    End { status: u16, error: Option<u16> },
    Await(Await),
    Unsolicited { error: Option<u16> },
}

/// Follows one connection's command phase and finds where each response ends.
/// Fixed size (no heap), see the module docs for the rules it applies.
#[derive(Debug, Clone)]
pub struct ResponseTracker {
    caps: u32,
    mariadb_caps: u32,
    queue: [Expect; MAX_PIPELINE],
    queue_head: usize,
    queue_len: usize,
    /// Commands pending beyond the inline queue, oldest first (empty, unallocated, normally).
    overflow: std::collections::VecDeque<Expect>,
    phase: Phase,
    awaiting: Option<Await>,
    /// The outcome of a server packet of exactly 0xFF_FFFF bytes, reported on its last continuation.
    deferred: Option<Outcome>,
    /// The last client packet was 0xFF_FFFF bytes long: a continuation follows.
    client_partial: bool,
    /// The last server packet was 0xFF_FFFF bytes long: a continuation follows.
    server_partial: bool,
    last_status: u16,
}

impl ResponseTracker {
    /// A tracker for a connection in the command phase with the negotiated `capabilities`
    /// (client & server; `CLIENT_DEPRECATE_EOF` and `CLIENT_OPTIONAL_RESULTSET_METADATA` matter).
    pub fn new(capabilities: u32) -> Self {
        ResponseTracker {
            caps: capabilities,
            mariadb_caps: 0,
            queue: [Expect::Nothing; MAX_PIPELINE],
            queue_head: 0,
            queue_len: 0,
            overflow: std::collections::VecDeque::new(),
            phase: Phase::Start,
            awaiting: None,
            deferred: None,
            client_partial: false,
            server_partial: false,
            last_status: 0,
        }
    }

    /// Change the negotiated capabilities (e.g. after `COM_CHANGE_USER` or a reconnect).
    pub fn set_capabilities(&mut self, caps: u32) {
        self.caps = caps;
    }

    /// Set the negotiated MariaDB extended capabilities (the 4 bytes MariaDB sends when
    /// `CLIENT_LONG_PASSWORD`/`CLIENT_MYSQL` is clear; `MARIADB_CLIENT_CACHE_METADATA` matters).
    pub fn set_mariadb_capabilities(&mut self, ext: u32) {
        self.mariadb_caps = ext;
    }

    /// True when the next server packet starts a response (or the next result of one): an OK,
    /// ERR or prepare-OK there is a status packet, not a row.
    pub fn at_response_start(&self) -> bool {
        self.phase == Phase::Start
    }

    /// No command pending, no exchange in progress, no logical packet half-sent either way.
    pub fn is_idle(&self) -> bool {
        self.queue_len == 0
            && self.awaiting.is_none()
            && self.deferred.is_none()
            && !self.client_partial
            && !self.server_partial
    }

    /// Commands sent whose responses have not ended.
    pub fn pending(&self) -> usize {
        self.queue_len + self.overflow.len()
    }

    /// How many more commands fit in the inline queue (a proxy stops reading at 0).
    pub fn room(&self) -> usize {
        MAX_PIPELINE.saturating_sub(self.pending())
    }

    /// Server status flags from the last OK/EOF seen (0 before any).
    pub fn last_status(&self) -> u16 {
        self.last_status
    }

    /// The server asked for client data (LOCAL INFILE, an authentication step).
    pub fn awaiting_client(&self) -> bool {
        self.awaiting.is_some()
    }

    /// The response shape of the oldest pending command, if any.
    pub fn current(&self) -> Option<Expect> {
        (self.queue_len > 0).then(|| self.queue[self.queue_head])
    }

    fn deprecate_eof(&self) -> bool {
        self.caps & CLIENT_DEPRECATE_EOF != 0
    }

    fn metadata_flag(&self) -> bool {
        self.caps & CLIENT_OPTIONAL_RESULTSET_METADATA != 0
            || self.mariadb_caps & MARIADB_CLIENT_CACHE_METADATA != 0
    }

    fn push(&mut self, e: Expect) -> Result<()> {
        if self.pending() >= MAX_PENDING {
            return Err(ProtoError::Unexpected {
                what: "command",
                state: "pipeline full",
            });
        }
        if self.queue_len == MAX_PIPELINE {
            self.overflow.push_back(e);
            return Ok(());
        }
        let slot = (self.queue_head + self.queue_len) % MAX_PIPELINE;
        self.queue[slot] = e;
        self.queue_len += 1;
        Ok(())
    }

    fn pop(&mut self) {
        if self.queue_len > 0 {
            self.queue_head = (self.queue_head + 1) % MAX_PIPELINE;
            self.queue_len -= 1;
            if let Some(e) = self.overflow.pop_front() {
                let slot = (self.queue_head + self.queue_len) % MAX_PIPELINE;
                self.queue[slot] = e;
                self.queue_len += 1;
            }
        }
        self.phase = Phase::Start;
    }

    /// Classify one physical client packet and update the state.
    pub fn on_client_packet(&mut self, p: &PacketHead<'_>) -> Result<ClientPacket> {
        let out = match self.awaiting {
            Some(Await::Infile) => {
                if !p.continuation && p.len == 0 {
                    self.awaiting = None;
                    self.phase = Phase::InfileResult;
                    ClientPacket::EndOfData
                } else {
                    ClientPacket::Data
                }
            }
            Some(Await::Auth) => {
                if p.len < MAX_LEN {
                    self.awaiting = None;
                }
                ClientPacket::Data
            }
            None if p.continuation => ClientPacket::Continuation,
            None => {
                let cmd = *p
                    .head
                    .first()
                    .ok_or(ProtoError::truncated("command byte"))?;
                let expect = expect_for_command(cmd);
                if expect != Expect::Nothing {
                    self.push(expect)?;
                }
                ClientPacket::Command { cmd, expect }
            }
        };
        self.client_partial = p.len >= MAX_LEN;
        Ok(out)
    }

    /// Classify one physical server packet and update the state.
    pub fn on_server_packet(&mut self, p: &PacketHead<'_>) -> Result<ServerPacket> {
        let outcome = if p.continuation {
            if self.queue_len == 0 && self.deferred.is_none() {
                return Err(self.unexpected("continuation packet"));
            }
            match self.deferred {
                Some(o) if p.len < MAX_LEN => {
                    self.deferred = None;
                    o
                }
                _ => Outcome::Part,
            }
        } else {
            if self.deferred.is_some() {
                return Err(self.unexpected("packet while a 16 MiB packet is unfinished"));
            }
            let o = self.classify(p)?;
            if p.len >= MAX_LEN && o != Outcome::Part {
                self.deferred = Some(o);
                Outcome::Part
            } else {
                o
            }
        };
        self.server_partial = p.len >= MAX_LEN;
        Ok(self.commit(outcome))
    }

    fn commit(&mut self, o: Outcome) -> ServerPacket {
        match o {
            Outcome::Part => ServerPacket::Part,
            Outcome::End { status, error } => {
                self.pop();
                ServerPacket::ResponseEnd { status, error }
            }
            Outcome::Await(a) => {
                self.awaiting = Some(a);
                ServerPacket::AwaitClient
            }
            Outcome::Unsolicited { error } => ServerPacket::Unsolicited { error },
        }
    }

    fn unexpected(&self, what: &'static str) -> ProtoError {
        let state = if self.queue_len == 0 {
            "idle"
        } else if self.awaiting.is_some() {
            "awaiting client data"
        } else {
            self.phase.name()
        };
        ProtoError::Unexpected { what, state }
    }

    fn end(&self, status: u16) -> Outcome {
        Outcome::End {
            status,
            error: None,
        }
    }

    /// Decide what the first physical packet of a server logical packet is. Changes `phase`
    /// and `last_status`; queue and await changes wait for [`Self::commit`].
    fn classify(&mut self, p: &PacketHead<'_>) -> Result<Outcome> {
        let first = *p
            .head
            .first()
            .ok_or(ProtoError::truncated("response packet"))?;
        let Some(expect) = self.current() else {
            if first == ERR_HEADER {
                return Ok(Outcome::Unsolicited {
                    error: Some(err_code(p.head)?),
                });
            }
            return Err(self.unexpected("server packet"));
        };
        if first == ERR_HEADER {
            let code = err_code(p.head)?;
            if code == 0xffff {
                // MariaDB progress report: the command goes on.
                return Ok(Outcome::Part);
            }
            self.awaiting = None;
            return Ok(Outcome::End {
                status: self.last_status,
                error: Some(code),
            });
        }
        if self.awaiting.is_some() {
            return Err(self.unexpected("server packet"));
        }
        match expect {
            // Not queued, so never current; kept total for the match.
            Expect::Nothing => Err(self.unexpected("server packet")),
            Expect::OkOrErr => match first {
                OK_HEADER => {
                    let s = self.ok_status(p.head)?;
                    Ok(self.end(s))
                }
                _ => Err(self.unexpected("packet other than OK/ERR")),
            },
            Expect::EofOrErr => match first {
                OK_HEADER => {
                    let s = self.ok_status(p.head)?;
                    Ok(self.end(s))
                }
                EOF_HEADER if p.len < MAX_LEN => {
                    let s = self.terminator_status(p.head)?;
                    Ok(self.end(s))
                }
                _ => Err(self.unexpected("packet other than EOF/OK/ERR")),
            },
            Expect::Statistics => Ok(self.end(self.last_status)),
            Expect::FieldList => {
                if self.is_terminator(p, first) {
                    let s = self.terminator_status(p.head)?;
                    Ok(self.end(s))
                } else {
                    Ok(Outcome::Part)
                }
            }
            Expect::StmtFetch => {
                if self.is_terminator(p, first) {
                    let s = self.terminator_status(p.head)?;
                    Ok(self.end(s))
                } else {
                    Ok(Outcome::Part)
                }
            }
            Expect::AuthExchange => match first {
                OK_HEADER => {
                    let s = self.ok_status(p.head)?;
                    Ok(self.end(s))
                }
                AUTH_MORE_DATA_HEADER => {
                    let second = *p.head.get(1).ok_or(ProtoError::truncated("AuthMoreData"))?;
                    if second == 0x03 && p.len == 2 {
                        Ok(Outcome::Part)
                    } else {
                        Ok(Outcome::Await(Await::Auth))
                    }
                }
                // Auth switch (0xfe) or raw plugin data (MariaDB dialog/PAM and others).
                _ => Ok(Outcome::Await(Await::Auth)),
            },
            Expect::Stream => {
                if first == EOF_HEADER && p.len < 9 {
                    Ok(self.end(self.last_status))
                } else {
                    Ok(Outcome::Part)
                }
            }
            Expect::StmtPrepare => self.classify_prepare(p, first),
            Expect::Resultset { binary } => self.classify_resultset(p, first, binary),
        }
    }

    fn classify_resultset(
        &mut self,
        p: &PacketHead<'_>,
        first: u8,
        binary: bool,
    ) -> Result<Outcome> {
        match self.phase {
            Phase::Start => match first {
                OK_HEADER => {
                    let s = self.ok_status(p.head)?;
                    Ok(self.more_or_end(s))
                }
                LOCAL_INFILE_HEADER => Ok(Outcome::Await(Await::Infile)),
                EOF_HEADER => Err(self.unexpected("EOF packet")),
                _ => {
                    let mut c = Cursor::new(p.head);
                    let n = c
                        .lenenc_int()
                        .map_err(|_| ProtoError::truncated("column count"))?;
                    let defs = if self.metadata_flag() {
                        match c
                            .u8()
                            .map_err(|_| ProtoError::truncated("metadata_follows"))?
                        {
                            0 => false,
                            1 => true,
                            v => {
                                return Err(ProtoError::malformed(
                                    "column count",
                                    format!("metadata_follows is {v}"),
                                ))
                            }
                        }
                    } else {
                        true
                    };
                    self.phase = if defs {
                        Phase::Columns { left: n }
                    } else {
                        self.after_columns()
                    };
                    Ok(Outcome::Part)
                }
            },
            Phase::Columns { left } => {
                let left = left.saturating_sub(1);
                self.phase = if left == 0 {
                    self.after_columns()
                } else {
                    Phase::Columns { left }
                };
                Ok(Outcome::Part)
            }
            Phase::ColumnsEof => {
                if !(first == EOF_HEADER && p.len < 9) {
                    return Err(self.unexpected("packet other than EOF"));
                }
                let s = eof_status(p.head)?;
                self.last_status = s;
                if binary
                    && s & SERVER_STATUS_CURSOR_EXISTS != 0
                    && s & SERVER_MORE_RESULTS_EXISTS == 0
                {
                    return Ok(self.end(s));
                }
                self.phase = Phase::Rows;
                Ok(Outcome::Part)
            }
            Phase::Rows => {
                if self.is_terminator(p, first) {
                    let s = self.terminator_status(p.head)?;
                    Ok(self.more_or_end(s))
                } else {
                    Ok(Outcome::Part)
                }
            }
            Phase::InfileResult => match first {
                OK_HEADER => {
                    let s = self.ok_status(p.head)?;
                    Ok(self.more_or_end(s))
                }
                _ => Err(self.unexpected("packet other than OK/ERR")),
            },
            _ => Err(self.unexpected("server packet")),
        }
    }

    fn after_columns(&self) -> Phase {
        if self.deprecate_eof() {
            Phase::Rows
        } else {
            Phase::ColumnsEof
        }
    }

    /// After an OK or terminator with status `s`: another result follows, or the response ends.
    fn more_or_end(&mut self, s: u16) -> Outcome {
        if s & SERVER_MORE_RESULTS_EXISTS != 0 {
            self.phase = Phase::Start;
            Outcome::Part
        } else {
            self.end(s)
        }
    }

    fn classify_prepare(&mut self, p: &PacketHead<'_>, first: u8) -> Result<Outcome> {
        let is_eof = first == EOF_HEADER && p.len < 9;
        match self.phase {
            Phase::Start => {
                if first != OK_HEADER {
                    return Err(self.unexpected("packet other than prepare-OK/ERR"));
                }
                let h = p.head;
                if h.len() < 9 {
                    return Err(ProtoError::truncated("prepare-OK"));
                }
                let columns = u16::from_le_bytes([h[5], h[6]]);
                let params = u16::from_le_bytes([h[7], h[8]]);
                let metadata = if self.caps & CLIENT_OPTIONAL_RESULTSET_METADATA != 0 {
                    h.get(12).is_none_or(|&m| m != 0)
                } else {
                    true
                };
                if !metadata {
                    return Ok(self.end(self.last_status));
                }
                if params > 0 {
                    self.phase = Phase::PrepareParams {
                        left: params,
                        columns,
                    };
                    Ok(Outcome::Part)
                } else {
                    Ok(self.prepare_columns(columns))
                }
            }
            Phase::PrepareParams { left, columns } => {
                let left = left.saturating_sub(1);
                if left > 0 {
                    self.phase = Phase::PrepareParams { left, columns };
                    Ok(Outcome::Part)
                } else if self.deprecate_eof() {
                    Ok(self.prepare_columns(columns))
                } else {
                    self.phase = Phase::PrepareParamsEof { columns };
                    Ok(Outcome::Part)
                }
            }
            Phase::PrepareParamsEof { columns } => {
                if !is_eof {
                    return Err(self.unexpected("packet other than EOF"));
                }
                self.last_status = eof_status(p.head)?;
                Ok(self.prepare_columns(columns))
            }
            Phase::PrepareColumns { left } => {
                let left = left.saturating_sub(1);
                if left > 0 {
                    self.phase = Phase::PrepareColumns { left };
                    Ok(Outcome::Part)
                } else if self.deprecate_eof() {
                    Ok(self.end(self.last_status))
                } else {
                    self.phase = Phase::PrepareColumnsEof;
                    Ok(Outcome::Part)
                }
            }
            Phase::PrepareColumnsEof => {
                if !is_eof {
                    return Err(self.unexpected("packet other than EOF"));
                }
                let s = eof_status(p.head)?;
                self.last_status = s;
                Ok(self.end(s))
            }
            _ => Err(self.unexpected("server packet")),
        }
    }

    /// Column definitions of a prepare-OK, or the end when there are none.
    fn prepare_columns(&mut self, columns: u16) -> Outcome {
        if columns > 0 {
            self.phase = Phase::PrepareColumns { left: columns };
            Outcome::Part
        } else {
            self.end(self.last_status)
        }
    }

    /// An EOF, or with `CLIENT_DEPRECATE_EOF` an OK-0xfe, ending rows or definitions.
    fn is_terminator(&self, p: &PacketHead<'_>, first: u8) -> bool {
        first == EOF_HEADER && (p.len < 9 || (self.deprecate_eof() && p.len < MAX_LEN))
    }

    /// Status flags of a 0xfe terminator: OK layout with `CLIENT_DEPRECATE_EOF`, EOF layout without.
    fn terminator_status(&mut self, head: &[u8]) -> Result<u16> {
        if self.deprecate_eof() {
            self.ok_status(head)
        } else {
            let s = eof_status(head)?;
            self.last_status = s;
            Ok(s)
        }
    }

    /// Status flags of an OK packet (header 0x00 or 0xfe); remembered as the last status.
    fn ok_status(&mut self, head: &[u8]) -> Result<u16> {
        let mut c = Cursor::new(head);
        let parsed = (|| {
            c.u8()?;
            c.lenenc_int()?;
            c.lenenc_int()?;
            c.u16_le()
        })();
        let s = parsed.map_err(|_| ProtoError::truncated("OK packet"))?;
        self.last_status = s;
        Ok(s)
    }
}

/// Status flags of a 4.1 EOF packet (bytes 3..5).
fn eof_status(head: &[u8]) -> Result<u16> {
    match head.get(3..5) {
        Some(&[a, b]) => Ok(u16::from_le_bytes([a, b])),
        _ => Err(ProtoError::truncated("EOF packet")),
    }
}

/// Error code of an ERR packet (bytes 1..3).
fn err_code(head: &[u8]) -> Result<u16> {
    match head.get(1..3) {
        Some(&[a, b]) => Ok(u16::from_le_bytes([a, b])),
        _ => Err(ProtoError::truncated("ERR packet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::cursor::{put_lenenc_bytes, put_lenenc_int};
    use crate::protocol::framing::{write_packet, PacketStream};
    use proptest::prelude::*;

    const MAX: usize = MAX_PAYLOAD_LEN;
    const DEP: u32 = CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF;
    const CLASSIC: u32 = CLIENT_PROTOCOL_41;

    // ---------- payload builders ----------

    fn ok_with(header: u8, affected: u64, status: u16) -> Vec<u8> {
        let mut p = vec![header];
        put_lenenc_int(&mut p, affected);
        put_lenenc_int(&mut p, 0);
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&0u16.to_le_bytes());
        p
    }
    fn ok(status: u16) -> Vec<u8> {
        ok_with(OK_HEADER, 0, status)
    }
    fn eof(status: u16) -> Vec<u8> {
        let mut p = vec![EOF_HEADER, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p
    }
    /// The end of rows or definitions in the given mode.
    fn term(caps: u32, status: u16) -> Vec<u8> {
        if caps & CLIENT_DEPRECATE_EOF != 0 {
            ok_with(EOF_HEADER, 0, status)
        } else {
            eof(status)
        }
    }
    fn err(code: u16) -> Vec<u8> {
        let mut p = vec![ERR_HEADER];
        p.extend_from_slice(&code.to_le_bytes());
        p.extend_from_slice(b"#42000oops");
        p
    }
    fn coldef(name: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        for s in [&b"def"[..], b"db", b"t", b"t", name, name] {
            put_lenenc_bytes(&mut p, s);
        }
        p.push(0x0c);
        p.extend_from_slice(&[0x21, 0, 0x3c, 0, 0, 0, MYSQL_TYPE_VAR_STRING, 0, 0, 0, 0, 0]);
        p
    }
    fn colcount(n: u64) -> Vec<u8> {
        let mut p = Vec::new();
        put_lenenc_int(&mut p, n);
        p
    }
    fn text_row(vals: &[Option<&[u8]>]) -> Vec<u8> {
        let mut p = Vec::new();
        for v in vals {
            match v {
                Some(b) => put_lenenc_bytes(&mut p, b),
                None => p.push(0xfb),
            }
        }
        p
    }
    fn bin_row(body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x00, 0x00];
        p.extend_from_slice(body);
        p
    }
    fn cmd(c: u8, arg: &[u8]) -> Vec<u8> {
        let mut p = vec![c];
        p.extend_from_slice(arg);
        p
    }
    fn prepare_ok(columns: u16, params: u16) -> Vec<u8> {
        let mut p = vec![0x00, 1, 0, 0, 0];
        p.extend_from_slice(&columns.to_le_bytes());
        p.extend_from_slice(&params.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    }
    /// A whole text resultset: count, definitions, (EOF), rows, terminator.
    fn resultset(caps: u32, cols: usize, rows: &[Vec<u8>], status: u16) -> Vec<Vec<u8>> {
        let mut v = vec![colcount(cols as u64)];
        for i in 0..cols {
            v.push(coldef(format!("c{i}").as_bytes()));
        }
        if caps & CLIENT_DEPRECATE_EOF == 0 {
            v.push(eof(status & !SERVER_MORE_RESULTS_EXISTS));
        }
        v.extend(rows.iter().cloned());
        v.push(term(caps, status));
        v
    }
    /// Frame payloads as consecutive packets starting at `seq`.
    fn frames(payloads: &[Vec<u8>], seq: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = seq;
        for p in payloads {
            s = write_packet(&mut out, s, p);
        }
        out
    }
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // ---------- harness: PacketStream per direction + tracker ----------

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Side {
        C,
        S,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ev {
        C(ClientPacket),
        S(ServerPacket),
    }

    /// One packet's result plus the tracker's view right after it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Snap {
        ev: Ev,
        pending: usize,
        idle: bool,
        awaiting: bool,
    }

    struct Harness {
        t: ResponseTracker,
        c: PacketStream,
        s: PacketStream,
    }

    impl Harness {
        fn new(caps: u32) -> Self {
            Harness {
                t: ResponseTracker::new(caps),
                c: PacketStream::new(),
                s: PacketStream::new(),
            }
        }
        fn mariadb(caps: u32, ext: u32) -> Self {
            let mut h = Self::new(caps);
            h.t.set_mariadb_capabilities(ext);
            h
        }
        /// Feed `bytes` in chunks of the given sizes (cycled; the whole input when empty).
        fn feed_chunked(&mut self, side: Side, bytes: &[u8], sizes: &[usize]) -> Result<Vec<Snap>> {
            let mut out = Vec::new();
            let mut rest = bytes;
            let mut i = 0;
            while !rest.is_empty() {
                let n = if sizes.is_empty() {
                    rest.len()
                } else {
                    sizes[i % sizes.len()].clamp(1, rest.len())
                };
                i += 1;
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let t = &mut self.t;
                let mut on = |p: PacketHead<'_>| -> Result<()> {
                    let ev = match side {
                        Side::C => Ev::C(t.on_client_packet(&p)?),
                        Side::S => Ev::S(t.on_server_packet(&p)?),
                    };
                    out.push(Snap {
                        ev,
                        pending: t.pending(),
                        idle: t.is_idle(),
                        awaiting: t.awaiting_client(),
                    });
                    Ok(())
                };
                match side {
                    Side::C => self.c.feed(chunk, &mut on)?,
                    Side::S => self.s.feed(chunk, &mut on)?,
                }
            }
            Ok(out)
        }
        fn feed(&mut self, side: Side, bytes: &[u8]) -> Result<Vec<Snap>> {
            self.feed_chunked(side, bytes, &[])
        }
        fn server(&mut self, payloads: &[Vec<u8>]) -> Vec<ServerPacket> {
            let evs = self
                .feed(Side::S, &frames(payloads, 1))
                .expect("server packets");
            evs.into_iter()
                .map(|s| match s.ev {
                    Ev::S(e) => e,
                    Ev::C(_) => unreachable!(),
                })
                .collect()
        }
        fn client(&mut self, payloads: &[Vec<u8>]) -> Vec<ClientPacket> {
            let evs = self
                .feed(Side::C, &frames(payloads, 0))
                .expect("client packets");
            evs.into_iter()
                .map(|s| match s.ev {
                    Ev::C(e) => e,
                    Ev::S(_) => unreachable!(),
                })
                .collect()
        }
    }

    /// `n - 1` parts then the end.
    fn parts_then(n: usize, last: ServerPacket) -> Vec<ServerPacket> {
        let mut v = vec![ServerPacket::Part; n - 1];
        v.push(last);
        v
    }
    fn end(status: u16) -> ServerPacket {
        ServerPacket::ResponseEnd {
            status,
            error: None,
        }
    }
    fn end_err(status: u16, code: u16) -> ServerPacket {
        ServerPacket::ResponseEnd {
            status,
            error: Some(code),
        }
    }
    const AC: u16 = SERVER_STATUS_AUTOCOMMIT;
    const MORE: u16 = SERVER_MORE_RESULTS_EXISTS;

    // ---------- real exchanges captured from MariaDB 10.11.19 (Debian 12 package) ----------
    //
    // How captured: a throwaway server (`mariadb-install-db --datadir=/tmp/scan-db`, `mariadbd
    // --port=3398 --local-infile=1`) with a table `s.t (id INT PRIMARY KEY, v VARCHAR(20))` holding
    // (1,'a'),(2,NULL) and a procedure `s.p()` running `SELECT 1 AS x; SELECT id, v FROM s.t`.
    // The CLI_* exchanges went through a small Python TCP relay (127.0.0.1:3396 → 3398) that
    // wrote each direction's bytes to a file; the mariadb 10.11 CLI negotiated capabilities
    // 0xbfa284 (no CLIENT_DEPRECATE_EOF) and MariaDB extended capabilities 0x1d (progress
    // reports, bulk, extended type info, cache metadata: hence the `01` after each column count).
    // The RAW_* exchanges come from a minimal Python client speaking the protocol on a raw socket
    // (mysql_native_password), once without and once with CLIENT_DEPRECATE_EOF, printing what it
    // sent and received per command. Handshake and authentication are cut off; each step below is
    // one direction's packets, in the order they crossed the wire.
    const CLI_CAPS: u32 = 0x00bf_a284;
    const CLI_EXT: u32 = 0x1d;
    const RAW_CLASSIC_CAPS: u32 = 0x000f_a209;
    const RAW_DEPRECATE_CAPS: u32 = 0x010f_a209;

    /// mariadb CLI, `--delimiter='$$' -e 'SELECT 1 AS a, NULL AS b; SELECT id, v FROM s.t$$'`: one COM_QUERY, two resultsets.
    const CLI_MULTI_STATEMENT: &[(Side, &[&str])] = &[
        (Side::C, &[
            "300000000353454c454354203120415320612c204e554c4c20415320623b2053454c4543542069642c20762046524f4d20732e74",
        ]),
        (Side::S, &[
            "020000010201",
            "1800000203646566000000016100000c3f0001000000038100000000",
            "1800000303646566000000016200000c3f0000000000068000000000",
            "05000004fe00000a00",
            "030000050131fb",
            "05000006fe00000a00",
            "020000070201",
            "1e00000803646566017301740174026964026964000c3f000b000000030350000000",
            "1c0000090364656601730174017401760176000c21003c000000fd0000000000",
            "0500000afe00002200",
            "0400000b01310161",
            "0300000c0132fb",
            "0500000dfe00002200",
        ]),
        (Side::C, &[
            "0100000001",
        ]),
    ];
    /// mariadb CLI, `CALL s.p()` (two SELECTs): two resultsets then the final OK.
    const CLI_CALL: &[(Side, &[&str])] = &[
        (Side::C, &["0b0000000343414c4c20732e702829"]),
        (
            Side::S,
            &[
                "020000010101",
                "1800000203646566000000017800000c3f0001000000038100000000",
                "05000003fe00000a40",
                "020000040131",
                "05000005fe00000a40",
                "020000060201",
                "1e00000703646566017301740174026964026964000c3f000b000000030350000000",
                "1c0000080364656601730174017401760176000c21003c000000fd0000000000",
                "05000009fe00002a40",
                "0400000a01310161",
                "0300000b0132fb",
                "0500000cfe00002a40",
                "0c00000d000000224000000003010100",
            ],
        ),
        (Side::C, &["0100000001"]),
    ];
    /// mariadb CLI `--local-infile=1`: CREATE TEMPORARY TABLE, then LOAD DATA LOCAL INFILE (file request, data, empty packet, a progress report ERR 0xFFFF, OK).
    const CLI_LOCAL_INFILE: &[(Side, &[&str])] = &[
        (Side::C, &[
            "32000000034352454154452054454d504f52415259205441424c4520732e747420286120494e542c2062205641524348415228352929",
        ]),
        (Side::S, &[
            "0700000100000002000000",
        ]),
        (Side::C, &[
            "52000000034c4f41442044415441204c4f43414c20494e46494c4520272f746d702f696e66696c652e6373762720494e544f205441424c4520732e7474204649454c4453205445524d494e4154454420425920272c27",
        ]),
        (Side::S, &[
            "10000001fb2f746d702f696e66696c652e637376",
        ]),
        (Side::C, &[
            "08000002312c780a322c790a",
            "00000003",
        ]),
        (Side::S, &[
            "19000004ffffff0102020000000f456e642062756c6b20696e73657274",
            "37000005000200020000002f5265636f7264733a2032202044656c657465643a20302020536b69707065643a203020205761726e696e67733a2030",
        ]),
        (Side::C, &[
            "0100000001",
        ]),
    ];
    /// mariadb-admin `status ping`: COM_STATISTICS then COM_PING.
    const CLI_STATISTICS_PING: &[(Side, &[&str])] = &[
        (Side::C, &[
            "0100000009",
        ]),
        (Side::S, &[
            "71000001557074696d653a2031332020546872656164733a203120205175657374696f6e733a2032322020536c6f7720717565726965733a203020204f70656e733a20323320204f70656e207461626c65733a20313520205175657269657320706572207365636f6e64206176673a20312e363932",
        ]),
        (Side::C, &[
            "010000000e",
        ]),
        (Side::S, &[
            "0700000100000002000000",
        ]),
        (Side::C, &[
            "0100000001",
        ]),
    ];
    /// mariadb CLI, `SELECT * FROM nosuch.t`: ERR 1146.
    const CLI_ERROR: &[(Side, &[&str])] = &[
        (Side::C, &[
            "170000000353454c454354202a2046524f4d206e6f737563682e74",
        ]),
        (Side::S, &[
            "27000001ff7a042334325330325461626c6520276e6f737563682e742720646f65736e2774206578697374",
        ]),
        (Side::C, &[
            "0100000001",
        ]),
    ];
    /// raw client, caps 0xfa209 (without CLIENT_DEPRECATE_EOF): multi-statement, COM_FIELD_LIST, prepare, execute, execute with cursor, fetch 1, fetch 10, prepare `DO 1`, COM_STMT_CLOSE.
    const RAW_CLASSIC_EOF: &[(Side, &[&str])] = &[
        (Side::C, &[
            "2f0000000353454c454354203120415320613b2053454c4543542069642c20762046524f4d2074204f52444552204259206964",
        ]),
        (Side::S, &[
            "0100000101",
            "17000002036465660000000161000c3f0001000000038100000000",
            "05000003fe00000a00",
            "020000040131",
            "05000005fe00000a00",
            "0100000602",
            "1d000007036465660173017401740269640269640c3f000b000000030350000000",
            "1b00000803646566017301740174017601760c21003c000000fd0000000000",
            "05000009fe00002200",
            "0400000a01310161",
            "0300000b0132fb",
            "0500000cfe00002200",
        ]),
        (Side::C, &[
            "03000000047400",
        ]),
        (Side::S, &[
            "1f000001036465660173017401740269640269640c3f000b0000000303500000000130",
            "1c00000203646566017301740174017601760c21003c000000fd0000000000fb",
            "05000003fe00000200",
        ]),
        (Side::C, &[
            "210000001653454c4543542069642c20762046524f4d2074205748455245206964203e203f",
        ]),
        (Side::S, &[
            "0c000001000100000002000100000000",
            "1700000203646566000000013f000c3f0000000000068000000000",
            "05000003fe00000200",
            "1d000004036465660173017401740269640269640c3f000b000000030350000000",
            "1b00000503646566017301740174017601760c21003c000000fd0000000000",
            "05000006fe00000200",
        ]),
        (Side::C, &[
            "1600000017010000000001000000000108000000000000000000",
        ]),
        (Side::S, &[
            "0100000102",
            "1d000002036465660173017401740269640269640c3f000b000000030350000000",
            "1b00000303646566017301740174017601760c21003c000000fd0000000000",
            "05000004fe00000200",
            "080000050000010000000161",
            "06000006000802000000",
            "05000007fe00000200",
        ]),
        (Side::C, &[
            "1600000017010000000101000000000108000000000000000000",
        ]),
        (Side::S, &[
            "0100000102",
            "1d000002036465660173017401740269640269640c3f000b000000030110000000",
            "1b00000303646566017301740174017601760c21003c000000fd0000000000",
            "05000004fe00004200",
        ]),
        (Side::C, &[
            "090000001c0100000001000000",
        ]),
        (Side::S, &[
            "080000010000010000000161",
            "05000002fe00004200",
        ]),
        (Side::C, &[
            "090000001c010000000a000000",
        ]),
        (Side::S, &[
            "06000001000802000000",
            "05000002fe00008200",
        ]),
        (Side::C, &[
            "0500000016444f2031",
        ]),
        (Side::S, &[
            "0c000001000200000000000000000000",
        ]),
        (Side::C, &[
            "050000001901000000",
        ]),
    ];
    /// raw client, caps 0x10fa209 (with CLIENT_DEPRECATE_EOF): multi-statement, COM_FIELD_LIST, prepare, execute, execute with cursor, fetch 1, fetch 10, prepare `DO 1`, COM_STMT_CLOSE.
    const RAW_DEPRECATE_EOF: &[(Side, &[&str])] = &[
        (Side::C, &[
            "2f0000000353454c454354203120415320613b2053454c4543542069642c20762046524f4d2074204f52444552204259206964",
        ]),
        (Side::S, &[
            "0100000101",
            "17000002036465660000000161000c3f0001000000038100000000",
            "020000030131",
            "07000004fe00000a000000",
            "0100000502",
            "1d000006036465660173017401740269640269640c3f000b000000030350000000",
            "1b00000703646566017301740174017601760c21003c000000fd0000000000",
            "0400000801310161",
            "030000090132fb",
            "0700000afe000022000000",
        ]),
        (Side::C, &[
            "03000000047400",
        ]),
        (Side::S, &[
            "1f000001036465660173017401740269640269640c3f000b0000000303500000000130",
            "1c00000203646566017301740174017601760c21003c000000fd0000000000fb",
            "07000003fe000002000000",
        ]),
        (Side::C, &[
            "210000001653454c4543542069642c20762046524f4d2074205748455245206964203e203f",
        ]),
        (Side::S, &[
            "0c000001000100000002000100000000",
            "1700000203646566000000013f000c3f0000000000068000000000",
            "1d000003036465660173017401740269640269640c3f000b000000030350000000",
            "1b00000403646566017301740174017601760c21003c000000fd0000000000",
        ]),
        (Side::C, &[
            "1600000017010000000001000000000108000000000000000000",
        ]),
        (Side::S, &[
            "0100000102",
            "1d000002036465660173017401740269640269640c3f000b000000030350000000",
            "1b00000303646566017301740174017601760c21003c000000fd0000000000",
            "080000040000010000000161",
            "06000005000802000000",
            "07000006fe000002000000",
        ]),
        (Side::C, &[
            "1600000017010000000101000000000108000000000000000000",
        ]),
        (Side::S, &[
            "0100000102",
            "1d000002036465660173017401740269640269640c3f000b000000030110000000",
            "1b00000303646566017301740174017601760c21003c000000fd0000000000",
            "07000004fe000042000000",
        ]),
        (Side::C, &[
            "090000001c0100000001000000",
        ]),
        (Side::S, &[
            "080000010000010000000161",
            "07000002fe000042000000",
        ]),
        (Side::C, &[
            "090000001c010000000a000000",
        ]),
        (Side::S, &[
            "06000001000802000000",
            "07000002fe000082000000",
        ]),
        (Side::C, &[
            "0500000016444f2031",
        ]),
        (Side::S, &[
            "0c000001000200000000000000000000",
        ]),
        (Side::C, &[
            "050000001901000000",
        ]),
    ];
    /// raw client: COM_CHANGE_USER naming caching_sha2_password (not a MariaDB plugin): auth switch to mysql_native_password, the client's answer, OK.
    const RAW_CHANGE_USER: &[(Side, &[&str])] = &[
        (Side::C, &[
            "36000000117363616e32001401010101010101010101010101010101010101017300210063616368696e675f736861325f70617373776f726400",
        ]),
        (Side::S, &[
            "2c000001fe6d7973716c5f6e61746976655f70617373776f726400785b3f6973296b632f5c635c233a384c564a523b00",
        ]),
        (Side::C, &[
            "140000028edddef6760fd7bc88a4cd46d8f9c76d5c976d41",
        ]),
        (Side::S, &[
            "0700000300000002000000",
        ]),
    ];

    /// Replay a capture in chunks of `sizes`; every server step must be parts then one end (or a
    /// request for client data), and the connection must be idle at the end.
    fn replay(caps: u32, ext: u32, steps: &[(Side, &[&str])], sizes: &[usize]) -> Vec<Vec<Snap>> {
        let mut h = Harness::mariadb(caps, ext);
        let mut all = Vec::new();
        for (side, pkts) in steps {
            let bytes: Vec<u8> = pkts.iter().flat_map(|p| hex(p)).collect();
            let snaps = h.feed_chunked(*side, &bytes, sizes).expect("replay");
            assert_eq!(snaps.len(), pkts.len(), "one event per packet");
            if *side == Side::S {
                let (last, before) = snaps.split_last().unwrap();
                for s in before {
                    assert_eq!(s.ev, Ev::S(ServerPacket::Part), "{pkts:?}");
                    assert!(!s.idle);
                }
                assert!(
                    matches!(
                        last.ev,
                        Ev::S(ServerPacket::ResponseEnd { .. } | ServerPacket::AwaitClient)
                    ),
                    "{last:?}"
                );
            }
            all.push(snaps);
        }
        assert!(h.t.is_idle());
        assert_eq!(h.t.pending(), 0);
        all
    }

    fn last_server(snaps: &[Snap]) -> ServerPacket {
        match snaps.last().unwrap().ev {
            Ev::S(e) => e,
            Ev::C(_) => panic!("not a server event"),
        }
    }

    #[test]
    fn real_multi_statement_two_resultsets() {
        for sizes in [&[][..], &[1], &[3, 7, 64]] {
            let r = replay(CLI_CAPS, CLI_EXT, CLI_MULTI_STATEMENT, sizes);
            assert_eq!(r[1].len(), 13);
            // The first resultset's EOF carries SERVER_MORE_RESULTS_EXISTS: still a part.
            assert_eq!(r[1][5].ev, Ev::S(ServerPacket::Part));
            assert_eq!(last_server(&r[1]), end(0x0022));
            assert_eq!(
                r[2][0].ev,
                Ev::C(ClientPacket::Command {
                    cmd: COM_QUIT,
                    expect: Expect::Nothing
                })
            );
        }
    }

    #[test]
    fn real_call_resultsets_then_final_ok() {
        let r = replay(CLI_CAPS, CLI_EXT, CLI_CALL, &[2]);
        assert_eq!(r[1].len(), 13);
        assert_eq!(last_server(&r[1]), end(0x4022));
    }

    #[test]
    fn real_local_infile_with_progress_report() {
        let r = replay(CLI_CAPS, CLI_EXT, CLI_LOCAL_INFILE, &[5]);
        assert_eq!(last_server(&r[1]), end(0x0002)); // CREATE TEMPORARY TABLE
        assert_eq!(last_server(&r[3]), ServerPacket::AwaitClient);
        assert!(r[3][0].awaiting);
        let data: Vec<Ev> = r[4].iter().map(|s| s.ev).collect();
        assert_eq!(
            data,
            [Ev::C(ClientPacket::Data), Ev::C(ClientPacket::EndOfData)]
        );
        // MariaDB progress report (ERR with code 0xFFFF) is a part; the OK ends the LOAD DATA.
        assert_eq!(r[5][0].ev, Ev::S(ServerPacket::Part));
        assert_eq!(last_server(&r[5]), end(0x0002));
    }

    #[test]
    fn real_statistics_and_ping() {
        let r = replay(CLI_CAPS, CLI_EXT, CLI_STATISTICS_PING, &[]);
        assert!(matches!(
            last_server(&r[1]),
            ServerPacket::ResponseEnd { error: None, .. }
        ));
        assert_eq!(last_server(&r[3]), end(0x0002));
    }

    #[test]
    fn real_error() {
        let r = replay(CLI_CAPS, CLI_EXT, CLI_ERROR, &[1]);
        assert_eq!(last_server(&r[1]), end_err(0, 1146));
    }

    #[test]
    fn real_binary_protocol_classic_eof() {
        let r = replay(RAW_CLASSIC_CAPS, 0, RAW_CLASSIC_EOF, &[]);
        // steps: multi, fieldlist, prepare, execute, execute+cursor, fetch 1, fetch 10, prepare DO 1, close
        assert_eq!(r[3].len(), 3, "field list: 2 definitions + EOF");
        assert_eq!(r[5].len(), 6, "prepare: OK, 1 param, EOF, 2 columns, EOF");
        assert_eq!(last_server(&r[9]), end(SERVER_STATUS_CURSOR_EXISTS | AC));
        assert_eq!(
            r[9].len(),
            4,
            "cursor: count, 2 definitions, EOF with CURSOR_EXISTS"
        );
        assert_eq!(last_server(&r[11]), end(SERVER_STATUS_CURSOR_EXISTS | AC));
        assert_eq!(last_server(&r[13]), end(SERVER_STATUS_LAST_ROW_SENT | AC));
        assert_eq!(r[15].len(), 1, "prepare DO 1: no params, no columns");
        assert_eq!(r.len(), 17, "COM_STMT_CLOSE has no response");
    }

    #[test]
    fn real_binary_protocol_deprecate_eof() {
        let r = replay(RAW_DEPRECATE_CAPS, 0, RAW_DEPRECATE_EOF, &[4]);
        assert_eq!(r[1].len(), 10, "two resultsets without metadata EOFs");
        assert_eq!(r[3].len(), 3, "field list: 2 definitions + OK-0xfe");
        assert_eq!(r[5].len(), 4, "prepare: OK, 1 param, 2 columns");
        assert_eq!(last_server(&r[9]), end(SERVER_STATUS_CURSOR_EXISTS | AC));
        assert_eq!(last_server(&r[13]), end(SERVER_STATUS_LAST_ROW_SENT | AC));
    }

    #[test]
    fn real_change_user_auth_switch() {
        let r = replay(RAW_CLASSIC_CAPS, 0, RAW_CHANGE_USER, &[]);
        assert_eq!(
            r[0][0].ev,
            Ev::C(ClientPacket::Command {
                cmd: COM_CHANGE_USER,
                expect: Expect::AuthExchange
            })
        );
        assert_eq!(last_server(&r[1]), ServerPacket::AwaitClient);
        assert!(!r[1][0].idle);
        assert_eq!(r[2][0].ev, Ev::C(ClientPacket::Data));
        assert!(!r[2][0].awaiting);
        assert_eq!(last_server(&r[3]), end(AC));
    }

    // ---------- unit tests on built byte sequences ----------

    #[test]
    fn command_table() {
        assert_eq!(
            expect_for_command(COM_QUERY),
            Expect::Resultset { binary: false }
        );
        assert_eq!(
            expect_for_command(COM_PROCESS_INFO),
            Expect::Resultset { binary: false }
        );
        assert_eq!(
            expect_for_command(COM_STMT_EXECUTE),
            Expect::Resultset { binary: true }
        );
        assert_eq!(
            expect_for_command(COM_STMT_BULK_EXECUTE),
            Expect::Resultset { binary: true }
        );
        for c in [COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA] {
            assert_eq!(expect_for_command(c), Expect::Nothing);
        }
        for c in [COM_SET_OPTION, COM_DEBUG, COM_SHUTDOWN] {
            assert_eq!(expect_for_command(c), Expect::EofOrErr);
        }
        for c in [
            COM_PING,
            COM_INIT_DB,
            COM_RESET_CONNECTION,
            COM_STMT_RESET,
            COM_PROCESS_KILL,
            COM_REFRESH,
            0x77,
        ] {
            assert_eq!(expect_for_command(c), Expect::OkOrErr);
        }
        assert_eq!(expect_for_command(COM_BINLOG_DUMP_GTID), Expect::Stream);
        assert_eq!(expect_for_command(COM_CHANGE_USER), Expect::AuthExchange);
    }

    #[test]
    fn ok_ends_ping_and_err_ends_query() {
        let mut h = Harness::new(DEP);
        assert!(h.t.is_idle());
        h.client(&[cmd(COM_PING, b"")]);
        assert!(!h.t.is_idle());
        assert_eq!(h.t.pending(), 1);
        assert_eq!(
            h.server(&[ok(AC | SERVER_STATUS_IN_TRANS)]),
            [end(AC | SERVER_STATUS_IN_TRANS)]
        );
        assert_eq!(h.t.last_status(), AC | SERVER_STATUS_IN_TRANS);
        assert!(h.t.is_idle());
        h.client(&[cmd(COM_QUERY, b"SELECT x")]);
        assert_eq!(
            h.server(&[err(1054)]),
            [end_err(AC | SERVER_STATUS_IN_TRANS, 1054)]
        );
        assert!(h.t.is_idle());
    }

    #[test]
    fn ok_with_large_affected_rows_still_finds_status() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_QUERY, b"UPDATE")]);
        assert_eq!(h.server(&[ok_with(OK_HEADER, u64::MAX, AC)]), [end(AC)]);
    }

    #[test]
    fn text_resultset_classic_eof() {
        let mut h = Harness::new(CLASSIC);
        h.client(&[cmd(COM_QUERY, b"SELECT a, b")]);
        let rows = [text_row(&[Some(b"1"), None]), text_row(&[None, Some(b"x")])];
        let rs = resultset(CLASSIC, 2, &rows, AC);
        assert_eq!(rs.len(), 7);
        assert_eq!(h.server(&rs), parts_then(7, end(AC)));
        assert!(h.t.is_idle());
    }

    #[test]
    fn text_resultset_deprecate_eof() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_QUERY, b"SELECT a")]);
        let rows = [text_row(&[Some(b"1")])];
        let rs = resultset(DEP, 1, &rows, AC);
        assert_eq!(rs.len(), 4);
        assert_eq!(h.server(&rs), parts_then(4, end(AC)));
    }

    #[test]
    fn deprecate_eof_ok_terminator_with_session_state_longer_than_nine() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_QUERY, b"SELECT a")]);
        let mut t = ok_with(EOF_HEADER, 0, AC | SERVER_SESSION_STATE_CHANGED);
        t.extend_from_slice(&[0, 10, 0, 8, 5, b's', b'c', b'h', b'e', b'm']);
        assert_eq!(
            h.server(&[colcount(1), coldef(b"a"), t]),
            parts_then(3, end(AC | SERVER_SESSION_STATE_CHANGED))
        );
    }

    #[test]
    fn binary_resultset_rows_start_with_zero() {
        for caps in [CLASSIC, DEP] {
            let mut h = Harness::new(caps);
            h.client(&[cmd(COM_STMT_EXECUTE, &[1, 0, 0, 0, 0, 1, 0, 0, 0])]);
            let rows = [bin_row(&[0xfe, 0xff, 0xfe]), bin_row(&[0xff; 8])];
            let rs = resultset(caps, 3, &rows, AC);
            let n = rs.len();
            assert_eq!(h.server(&rs), parts_then(n, end(AC)));
        }
    }

    #[test]
    fn multi_results_and_error_in_the_middle() {
        for caps in [CLASSIC, DEP] {
            let mut h = Harness::new(caps);
            h.client(&[cmd(COM_QUERY, b"SELECT 1; UPDATE t; SELECT 2; SELECT x")]);
            let mut s = resultset(caps, 1, &[text_row(&[Some(b"1")])], AC | MORE);
            s.push(ok_with(OK_HEADER, 3, AC | MORE));
            s.extend(resultset(caps, 1, &[text_row(&[Some(b"2")])], AC | MORE));
            s.push(err(1054));
            let n = s.len();
            assert_eq!(h.server(&s), parts_then(n, end_err(AC | MORE, 1054)));
            assert!(h.t.is_idle());
        }
    }

    #[test]
    fn error_after_rows_ends_resultset() {
        let mut h = Harness::new(CLASSIC);
        h.client(&[cmd(COM_QUERY, b"SELECT slow")]);
        let s = [
            colcount(1),
            coldef(b"a"),
            eof(AC),
            text_row(&[Some(b"1")]),
            err(1317),
        ];
        assert_eq!(h.server(&s), parts_then(5, end_err(AC, 1317)));
    }

    #[test]
    fn cursor_flag_on_a_text_result_of_a_procedure_does_not_end_it() {
        let mut h = Harness::new(CLASSIC);
        h.client(&[cmd(COM_QUERY, b"CALL uses_cursor()")]);
        let st = AC | SERVER_STATUS_CURSOR_EXISTS;
        let mut s = vec![
            colcount(1),
            coldef(b"a"),
            eof(st),
            text_row(&[Some(b"1")]),
            eof(st | MORE),
        ];
        s.push(ok(AC));
        assert_eq!(h.server(&s), parts_then(6, end(AC)));
    }

    #[test]
    fn binary_cursor_in_a_procedure_result_with_more_results_does_not_end_it() {
        let mut h = Harness::new(CLASSIC);
        h.client(&[cmd(COM_STMT_EXECUTE, &[1, 0, 0, 0, 0, 1, 0, 0, 0])]);
        let st = AC | SERVER_STATUS_CURSOR_EXISTS | MORE;
        let s = vec![
            colcount(1),
            coldef(b"a"),
            eof(st),
            bin_row(&[1]),
            eof(st),
            ok(AC),
        ];
        assert_eq!(h.server(&s), parts_then(6, end(AC)));
    }

    #[test]
    fn mariadb_cache_metadata_skips_column_definitions() {
        for caps in [CLASSIC, DEP] {
            let mut h = Harness::mariadb(caps, MARIADB_CLIENT_CACHE_METADATA);
            h.client(&[cmd(COM_STMT_EXECUTE, &[1, 0, 0, 0, 0, 1, 0, 0, 0])]);
            let mut s = vec![vec![2, 0]];
            if caps == CLASSIC {
                s.push(eof(AC));
            }
            s.push(bin_row(&[1, 2]));
            s.push(term(caps, AC));
            let n = s.len();
            assert_eq!(h.server(&s), parts_then(n, end(AC)));
            // With metadata: the flag byte 1 and the definitions.
            h.client(&[cmd(COM_STMT_EXECUTE, &[1, 0, 0, 0, 0, 1, 0, 0, 0])]);
            let mut s = vec![vec![1, 1], coldef(b"a")];
            if caps == CLASSIC {
                s.push(eof(AC));
            }
            s.push(term(caps, AC));
            let n = s.len();
            assert_eq!(h.server(&s), parts_then(n, end(AC)));
            h.client(&[cmd(COM_QUERY, b"x")]);
            let e = h.t.on_server_packet(&PacketHead {
                len: 2,
                seq: 1,
                head: &[1, 7],
                continuation: false,
                at: None,
                start: 0,
            });
            assert!(matches!(e, Err(ProtoError::Malformed { .. })), "{e:?}");
        }
    }

    #[test]
    fn optional_resultset_metadata_none() {
        let caps = DEP | CLIENT_OPTIONAL_RESULTSET_METADATA;
        let mut h = Harness::new(caps);
        h.client(&[cmd(COM_QUERY, b"SELECT a")]);
        let s = vec![vec![1, 0], text_row(&[Some(b"1")]), term(caps, AC)];
        assert_eq!(h.server(&s), parts_then(3, end(AC)));
        // prepare-OK with metadata_follows = 0 at byte 12: no definitions follow.
        h.client(&[cmd(COM_STMT_PREPARE, b"SELECT ?")]);
        let mut p = prepare_ok(1, 1);
        p.push(0);
        assert_eq!(h.server(&[p]), [end(AC)]);
        h.client(&[cmd(COM_STMT_PREPARE, b"SELECT ?")]);
        let mut p = prepare_ok(1, 1);
        p.push(1);
        assert_eq!(
            h.server(&[p, coldef(b"?"), coldef(b"a")]),
            parts_then(3, end(AC))
        );
    }

    #[test]
    fn prepare_ok_params_and_columns_both_modes() {
        // (columns, params) → packets in classic mode and with CLIENT_DEPRECATE_EOF
        for (cols, params) in [(2u16, 3u16), (0, 2), (3, 0), (0, 0)] {
            for caps in [CLASSIC, DEP] {
                let mut h = Harness::new(caps);
                h.client(&[cmd(COM_STMT_PREPARE, b"SELECT ...")]);
                let mut s = vec![prepare_ok(cols, params)];
                for block in [params, cols] {
                    if block > 0 {
                        for i in 0..block {
                            s.push(coldef(format!("p{i}").as_bytes()));
                        }
                        if caps == CLASSIC {
                            s.push(eof(AC));
                        }
                    }
                }
                let n = s.len();
                let status = if caps == CLASSIC && n > 1 { AC } else { 0 };
                assert_eq!(
                    h.server(&s),
                    parts_then(n, end(status)),
                    "cols {cols} params {params} caps {caps:#x}"
                );
                assert!(h.t.is_idle());
            }
        }
    }

    #[test]
    fn prepare_error_and_truncated_prepare_ok() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_STMT_PREPARE, b"SELEC")]);
        assert_eq!(h.server(&[err(1064)]), [end_err(0, 1064)]);
        h.client(&[cmd(COM_STMT_PREPARE, b"SELECT 1")]);
        let e = h.t.on_server_packet(&PacketHead {
            len: 5,
            seq: 1,
            head: &[0, 1, 0, 0, 0],
            continuation: false,
            at: None,
            start: 0,
        });
        assert_eq!(e, Err(ProtoError::truncated("prepare-OK")));
    }

    #[test]
    fn field_list_until_eof() {
        for caps in [CLASSIC, DEP] {
            let mut h = Harness::new(caps);
            h.client(&[cmd(COM_FIELD_LIST, b"t\0")]);
            let s = vec![coldef(b"a"), coldef(b"b"), coldef(b"c"), term(caps, AC)];
            assert_eq!(h.server(&s), parts_then(4, end(AC)));
            h.client(&[cmd(COM_FIELD_LIST, b"nosuch\0")]);
            assert_eq!(h.server(&[err(1146)]), [end_err(AC, 1146)]);
        }
    }

    #[test]
    fn statistics_is_one_packet() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_STATISTICS, b"")]);
        assert_eq!(h.server(&[b"Uptime: 5  Threads: 1".to_vec()]), [end(0)]);
        assert!(h.t.is_idle());
    }

    #[test]
    fn set_option_eof_ok_or_err() {
        for caps in [CLASSIC, DEP] {
            let mut h = Harness::new(caps);
            h.client(&[cmd(COM_SET_OPTION, &[0, 0])]);
            assert_eq!(h.server(&[term(caps, AC)]), [end(AC)]);
            h.client(&[cmd(COM_DEBUG, b"")]);
            assert_eq!(
                h.server(&[ok(AC | SERVER_STATUS_IN_TRANS)]),
                [end(AC | SERVER_STATUS_IN_TRANS)]
            );
            h.client(&[cmd(COM_SET_OPTION, &[9, 0])]);
            assert_eq!(
                h.server(&[err(1047)]),
                [end_err(AC | SERVER_STATUS_IN_TRANS, 1047)]
            );
        }
    }

    #[test]
    fn stmt_fetch_after_cursor() {
        for caps in [CLASSIC, DEP] {
            let mut h = Harness::new(caps);
            h.client(&[cmd(COM_STMT_EXECUTE, &[1, 0, 0, 0, 1, 1, 0, 0, 0])]);
            let cur = AC | SERVER_STATUS_CURSOR_EXISTS;
            let s = vec![colcount(1), coldef(b"a"), term(caps, cur)];
            assert_eq!(h.server(&s), parts_then(3, end(cur)));
            assert!(h.t.is_idle());
            h.client(&[cmd(COM_STMT_FETCH, &[1, 0, 0, 0, 2, 0, 0, 0])]);
            let s = vec![bin_row(&[1]), bin_row(&[2]), term(caps, cur)];
            assert_eq!(h.server(&s), parts_then(3, end(cur)));
            h.client(&[cmd(COM_STMT_FETCH, &[1, 0, 0, 0, 2, 0, 0, 0])]);
            let last = cur | SERVER_STATUS_LAST_ROW_SENT;
            assert_eq!(
                h.server(&[bin_row(&[3]), term(caps, last)]),
                parts_then(2, end(last))
            );
            h.client(&[cmd(COM_STMT_FETCH, &[9, 0, 0, 0, 2, 0, 0, 0])]);
            assert_eq!(h.server(&[err(1243)]), [end_err(last, 1243)]);
        }
    }

    #[test]
    fn change_user_caching_sha2_fast_and_full_auth() {
        let mut h = Harness::new(DEP);
        // auth switch → client answer → fast-auth success 01 03 → OK
        h.client(&[cmd(COM_CHANGE_USER, b"u\0")]);
        let mut sw = vec![AUTH_SWITCH_HEADER];
        sw.extend_from_slice(b"caching_sha2_password\0abcdefghijklmnopqrst\0");
        assert_eq!(h.server(&[sw]), [ServerPacket::AwaitClient]);
        assert!(h.t.awaiting_client());
        assert_eq!(h.client(&[vec![7; 32]]), [ClientPacket::Data]);
        assert!(!h.t.awaiting_client());
        assert_eq!(
            h.server(&[vec![1, 3], ok(AC)]),
            [ServerPacket::Part, end(AC)]
        );
        assert!(h.t.is_idle());
        // full authentication: 01 04 → password → OK; and an ERR ends it too.
        h.client(&[cmd(COM_CHANGE_USER, b"u\0")]);
        assert_eq!(h.server(&[vec![1, 4]]), [ServerPacket::AwaitClient]);
        assert_eq!(h.client(&[b"secret\0".to_vec()]), [ClientPacket::Data]);
        assert_eq!(h.server(&[err(1045)]), [end_err(AC, 1045)]);
        assert!(h.t.is_idle());
        // a public key (01 + PEM) also waits for the client
        h.client(&[cmd(COM_CHANGE_USER, b"u\0")]);
        assert_eq!(
            h.server(&[b"\x01-----BEGIN PUBLIC KEY-----".to_vec()]),
            [ServerPacket::AwaitClient]
        );
        h.client(&[vec![9; 256]]);
        assert_eq!(h.server(&[ok(AC)]), [end(AC)]);
    }

    #[test]
    fn pipelined_commands_answer_in_order() {
        let mut h = Harness::new(CLASSIC);
        let evs = h.client(&[
            cmd(COM_QUERY, b"SELECT 1"),
            cmd(COM_STMT_CLOSE, &[1, 0, 0, 0]),
            cmd(COM_PING, b""),
            cmd(COM_STMT_PREPARE, b"SELECT ?"),
            cmd(COM_INIT_DB, b"db"),
        ]);
        assert_eq!(
            evs[1],
            ClientPacket::Command {
                cmd: COM_STMT_CLOSE,
                expect: Expect::Nothing
            }
        );
        assert_eq!(h.t.pending(), 4);
        let mut s = resultset(CLASSIC, 1, &[text_row(&[Some(b"1")])], AC);
        s.push(ok(AC));
        s.extend([prepare_ok(0, 1), coldef(b"?"), eof(AC)]);
        s.push(err(1049));
        let got = h.server(&s);
        let ends: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, ServerPacket::ResponseEnd { .. }))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ends, [4, 5, 8, 9]);
        assert_eq!(got[9], end_err(AC, 1049));
        assert!(h.t.is_idle());
    }

    #[test]
    fn stmt_close_and_quit_expect_nothing() {
        let mut h = Harness::new(DEP);
        assert_eq!(
            h.client(&[
                cmd(COM_STMT_CLOSE, &[1, 0, 0, 0]),
                cmd(COM_STMT_SEND_LONG_DATA, &[1, 0, 0, 0, 0, 0, b'x'])
            ]),
            [
                ClientPacket::Command {
                    cmd: COM_STMT_CLOSE,
                    expect: Expect::Nothing
                },
                ClientPacket::Command {
                    cmd: COM_STMT_SEND_LONG_DATA,
                    expect: Expect::Nothing
                }
            ]
        );
        assert!(h.t.is_idle());
        assert_eq!(h.t.pending(), 0);
    }

    #[test]
    fn unsolicited_error_when_idle_and_anything_else_is_unexpected() {
        let mut h = Harness::new(DEP);
        // MySQL 8.0.24+: ER_CLIENT_INTERACTION_TIMEOUT (4031) before closing an idle connection.
        assert_eq!(
            h.server(&[err(4031)]),
            [ServerPacket::Unsolicited { error: Some(4031) }]
        );
        assert!(h.t.is_idle());
        let e = h.t.on_server_packet(&PacketHead {
            len: 7,
            seq: 0,
            head: &ok(AC),
            continuation: false,
            at: None,
            start: 0,
        });
        assert!(
            matches!(e, Err(ProtoError::Unexpected { state: "idle", .. })),
            "{e:?}"
        );
    }

    #[test]
    fn local_infile_data_then_empty_packet() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_QUERY, b"LOAD DATA LOCAL INFILE 'f' INTO TABLE t")]);
        assert_eq!(
            h.server(&[cmd(LOCAL_INFILE_HEADER, b"f")]),
            [ServerPacket::AwaitClient]
        );
        assert!(h.t.awaiting_client() && !h.t.is_idle());
        let got = h.client(&[b"1,a\n".to_vec(), b"2,b\n".to_vec(), vec![]]);
        assert_eq!(
            got,
            [
                ClientPacket::Data,
                ClientPacket::Data,
                ClientPacket::EndOfData
            ]
        );
        assert!(!h.t.awaiting_client());
        assert_eq!(h.server(&[ok_with(OK_HEADER, 2, AC)]), [end(AC)]);
        assert!(h.t.is_idle());
    }

    #[test]
    fn local_infile_empty_continuation_of_a_full_packet_is_not_the_end() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_QUERY, b"LOAD DATA LOCAL INFILE 'big' INTO TABLE t")]);
        assert_eq!(
            h.server(&[cmd(LOCAL_INFILE_HEADER, b"big")]),
            [ServerPacket::AwaitClient]
        );
        // A data packet of exactly 0xFF_FFFF bytes, its empty continuation, then the real end marker.
        let mut wire = Vec::new();
        crate::protocol::framing::put_header(&mut wire, MAX as u32, 2);
        wire.resize(4 + MAX, b'x');
        crate::protocol::framing::put_header(&mut wire, 0, 3);
        let snaps = h.feed_chunked(Side::C, &wire, &[65536]).unwrap();
        assert_eq!(
            snaps.iter().map(|s| s.ev).collect::<Vec<_>>(),
            [Ev::C(ClientPacket::Data); 2]
        );
        assert!(
            h.t.awaiting_client(),
            "the empty continuation must not end the data"
        );
        assert_eq!(h.client(&[vec![]]), [ClientPacket::EndOfData]);
        assert_eq!(h.server(&[ok(AC)]), [end(AC)]);
    }

    #[test]
    fn local_infile_in_a_multi_statement_and_refused() {
        let mut h = Harness::new(CLASSIC);
        h.client(&[cmd(COM_QUERY, b"LOAD ...; SELECT 1")]);
        assert_eq!(
            h.server(&[cmd(LOCAL_INFILE_HEADER, b"f")]),
            [ServerPacket::AwaitClient]
        );
        assert_eq!(h.client(&[vec![]]), [ClientPacket::EndOfData]);
        let mut s = vec![ok(AC | MORE)];
        s.extend(resultset(CLASSIC, 1, &[text_row(&[Some(b"1")])], AC));
        let n = s.len();
        assert_eq!(h.server(&s), parts_then(n, end(AC)));
        // The server may answer the data with an ERR, too.
        h.client(&[cmd(COM_QUERY, b"LOAD ...")]);
        h.server(&[cmd(LOCAL_INFILE_HEADER, b"f")]);
        h.client(&[b"x".to_vec(), vec![]]);
        assert_eq!(h.server(&[err(1148)]), [end_err(AC, 1148)]);
        assert!(h.t.is_idle());
    }

    #[test]
    fn sixteen_mib_row_continuation_is_never_a_terminator() {
        for caps in [CLASSIC, DEP] {
            let mut h = Harness::new(caps);
            h.client(&[cmd(COM_QUERY, b"SELECT big")]);
            let mut s = vec![colcount(1), coldef(b"big")];
            if caps == CLASSIC {
                s.push(eof(AC));
            }
            // A text row holding one value of 0xFF_FFFF + 4 bytes: prefix fe + 8-byte length, so
            // the logical packet is 9 + 0x1000003 bytes: one full packet and a 13-byte continuation
            // whose payload starts with 0xfe (it must not be taken for an EOF).
            let value_len = MAX + 4;
            let mut row = vec![0xfe];
            row.extend_from_slice(&(value_len as u64).to_le_bytes());
            row.resize(9 + value_len, 0xab);
            row[MAX] = 0xfe;
            s.push(row);
            s.push(term(caps, AC));
            let wire = frames(&s, 1);
            let snaps = h.feed_chunked(Side::S, &wire, &[1 << 20]).unwrap();
            let evs: Vec<Ev> = snaps.iter().map(|s| s.ev).collect();
            let n = evs.len();
            assert_eq!(n, s.len() + 1, "the row is two physical packets");
            assert!(evs[..n - 1].iter().all(|e| *e == Ev::S(ServerPacket::Part)));
            assert_eq!(evs[n - 1], Ev::S(end(AC)));
        }
    }

    #[test]
    fn response_ending_on_a_full_packet_ends_on_its_last_continuation() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_STATISTICS, b"")]);
        let wire = frames(&[vec![b'U'; MAX]], 1); // exactly 0xFF_FFFF: a full packet + an empty one
        let snaps = h.feed_chunked(Side::S, &wire, &[1 << 22]).unwrap();
        assert_eq!(snaps.len(), 2);
        assert_eq!(snaps[0].ev, Ev::S(ServerPacket::Part));
        assert!(!snaps[0].idle && snaps[0].pending == 1);
        assert_eq!(snaps[1].ev, Ev::S(end(0)));
        assert!(snaps[1].idle);
    }

    #[test]
    fn large_command_continuations() {
        let mut h = Harness::new(DEP);
        let mut q = vec![COM_QUERY];
        q.resize(MAX + 10, b' ');
        let wire = frames(&[q], 0);
        let snaps = h.feed_chunked(Side::C, &wire, &[1 << 21]).unwrap();
        let evs: Vec<Ev> = snaps.iter().map(|s| s.ev).collect();
        assert_eq!(
            evs,
            [
                Ev::C(ClientPacket::Command {
                    cmd: COM_QUERY,
                    expect: Expect::Resultset { binary: false }
                }),
                Ev::C(ClientPacket::Continuation)
            ]
        );
        assert_eq!(h.t.pending(), 1);
        assert_eq!(h.server(&[ok(AC)]), [end(AC)]);
        // A 16 MiB COM_STMT_SEND_LONG_DATA expects nothing, but the connection is not idle until
        // its last continuation has passed.
        let mut q = vec![COM_STMT_SEND_LONG_DATA];
        q.resize(MAX, 0);
        let snaps = h.feed_chunked(Side::C, &frames(&[q], 0), &[]).unwrap();
        assert!(!snaps[0].idle);
        assert!(snaps[1].idle);
    }

    #[test]
    fn binlog_dump_is_a_stream() {
        let mut h = Harness::new(DEP);
        h.client(&[cmd(COM_BINLOG_DUMP, &[4, 0, 0, 0, 0, 0, 1, 0, 0, 0])]);
        for _ in 0..5 {
            assert_eq!(
                h.server(&[vec![0, 1, 2, 3, 0xfe, 0xff]]),
                [ServerPacket::Part]
            );
            assert!(!h.t.is_idle());
        }
        // BINLOG_DUMP_NON_BLOCK: an EOF ends it; an ERR would too.
        assert_eq!(h.server(&[eof(AC)]), [end(0)]);
        h.client(&[cmd(COM_BINLOG_DUMP_GTID, &[0; 11])]);
        assert_eq!(h.server(&[err(1236)]), [end_err(0, 1236)]);
    }

    #[test]
    fn progress_reports_are_parts() {
        let mut h = Harness::new(CLASSIC);
        h.client(&[cmd(COM_QUERY, b"ALTER TABLE t ENGINE=Aria")]);
        let progress = vec![0xff, 0xff, 0xff, 1, 2, 0, 0, 0, 3, b'a', b'b', b'c'];
        assert_eq!(
            h.server(&[progress.clone(), progress, ok(AC)]),
            parts_then(3, end(AC))
        );
    }

    #[test]
    fn short_heads_are_errors_not_panics() {
        let cases: [(u8, &[u8], &str); 5] = [
            (COM_PING, &[0x00, 0x00], "OK packet"),
            (COM_PING, &[0xff, 0x10], "ERR packet"),
            (COM_FIELD_LIST, &[0xfe, 0, 0], "EOF packet"),
            (COM_QUERY, &[0xfc, 0x01], "column count"),
            (COM_CHANGE_USER, &[0x01], "AuthMoreData"),
        ];
        for (c, head, what) in cases {
            let mut h = Harness::new(CLASSIC);
            h.client(&[cmd(c, b"")]);
            let e = h.t.on_server_packet(&PacketHead {
                len: head.len() as u32,
                seq: 1,
                head,
                continuation: false,
                at: None,
                start: 0,
            });
            assert_eq!(e, Err(ProtoError::truncated(what)), "{head:?}");
        }
        let mut t = ResponseTracker::new(CLASSIC);
        let e = t.on_client_packet(&PacketHead {
            len: 0,
            seq: 0,
            head: &[],
            continuation: false,
            at: None,
            start: 0,
        });
        assert_eq!(e, Err(ProtoError::truncated("command byte")));
        let e = t.on_server_packet(&PacketHead {
            len: 0,
            seq: 0,
            head: &[],
            continuation: false,
            at: None,
            start: 0,
        });
        assert_eq!(e, Err(ProtoError::truncated("response packet")));
    }

    #[test]
    fn pipelined_commands_beyond_the_inline_queue_are_kept_in_order() {
        let mut t = ResponseTracker::new(DEP);
        let ping = PacketHead {
            len: 1,
            seq: 0,
            head: &[COM_PING],
            continuation: false,
            at: None,
            start: 0,
        };
        let stats = PacketHead {
            head: &[COM_STATISTICS],
            ..ping
        };
        // 100 pipelined commands (MariaDB answers them all, direct): pings, one STATISTICS.
        for i in 0..100 {
            let p = if i == 70 { &stats } else { &ping };
            t.on_client_packet(p).unwrap();
            assert_eq!(t.room(), MAX_PIPELINE.saturating_sub(i + 1));
        }
        assert_eq!(t.pending(), 100);
        let okp = ok(AC);
        let sp = PacketHead {
            len: okp.len() as u32,
            seq: 1,
            head: &okp,
            continuation: false,
            at: None,
            start: 0,
        };
        let text = PacketHead {
            len: 5,
            seq: 1,
            head: b"Up 9",
            continuation: false,
            at: None,
            start: 0,
        };
        for i in 0..100 {
            let p = if i == 70 { &text } else { &sp };
            assert!(matches!(
                t.on_server_packet(p).unwrap(),
                ServerPacket::ResponseEnd { .. }
            ));
            assert_eq!(t.pending(), 99 - i);
        }
        assert!(t.is_idle());
        assert_eq!(t.room(), MAX_PIPELINE);
    }

    #[test]
    fn more_than_max_pending_commands_is_an_error() {
        let mut t = ResponseTracker::new(DEP);
        let p = PacketHead {
            len: 1,
            seq: 0,
            head: &[COM_PING],
            continuation: false,
            at: None,
            start: 0,
        };
        for _ in 0..MAX_PENDING {
            t.on_client_packet(&p).unwrap();
        }
        assert!(matches!(
            t.on_client_packet(&p),
            Err(ProtoError::Unexpected {
                state: "pipeline full",
                ..
            })
        ));
    }

    // ---------- property tests: generated well-formed conversations ----------

    #[derive(Debug, Clone)]
    enum GResult {
        Ok,
        Rows {
            cols: usize,
            rows: Vec<Vec<Option<Vec<u8>>>>,
            skip_meta: bool,
        },
    }

    #[derive(Debug, Clone)]
    enum GErr {
        None,
        /// The last result is replaced by an ERR.
        Instead,
        /// The last result's terminator is replaced by an ERR (after its rows).
        AfterRows,
    }

    #[derive(Debug, Clone)]
    enum GCmd {
        Query {
            binary: bool,
            results: Vec<GResult>,
            err: GErr,
        },
        Prepare {
            params: u16,
            cols: u16,
            err: bool,
        },
        Simple {
            cmd: u8,
            err: bool,
        },
        FieldList {
            cols: usize,
        },
        Statistics,
        SetOption {
            err: bool,
        },
        Close,
        CursorExec {
            cols: usize,
        },
        Fetch {
            rows: usize,
            last: bool,
        },
        Infile {
            chunks: Vec<Vec<u8>>,
            err: bool,
        },
        ChangeUser {
            rounds: Vec<bool>,
            fast: bool,
            err: bool,
        },
    }

    impl GCmd {
        fn interactive(&self) -> bool {
            matches!(self, GCmd::Infile { .. } | GCmd::ChangeUser { .. })
        }
    }

    /// Expected result of one packet.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Exp {
        Cmd(u8),
        Data {
            clears: bool,
        },
        EndOfData,
        Part,
        /// A response end; the status is checked when the end packet carries one.
        End {
            status: Option<u16>,
            error: Option<u16>,
        },
        Await,
    }

    struct Item {
        side: Side,
        payload: Vec<u8>,
        exp: Exp,
    }

    fn s_item(payload: Vec<u8>, exp: Exp) -> Item {
        Item {
            side: Side::S,
            payload,
            exp,
        }
    }

    /// The server's packets for a list of payloads: parts, then `last` on the final one.
    fn s_items(payloads: Vec<Vec<u8>>, last: Exp) -> Vec<Item> {
        let n = payloads.len();
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| s_item(p, if i + 1 == n { last } else { Exp::Part }))
            .collect()
    }

    fn defs(n: usize, caps: u32, status: u16) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = (0..n)
            .map(|i| coldef(format!("col{i}").as_bytes()))
            .collect();
        if n > 0 && caps & CLIENT_DEPRECATE_EOF == 0 {
            v.push(eof(status));
        }
        v
    }

    fn count_packet(n: usize, meta: bool, follows: bool) -> Vec<u8> {
        let mut p = colcount(n as u64);
        if meta {
            p.push(u8::from(follows));
        }
        p
    }

    /// The command packet and the rest of the exchange (server packets, client data).
    /// `info` appends a human-readable message to OK packets (OK-0xfe terminators then reach 9
    /// bytes and more, which a scanner must not mistake for rows).
    fn script(c: &GCmd, caps: u32, meta: bool, info: bool) -> (Vec<u8>, Vec<Item>) {
        let dep = caps & CLIENT_DEPRECATE_EOF != 0;
        let term = |caps: u32, status: u16| {
            let mut t = term(caps, status);
            if info && dep {
                t.extend_from_slice(b"Rows matched: 1  Changed: 1");
            }
            t
        };
        match c {
            GCmd::Query {
                binary,
                results,
                err,
            } => {
                let code = if *binary { COM_STMT_EXECUTE } else { COM_QUERY };
                let mut ps = Vec::new();
                let mut last = Exp::End {
                    status: None,
                    error: None,
                };
                let k = results.len();
                for (i, r) in results.iter().enumerate() {
                    let is_last = i + 1 == k;
                    let status = if is_last { AC } else { AC | MORE };
                    if is_last && matches!(err, GErr::Instead) {
                        ps.push(err_p(1105));
                        last = Exp::End {
                            status: None,
                            error: Some(1105),
                        };
                        break;
                    }
                    match r {
                        GResult::Ok => {
                            if is_last && matches!(err, GErr::AfterRows) {
                                ps.push(err_p(1317));
                                last = Exp::End {
                                    status: None,
                                    error: Some(1317),
                                };
                            } else {
                                ps.push(ok_with(OK_HEADER, i as u64, status));
                                last = Exp::End {
                                    status: Some(status),
                                    error: None,
                                };
                            }
                        }
                        GResult::Rows {
                            cols,
                            rows,
                            skip_meta,
                        } => {
                            let skip = meta && *skip_meta;
                            ps.push(count_packet(*cols, meta, !skip));
                            if skip {
                                if !dep {
                                    ps.push(eof(AC));
                                }
                            } else {
                                ps.extend(defs(*cols, caps, AC));
                            }
                            for row in rows {
                                if *binary {
                                    ps.push(bin_row(
                                        &row.iter()
                                            .flatten()
                                            .flatten()
                                            .copied()
                                            .collect::<Vec<u8>>(),
                                    ));
                                } else {
                                    let vals: Vec<Option<&[u8]>> =
                                        row.iter().map(|v| v.as_deref()).collect();
                                    ps.push(text_row(&vals));
                                }
                            }
                            if is_last && matches!(err, GErr::AfterRows) {
                                ps.push(err_p(1317));
                                last = Exp::End {
                                    status: None,
                                    error: Some(1317),
                                };
                            } else {
                                ps.push(term(caps, status));
                                last = Exp::End {
                                    status: Some(status),
                                    error: None,
                                };
                            }
                        }
                    }
                }
                (cmd(code, &[1, 0, 0, 0, 0, 1, 0, 0, 0]), s_items(ps, last))
            }
            GCmd::Prepare { params, cols, err } => {
                let c = cmd(COM_STMT_PREPARE, b"SELECT ?");
                if *err {
                    return (
                        c,
                        s_items(
                            vec![err_p(1064)],
                            Exp::End {
                                status: None,
                                error: Some(1064),
                            },
                        ),
                    );
                }
                let mut ps = vec![prepare_ok(*cols, *params)];
                ps.extend(defs(*params as usize, caps, AC));
                ps.extend(defs(*cols as usize, caps, AC));
                (
                    c,
                    s_items(
                        ps,
                        Exp::End {
                            status: None,
                            error: None,
                        },
                    ),
                )
            }
            GCmd::Simple { cmd: code, err } => {
                let (p, e) = if *err {
                    (
                        err_p(1049),
                        Exp::End {
                            status: None,
                            error: Some(1049),
                        },
                    )
                } else {
                    (
                        ok(AC | SERVER_STATUS_IN_TRANS),
                        Exp::End {
                            status: Some(AC | SERVER_STATUS_IN_TRANS),
                            error: None,
                        },
                    )
                };
                (cmd(*code, b"x"), s_items(vec![p], e))
            }
            GCmd::FieldList { cols } => {
                let mut ps: Vec<Vec<u8>> = (0..*cols)
                    .map(|i| coldef(format!("f{i}").as_bytes()))
                    .collect();
                ps.push(term(caps, AC));
                (
                    cmd(COM_FIELD_LIST, b"t\0"),
                    s_items(
                        ps,
                        Exp::End {
                            status: Some(AC),
                            error: None,
                        },
                    ),
                )
            }
            GCmd::Statistics => (
                cmd(COM_STATISTICS, b""),
                s_items(
                    vec![b"Uptime: 1  Threads: 1".to_vec()],
                    Exp::End {
                        status: None,
                        error: None,
                    },
                ),
            ),
            GCmd::SetOption { err } => {
                let (p, e) = if *err {
                    (
                        err_p(1047),
                        Exp::End {
                            status: None,
                            error: Some(1047),
                        },
                    )
                } else {
                    (
                        term(caps, AC),
                        Exp::End {
                            status: Some(AC),
                            error: None,
                        },
                    )
                };
                (cmd(COM_SET_OPTION, &[1, 0]), s_items(vec![p], e))
            }
            GCmd::Close => (cmd(COM_STMT_CLOSE, &[1, 0, 0, 0]), Vec::new()),
            GCmd::CursorExec { cols } => {
                let st = AC | SERVER_STATUS_CURSOR_EXISTS;
                let mut ps = vec![count_packet(*cols, meta, true)];
                ps.extend((0..*cols).map(|i| coldef(format!("k{i}").as_bytes())));
                ps.push(term(caps, st));
                (
                    cmd(COM_STMT_EXECUTE, &[1, 0, 0, 0, 1, 1, 0, 0, 0]),
                    s_items(
                        ps,
                        Exp::End {
                            status: Some(st),
                            error: None,
                        },
                    ),
                )
            }
            GCmd::Fetch { rows, last } => {
                let st = AC
                    | SERVER_STATUS_CURSOR_EXISTS
                    | if *last {
                        SERVER_STATUS_LAST_ROW_SENT
                    } else {
                        0
                    };
                let mut ps: Vec<Vec<u8>> = (0..*rows)
                    .map(|i| bin_row(&[i as u8, 0xfe, 0xff]))
                    .collect();
                ps.push(term(caps, st));
                (
                    cmd(COM_STMT_FETCH, &[1, 0, 0, 0, 5, 0, 0, 0]),
                    s_items(
                        ps,
                        Exp::End {
                            status: Some(st),
                            error: None,
                        },
                    ),
                )
            }
            GCmd::Infile { chunks, err } => {
                let mut items = vec![s_item(cmd(LOCAL_INFILE_HEADER, b"/tmp/f.csv"), Exp::Await)];
                for ch in chunks {
                    items.push(Item {
                        side: Side::C,
                        payload: ch.clone(),
                        exp: Exp::Data { clears: false },
                    });
                }
                items.push(Item {
                    side: Side::C,
                    payload: Vec::new(),
                    exp: Exp::EndOfData,
                });
                if *err {
                    items.push(s_item(
                        err_p(1148),
                        Exp::End {
                            status: None,
                            error: Some(1148),
                        },
                    ));
                } else {
                    items.push(s_item(
                        ok_with(OK_HEADER, 2, AC),
                        Exp::End {
                            status: Some(AC),
                            error: None,
                        },
                    ));
                }
                (cmd(COM_QUERY, b"LOAD DATA LOCAL INFILE"), items)
            }
            GCmd::ChangeUser { rounds, fast, err } => {
                let mut items = Vec::new();
                for switch in rounds {
                    let p = if *switch {
                        let mut p = vec![AUTH_SWITCH_HEADER];
                        p.extend_from_slice(b"mysql_native_password\0abcdefghij0123456789\0");
                        p
                    } else {
                        vec![AUTH_MORE_DATA_HEADER, 4]
                    };
                    items.push(s_item(p, Exp::Await));
                    items.push(Item {
                        side: Side::C,
                        payload: vec![0x5a; 20],
                        exp: Exp::Data { clears: true },
                    });
                }
                if *fast {
                    items.push(s_item(vec![AUTH_MORE_DATA_HEADER, 3], Exp::Part));
                }
                if *err {
                    items.push(s_item(
                        err_p(1045),
                        Exp::End {
                            status: None,
                            error: Some(1045),
                        },
                    ));
                } else {
                    items.push(s_item(
                        ok(AC),
                        Exp::End {
                            status: Some(AC),
                            error: None,
                        },
                    ));
                }
                (cmd(COM_CHANGE_USER, b"user\0"), items)
            }
        }
    }

    fn err_p(code: u16) -> Vec<u8> {
        err(code)
    }

    /// Order the conversation: runs of pipelined non-interactive commands send all their
    /// commands first, then all responses.
    fn conversation(cmds: &[(GCmd, bool)], caps: u32, meta: bool, info: bool) -> Vec<Item> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < cmds.len() {
            let mut j = i + 1;
            if !cmds[i].0.interactive() {
                while j < cmds.len() && cmds[j - 1].1 && !cmds[j].0.interactive() {
                    j += 1;
                }
            }
            let mut later = Vec::new();
            for (c, _) in &cmds[i..j] {
                let (cp, rest) = script(c, caps, meta, info);
                out.push(Item {
                    side: Side::C,
                    exp: Exp::Cmd(cp[0]),
                    payload: cp,
                });
                later.extend(rest);
            }
            out.extend(later);
            i = j;
        }
        out
    }

    fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![1 => Just(None), 4 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Some)]
    }

    fn g_result() -> impl Strategy<Value = GResult> {
        prop_oneof![
            1 => Just(GResult::Ok),
            3 => (1usize..6, prop::collection::vec(prop::collection::vec(value(), 1..5), 0..6), any::<bool>())
                .prop_map(|(cols, rows, skip_meta)| GResult::Rows { cols, rows, skip_meta }),
        ]
    }

    fn g_cmd() -> impl Strategy<Value = GCmd> {
        let err = prop_oneof![4 => Just(GErr::None), 1 => Just(GErr::Instead), 1 => Just(GErr::AfterRows)];
        prop_oneof![
            6 => (any::<bool>(), prop::collection::vec(g_result(), 1..4), err)
                .prop_map(|(binary, results, err)| GCmd::Query { binary, results, err }),
            2 => (0u16..4, 0u16..4, prop::bool::weighted(0.2))
                .prop_map(|(params, cols, err)| GCmd::Prepare { params, cols, err }),
            2 => (prop::sample::select(vec![COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, COM_STMT_RESET, 0x40]), any::<bool>())
                .prop_map(|(cmd, err)| GCmd::Simple { cmd, err }),
            1 => (0usize..5).prop_map(|cols| GCmd::FieldList { cols }),
            1 => Just(GCmd::Statistics),
            1 => any::<bool>().prop_map(|err| GCmd::SetOption { err }),
            1 => Just(GCmd::Close),
            1 => (1usize..4).prop_map(|cols| GCmd::CursorExec { cols }),
            1 => (0usize..5, any::<bool>()).prop_map(|(rows, last)| GCmd::Fetch { rows, last }),
            1 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..4), prop::bool::weighted(0.2))
                .prop_map(|(chunks, err)| GCmd::Infile { chunks, err }),
            1 => (prop::collection::vec(any::<bool>(), 0..3), any::<bool>(), prop::bool::weighted(0.2))
                .prop_map(|(rounds, fast, err)| GCmd::ChangeUser { rounds, fast, err }),
        ]
    }

    /// Model state after each packet, compared with the tracker's.
    #[derive(Default)]
    struct Model {
        pending: usize,
        awaiting: bool,
        ends: usize,
    }

    fn check(exp: Exp, snap: &Snap, m: &mut Model) -> std::result::Result<(), TestCaseError> {
        match (exp, snap.ev) {
            (Exp::Cmd(c), Ev::C(ClientPacket::Command { cmd, expect })) => {
                prop_assert_eq!(c, cmd);
                if expect != Expect::Nothing {
                    m.pending += 1;
                }
            }
            (Exp::Data { clears }, Ev::C(ClientPacket::Data)) => {
                if clears {
                    m.awaiting = false;
                }
            }
            (Exp::EndOfData, Ev::C(ClientPacket::EndOfData)) => m.awaiting = false,
            (Exp::Part, Ev::S(ServerPacket::Part)) => {}
            (Exp::Await, Ev::S(ServerPacket::AwaitClient)) => m.awaiting = true,
            (
                Exp::End { status, error },
                Ev::S(ServerPacket::ResponseEnd {
                    status: s,
                    error: e,
                }),
            ) => {
                prop_assert_eq!(error, e);
                if let Some(st) = status {
                    prop_assert_eq!(st, s);
                }
                m.pending -= 1;
                m.awaiting = false;
                m.ends += 1;
            }
            (x, y) => prop_assert!(false, "expected {:?}, got {:?}", x, y),
        }
        prop_assert_eq!(snap.pending, m.pending);
        prop_assert_eq!(snap.awaiting, m.awaiting);
        prop_assert_eq!(snap.idle, m.pending == 0 && !m.awaiting);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn generated_conversations_end_exactly_once_per_command(
            cmds in prop::collection::vec((g_cmd(), any::<bool>()), 1..12),
            dep in any::<bool>(),
            meta in any::<bool>(),
            info in any::<bool>(),
            sizes in prop::collection::vec(1usize..200, 1..8),
        ) {
            let caps = CLIENT_PROTOCOL_41 | CLIENT_MULTI_STATEMENTS | if dep { CLIENT_DEPRECATE_EOF } else { 0 };
            let ext = if meta { MARIADB_CLIENT_CACHE_METADATA } else { 0 };
            let items = conversation(&cmds, caps, meta, info);
            let mut h = Harness::mariadb(caps, ext);
            let mut m = Model::default();
            let mut seq = [0u8; 2];
            // Feed each run of same-side packets as one byte string in random chunks.
            let mut i = 0;
            while i < items.len() {
                let side = items[i].side;
                let mut j = i;
                let mut wire = Vec::new();
                while j < items.len() && items[j].side == side {
                    let k = usize::from(side == Side::S);
                    seq[k] = write_packet(&mut wire, seq[k], &items[j].payload);
                    j += 1;
                }
                let snaps = h.feed_chunked(side, &wire, &sizes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert_eq!(snaps.len(), j - i);
                for (it, snap) in items[i..j].iter().zip(&snaps) {
                    check(it.exp, snap, &mut m)?;
                }
                i = j;
            }
            let expected_ends = cmds.iter().filter(|(c, _)| !matches!(c, GCmd::Close)).count();
            prop_assert_eq!(m.ends, expected_ends);
            prop_assert!(h.t.is_idle());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            caps in any::<u32>(),
            ext in any::<u32>(),
            steps in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)), 0..20),
            sizes in prop::collection::vec(1usize..64, 1..4),
        ) {
            let mut h = Harness::mariadb(caps, ext);
            for (client, bytes) in steps {
                let side = if client { Side::C } else { Side::S };
                // Errors are fine; panics are not. Keep feeding after an error.
                let _ = h.feed_chunked(side, &bytes, &sizes);
                let _ = (h.t.is_idle(), h.t.pending(), h.t.last_status(), h.t.awaiting_client());
            }
        }

        #[test]
        fn arbitrary_packet_heads_never_panic(
            caps in any::<u32>(),
            packets in prop::collection::vec(
                (any::<bool>(), prop_oneof![Just(MAX as u32), 0u32..100], prop::collection::vec(any::<u8>(), 0..=64), any::<bool>()),
                0..40),
        ) {
            let mut t = ResponseTracker::new(caps);
            for (client, len, head, continuation) in packets {
                let head = &head[..head.len().min(len as usize)];
                let p = PacketHead { len, seq: 0, head, continuation, at: None, start: 0 };
                let _ = if client { t.on_client_packet(&p).map(|_| ()) } else { t.on_server_packet(&p).map(|_| ()) };
                prop_assert!(t.pending() <= 40);
            }
        }
    }
}
