//! Client commands (the first packet of each command-phase exchange) as views borrowing from the
//! payload, their encoders, and the COM_* names used in logs and statistics.

use super::constants::*;
use super::cursor::Cursor;
use super::error::{ProtoError, Result};

/// One client command. Byte fields borrow from the packet payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Quit,
    InitDb(&'a [u8]),
    /// The query text (with CLIENT_QUERY_ATTRIBUTES, MySQL 8 prefixes it with parameter counts;
    /// this view keeps the body raw).
    Query(&'a [u8]),
    FieldList {
        table: &'a [u8],
        wildcard: &'a [u8],
    },
    Statistics,
    ProcessInfo,
    ProcessKill(u32),
    Debug,
    Ping,
    ChangeUser {
        user: &'a [u8],
        auth_response: &'a [u8],
        database: &'a [u8],
        /// Everything after the database (charset, plugin name, connection attributes), raw.
        rest: &'a [u8],
    },
    ResetConnection,
    SetOption(u16),
    StmtPrepare(&'a [u8]),
    StmtExecute {
        stmt_id: u32,
        flags: u8,
        iteration_count: u32,
        /// NULL bitmap, new-params-bound flag, types and values, raw (their layout needs the
        /// statement's parameter count).
        params: &'a [u8],
    },
    StmtSendLongData {
        stmt_id: u32,
        param_id: u16,
        data: &'a [u8],
    },
    StmtClose(u32),
    StmtReset(u32),
    StmtFetch {
        stmt_id: u32,
        rows: u32,
    },
    BinlogDump(&'a [u8]),
    /// Any other command byte, with its body after the command byte.
    Other {
        code: u8,
        body: &'a [u8],
    },
}

/// Parse a command payload, assuming a modern client (CLIENT_PROTOCOL_41 and
/// CLIENT_SECURE_CONNECTION, which only COM_CHANGE_USER's layout depends on).
pub fn parse_command(payload: &[u8]) -> Result<Command<'_>> {
    parse_command_with_caps(payload, CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION)
}

/// Parse a command payload with the connection's agreed `capabilities`.
pub fn parse_command_with_caps(payload: &[u8], capabilities: u32) -> Result<Command<'_>> {
    let mut c = Cursor::new(payload);
    let code = c.u8().map_err(|_| ProtoError::truncated("command"))?;
    let cmd = match code {
        COM_QUIT => Command::Quit,
        COM_INIT_DB => Command::InitDb(c.rest()),
        COM_QUERY => Command::Query(c.rest()),
        COM_FIELD_LIST => {
            let table = c.nul_bytes()?;
            Command::FieldList {
                table,
                wildcard: c.rest(),
            }
        }
        COM_STATISTICS => Command::Statistics,
        COM_PROCESS_INFO => Command::ProcessInfo,
        COM_PROCESS_KILL => Command::ProcessKill(c.u32_le()?),
        COM_DEBUG => Command::Debug,
        COM_PING => Command::Ping,
        COM_CHANGE_USER => {
            let user = c.nul_bytes()?;
            let auth_response = if capabilities & CLIENT_SECURE_CONNECTION != 0 {
                let n = c.u8()?;
                c.bytes(usize::from(n))?
            } else {
                c.nul_bytes()?
            };
            let database = if c.is_empty() {
                &[][..]
            } else {
                c.nul_bytes()?
            };
            Command::ChangeUser {
                user,
                auth_response,
                database,
                rest: c.rest(),
            }
        }
        COM_RESET_CONNECTION => Command::ResetConnection,
        COM_SET_OPTION => Command::SetOption(c.u16_le()?),
        COM_STMT_PREPARE => Command::StmtPrepare(c.rest()),
        COM_STMT_EXECUTE => {
            let stmt_id = c.u32_le()?;
            let flags = c.u8()?;
            let iteration_count = c.u32_le()?;
            Command::StmtExecute {
                stmt_id,
                flags,
                iteration_count,
                params: c.rest(),
            }
        }
        COM_STMT_SEND_LONG_DATA => {
            let stmt_id = c.u32_le()?;
            let param_id = c.u16_le()?;
            Command::StmtSendLongData {
                stmt_id,
                param_id,
                data: c.rest(),
            }
        }
        COM_STMT_CLOSE => Command::StmtClose(c.u32_le()?),
        COM_STMT_RESET => Command::StmtReset(c.u32_le()?),
        COM_STMT_FETCH => {
            let stmt_id = c.u32_le()?;
            Command::StmtFetch {
                stmt_id,
                rows: c.u32_le()?,
            }
        }
        COM_BINLOG_DUMP => Command::BinlogDump(c.rest()),
        _ => Command::Other {
            code,
            body: c.rest(),
        },
    };
    Ok(cmd)
}

impl Command<'_> {
    /// The command byte.
    pub fn code(&self) -> u8 {
        match self {
            Command::Quit => COM_QUIT,
            Command::InitDb(_) => COM_INIT_DB,
            Command::Query(_) => COM_QUERY,
            Command::FieldList { .. } => COM_FIELD_LIST,
            Command::Statistics => COM_STATISTICS,
            Command::ProcessInfo => COM_PROCESS_INFO,
            Command::ProcessKill(_) => COM_PROCESS_KILL,
            Command::Debug => COM_DEBUG,
            Command::Ping => COM_PING,
            Command::ChangeUser { .. } => COM_CHANGE_USER,
            Command::ResetConnection => COM_RESET_CONNECTION,
            Command::SetOption(_) => COM_SET_OPTION,
            Command::StmtPrepare(_) => COM_STMT_PREPARE,
            Command::StmtExecute { .. } => COM_STMT_EXECUTE,
            Command::StmtSendLongData { .. } => COM_STMT_SEND_LONG_DATA,
            Command::StmtClose(_) => COM_STMT_CLOSE,
            Command::StmtReset(_) => COM_STMT_RESET,
            Command::StmtFetch { .. } => COM_STMT_FETCH,
            Command::BinlogDump(_) => COM_BINLOG_DUMP,
            Command::Other { code, .. } => *code,
        }
    }

    /// The command's name, e.g. "COM_QUERY".
    pub fn name(&self) -> &'static str {
        command_name(self.code())
    }

    /// Append the command's payload as a client with `capabilities` would send it (the inverse
    /// of [`parse_command_with_caps`]).
    pub fn encode(&self, capabilities: u32, out: &mut Vec<u8>) {
        out.push(self.code());
        match self {
            Command::Quit
            | Command::Statistics
            | Command::ProcessInfo
            | Command::Debug
            | Command::Ping
            | Command::ResetConnection => {}
            Command::InitDb(b)
            | Command::Query(b)
            | Command::StmtPrepare(b)
            | Command::BinlogDump(b)
            | Command::Other { body: b, .. } => out.extend_from_slice(b),
            Command::FieldList { table, wildcard } => {
                out.extend_from_slice(table);
                out.push(0);
                out.extend_from_slice(wildcard);
            }
            Command::ProcessKill(id) | Command::StmtClose(id) | Command::StmtReset(id) => {
                out.extend_from_slice(&id.to_le_bytes())
            }
            Command::ChangeUser {
                user,
                auth_response,
                database,
                rest,
            } => {
                out.extend_from_slice(user);
                out.push(0);
                if capabilities & CLIENT_SECURE_CONNECTION != 0 {
                    let n = auth_response.len().min(255);
                    out.push(n as u8);
                    out.extend_from_slice(&auth_response[..n]);
                } else {
                    out.extend_from_slice(auth_response);
                    out.push(0);
                }
                out.extend_from_slice(database);
                out.push(0);
                out.extend_from_slice(rest);
            }
            Command::SetOption(o) => out.extend_from_slice(&o.to_le_bytes()),
            Command::StmtExecute {
                stmt_id,
                flags,
                iteration_count,
                params,
            } => {
                out.extend_from_slice(&stmt_id.to_le_bytes());
                out.push(*flags);
                out.extend_from_slice(&iteration_count.to_le_bytes());
                out.extend_from_slice(params);
            }
            Command::StmtSendLongData {
                stmt_id,
                param_id,
                data,
            } => {
                out.extend_from_slice(&stmt_id.to_le_bytes());
                out.extend_from_slice(&param_id.to_le_bytes());
                out.extend_from_slice(data);
            }
            Command::StmtFetch { stmt_id, rows } => {
                out.extend_from_slice(&stmt_id.to_le_bytes());
                out.extend_from_slice(&rows.to_le_bytes());
            }
        }
    }
}

/// The name of a command byte ("COM_QUERY", ...); "COM_UNKNOWN" for bytes no server defines.
pub fn command_name(code: u8) -> &'static str {
    match code {
        COM_SLEEP => "COM_SLEEP",
        COM_QUIT => "COM_QUIT",
        COM_INIT_DB => "COM_INIT_DB",
        COM_QUERY => "COM_QUERY",
        COM_FIELD_LIST => "COM_FIELD_LIST",
        COM_CREATE_DB => "COM_CREATE_DB",
        COM_DROP_DB => "COM_DROP_DB",
        COM_REFRESH => "COM_REFRESH",
        COM_SHUTDOWN => "COM_SHUTDOWN",
        COM_STATISTICS => "COM_STATISTICS",
        COM_PROCESS_INFO => "COM_PROCESS_INFO",
        COM_CONNECT => "COM_CONNECT",
        COM_PROCESS_KILL => "COM_PROCESS_KILL",
        COM_DEBUG => "COM_DEBUG",
        COM_PING => "COM_PING",
        COM_TIME => "COM_TIME",
        COM_DELAYED_INSERT => "COM_DELAYED_INSERT",
        COM_CHANGE_USER => "COM_CHANGE_USER",
        COM_BINLOG_DUMP => "COM_BINLOG_DUMP",
        COM_TABLE_DUMP => "COM_TABLE_DUMP",
        COM_CONNECT_OUT => "COM_CONNECT_OUT",
        COM_REGISTER_SLAVE => "COM_REGISTER_SLAVE",
        COM_STMT_PREPARE => "COM_STMT_PREPARE",
        COM_STMT_EXECUTE => "COM_STMT_EXECUTE",
        COM_STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
        COM_STMT_CLOSE => "COM_STMT_CLOSE",
        COM_STMT_RESET => "COM_STMT_RESET",
        COM_SET_OPTION => "COM_SET_OPTION",
        COM_STMT_FETCH => "COM_STMT_FETCH",
        COM_DAEMON => "COM_DAEMON",
        COM_BINLOG_DUMP_GTID => "COM_BINLOG_DUMP_GTID",
        COM_RESET_CONNECTION => "COM_RESET_CONNECTION",
        COM_STMT_BULK_EXECUTE => "COM_STMT_BULK_EXECUTE",
        _ => "COM_UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::split_packet;
    use proptest::prelude::*;

    #[test]
    fn real_query_and_quit() {
        // Captured from the mariadb CLI (see handshake.rs tests): `SELECT 1`, then COM_QUIT.
        let pkt = b"\x09\x00\x00\x00\x03SELECT 1\x01\x00\x00\x00\x01";
        let (_, p, used) = split_packet(pkt).unwrap();
        let q = parse_command(p).unwrap();
        assert_eq!(q, Command::Query(b"SELECT 1"));
        assert_eq!((q.code(), q.name()), (COM_QUERY, "COM_QUERY"));
        let (_, p, _) = split_packet(&pkt[used..]).unwrap();
        assert_eq!(parse_command(p).unwrap(), Command::Quit);
    }

    #[test]
    fn fixed_layout_commands() {
        assert_eq!(parse_command(b"\x0e").unwrap(), Command::Ping);
        assert_eq!(
            parse_command(b"\x02shop").unwrap(),
            Command::InitDb(b"shop")
        );
        assert_eq!(
            parse_command(b"\x04t1\0col%").unwrap(),
            Command::FieldList {
                table: b"t1",
                wildcard: b"col%"
            }
        );
        assert!(parse_command(b"\x04t1").is_err());
        assert_eq!(
            parse_command(b"\x0c\x2a\0\0\0").unwrap(),
            Command::ProcessKill(42)
        );
        assert!(parse_command(b"\x0c\x2a\0\0").is_err());
        assert_eq!(
            parse_command(b"\x1b\x01\x00").unwrap(),
            Command::SetOption(1)
        );
        assert_eq!(parse_command(b"\x1f").unwrap(), Command::ResetConnection);
        assert_eq!(
            parse_command(b"\x16SELECT ?").unwrap(),
            Command::StmtPrepare(b"SELECT ?")
        );
        assert_eq!(
            parse_command(b"\x17\x01\0\0\0\x00\x01\0\0\0\x00\x01\x03\x00\x07\0\0\0").unwrap(),
            Command::StmtExecute {
                stmt_id: 1,
                flags: 0,
                iteration_count: 1,
                params: b"\x00\x01\x03\x00\x07\0\0\0"
            }
        );
        assert_eq!(
            parse_command(b"\x18\x02\0\0\0\x01\0blob").unwrap(),
            Command::StmtSendLongData {
                stmt_id: 2,
                param_id: 1,
                data: b"blob"
            }
        );
        assert_eq!(
            parse_command(b"\x19\x05\0\0\0").unwrap(),
            Command::StmtClose(5)
        );
        assert_eq!(
            parse_command(b"\x1a\x05\0\0\0").unwrap(),
            Command::StmtReset(5)
        );
        assert_eq!(
            parse_command(b"\x1c\x05\0\0\0\x64\0\0\0").unwrap(),
            Command::StmtFetch {
                stmt_id: 5,
                rows: 100
            }
        );
        assert!(parse_command(b"\x1c\x05\0\0\0\x64").is_err());
        assert_eq!(
            parse_command(b"\xfa\x01\x02").unwrap(),
            Command::Other {
                code: COM_STMT_BULK_EXECUTE,
                body: b"\x01\x02"
            }
        );
        assert_eq!(
            parse_command(b"\xfa").unwrap().name(),
            "COM_STMT_BULK_EXECUTE"
        );
        assert!(parse_command(b"").is_err());
    }

    #[test]
    fn change_user() {
        let p = b"\x11bob\0\x03abcshop\0\x21\x00mysql_native_password\0";
        let c = parse_command(p).unwrap();
        assert_eq!(
            c,
            Command::ChangeUser {
                user: b"bob",
                auth_response: b"abc",
                database: b"shop",
                rest: b"\x21\x00mysql_native_password\0"
            }
        );
        let mut out = Vec::new();
        c.encode(CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION, &mut out);
        assert_eq!(out, p);
        // Without CLIENT_SECURE_CONNECTION the auth response is NUL-terminated.
        let c = parse_command_with_caps(b"\x11bob\0pw\0db\0", CLIENT_PROTOCOL_41).unwrap();
        assert_eq!(
            c,
            Command::ChangeUser {
                user: b"bob",
                auth_response: b"pw",
                database: b"db",
                rest: b""
            }
        );
        assert!(parse_command(b"\x11bob\0\x09abc").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(command_name(COM_STMT_EXECUTE), "COM_STMT_EXECUTE");
        assert_eq!(command_name(COM_BINLOG_DUMP_GTID), "COM_BINLOG_DUMP_GTID");
        assert_eq!(command_name(0x40), "COM_UNKNOWN");
        for code in 0..=0x1fu8 {
            assert_ne!(command_name(code), "COM_UNKNOWN", "{code:#x}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_reencodes(b in proptest::collection::vec(any::<u8>(), 0..64), caps in any::<u32>()) {
            if let Ok(c) = parse_command_with_caps(&b, caps) {
                prop_assert_eq!(c.code(), b[0]);
                let mut out = Vec::new();
                c.encode(caps, &mut out);
                // Re-encoding reproduces the input for every command whose body parses completely.
                let complete = !matches!(c, Command::Quit | Command::Ping | Command::Statistics
                    | Command::ProcessInfo | Command::Debug | Command::ResetConnection
                    | Command::ProcessKill(_) | Command::SetOption(_) | Command::StmtClose(_)
                    | Command::StmtReset(_) | Command::StmtFetch { .. } | Command::ChangeUser { .. });
                if complete {
                    prop_assert_eq!(&out, &b);
                }
                prop_assert_eq!(parse_command_with_caps(&out, caps).unwrap(), c);
            }
        }
    }
}
