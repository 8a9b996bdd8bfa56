//! Lua values ↔ MySQL packets and proxy data, for the hook API: `proxy.response` into packets,
//! an injected query's result into `inj`, `proxy.connection`'s tables, `proxy.queries` into
//! [`Injection`]s, and `proxy.global` values into the shared store and back.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mlua::{Lua, Table, Value};

use super::store::{Key, Value as Stored};
use super::{Injected, Injection};
use crate::protocol::constants::*;
use crate::protocol::handshake::{parse_handshake_response41, parse_handshake_v10};
use crate::protocol::packets::{encode_err, encode_ok, ErrPacket, OkPacket};
use crate::protocol::resultset::{self, Column, Rows};

/// `proxy.MYSQLD_PACKET_*`.
pub const MYSQLD_PACKET_OK: i64 = 0;
pub const MYSQLD_PACKET_ERR: i64 = 255;
pub const MYSQLD_PACKET_RAW: i64 = 250;

type LuaResult<T> = mlua::Result<T>;

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Integer(i) => Some(i.to_string().into_bytes()),
        Value::Number(n) => Some(number_text(*n).into_bytes()),
        Value::Boolean(b) => Some(if *b { b"1".to_vec() } else { b"0".to_vec() }),
        _ => None,
    }
}

fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A number field as an integer (None when absent or not a number).
pub fn int(t: &Table, key: &str) -> LuaResult<Option<i64>> {
    Ok(match t.get::<Value>(key)? {
        Value::Integer(i) => Some(i),
        Value::Number(n) => Some(n as i64),
        _ => None,
    })
}

fn string(t: &Table, key: &str) -> LuaResult<Option<Vec<u8>>> {
    Ok(bytes(&t.get::<Value>(key)?))
}

/// `proxy.response` as the payloads to send, or an error naming what is wrong with it.
pub fn response_packets(resp: &Table) -> LuaResult<Vec<Vec<u8>>> {
    let kind = int(resp, "type")?.unwrap_or(MYSQLD_PACKET_OK);
    match kind {
        MYSQLD_PACKET_OK => ok_response(resp),
        MYSQLD_PACKET_ERR => Ok(vec![err_payload(resp)?]),
        MYSQLD_PACKET_RAW => {
            let packets: Table = resp.get("packets").map_err(|_| {
                mlua::Error::runtime("proxy.response: type RAW needs a packets table")
            })?;
            packets
                .sequence_values::<Value>()
                .map(|v| {
                    bytes(&v?).ok_or_else(|| {
                        mlua::Error::runtime("proxy.response.packets: strings expected")
                    })
                })
                .collect()
        }
        other => Err(mlua::Error::runtime(format!(
            "proxy.response.type {other} is none of MYSQLD_PACKET_OK, _ERR, _RAW"
        ))),
    }
}

fn ok_response(resp: &Table) -> LuaResult<Vec<Vec<u8>>> {
    let status = int(resp, "server_status")?.unwrap_or(SERVER_STATUS_AUTOCOMMIT as i64) as u16;
    if let Some(rs) = resp.get::<Option<Table>>("resultset")? {
        return resultset_packets(&rs, status);
    }
    Ok(vec![ok_payload(resp)?])
}

/// An OK payload from `{affected_rows, insert_id, server_status, warnings, message}` (status
/// defaults to autocommit).
pub fn ok_payload(t: &Table) -> LuaResult<Vec<u8>> {
    let info = string(t, "message")?.unwrap_or_default();
    let ok = OkPacket {
        header: OK_HEADER,
        affected_rows: int(t, "affected_rows")?.unwrap_or(0) as u64,
        last_insert_id: int(t, "insert_id")?.unwrap_or(0) as u64,
        status: int(t, "server_status")?.unwrap_or(SERVER_STATUS_AUTOCOMMIT as i64) as u16,
        warnings: int(t, "warnings")?.unwrap_or(0) as u16,
        info: &info,
        session_state: None,
    };
    let mut p = Vec::new();
    encode_ok(&ok, CLIENT_PROTOCOL_41, &mut p);
    Ok(p)
}

/// An ERR payload from `{errmsg, errcode|errno, sqlstate}` (MySQL Proxy's defaults: 1105/07000).
pub fn err_payload(t: &Table) -> LuaResult<Vec<u8>> {
    let code = match int(t, "errcode")? {
        Some(c) => c,
        None => int(t, "errno")?.unwrap_or(1105),
    };
    let msg =
        string(t, "errmsg")?.unwrap_or_else(|| b"(lua) proxy.response.errmsg is nil".to_vec());
    let state = string(t, "sqlstate")?.unwrap_or_else(|| b"07000".to_vec());
    let mut sql_state = *b"HY000";
    if state.len() == 5 {
        sql_state.copy_from_slice(&state);
    }
    let mut p = Vec::new();
    let err = ErrPacket {
        code: code as u16,
        sql_state: Some(sql_state),
        message: &msg,
    };
    encode_err(&err, CLIENT_PROTOCOL_41, &mut p);
    Ok(p)
}

fn resultset_packets(rs: &Table, status: u16) -> LuaResult<Vec<Vec<u8>>> {
    let fields: Table = rs
        .get("fields")
        .map_err(|_| mlua::Error::runtime("proxy.response.resultset needs fields"))?;
    let mut columns = Vec::new();
    for f in fields.sequence_values::<Table>() {
        let f = f?;
        columns.push(Column {
            name: string(&f, "name")?.unwrap_or_default(),
            kind: int(&f, "type")?.unwrap_or(MYSQL_TYPE_VAR_STRING as i64) as u8,
        });
    }
    let mut rows = Vec::new();
    if let Some(list) = rs.get::<Option<Table>>("rows")? {
        for row in list.sequence_values::<Table>() {
            let row = row?;
            let cells = (1..=columns.len())
                .map(|i| row.get::<Value>(i).map(|v| bytes(&v)))
                .collect::<LuaResult<Vec<_>>>()?;
            rows.push(cells);
        }
    }
    Ok(resultset::encode(&columns, &rows, status))
}

/// `inj` for read_query_result.
pub fn inj_table(lua: &Lua, inj: &Injected, rows_iter: &mlua::Function) -> LuaResult<Table> {
    let t = lua.create_table()?;
    t.set("id", inj.id)?;
    t.set("query", lua.create_string(&inj.query)?)?;
    t.set("query_time", inj.query_time_us)?;
    t.set("response_time", inj.response_time_us)?;
    t.set("resultset", resultset_table(lua, inj, rows_iter)?)?;
    Ok(t)
}

fn resultset_table(lua: &Lua, inj: &Injected, rows_iter: &mlua::Function) -> LuaResult<Table> {
    let rs = lua.create_table()?;
    let bytes: usize = inj.packets.iter().map(|p| p.len() + 4).sum();
    rs.set("bytes", bytes)?;
    if let Some(first) = inj.packets.first() {
        rs.set("raw", lua.create_string(first)?)?;
    }
    let rows = match inj.query.first() {
        _ if !inj.resultset_is_needed => Rows::Skip,
        Some(&COM_QUERY) => Rows::Text,
        Some(&COM_STMT_EXECUTE) => Rows::Binary,
        _ => Rows::Skip,
    };
    let Ok(d) = resultset::decode(&inj.packets, inj.caps, rows) else {
        return Ok(rs);
    };
    let status = if d.status_byte == ERR_HEADER {
        MYSQLD_PACKET_ERR
    } else {
        MYSQLD_PACKET_OK
    };
    rs.set("query_status", status)?;
    rs.set("warning_count", d.warnings)?;
    rs.set("server_status", d.server_status)?;
    if d.status_byte == ERR_HEADER {
        rs.set("errcode", d.error_code)?;
        rs.set("errmsg", lua.create_string(&d.error_message)?)?;
    } else if !d.is_resultset {
        rs.set("affected_rows", d.affected_rows)?;
        rs.set("insert_id", d.insert_id)?;
    }
    rs.set("flags", flags_table(lua, d.server_status)?)?;
    if d.is_resultset {
        rs.set("row_count", d.rows.len())?;
        if rows != Rows::Skip {
            rs.set("fields", fields_table(lua, &d.columns)?)?;
            rs.set(
                "rows",
                rows_iter.call::<mlua::Function>(rows_table(lua, &d.rows)?)?,
            )?;
        }
    }
    Ok(rs)
}

fn flags_table(lua: &Lua, status: u16) -> LuaResult<Table> {
    let f = lua.create_table()?;
    f.set("in_trans", status & SERVER_STATUS_IN_TRANS != 0)?;
    f.set("auto_commit", status & SERVER_STATUS_AUTOCOMMIT != 0)?;
    f.set(
        "no_good_index_used",
        status & SERVER_QUERY_NO_GOOD_INDEX_USED != 0,
    )?;
    f.set("no_index_used", status & SERVER_QUERY_NO_INDEX_USED != 0)?;
    Ok(f)
}

fn fields_table(lua: &Lua, columns: &[Column]) -> LuaResult<Table> {
    let t = lua.create_table_with_capacity(columns.len(), 0)?;
    for (i, c) in columns.iter().enumerate() {
        let f = lua.create_table()?;
        f.set("name", lua.create_string(&c.name)?)?;
        f.set("type", c.kind)?;
        t.set(i + 1, f)?;
    }
    Ok(t)
}

fn rows_table(lua: &Lua, rows: &[Vec<Option<Vec<u8>>>]) -> LuaResult<Table> {
    let t = lua.create_table_with_capacity(rows.len(), 0)?;
    for (i, row) in rows.iter().enumerate() {
        let r = lua.create_table_with_capacity(row.len(), 0)?;
        for (j, cell) in row.iter().enumerate() {
            if let Some(v) = cell {
                r.set(j + 1, lua.create_string(v)?)?;
            }
        }
        t.set(i + 1, r)?;
    }
    Ok(t)
}

/// `{name = "ip:port", address = "ip", port = n}` of an endpoint.
fn endpoint(lua: &Lua, addr: Option<SocketAddr>) -> LuaResult<Table> {
    let t = lua.create_table()?;
    if let Some(a) = addr {
        t.set("name", a.to_string())?;
        t.set("address", a.ip().to_string())?;
        t.set("port", a.port())?;
    }
    Ok(t)
}

/// A new `proxy.connection`: the client's endpoints; the server's come with its greeting.
pub fn connection_table(
    lua: &Lua,
    client: Option<SocketAddr>,
    proxy: Option<SocketAddr>,
) -> LuaResult<Table> {
    let conn = lua.create_table()?;
    let c = lua.create_table()?;
    c.set("src", endpoint(lua, client)?)?;
    c.set("dst", endpoint(lua, proxy)?)?;
    c.set("address", client.map(|a| a.to_string()))?;
    conn.set("client", c)?;
    let s = lua.create_table()?;
    s.set("src", endpoint(lua, None)?)?;
    s.set("dst", endpoint(lua, None)?)?;
    conn.set("server", s)?;
    conn.set("backend_ndx", 0)?;
    Ok(conn)
}

/// Fills `proxy.connection.server` from the backend's greeting.
pub fn set_server(
    lua: &Lua,
    conn: &Table,
    greeting: &[u8],
    ndx: usize,
    addr: SocketAddr,
) -> LuaResult<()> {
    let s: Table = conn.get("server")?;
    s.set("dst", endpoint(lua, Some(addr))?)?;
    s.set("address", addr.to_string())?;
    conn.set("backend_ndx", ndx + 1)?;
    if let Ok(h) = parse_handshake_v10(greeting) {
        s.set("thread_id", h.connection_id)?;
        s.set("mysqld_version", version_number(h.server_version))?;
        s.set("scramble_buffer", lua.create_string(h.scramble())?)?;
    }
    Ok(())
}

/// Fills `proxy.connection.client` from the client's handshake response.
pub fn set_client(lua: &Lua, conn: &Table, response: &[u8]) -> LuaResult<()> {
    let c: Table = conn.get("client")?;
    if let Ok(r) = parse_handshake_response41(response) {
        c.set("username", lua.create_string(r.username)?)?;
        c.set("scrambled_password", lua.create_string(r.auth_response)?)?;
        c.set("default_db", lua.create_string(r.database.unwrap_or(b""))?)?;
    }
    Ok(())
}

/// Fills `proxy.connection.client` with who the proxy authenticated (pooled listeners).
pub fn set_identity(lua: &Lua, conn: &Table, username: &[u8], default_db: &[u8]) -> LuaResult<()> {
    let c: Table = conn.get("client")?;
    c.set("username", lua.create_string(username)?)?;
    c.set("default_db", lua.create_string(default_db)?)?;
    Ok(())
}

/// "10.11.19-MariaDB" → 101119, as MySQL Proxy's `mysqld_version`; MariaDB's "5.5.5-" prefix
/// (sent for old replication clients) is skipped.
pub fn version_number(v: &[u8]) -> u32 {
    let v = v.strip_prefix(b"5.5.5-").unwrap_or(v);
    let text = String::from_utf8_lossy(v);
    let mut parts = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    a * 10_000 + b * 100 + c
}

/// The entries of a `proxy.queries` queue, as [`Injection`]s.
pub fn injections(items: &Table) -> LuaResult<Vec<Injection>> {
    let mut out = Vec::with_capacity(items.raw_len());
    for e in items.sequence_values::<Table>() {
        let e = e?;
        out.push(Injection {
            id: int(&e, "id")?.unwrap_or(0),
            packet: string(&e, "query")?.unwrap_or_default(),
            resultset_is_needed: e
                .get::<Option<bool>>("resultset_is_needed")?
                .unwrap_or(false),
        });
    }
    Ok(out)
}

/// A Lua key for the store: strings and numbers (others refused).
pub fn store_key(v: &Value) -> LuaResult<Key> {
    match v {
        Value::String(s) => Ok(Key::Str(s.as_bytes().to_vec())),
        Value::Integer(i) => Ok(Key::Int(*i)),
        Value::Number(n) if n.fract() == 0.0 => Ok(Key::Int(*n as i64)),
        _ => Err(mlua::Error::runtime(
            "proxy.global: keys must be strings or integers",
        )),
    }
}

/// A Lua value copied for the store (`None` for nil); functions and userdata are refused.
pub fn to_stored(v: &Value, depth: usize) -> LuaResult<Option<Stored>> {
    if depth > 32 {
        return Err(mlua::Error::runtime("proxy.global: tables nested too deep"));
    }
    Ok(Some(match v {
        Value::Nil => return Ok(None),
        Value::Boolean(b) => Stored::Bool(*b),
        Value::Integer(i) => Stored::Int(*i),
        Value::Number(n) => Stored::Num(*n),
        Value::String(s) => Stored::Str(s.as_bytes().to_vec()),
        Value::Table(t) => {
            let mut map = BTreeMap::new();
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                if let Some(v) = to_stored(&v, depth + 1)? {
                    map.insert(store_key(&k)?, v);
                }
            }
            Stored::Table(map)
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "proxy.global: a {} cannot be shared between workers",
                other.type_name()
            )))
        }
    }))
}

/// A store key as a Lua value.
pub fn key_value(lua: &Lua, k: &Key) -> LuaResult<Value> {
    Ok(match k {
        Key::Int(i) => Value::Integer(*i),
        Key::Str(s) => Value::String(lua.create_string(s)?),
    })
}

/// A stored scalar as a Lua value (tables are shown as views by the caller).
pub fn from_stored(lua: &Lua, v: &Stored) -> LuaResult<Value> {
    Ok(match v {
        Stored::Bool(b) => Value::Boolean(*b),
        Stored::Int(i) => Value::Integer(*i),
        Stored::Num(n) => Value::Number(*n),
        Stored::Str(s) => Value::String(lua.create_string(s)?),
        Stored::Table(_) => Value::Nil,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_mysql_proxy_numbers() {
        assert_eq!(version_number(b"10.11.19-MariaDB-0+deb12u1"), 101119);
        assert_eq!(version_number(b"8.0.36"), 80036);
        assert_eq!(version_number(b"5.7.44-log"), 50744);
        assert_eq!(version_number(b"5.5.5-10.11.19-MariaDB"), 101119);
    }
}
