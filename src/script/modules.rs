//! The modules scripts `require`, preloaded in every VM: `mysql.proto` (MySQL packets to and from
//! Lua tables), `mysql.password` (mysql_native_password's hashing and scrambling) and
//! `mysql.tokenizer` (SQL tokens, normalized text) in Rust over the protocol
//! codec and the SQL lexer; `proxy.commands`, `proxy.tokenizer`, `proxy.balance` and
//! `proxy.auto-config` in Lua (src/script/lua/), written for ringproxy with MySQL Proxy's
//! interfaces.

use mlua::{Lua, Table, Value};

use super::api::{err_payload, int, ok_payload};
use crate::protocol::auth;
use crate::protocol::binary;
use crate::protocol::constants::*;
use crate::protocol::cursor::Cursor;
use crate::protocol::handshake::{self, HandshakeResponse41, HandshakeV10};
use crate::protocol::packets::{encode_eof, parse_eof, parse_err, parse_ok, EofPacket};
use crate::protocol::sql::{Lexer, Token};

type LuaResult<T> = mlua::Result<T>;

/// Lua modules shipped as source: (name, text).
const LUA_MODULES: &[(&str, &str)] = &[
    ("proxy.commands", include_str!("lua/commands.lua")),
    ("proxy.tokenizer", include_str!("lua/tokenizer.lua")),
    ("proxy.balance", include_str!("lua/balance.lua")),
    ("proxy.auto-config", include_str!("lua/auto_config.lua")),
];

/// Registers every module in `package.preload`.
pub fn preload(lua: &Lua) -> LuaResult<()> {
    let preload: Table = lua.globals().get::<Table>("package")?.get("preload")?;
    preload.set(
        "mysql.proto",
        lua.create_function(|lua, ()| as_global(lua, "proto", proto(lua)?))?,
    )?;
    preload.set(
        "mysql.password",
        lua.create_function(|lua, ()| as_global(lua, "password", password(lua)?))?,
    )?;
    preload.set(
        "mysql.tokenizer",
        lua.create_function(|lua, ()| as_global(lua, "tokenizer", tokenizer(lua)?))?,
    )?;
    for (name, text) in LUA_MODULES {
        let chunk = lua
            .load(*text)
            .set_name(format!("=ringproxy/{name}"))
            .into_function()?;
        preload.set(*name, chunk)?;
    }
    Ok(())
}

/// A C module of MySQL Proxy registered itself as a global when required (`mysql.tokenizer`, and
/// `tokenizer` too): scripts written for it use those globals.
fn as_global(lua: &Lua, name: &str, module: Table) -> LuaResult<Table> {
    let globals = lua.globals();
    let mysql = match globals.get::<Option<Table>>("mysql")? {
        Some(t) => t,
        None => {
            let t = lua.create_table()?;
            globals.set("mysql", &t)?;
            t
        }
    };
    mysql.set(name, &module)?;
    if globals.get::<Value>(name)?.is_nil() {
        globals.set(name, &module)?;
    }
    Ok(module)
}

fn bytes_of(v: &mlua::LuaString) -> Vec<u8> {
    v.as_bytes().to_vec()
}

fn get_int(t: &Table, key: &str, default: i64) -> LuaResult<i64> {
    Ok(int(t, key)?.unwrap_or(default))
}

fn get_bytes(t: &Table, key: &str) -> LuaResult<Option<Vec<u8>>> {
    Ok(t.get::<Option<mlua::LuaString>>(key)?.map(|s| bytes_of(&s)))
}

fn bad(what: &str, e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{what}: {e}"))
}

/// `mysql.proto`.
fn proto(lua: &Lua) -> LuaResult<Table> {
    let m = lua.create_table()?;
    m.set(
        "to_err_packet",
        lua.create_function(|lua, t: Table| lua.create_string(err_payload(&t)?))?,
    )?;
    m.set("from_err_packet", lua.create_function(from_err)?)?;
    m.set("to_ok_packet", lua.create_function(to_ok)?)?;
    m.set("from_ok_packet", lua.create_function(from_ok)?)?;
    m.set("to_eof_packet", lua.create_function(to_eof)?)?;
    m.set("from_eof_packet", lua.create_function(from_eof)?)?;
    m.set("to_challenge_packet", lua.create_function(to_challenge)?)?;
    m.set(
        "from_challenge_packet",
        lua.create_function(from_challenge)?,
    )?;
    m.set("to_response_packet", lua.create_function(to_response)?)?;
    m.set("from_response_packet", lua.create_function(from_response)?)?;
    stmt_functions(lua, &m)?;
    Ok(m)
}

/// `mysql.proto`'s prepared-statement decoders: `from_stmt_prepare_packet` ({stmt_text}),
/// `from_stmt_prepare_ok_packet` ({stmt_id, num_columns, num_params, warnings}),
/// `stmt_id_from_stmt_execute_packet`, `from_stmt_execute_packet(packet, num_params)`
/// ({stmt_id, flags, iteration_count, new_params_bound, params = {{type, value}...}}; `params`
/// is nil when the client did not send the types again) and `from_stmt_close_packet`
/// ({stmt_id}). Packets are payloads with their command byte.
fn stmt_functions(lua: &Lua, m: &Table) -> LuaResult<()> {
    m.set(
        "from_stmt_prepare_packet",
        lua.create_function(|lua, s: mlua::LuaString| {
            let b = bytes_of(&s);
            let t = lua.create_table()?;
            t.set("stmt_text", lua.create_string(b.get(1..).unwrap_or(&[]))?)?;
            Ok(t)
        })?,
    )?;
    m.set(
        "from_stmt_prepare_ok_packet",
        lua.create_function(|lua, s: mlua::LuaString| {
            let b = bytes_of(&s);
            let mut c = Cursor::new(&b);
            let bad = |e| bad("from_stmt_prepare_ok_packet", e);
            let t = lua.create_table()?;
            c.u8().map_err(bad)?;
            t.set("stmt_id", c.u32_le().map_err(bad)?)?;
            t.set("num_columns", c.u16_le().map_err(bad)?)?;
            t.set("num_params", c.u16_le().map_err(bad)?)?;
            c.u8().map_err(bad)?;
            t.set("warnings", c.u16_le().unwrap_or(0))?;
            Ok(t)
        })?,
    )?;
    m.set(
        "stmt_id_from_stmt_execute_packet",
        lua.create_function(|_, s: mlua::LuaString| stmt_id(&bytes_of(&s)))?,
    )?;
    m.set(
        "from_stmt_close_packet",
        lua.create_function(|lua, s: mlua::LuaString| {
            let t = lua.create_table()?;
            t.set("stmt_id", stmt_id(&bytes_of(&s))?)?;
            Ok(t)
        })?,
    )?;
    m.set(
        "from_stmt_execute_packet",
        lua.create_function(from_execute)?,
    )?;
    Ok(())
}

fn stmt_id(b: &[u8]) -> LuaResult<u32> {
    let mut c = Cursor::new(b);
    c.u8().map_err(|e| bad("statement packet", e))?;
    c.u32_le().map_err(|e| bad("statement packet", e))
}

fn from_execute(lua: &Lua, (s, num_params): (mlua::LuaString, usize)) -> LuaResult<Table> {
    let b = bytes_of(&s);
    let bad = |e| bad("from_stmt_execute_packet", e);
    let mut c = Cursor::new(&b);
    c.u8().map_err(bad)?;
    let t = lua.create_table()?;
    t.set("stmt_id", c.u32_le().map_err(bad)?)?;
    t.set("flags", c.u8().map_err(bad)?)?;
    t.set("iteration_count", c.u32_le().map_err(bad)?)?;
    let rest = c.rest();
    let Some(params) = binary::decode_params(rest, num_params).map_err(bad)? else {
        t.set("new_params_bound", false)?;
        return Ok(t);
    };
    t.set("new_params_bound", true)?;
    let list = lua.create_table_with_capacity(params.len(), 0)?;
    for (i, (kind, unsigned, value)) in params.into_iter().enumerate() {
        let p = lua.create_table()?;
        p.set("type", kind)?;
        p.set("unsigned", unsigned)?;
        let v = match value {
            binary::Param::Null => Value::Nil,
            binary::Param::Int(n) => Value::Integer(n),
            binary::Param::UInt(n) => Value::Number(n as f64),
            binary::Param::Double(f) => Value::Number(f),
            binary::Param::Bytes(b) => Value::String(lua.create_string(b)?),
            binary::Param::Text(t) => Value::String(lua.create_string(t)?),
        };
        p.set("value", v)?;
        list.set(i + 1, p)?;
    }
    t.set("params", list)?;
    Ok(t)
}

fn from_err(lua: &Lua, s: mlua::LuaString) -> LuaResult<Table> {
    let b = bytes_of(&s);
    let e = parse_err(&b, CLIENT_PROTOCOL_41).map_err(|e| bad("from_err_packet", e))?;
    let t = lua.create_table()?;
    t.set("errcode", e.code)?;
    t.set("errmsg", lua.create_string(e.message)?)?;
    t.set(
        "sqlstate",
        e.sql_state
            .map(|s| String::from_utf8_lossy(&s).into_owned()),
    )?;
    Ok(t)
}

fn to_ok(lua: &Lua, t: Table) -> LuaResult<mlua::LuaString> {
    lua.create_string(ok_payload(&t)?)
}

fn from_ok(lua: &Lua, s: mlua::LuaString) -> LuaResult<Table> {
    let b = bytes_of(&s);
    let ok = parse_ok(&b, CLIENT_PROTOCOL_41).map_err(|e| bad("from_ok_packet", e))?;
    let t = lua.create_table()?;
    t.set("affected_rows", ok.affected_rows)?;
    t.set("insert_id", ok.last_insert_id)?;
    t.set("server_status", ok.status)?;
    t.set("warnings", ok.warnings)?;
    t.set("message", lua.create_string(ok.info)?)?;
    Ok(t)
}

fn to_eof(lua: &Lua, t: Table) -> LuaResult<mlua::LuaString> {
    let eof = EofPacket {
        warnings: get_int(&t, "warnings", 0)? as u16,
        status: get_int(&t, "server_status", SERVER_STATUS_AUTOCOMMIT as i64)? as u16,
    };
    let mut p = Vec::new();
    encode_eof(&eof, &mut p);
    lua.create_string(p)
}

fn from_eof(lua: &Lua, s: mlua::LuaString) -> LuaResult<Table> {
    let b = bytes_of(&s);
    let eof = parse_eof(&b).map_err(|e| bad("from_eof_packet", e))?;
    let t = lua.create_table()?;
    t.set("warnings", eof.warnings)?;
    t.set("server_status", eof.status)?;
    Ok(t)
}

/// Capabilities of a greeting a script makes when it names none.
const CHALLENGE_CAPS: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH;

fn to_challenge(lua: &Lua, t: Table) -> LuaResult<mlua::LuaString> {
    let version = match t.get::<Value>("server_version")? {
        Value::String(s) => bytes_of(&s),
        Value::Integer(n) => version_text(n),
        Value::Number(n) => version_text(n as i64),
        _ => b"5.0.99-ringproxy".to_vec(),
    };
    let challenge = get_bytes(&t, "challenge")?.unwrap_or_else(|| b"ringproxy-scramble!!".to_vec());
    let (a1, a2) = challenge.split_at(challenge.len().min(8));
    let h = HandshakeV10 {
        protocol_version: get_int(&t, "protocol_version", 10)? as u8,
        server_version: &version,
        connection_id: get_int(&t, "thread_id", 1)? as u32,
        auth_data_1: a1,
        capabilities: get_int(&t, "capabilities", CHALLENGE_CAPS as i64)? as u32,
        charset: get_int(&t, "charset", 33)? as u8,
        status: get_int(&t, "server_status", SERVER_STATUS_AUTOCOMMIT as i64)? as u16,
        auth_data_len: (challenge.len() + 1) as u8,
        mariadb_ext_capabilities: 0,
        auth_data_2: a2,
        auth_plugin_name: Some(b"mysql_native_password"),
    };
    let mut p = Vec::new();
    handshake::encode_handshake_v10(&h, &mut p);
    lua.create_string(p)
}

/// 50099 → "5.0.99".
fn version_text(n: i64) -> Vec<u8> {
    format!("{}.{}.{}", n / 10_000, n / 100 % 100, n % 100).into_bytes()
}

fn from_challenge(lua: &Lua, s: mlua::LuaString) -> LuaResult<Table> {
    let b = bytes_of(&s);
    let h = handshake::parse_handshake_v10(&b).map_err(|e| bad("from_challenge_packet", e))?;
    let t = lua.create_table()?;
    t.set("protocol_version", h.protocol_version)?;
    t.set(
        "server_version",
        super::api::version_number(h.server_version),
    )?;
    t.set(
        "server_version_string",
        lua.create_string(h.server_version)?,
    )?;
    t.set("thread_id", h.connection_id)?;
    t.set("capabilities", h.capabilities)?;
    t.set("charset", h.charset)?;
    t.set("server_status", h.status)?;
    t.set("challenge", lua.create_string(h.scramble())?)?;
    Ok(t)
}

fn to_response(lua: &Lua, t: Table) -> LuaResult<mlua::LuaString> {
    let user = get_bytes(&t, "username")?.unwrap_or_default();
    let answer = get_bytes(&t, "response")?.unwrap_or_default();
    let db = get_bytes(&t, "database")?;
    let mut caps = get_int(&t, "capabilities", CHALLENGE_CAPS as i64)? as u32;
    if db.as_deref().is_some_and(|d| !d.is_empty()) {
        caps |= CLIENT_CONNECT_WITH_DB;
    }
    let r = HandshakeResponse41 {
        capabilities: caps,
        max_packet_size: get_int(&t, "max_packet_size", 16 << 20)? as u32,
        charset: get_int(&t, "charset", 33)? as u8,
        mariadb_ext_capabilities: 0,
        username: &user,
        auth_response: &answer,
        database: db.as_deref(),
        auth_plugin_name: Some(b"mysql_native_password"),
        connect_attrs: None,
    };
    let mut p = Vec::new();
    handshake::encode_handshake_response41(&r, &mut p);
    lua.create_string(p)
}

fn from_response(lua: &Lua, s: mlua::LuaString) -> LuaResult<Table> {
    let b = bytes_of(&s);
    let r =
        handshake::parse_handshake_response41(&b).map_err(|e| bad("from_response_packet", e))?;
    let t = lua.create_table()?;
    t.set("capabilities", r.capabilities)?;
    t.set("max_packet_size", r.max_packet_size)?;
    t.set("charset", r.charset)?;
    t.set("username", lua.create_string(r.username)?)?;
    t.set("response", lua.create_string(r.auth_response)?)?;
    t.set("database", lua.create_string(r.database.unwrap_or(b""))?)?;
    Ok(t)
}

/// `mysql.password`: mysql_native_password's pieces. `hash(pw)` is SHA1(pw) (stage1);
/// `scramble(challenge, stage1)` the answer a client sends; `unscramble(challenge, answer,
/// stage2)` the stage1 an answer reveals with the stored SHA1(SHA1(pw)); `check(challenge,
/// answer, stage2)` whether the answer is right.
fn password(lua: &Lua) -> LuaResult<Table> {
    use sha1::{Digest, Sha1};
    let m = lua.create_table()?;
    m.set(
        "hash",
        lua.create_function(|lua, pw: mlua::LuaString| {
            lua.create_string(Sha1::digest(&*pw.as_bytes()))
        })?,
    )?;
    m.set(
        "scramble",
        lua.create_function(
            |lua, (challenge, stage1): (mlua::LuaString, mlua::LuaString)| {
                let stage1: [u8; 20] = (*stage1.as_bytes())
                    .try_into()
                    .map_err(|_| mlua::Error::runtime("scramble: the hash must be 20 bytes"))?;
                let answer = auth::native_password_from_stage1(&stage1, &challenge.as_bytes());
                lua.create_string(answer)
            },
        )?,
    )?;
    m.set(
        "unscramble",
        lua.create_function(
            |lua, (c, answer, stage2): (mlua::LuaString, mlua::LuaString, mlua::LuaString)| {
                let (c, answer, stage2) = (bytes_of(&c), bytes_of(&answer), bytes_of(&stage2));
                let mask = Sha1::new()
                    .chain_update(&c[..c.len().min(20)])
                    .chain_update(&stage2)
                    .finalize();
                let stage1: Vec<u8> = answer.iter().zip(mask).map(|(a, m)| a ^ m).collect();
                lua.create_string(stage1)
            },
        )?,
    )?;
    m.set(
        "check",
        lua.create_function(
            |_, (c, answer, stage2): (mlua::LuaString, mlua::LuaString, mlua::LuaString)| {
                Ok(auth::native_password_matches(
                    &stage2.as_bytes(),
                    &c.as_bytes(),
                    &answer.as_bytes(),
                ))
            },
        )?,
    )?;
    Ok(m)
}

/// `mysql.tokenizer`.
fn tokenizer(lua: &Lua) -> LuaResult<Table> {
    let m = lua.create_table()?;
    m.set(
        "tokenize",
        lua.create_function(|lua, s: mlua::LuaString| tokenize(lua, &bytes_of(&s)))?,
    )?;
    m.set("normalize", lua.create_function(normalize_value)?)?;
    m.set("first_stmt_token", lua.create_function(first_stmt_token)?)?;
    Ok(m)
}

/// Words MySQL Proxy's tokenizer names `TK_SQL_<WORD>` (the rest are TK_LITERAL).
const KEYWORDS: &[&str] = &[
    "ALTER", "AND", "AS", "ASC", "BEGIN", "BETWEEN", "BY", "CALL", "COMMIT", "CREATE", "DATABASE",
    "DELETE", "DESC", "DESCRIBE", "DISTINCT", "DROP", "EXPLAIN", "FROM", "GROUP", "HAVING", "IN",
    "INSERT", "INTO", "IS", "JOIN", "KILL", "LEFT", "LIKE", "LIMIT", "LOCK", "NOT", "NULL", "ON",
    "OR", "ORDER", "REPLACE", "ROLLBACK", "SELECT", "SET", "SHOW", "START", "TABLE", "TRUNCATE",
    "UNION", "UNLOCK", "UPDATE", "USE", "VALUES", "WHERE",
];

/// A token's MySQL Proxy name and its text as a script sees it.
fn token_name(sql: &[u8], tok: &Token<'_>, start: usize, end: usize) -> (String, Vec<u8>) {
    match tok {
        Token::Word(w) => {
            let upper = String::from_utf8_lossy(w).to_ascii_uppercase();
            if w.iter().all(u8::is_ascii_digit) {
                ("TK_INTEGER".into(), w.to_vec())
            } else if w[0].is_ascii_digit()
                && w.iter()
                    .all(|b| b.is_ascii_digit() || *b == b'.' || *b == b'e')
            {
                ("TK_FLOAT".into(), w.to_vec())
            } else if KEYWORDS.contains(&upper.as_str()) {
                (format!("TK_SQL_{upper}"), w.to_vec())
            } else {
                ("TK_LITERAL".into(), w.to_vec())
            }
        }
        Token::Ident(i) => ("TK_LITERAL".into(), i.to_vec()),
        Token::Str { raw, .. } => ("TK_STRING".into(), raw.to_vec()),
        Token::UserVar { .. } | Token::SysVar(_) => ("TK_LITERAL".into(), sql[start..end].to_vec()),
        Token::Assign => ("TK_ASSIGN".into(), b":=".to_vec()),
        Token::Punct(p) => (punct_name(*p).into(), vec![*p]),
    }
}

fn punct_name(p: u8) -> &'static str {
    match p {
        b';' => "TK_SEMICOLON",
        b',' => "TK_COMMA",
        b'.' => "TK_DOT",
        b'(' => "TK_OBRACE",
        b')' => "TK_CBRACE",
        b'=' => "TK_EQ",
        b'*' => "TK_STAR",
        b'+' => "TK_PLUS",
        b'-' => "TK_MINUS",
        b'/' => "TK_DIV",
        b'<' => "TK_LT",
        b'>' => "TK_GT",
        b'!' => "TK_BANG",
        _ => "TK_UNKNOWN",
    }
}

fn tokenize(lua: &Lua, sql: &[u8]) -> LuaResult<Table> {
    let out = lua.create_table()?;
    for (i, sp) in Lexer::new(sql).enumerate() {
        let (name, text) = token_name(sql, &sp.token, sp.start, sp.end);
        let t = lua.create_table()?;
        t.set("token_name", name)?;
        t.set("text", lua.create_string(text)?)?;
        out.set(i + 1, t)?;
    }
    Ok(out)
}

/// The statement with literals replaced by `?`, identifiers back-quoted and keywords in upper
/// case, tokens separated by one space: one text per query shape (a digest's text).
pub fn normalize(sql: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len());
    for sp in Lexer::new(sql) {
        let (name, text) = token_name(sql, &sp.token, sp.start, sp.end);
        match name.as_str() {
            "TK_INTEGER" | "TK_FLOAT" | "TK_STRING" => out.push(b'?'),
            "TK_LITERAL" if !matches!(sp.token, Token::UserVar { .. } | Token::SysVar(_)) => {
                out.push(b'`');
                out.extend_from_slice(&text);
                out.push(b'`');
            }
            n if n.starts_with("TK_SQL_") => out.extend_from_slice(&n.as_bytes()[7..]),
            _ => out.extend_from_slice(&text),
        }
        out.push(b' ');
    }
    out
}

fn normalize_value(lua: &Lua, v: Value) -> LuaResult<mlua::LuaString> {
    let sql = match v {
        Value::String(s) => bytes_of(&s),
        Value::Table(t) => {
            let mut text = Vec::new();
            for tok in t.sequence_values::<Table>() {
                let tok = tok?;
                let name: String = tok.get("token_name")?;
                let body = get_bytes(&tok, "text")?.unwrap_or_default();
                match name.as_str() {
                    "TK_STRING" => {
                        text.push(b'\'');
                        text.extend_from_slice(&body);
                        text.push(b'\'');
                    }
                    _ => text.extend_from_slice(&body),
                }
                text.push(b' ');
            }
            text
        }
        _ => {
            return Err(mlua::Error::runtime(
                "normalize: a string or a token list expected",
            ))
        }
    };
    lua.create_string(normalize(&sql))
}

fn first_stmt_token(_lua: &Lua, tokens: Table) -> LuaResult<Value> {
    for tok in tokens.sequence_values::<Table>() {
        let tok = tok?;
        let name: String = tok.get("token_name")?;
        if name != "TK_COMMENT" && name != "TK_OBRACE" {
            return Ok(Value::Table(tok));
        }
    }
    Ok(Value::Nil)
}

/// The command byte and the text of a COM_QUERY payload, when it is one.
pub fn query_text(packet: &[u8]) -> Option<&[u8]> {
    let mut c = Cursor::new(packet);
    (c.u8().ok()? == COM_QUERY).then(|| c.rest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_text_hides_literals() {
        assert_eq!(
            normalize(b"select a, 'x' from t where id = 42"),
            b"SELECT `a` , ? FROM `t` WHERE `id` = ? ".to_vec()
        );
    }
}
