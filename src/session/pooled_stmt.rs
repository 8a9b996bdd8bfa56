//! Prepared statements of pooled sessions. A session's statements have ids of their own
//! (stable, client-visible); each names a statement *key* of the worker's [`Statements`]
//! registry (the SQL with the schema it was prepared in), and every pooled backend connection
//! maps keys to its own server statement ids, preparing lazily on the connection that runs an
//! EXECUTE. This module owns the registry and the packet rewriting: the statement id of
//! EXECUTE/FETCH/RESET/CLOSE/SEND_LONG_DATA, and the parameter types of an EXECUTE, which the
//! proxy always sends (a server statement shared by several sessions may have seen other types
//! last).

use std::collections::HashMap;

use super::state::SessionState;
use crate::protocol::constants::*;

/// What the registry knows of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StmtSql {
    pub sql: Vec<u8>,
    /// The schema it was prepared in (a re-prepare runs there).
    pub schema: Option<Vec<u8>>,
    /// What the server parsed it under: the login's character set and the session's
    /// [`PARSE_VARS`] (a re-prepare sets them for the prepare).
    pub charset: u8,
    pub parse_vars: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Statements no session holds are forgotten once the registry has more than this.
pub const KEEP_UNUSED: usize = 4096;

/// A cached prepare response, for answering the next prepare of the same statement without a
/// backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The whole response (prepare-OK, parameter and column definitions), sequence ids from 1.
    pub response: Vec<u8>,
    pub params: u16,
}

/// One statement of the registry.
#[derive(Debug)]
struct Entry {
    sql: StmtSql,
    /// Session statements naming it.
    users: usize,
    /// Its prepare response, per EOF mode (index 1: CLIENT_DEPRECATE_EOF).
    cached: [Option<Cached>; 2],
}

/// The worker's statements by key, with their prepare responses.
#[derive(Debug, Default)]
pub struct Statements {
    keys: HashMap<StmtSql, u64>,
    entries: HashMap<u64, Entry>,
    next: u64,
}

impl Statements {
    /// The key of `sql` prepared by a session in `state` that logged in with `charset` (a new
    /// one the first time), held once more (see [`Statements::release`]).
    pub fn acquire(&mut self, sql: &[u8], state: &SessionState, charset: u8) -> u64 {
        let s = StmtSql {
            sql: sql.to_vec(),
            schema: state.schema.clone(),
            charset,
            parse_vars: state.parse_vars(),
        };
        let key = match self.keys.get(&s) {
            Some(k) => *k,
            None => self.insert(s),
        };
        if let Some(e) = self.entries.get_mut(&key) {
            e.users += 1;
        }
        key
    }

    fn insert(&mut self, sql: StmtSql) -> u64 {
        if self.entries.len() >= KEEP_UNUSED {
            self.forget_unused();
        }
        self.next += 1;
        self.keys.insert(sql.clone(), self.next);
        let entry = Entry {
            sql,
            users: 0,
            cached: [None, None],
        };
        self.entries.insert(self.next, entry);
        self.next
    }

    /// A session statement naming `key` is gone.
    pub fn release(&mut self, key: u64) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.users = e.users.saturating_sub(1);
        }
    }

    fn forget_unused(&mut self) {
        let keys = &mut self.keys;
        self.entries.retain(|_, e| {
            let keep = e.users > 0;
            if !keep {
                keys.remove(&e.sql);
            }
            keep
        });
    }

    pub fn get(&self, key: u64) -> Option<&StmtSql> {
        self.entries.get(&key).map(|e| &e.sql)
    }

    /// The cached prepare response of `key` for a client with(out) CLIENT_DEPRECATE_EOF.
    pub fn cached(&self, key: u64, deprecate_eof: bool) -> Option<&Cached> {
        self.entries.get(&key)?.cached[usize::from(deprecate_eof)].as_ref()
    }

    pub fn cache(&mut self, key: u64, deprecate_eof: bool, c: Cached) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.cached[usize::from(deprecate_eof)] = Some(c);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A statement of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStmt {
    pub key: u64,
    pub params: u16,
    /// The parameter types last sent (2 bytes each), resent with every EXECUTE.
    pub types: Option<Vec<u8>>,
    /// An EXECUTE opened a cursor on it (the session keeps its connection until CLOSE/RESET).
    pub cursor: bool,
    /// SEND_LONG_DATA went to it since its last EXECUTE.
    pub long_data: bool,
}

/// The statement id of a command that names one (payload bytes 1..5).
pub fn stmt_id(payload: &[u8]) -> Option<u32> {
    let b = payload.get(1..5)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The same command naming statement `id`.
pub fn with_stmt_id(payload: &[u8], id: u32) -> Vec<u8> {
    let mut p = payload.to_vec();
    if p.len() >= 5 {
        p[1..5].copy_from_slice(&id.to_le_bytes());
    }
    p
}

/// Whether an EXECUTE asks for a cursor.
pub fn opens_cursor(payload: &[u8]) -> bool {
    payload.get(5).is_some_and(|f| f & 0x07 != 0)
}

/// An EXECUTE for server statement `id` that carries parameter types: the client's own
/// (remembered in `stmt`), or the remembered ones added when the client left them out.
pub fn rewrite_execute(payload: &[u8], id: u32, stmt: &mut SessionStmt) -> Vec<u8> {
    let mut p = with_stmt_id(payload, id);
    let n = usize::from(stmt.params);
    if n == 0 {
        return p;
    }
    // code, id (4), flags, iteration count (4), NULL bitmap, new-params-bound flag.
    let bound_at = 10 + n.div_ceil(8);
    match p.get(bound_at) {
        Some(1) => {
            if let Some(t) = p.get(bound_at + 1..bound_at + 1 + 2 * n) {
                stmt.types = Some(t.to_vec());
            }
        }
        Some(0) => {
            if let Some(t) = &stmt.types {
                p[bound_at] = 1;
                p.splice(bound_at + 1..bound_at + 1, t.iter().copied());
            }
        }
        _ => {}
    }
    p
}

/// The server statement id and parameter count of a prepare-OK payload.
pub fn prepare_ok(payload: &[u8]) -> Option<(u32, u16)> {
    if payload.first() != Some(&OK_HEADER) || payload.len() < 12 {
        return None;
    }
    let id = stmt_id(payload)?;
    let params = u16::from_le_bytes([payload[7], payload[8]]);
    Some((id, params))
}

/// A COM_STMT_CLOSE packet for server statement `id`.
pub fn close_packet(id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    crate::protocol::framing::write_packet(
        &mut out,
        0,
        &[&[COM_STMT_CLOSE][..], &id.to_le_bytes()].concat(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(params: u16) -> SessionStmt {
        SessionStmt {
            key: 1,
            params,
            types: None,
            cursor: false,
            long_data: false,
        }
    }

    fn in_schema(schema: Option<&str>) -> SessionState {
        SessionState {
            schema: schema.map(|s| s.as_bytes().to_vec()),
            ..SessionState::default()
        }
    }

    #[test]
    fn keys_are_shared_by_sql_schema_and_parse_state() {
        let mut s = Statements::default();
        let db = in_schema(Some("db"));
        let a = s.acquire(b"SELECT ?", &db, 45);
        assert_eq!(s.acquire(b"SELECT ?", &db, 45), a);
        assert_ne!(s.acquire(b"SELECT ?", &in_schema(None), 45), a);
        assert_ne!(
            s.acquire(b"SELECT ?", &db, 8),
            a,
            "another login character set"
        );
        let mut latin1 = db.clone();
        latin1.set_var(b"character_set_connection", b"latin1");
        latin1.set_var(b"time_zone", b"+01:00");
        let b = s.acquire(b"SELECT ?", &latin1, 45);
        assert_ne!(b, a, "another connection character set");
        let mut tz = latin1.clone();
        tz.set_var(b"time_zone", b"+02:00");
        assert_eq!(
            s.acquire(b"SELECT ?", &tz, 45),
            b,
            "the time zone is not parse state"
        );
        assert_eq!(s.get(a).unwrap().schema.as_deref(), Some(&b"db"[..]));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn unused_statements_are_forgotten_past_the_bound() {
        let mut s = Statements::default();
        let held = s.acquire(b"SELECT 0", &in_schema(None), 0);
        for i in 1..=KEEP_UNUSED {
            let k = s.acquire(format!("SELECT {i}").as_bytes(), &in_schema(None), 0);
            s.release(k);
        }
        assert!(s.len() <= KEEP_UNUSED + 1);
        let c = Cached {
            response: vec![1],
            params: 0,
        };
        s.cache(held, true, c.clone());
        assert_eq!(s.cached(held, true), Some(&c));
        assert_eq!(s.cached(held, false), None);
        // The held statement survived the forgetting.
        assert_eq!(s.get(held).unwrap().sql, b"SELECT 0");
    }

    #[test]
    fn an_execute_gets_the_server_id_and_remembered_types() {
        let mut st = stmt(2);
        // code, id 9, flags 0, iterations 1, bitmap 0, bound 1, types (LONG, STRING), values.
        let first = [
            &[0x17, 9, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 0, 0xfe, 0][..],
            &[5, 0, 0, 0, 1, b'x'],
        ]
        .concat();
        let out = rewrite_execute(&first, 77, &mut st);
        assert_eq!(stmt_id(&out), Some(77));
        assert_eq!(st.types.as_deref(), Some(&[3, 0, 0xfe, 0][..]));
        let again = [
            &[0x17, 9, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0][..],
            &[6, 0, 0, 0, 1, b'y'],
        ]
        .concat();
        let out = rewrite_execute(&again, 78, &mut st);
        let want = [
            &[0x17, 78, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 0, 0xfe, 0][..],
            &[6, 0, 0, 0, 1, b'y'],
        ]
        .concat();
        assert_eq!(out, want);
    }

    #[test]
    fn a_statement_without_parameters_only_gets_its_id() {
        let mut st = stmt(0);
        let out = rewrite_execute(&[0x17, 1, 0, 0, 0, 1, 1, 0, 0, 0], 5, &mut st);
        assert_eq!(out, [0x17, 5, 0, 0, 0, 1, 1, 0, 0, 0]);
        assert!(opens_cursor(&out));
    }

    #[test]
    fn prepare_ok_gives_id_and_parameters() {
        let p = [0, 4, 0, 0, 0, 2, 0, 3, 0, 0, 0, 0];
        assert_eq!(prepare_ok(&p), Some((4, 3)));
        assert_eq!(prepare_ok(&[0xff, 1, 2]), None);
        assert_eq!(close_packet(4), [5, 0, 0, 0, 0x19, 4, 0, 0, 0]);
    }
}
