//! The state a MySQL session keeps on its server connection, as a pooling proxy must know it to
//! move the session between connections: the default schema, the session system variables it
//! changed (character set and collation, autocommit, sql_mode, time_zone, isolation level,
//! read-only, any other), its user variables (with their types), and the last insert id. A
//! [`SessionState`] is kept for each pooled session (what it should see) and for each pooled
//! connection (what it has); [`SessionState::replay_from`] gives the statements that turn the
//! second into the first.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The type a user variable has on the server (it matters: `@a + 1` on '1' and on 1 differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarType {
    Integer,
    Decimal,
    Double,
    /// A string (and anything else), replayed as a hexadecimal literal with its character set.
    Text,
}

/// A user variable's value as read back from the server; `None` is SQL NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserVar {
    /// The value (a string's exact bytes in its own character set).
    pub value: Option<Vec<u8>>,
    pub ty: VarType,
    /// A string's character set and collation (what CHARSET() and COLLATION() give).
    pub charset: Option<(Vec<u8>, Vec<u8>)>,
}

/// Session state that lives on the server side of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The default schema (`USE`, COM_INIT_DB, the login's database).
    pub schema: Option<Vec<u8>>,
    /// Session system variables, by name, with the value the server reported for them. Shared
    /// until changed: the sessions that start from a connection's state (all of them, with a
    /// server that reports its variables at login) hold one copy, not one each.
    pub vars: Arc<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// User variables, by name (without `@`).
    pub user_vars: BTreeMap<Vec<u8>, UserVar>,
    /// LAST_INSERT_ID() of the session.
    pub last_insert_id: u64,
}

/// What to run on a connection to give it a session's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// COM_INIT_DB with this schema, first.
    pub schema: Option<Vec<u8>>,
    /// Then these COM_QUERY statements, in order (one SET with every variable, and a
    /// `DO LAST_INSERT_ID(n)` when asked).
    pub queries: Vec<Vec<u8>>,
}

impl Replay {
    pub fn is_empty(&self) -> bool {
        self.schema.is_none() && self.queries.is_empty()
    }
}

impl SessionState {
    /// Records a system variable change the server reported.
    pub fn set_var(&mut self, name: &[u8], value: &[u8]) {
        let name = name.to_ascii_lowercase();
        if self.vars.get(&name).map(Vec::as_slice) != Some(value) {
            Arc::make_mut(&mut self.vars).insert(name, value.to_vec());
        }
    }

    /// Whether autocommit was switched off (every statement then opens a transaction).
    pub fn autocommit_off(&self) -> bool {
        self.vars
            .get(&b"autocommit"[..])
            .is_some_and(|v| v.eq_ignore_ascii_case(b"OFF") || v.as_slice() == b"0")
    }

    /// A number that differs between states that differ (for choosing a connection already in
    /// a session's state).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.schema.hash(&mut h);
        self.vars.hash(&mut h);
        for (k, v) in &self.user_vars {
            k.hash(&mut h);
            v.value.hash(&mut h);
            (v.ty as u8).hash(&mut h);
        }
        self.last_insert_id.hash(&mut h);
        h.finish()
    }

    /// Whether a statement that names no user variable and reads no LAST_INSERT_ID() sees the
    /// same session on a connection in state `other`: the schema and the system variables are
    /// equal (user variables may differ: it does not read them).
    pub fn same_for_reads(&self, other: &SessionState) -> bool {
        self.schema == other.schema
            && (Arc::ptr_eq(&self.vars, &other.vars) || self.vars == other.vars)
    }

    /// Takes what a statement run on a connection in state `conn` may have changed there
    /// without naming a user variable: the schema and the system variables.
    pub fn take_reads_from(&mut self, conn: &SessionState) {
        self.schema.clone_from(&conn.schema);
        self.vars = Arc::clone(&conn.vars);
    }

    /// What turns a connection in state `actual` into one in this state. With `last_insert_id`,
    /// LAST_INSERT_ID() is set too (only worth it before a statement that reads it).
    pub fn replay_from(&self, actual: &SessionState, last_insert_id: bool) -> Replay {
        let mut sets: Vec<Vec<u8>> = Vec::new();
        for (name, value) in self.vars.iter() {
            if actual.vars.get(name) != Some(value) {
                sets.push(set_session(name, Some(value)));
            }
        }
        for name in actual.vars.keys() {
            if !self.vars.contains_key(name) {
                sets.push(set_session(name, None));
            }
        }
        let charset = self.charset();
        for (name, var) in &self.user_vars {
            if actual.user_vars.get(name) != Some(var) {
                sets.push(set_user_var(name, Some(var), charset));
            }
        }
        for name in actual.user_vars.keys() {
            if !self.user_vars.contains_key(name) {
                sets.push(set_user_var(name, None, charset));
            }
        }
        let mut queries = Vec::new();
        if !sets.is_empty() {
            queries.push([&b"SET "[..], &sets.join(&b", "[..])].concat());
        }
        if last_insert_id && self.last_insert_id != actual.last_insert_id {
            queries.push(format!("DO LAST_INSERT_ID({})", self.last_insert_id).into_bytes());
        }
        Replay {
            schema: (self.schema != actual.schema)
                .then(|| self.schema.clone())
                .flatten(),
            queries,
        }
    }

    /// The values of [`PARSE_VARS`] the session set (what a statement is parsed under).
    pub fn parse_vars(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        PARSE_VARS
            .iter()
            .filter_map(|n| Some((n.to_vec(), self.vars.get(*n)?.clone())))
            .collect()
    }

    /// The statements that put a connection in this state into parse state `vars` (as
    /// [`SessionState::parse_vars`] gives it) and back, when it is not there already.
    pub fn parse_detour(&self, vars: &[(Vec<u8>, Vec<u8>)]) -> Option<(Vec<u8>, Vec<u8>)> {
        let (mut there, mut back) = (Vec::new(), Vec::new());
        for name in PARSE_VARS {
            let want = vars
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice());
            let have = self.vars.get(name).map(Vec::as_slice);
            if want != have {
                there.push(set_session(name, want));
                back.push(set_session(name, have));
            }
        }
        let set = |sets: Vec<Vec<u8>>| [&b"SET "[..], &sets.join(&b", "[..])].concat();
        (!there.is_empty()).then(|| (set(there), set(back)))
    }

    /// The character set strings travel in on this session's connection.
    fn charset(&self) -> &[u8] {
        self.vars
            .get(&b"character_set_connection"[..])
            .map_or(b"utf8mb4", Vec::as_slice)
    }
}

/// The session variables that change how the server parses a statement's text (its literals'
/// character set and collation, quoting and operators).
pub const PARSE_VARS: [&[u8]; 4] = [
    b"character_set_client",
    b"character_set_connection",
    b"collation_connection",
    b"sql_mode",
];

/// `SESSION name = value` (or `= DEFAULT`): numbers unquoted, everything else a quoted string.
fn set_session(name: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut out = b"SESSION ".to_vec();
    out.extend_from_slice(&identifier(name));
    out.extend_from_slice(b" = ");
    match value {
        None => out.extend_from_slice(b"DEFAULT"),
        Some(v) if is_number(v) => out.extend_from_slice(v),
        Some(v) => quote_into(v, &mut out),
    }
    out
}

/// `@name = value` with the value typed as it was on the server (NULL for `None`); strings
/// as hexadecimal literals (no byte of them needs escaping) in their own character set and
/// collation, or else converted to `charset`.
fn set_user_var(name: &[u8], var: Option<&UserVar>, charset: &[u8]) -> Vec<u8> {
    let mut out = b"@".to_vec();
    out.extend_from_slice(&backquote(name));
    out.extend_from_slice(b" = ");
    match var.and_then(|v| v.value.as_ref().map(|x| (x, v.ty))) {
        None => out.extend_from_slice(b"NULL"),
        Some((v, VarType::Integer | VarType::Decimal)) if is_number(v) => out.extend_from_slice(v),
        Some((v, VarType::Double)) if is_number(v) => {
            // A double stays a double: the e-notation makes the literal approximate.
            out.extend_from_slice(v);
            if !v.iter().any(|&c| c == b'e' || c == b'E') {
                out.extend_from_slice(b"e0");
            }
        }
        Some((v, _)) => {
            let own = var.and_then(|v| v.charset.as_ref());
            match own {
                Some((cs, _)) if cs.as_slice() == b"binary" => hex_literal(v, &mut out),
                Some((cs, collation)) => {
                    converted(v, cs, &mut out);
                    out.extend_from_slice(b" COLLATE ");
                    out.extend_from_slice(&identifier(collation));
                }
                None => converted(v, charset, &mut out),
            }
        }
    }
    out
}

/// `CONVERT(X'…' USING charset)`.
fn converted(v: &[u8], charset: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"CONVERT(");
    hex_literal(v, out);
    out.extend_from_slice(b" USING ");
    out.extend_from_slice(&identifier(charset));
    out.push(b')');
}

/// `X'…'` (`X''` for the empty string).
fn hex_literal(v: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"X'");
    crate::protocol::hex::encode_upper_into(v, out);
    out.push(b'\'');
}

/// True for a plain decimal number: `-12`, `3.25`, `1e-5`.
fn is_number(v: &[u8]) -> bool {
    let s = match v.first() {
        Some(b'-' | b'+') => &v[1..],
        _ => v,
    };
    !s.is_empty()
        && s[0].is_ascii_digit()
        && s.iter()
            .all(|&c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+'))
}

/// A system variable name as an identifier: plain names as they are, others backquoted.
fn identifier(name: &[u8]) -> Vec<u8> {
    if !name.is_empty() && name.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_') {
        name.to_vec()
    } else {
        backquote(name)
    }
}

fn backquote(name: &[u8]) -> Vec<u8> {
    let mut out = vec![b'`'];
    for &c in name {
        if c == b'`' {
            out.push(b'`');
        }
        out.push(c);
    }
    out.push(b'`');
    out
}

/// Appends `v` as a single-quoted SQL string (quotes doubled, backslashes escaped).
fn quote_into(v: &[u8], out: &mut Vec<u8>) {
    out.push(b'\'');
    for &c in v {
        match c {
            b'\'' => out.extend_from_slice(b"''"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0 => out.extend_from_slice(b"\\0"),
            _ => out.push(c),
        }
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(vars: &[(&str, &str)]) -> SessionState {
        let mut s = SessionState::default();
        for (k, v) in vars {
            s.set_var(k.as_bytes(), v.as_bytes());
        }
        s
    }

    #[test]
    fn replay_sets_what_differs_and_resets_what_the_session_never_set() {
        let mut want = state(&[("time_zone", "+02:00"), ("autocommit", "OFF")]);
        want.schema = Some(b"app".to_vec());
        let have = state(&[("autocommit", "OFF"), ("sql_mode", "ANSI")]);
        let r = want.replay_from(&have, false);
        assert_eq!(r.schema.as_deref(), Some(&b"app"[..]));
        assert_eq!(
            r.queries,
            vec![b"SET SESSION time_zone = '+02:00', SESSION sql_mode = DEFAULT".to_vec()]
        );
        assert!(want.replay_from(&want.clone(), true).is_empty());
    }

    #[test]
    fn values_are_quoted_unless_numbers() {
        let want = state(&[
            ("wait_timeout", "100"),
            ("sql_mode", "it's"),
            ("x\\y", "a\\b"),
        ]);
        let r = want.replay_from(&SessionState::default(), false);
        assert_eq!(
            String::from_utf8(r.queries.concat()).unwrap(),
            "SET SESSION sql_mode = 'it''s', SESSION wait_timeout = 100, SESSION `x\\y` = 'a\\\\b'"
        );
    }

    #[test]
    fn user_variables_keep_their_types() {
        let mut want = SessionState::default();
        let var = |v: &str, ty| UserVar {
            value: Some(v.as_bytes().to_vec()),
            ty,
            charset: None,
        };
        want.user_vars
            .insert(b"i".to_vec(), var("42", VarType::Integer));
        want.user_vars
            .insert(b"d".to_vec(), var("1.5", VarType::Double));
        want.user_vars
            .insert(b"s".to_vec(), var("h'i", VarType::Text));
        want.user_vars.insert(
            b"n".to_vec(),
            UserVar {
                value: None,
                ty: VarType::Text,
                charset: None,
            },
        );
        let own = |v: &str, cs: &str, coll: &str| UserVar {
            charset: Some((cs.as_bytes().to_vec(), coll.as_bytes().to_vec())),
            ..var(v, VarType::Text)
        };
        want.user_vars
            .insert(b"l".to_vec(), own("\u{e9}", "latin1", "latin1_bin"));
        want.user_vars
            .insert(b"b".to_vec(), own("", "binary", "binary"));
        let mut have = SessionState::default();
        have.user_vars
            .insert(b"gone".to_vec(), var("1", VarType::Integer));
        let r = String::from_utf8(want.replay_from(&have, false).queries.concat()).unwrap();
        assert_eq!(
            r,
            "SET @`b` = X'', @`d` = 1.5e0, @`i` = 42, \
             @`l` = CONVERT(X'C3A9' USING latin1) COLLATE latin1_bin, @`n` = NULL, \
             @`s` = CONVERT(X'682769' USING utf8mb4), @`gone` = NULL"
        );
    }

    #[test]
    fn a_parse_detour_sets_what_differs_and_restores_it() {
        let conn = state(&[
            ("sql_mode", "ANSI_QUOTES"),
            ("character_set_client", "utf8mb4"),
        ]);
        let stmt = state(&[("character_set_client", "utf8mb4"), ("time_zone", "+01:00")]);
        assert_eq!(
            conn.parse_detour(&stmt.parse_vars()),
            Some((
                b"SET SESSION sql_mode = DEFAULT".to_vec(),
                b"SET SESSION sql_mode = 'ANSI_QUOTES'".to_vec()
            ))
        );
        assert_eq!(conn.parse_detour(&conn.parse_vars()), None);
    }

    #[test]
    fn last_insert_id_only_when_asked() {
        let want = SessionState {
            last_insert_id: 7,
            ..SessionState::default()
        };
        let have = SessionState::default();
        assert!(want.replay_from(&have, false).is_empty());
        assert_eq!(
            want.replay_from(&have, true).queries,
            vec![b"DO LAST_INSERT_ID(7)".to_vec()]
        );
        assert!(state(&[("autocommit", "OFF")]).autocommit_off());
        assert!(!state(&[("autocommit", "ON")]).autocommit_off());
    }
}
