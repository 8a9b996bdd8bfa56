//! A small SQL statement classifier (not a parser) over the bytes of COM_QUERY text, for the
//! pooled mode: it tells, for a statement, whether it changes session state that must be replayed
//! on another backend connection, or must pin the session to its connection.
//!
//! Owns two layers:
//! - [`Lexer`]: tokens of MySQL/MariaDB SQL text. Whitespace and comments (`-- `, `#`, `/* */`)
//!   are skipped, except that the contents of executable comments (`/*!50001 ... */`,
//!   `/*M!100100 ... */`) are read as code whatever the version; strings (`'...'`, `"..."`, with
//!   backslash and doubled-quote escapes), backtick identifiers, user variables (`@a`, `@'a'`),
//!   system variables (`@@session.x`) and `:=` are single tokens.
//! - [`classify`] and [`user_vars_written`]: one pass over the tokens that finds the statement
//!   kind and the flags in [`Statement`].
//!
//! It errs on the side of reporting: when unsure (bad SQL, an unusual compound statement) a flag
//! may be set that a server would not act on, never the other way round for the common forms.
//! Known limits: the contents of executable comments count even when the server's version would
//! skip them; the `;` inside stored-program bodies (`CREATE PROCEDURE ... BEGIN ... END`,
//! `BEGIN NOT ATOMIC ... END`, MariaDB's top-level `IF`/`LOOP`/...) do not make a multi-statement
//! while the BEGIN/END nesting balances, and when it does not the text is split at every `;`;
//! statements inside a stored program's body (which run later, not now) raise no flag, while those
//! of an anonymous compound statement do (a `SET x = ...` of a local variable counts as a system
//! variable there). User variable names are returned as written (the server compares them
//! case-insensitively).

use std::borrow::Cow;

// ------------------------------------------------------------------------------------- tokens

/// One token of SQL text. Slices borrow from the text; quoted forms are raw (escapes not undone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted identifier, keyword or number: ASCII letters and digits, `_`, `$`, bytes >= 0x80.
    Word(&'a [u8]),
    /// A backtick-quoted identifier, without the backticks.
    Ident(&'a [u8]),
    /// A string literal without its quotes; `quote` is `'` or `"`.
    Str { raw: &'a [u8], quote: u8 },
    /// `@name`, `@'name'`, `@"name"` or `` @`name` ``: the name without `@` and quotes; `quote` is
    /// the quote byte, 0 when unquoted. Also the host part of an account (`'u'@'h'`).
    UserVar { raw: &'a [u8], quote: u8 },
    /// `@@name`, `@@session.name`, `@@global.name`...: the text after `@@`.
    SysVar(&'a [u8]),
    /// `:=`
    Assign,
    /// Any other byte: operators, `;`, `,`, `(`, `)`, `=`, `.`, a lone `@`...
    Punct(u8),
}

/// A token and the byte range `start..end` it covers in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spanned<'a> {
    pub token: Token<'a>,
    pub start: usize,
    pub end: usize,
}

/// The tokenizer: an iterator of [`Spanned`] tokens. Never panics, always advances, and an
/// unterminated string or comment simply runs to the end of the text.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    /// Inside an executable comment, whose `*/` is skipped.
    in_exec: bool,
    backslash: bool,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Lexer<'a> {
    /// A lexer with backslash escapes in strings (the default SQL mode).
    pub fn new(sql: &'a [u8]) -> Self {
        Self::with_escapes(sql, true)
    }

    /// `backslash_escapes` false for sessions in NO_BACKSLASH_ESCAPES mode (the server reports it
    /// with the SERVER_STATUS_NO_BACKSLASH_ESCAPES status flag).
    pub fn with_escapes(sql: &'a [u8], backslash_escapes: bool) -> Self {
        Lexer {
            sql,
            pos: 0,
            in_exec: false,
            backslash: backslash_escapes,
        }
    }

    fn byte(&self, ahead: usize) -> Option<u8> {
        self.sql.get(self.pos.checked_add(ahead)?).copied()
    }

    /// Skips whitespace and comments up to the next token (or the end).
    fn skip_trivia(&mut self) {
        while self.skip_one() {}
    }

    fn skip_one(&mut self) -> bool {
        let Some(b) = self.byte(0) else { return false };
        match (b, self.byte(1)) {
            (b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c, _) => self.pos += 1,
            (b'#', _) => self.skip_line(),
            (b'-', Some(b'-')) if self.byte(2).is_none_or(|c| c <= b' ') => self.skip_line(),
            (b'/', Some(b'*')) => self.open_comment(),
            (b'*', Some(b'/')) if self.in_exec => {
                self.pos += 2;
                self.in_exec = false;
            }
            _ => return false,
        }
        true
    }

    fn skip_line(&mut self) {
        let rest = self.sql.get(self.pos..).unwrap_or(&[]);
        self.pos += rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
    }

    /// At `/*`: an executable comment is entered (its version number skipped), any other comment
    /// is skipped whole.
    fn open_comment(&mut self) {
        let marker = match (self.byte(2), self.byte(3)) {
            (Some(b'!'), _) => 3,
            (Some(b'M'), Some(b'!')) => 4,
            _ => 0,
        };
        if marker == 0 {
            let rest = self.sql.get(self.pos + 2..).unwrap_or(&[]);
            let close = rest.windows(2).position(|w| w == b"*/");
            self.pos += 2 + close.map_or(rest.len(), |i| i + 2);
            return;
        }
        self.pos += marker;
        let digits = (0..6).take_while(|&i| self.byte(i).is_some_and(|b| b.is_ascii_digit()));
        let n = digits.count();
        if n >= 5 {
            self.pos += n;
        }
        self.in_exec = true;
    }

    /// At an opening quote `q`: the raw contents up to the closing quote, which is consumed.
    fn quoted(&mut self, q: u8) -> &'a [u8] {
        self.pos += 1;
        let start = self.pos;
        while let Some(c) = self.byte(0) {
            if c == b'\\' && self.backslash && q != b'`' {
                self.pos = (self.pos + 2).min(self.sql.len());
            } else if c == q && self.byte(1) == Some(q) {
                self.pos += 2;
            } else if c == q {
                let raw = &self.sql[start..self.pos];
                self.pos += 1;
                return raw;
            } else {
                self.pos += 1;
            }
        }
        &self.sql[start..]
    }

    fn word(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.byte(0).is_some_and(is_word) {
            self.pos += 1;
        }
        &self.sql[start..self.pos]
    }

    /// At `@`: a system variable, a (quoted) user variable, or a lone `@`.
    fn at(&mut self) -> Token<'a> {
        match self.byte(1) {
            Some(b'@') => {
                self.pos += 2;
                Token::SysVar(self.dotted_name())
            }
            Some(q @ (b'\'' | b'"' | b'`')) => {
                self.pos += 1;
                Token::UserVar {
                    raw: self.quoted(q),
                    quote: q,
                }
            }
            Some(b) if is_word(b) || b == b'.' => {
                self.pos += 1;
                Token::UserVar {
                    raw: self.dotted_name(),
                    quote: 0,
                }
            }
            _ => {
                self.pos += 1;
                Token::Punct(b'@')
            }
        }
    }

    /// Word bytes, dots and backtick-quoted parts (`session.x`, `` a.`b` ``), as one slice.
    fn dotted_name(&mut self) -> &'a [u8] {
        let start = self.pos;
        loop {
            match self.byte(0) {
                Some(b) if is_word(b) || b == b'.' => self.pos += 1,
                Some(b'`') => {
                    self.quoted(b'`');
                }
                _ => return &self.sql[start..self.pos],
            }
        }
    }

    fn token(&mut self, b: u8) -> Token<'a> {
        match b {
            b'\'' | b'"' => Token::Str {
                raw: self.quoted(b),
                quote: b,
            },
            b'`' => Token::Ident(self.quoted(b)),
            b'@' => self.at(),
            b':' if self.byte(1) == Some(b'=') => {
                self.pos += 2;
                Token::Assign
            }
            _ if is_word(b) => Token::Word(self.word()),
            _ => {
                self.pos += 1;
                Token::Punct(b)
            }
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Spanned<'a>;

    fn next(&mut self) -> Option<Spanned<'a>> {
        self.skip_trivia();
        let b = self.byte(0)?;
        let start = self.pos;
        let token = self.token(b);
        Some(Spanned {
            token,
            start,
            end: self.pos,
        })
    }
}

/// The text of a quoted name or string with its escapes undone (doubled quotes; and backslash
/// escapes when `backslash` and the quote is not a backtick). Borrowed when there is nothing to
/// undo.
pub fn unquote(raw: &[u8], quote: u8, backslash: bool) -> Cow<'_, [u8]> {
    let escapes = backslash && quote != b'`' && quote != 0;
    let special = |b: u8| (quote != 0 && b == quote) || (escapes && b == b'\\');
    if !raw.iter().any(|&b| special(b)) {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'\\' && escapes {
            if let Some(&n) = raw.get(i + 1) {
                push_escaped(&mut out, n);
            }
            i += 2;
        } else {
            out.push(b);
            // A quote inside the raw text is always doubled.
            i += if b == quote { 2 } else { 1 };
        }
    }
    Cow::Owned(out)
}

/// MySQL's backslash escapes; `\%` and `\_` keep their backslash, unknown ones drop it.
fn push_escaped(out: &mut Vec<u8>, n: u8) {
    match n {
        b'0' => out.push(0),
        b'b' => out.push(8),
        b'n' => out.push(b'\n'),
        b'r' => out.push(b'\r'),
        b't' => out.push(b'\t'),
        b'Z' => out.push(26),
        b'%' | b'_' => out.extend_from_slice(&[b'\\', n]),
        _ => out.push(n),
    }
}

// ------------------------------------------------------------------------------- statements

/// What a statement starts with (the first statement when there are several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Nothing but whitespace, comments and `;`.
    #[default]
    Empty,
    /// SELECT, and TABLE / VALUES / `WITH ... SELECT` / a parenthesised SELECT.
    Select,
    Insert,
    Update,
    Delete,
    Replace,
    /// SET (all forms, including SET TRANSACTION and SET NAMES).
    Set,
    Use,
    /// BEGIN [WORK] or START TRANSACTION.
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    Lock,
    Unlock,
    Prepare,
    Execute,
    /// DEALLOCATE PREPARE and DROP PREPARE.
    Deallocate,
    Create,
    Drop,
    Alter,
    Call,
    Load,
    Show,
    Do,
    Handler,
    Flush,
    Kill,
    Xa,
    /// An anonymous compound statement: BEGIN NOT ATOMIC, or MariaDB's top-level IF, CASE, LOOP,
    /// WHILE, REPEAT, FOR or a labelled block.
    Compound,
    Other,
}

/// What the pooling proxy needs to know about a COM_QUERY text. Flags cover every statement of a
/// multi-statement text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Statement<'a> {
    pub kind: Kind,
    /// More than one statement, separated by `;` outside strings and comments (a trailing `;` and
    /// the `;` inside a stored-program or compound body do not count).
    pub multi_statement: bool,
    /// LOCK TABLE[S] ...
    pub lock_tables: bool,
    /// UNLOCK TABLE[S]
    pub unlock_tables: bool,
    /// FLUSH TABLES ... WITH READ LOCK, or FLUSH TABLES ... FOR EXPORT (also held until UNLOCK
    /// TABLES).
    pub flush_with_read_lock: bool,
    /// A call of GET_LOCK, RELEASE_LOCK, RELEASE_ALL_LOCKS, IS_USED_LOCK or IS_FREE_LOCK.
    pub get_lock: bool,
    /// CREATE [OR REPLACE] TEMPORARY ... or DROP TEMPORARY ...
    pub temporary_table: bool,
    /// SQL_CALC_FOUND_ROWS
    pub calc_found_rows: bool,
    /// A FOUND_ROWS() call.
    pub found_rows: bool,
    /// A LAST_INSERT_ID() call, or @@identity / @@last_insert_id.
    pub last_insert_id: bool,
    /// PREPARE, EXECUTE (also EXECUTE IMMEDIATE), DEALLOCATE / DROP PREPARE.
    pub text_prepare: bool,
    /// LOAD DATA or LOAD XML.
    pub load_data: bool,
    /// Starts a transaction: BEGIN [WORK], START TRANSACTION, XA START / XA BEGIN.
    pub transaction: bool,
    /// A user variable is assigned (see [`user_vars_written`]).
    pub user_var_write: bool,
    /// A user variable is used other than as an assignment target.
    pub user_var_read: bool,
    /// A SET statement assigns something other than user variables (system variables in any
    /// scope, NAMES, CHARACTER SET, TRANSACTION, PASSWORD, ROLE...). Not MariaDB's
    /// `SET STATEMENT ... FOR`, which lasts one statement.
    pub sets_system_vars: bool,
    /// SET [SESSION|LOCAL] autocommit / @@[session.|local.]autocommit to 0, OFF or FALSE.
    pub autocommit_off: bool,
    /// The schema of a `USE db` statement, unquoted (the last one of a multi-statement).
    pub use_db: Option<Cow<'a, [u8]>>,
}

/// Classify `sql` (session with backslash escapes, the default SQL mode).
pub fn classify(sql: &[u8]) -> Statement<'_> {
    classify_with(sql, true)
}

/// Classify `sql`; `backslash_escapes` false for sessions in NO_BACKSLASH_ESCAPES mode.
pub fn classify_with(sql: &[u8], backslash_escapes: bool) -> Statement<'_> {
    let mut a = Analyzer::new(sql, backslash_escapes, false);
    while let Some(t) = a.lex.next() {
        a.step(t);
    }
    a.finish()
}

/// Words that make a SELECT unfit to share a connection with other sessions' queries: it
/// writes somewhere (INTO a file or variables), locks rows (and may wait for them), waits on
/// purpose, or moves a sequence.
const NOT_PIPELINED: &[&[u8]] = &[
    b"INTO",
    b"UPDATE",
    b"SHARE",
    b"LOCK",
    b"SLEEP",
    b"BENCHMARK",
    b"NEXTVAL",
    b"LASTVAL",
    b"SETVAL",
    b"NEXT",
    b"PREVIOUS",
    b"ROW_COUNT",
    b"CONNECTION_ID",
];

/// For a statement that may be pipelined with other sessions' queries on one connection — a
/// single plain SELECT that neither reads nor changes session state (no variables assigned, no
/// locks, no FOUND_ROWS / LAST_INSERT_ID / ROW_COUNT, no transaction, no INTO, no FOR UPDATE or
/// SHARE, no SLEEP, no sequence) — the hash of its shape (its tokens with literals left out), so
/// statements that differ only in their literals share one entry of the proxy's latency record.
/// `None` for every other statement.
pub fn pipeline_shape(sql: &[u8]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let c = classify(sql);
    let changes = c.multi_statement
        || c.lock_tables
        || c.flush_with_read_lock
        || c.get_lock
        || c.temporary_table
        || c.calc_found_rows
        || c.found_rows
        || c.last_insert_id
        || c.text_prepare
        || c.load_data
        || c.transaction
        || c.user_var_write
        || c.sets_system_vars;
    if c.kind != Kind::Select || changes {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in Lexer::new(sql) {
        match t.token {
            Token::Word(_) if is_kw_in(Some(t.token), NOT_PIPELINED) => return None,
            Token::Word(w) if w.first().is_some_and(u8::is_ascii_digit) => b'?'.hash(&mut h),
            Token::Word(w) => w.to_ascii_uppercase().hash(&mut h),
            Token::Str { .. } => b'?'.hash(&mut h),
            Token::Ident(w) | Token::SysVar(w) => w.hash(&mut h),
            Token::UserVar { .. } => return None,
            Token::Assign => return None,
            Token::Punct(p) => p.hash(&mut h),
        }
    }
    Some(h.finish())
}

/// The names (without `@`, unquoted) of the user variables `sql` assigns, in order and possibly
/// repeated: `SET @a = ...`, `@a := ...` anywhere, `SELECT ... INTO @a, @b`,
/// `GET DIAGNOSTICS @a = ...`, and (as they may be written) user variables passed bare as CALL
/// arguments (OUT parameters), in `EXECUTE ... USING` (OUT parameters of a prepared CALL) and in
/// the column list of LOAD DATA / LOAD XML. Those arguments also count as reads.
/// A table name as written: `name` or `schema.name` (quotes off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<Vec<u8>>,
    pub name: Vec<u8>,
}

/// What a statement does to temporary tables, when the proxy can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TempTables {
    /// `CREATE [OR REPLACE] TEMPORARY TABLE [IF NOT EXISTS] t …`
    Create(TableName),
    /// `DROP [TEMPORARY] TABLE[S] [IF EXISTS] a, b …` (a plain DROP TABLE drops a temporary table
    /// of that name first).
    Drop(Vec<TableName>),
}

/// The temporary-table change of a single CREATE TEMPORARY TABLE or DROP TABLE statement;
/// `None` for anything else (or a form the proxy does not read).
pub fn temp_tables(sql: &[u8], backslash_escapes: bool) -> Option<TempTables> {
    let toks: Vec<Token<'_>> = Lexer::with_escapes(sql, backslash_escapes)
        .map(|s| s.token)
        .collect();
    let mut end = toks.len();
    while end > 0 && toks[end - 1] == Token::Punct(b';') {
        end -= 1;
    }
    let toks = &toks[..end];
    if toks.contains(&Token::Punct(b';')) {
        return None;
    }
    let mut i = 0;
    let mut kw = |words: &[&[u8]]| {
        let hit = is_kw_in(toks.get(i).copied(), words);
        i += usize::from(hit);
        hit
    };
    if kw(&[b"CREATE"]) {
        if kw(&[b"OR"]) && !kw(&[b"REPLACE"]) {
            return None;
        }
        if !(kw(&[b"TEMPORARY"]) && kw(&[b"TABLE"])) {
            return None;
        }
        if kw(&[b"IF"]) && !(kw(&[b"NOT"]) && kw(&[b"EXISTS"])) {
            return None;
        }
        return table_name(toks, &mut i).map(TempTables::Create);
    }
    if !kw(&[b"DROP"]) {
        return None;
    }
    kw(&[b"TEMPORARY"]);
    if !kw(&[b"TABLE", b"TABLES"]) {
        return None;
    }
    if kw(&[b"IF"]) && !kw(&[b"EXISTS"]) {
        return None;
    }
    let mut names = vec![table_name(toks, &mut i)?];
    while toks.get(i) == Some(&Token::Punct(b',')) {
        i += 1;
        names.push(table_name(toks, &mut i)?);
    }
    let tail_ok = toks.len() == i
        || (toks.len() == i + 1 && is_kw_in(toks.get(i).copied(), &[b"RESTRICT", b"CASCADE"]));
    tail_ok.then_some(TempTables::Drop(names))
}

/// `name` or `schema.name` at `toks[*i]` (words or backquoted identifiers).
fn table_name(toks: &[Token<'_>], i: &mut usize) -> Option<TableName> {
    let part = |t: Option<&Token<'_>>| match t {
        Some(Token::Word(w) | Token::Ident(w)) => Some(w.to_vec()),
        _ => None,
    };
    let first = part(toks.get(*i))?;
    if toks.get(*i + 1) == Some(&Token::Punct(b'.')) {
        let name = part(toks.get(*i + 2))?;
        *i += 3;
        return Some(TableName {
            schema: Some(first),
            name,
        });
    }
    *i += 1;
    Some(TableName {
        schema: None,
        name: first,
    })
}

/// A call of a user-level lock function, with its lock name when that is a string literal (as
/// written, quotes off, escapes kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockCall {
    Get(Option<Vec<u8>>),
    Release(Option<Vec<u8>>),
    ReleaseAll,
}

/// The GET_LOCK, RELEASE_LOCK and RELEASE_ALL_LOCKS calls of `sql`, in order. Releases are only
/// reported for a single statement that starts with SELECT or DO (a release in, say, the body of
/// a procedure being created runs later, or never).
pub fn user_lock_calls(sql: &[u8], backslash_escapes: bool) -> Vec<LockCall> {
    let toks: Vec<Token<'_>> = Lexer::with_escapes(sql, backslash_escapes)
        .map(|s| s.token)
        .collect();
    let body = toks.iter().rev().skip_while(|t| **t == Token::Punct(b';'));
    let single = !body.clone().any(|t| *t == Token::Punct(b';'));
    let runs = single && is_kw_in(toks.first().copied(), &[b"SELECT", b"DO"]);
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let Token::Word(w) = *t else { continue };
        let called = toks.get(i + 1) == Some(&Token::Punct(b'('))
            && (i == 0 || toks[i - 1] != Token::Punct(b'.'));
        if !called {
            continue;
        }
        let name = match (toks.get(i + 2), toks.get(i + 3)) {
            (Some(Token::Str { raw, .. }), Some(Token::Punct(b',' | b')'))) => Some(raw.to_vec()),
            _ => None,
        };
        let mut buf = [0u8; 20];
        match upper(w, &mut buf) {
            b"GET_LOCK" => out.push(LockCall::Get(name)),
            b"RELEASE_LOCK" if runs => out.push(LockCall::Release(name)),
            b"RELEASE_ALL_LOCKS" if runs => out.push(LockCall::ReleaseAll),
            _ => {}
        }
    }
    out
}

pub fn user_vars_written(sql: &[u8]) -> UserVarsWritten<'_> {
    user_vars_written_with(sql, true)
}

/// [`user_vars_written`] for a session with or without backslash escapes.
pub fn user_vars_written_with(sql: &[u8], backslash_escapes: bool) -> UserVarsWritten<'_> {
    UserVarsWritten {
        a: Analyzer::new(sql, backslash_escapes, true),
    }
}

/// Iterator returned by [`user_vars_written`].
pub struct UserVarsWritten<'a> {
    a: Analyzer<'a>,
}

impl<'a> Iterator for UserVarsWritten<'a> {
    type Item = Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Cow<'a, [u8]>> {
        while let Some(t) = self.a.lex.next() {
            if let Some(name) = self.a.step(t) {
                return Some(name);
            }
        }
        None
    }
}

// --------------------------------------------------------------------------------- analysis

/// What the tokens after the head keyword of the current statement mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    /// The assignment list of SET.
    SetItems,
    /// MariaDB's `SET STATEMENT var = value, ... FOR`: up to the FOR.
    SetStatementHead,
    /// `WITH ...` up to the main verb.
    WithHead,
    /// GET DIAGNOSTICS: `@a = ...` assigns.
    Diagnostics,
}

#[derive(Debug, Clone, Copy)]
enum Flag {
    LockTables,
    UnlockTables,
    FlushWithReadLock,
    GetLock,
    TemporaryTable,
    CalcFoundRows,
    FoundRows,
    LastInsertId,
    TextPrepare,
    LoadData,
    Transaction,
    UserVarWrite,
    UserVarRead,
    SetsSystemVars,
    AutocommitOff,
}

/// BEGIN ... END nesting (stored-program bodies, compound statements, CASE expressions).
#[derive(Debug, Default)]
struct Blocks {
    depth: u32,
    /// Bit i set: the block at depth i is a CASE expression (the first 128 levels).
    exprs: u128,
    /// Open statement blocks (not CASE expressions).
    stmt: u32,
    /// An END without a block, or nesting too deep to follow.
    unbalanced: bool,
}

impl Blocks {
    fn open(&mut self, expr: bool) {
        match 1u128.checked_shl(self.depth) {
            Some(bit) if expr => self.exprs |= bit,
            Some(bit) => {
                self.exprs &= !bit;
                self.stmt += 1;
            }
            None => self.unbalanced = true,
        }
        self.depth = self.depth.saturating_add(1);
    }

    fn close(&mut self) {
        if self.depth == 0 {
            self.unbalanced = true;
            return;
        }
        self.depth -= 1;
        if let Some(bit) = 1u128.checked_shl(self.depth) {
            if self.exprs & bit == 0 {
                self.stmt = self.stmt.saturating_sub(1);
            }
        }
    }
}

/// Statements counted two ways: split at every `;`, and split only outside BEGIN ... END.
#[derive(Debug, Default)]
struct Units {
    naive: u32,
    nested: u32,
    in_naive: bool,
    in_nested: bool,
}

impl Units {
    fn token(&mut self) {
        if !self.in_naive {
            self.naive = self.naive.saturating_add(1);
            self.in_naive = true;
        }
        if !self.in_nested {
            self.nested = self.nested.saturating_add(1);
            self.in_nested = true;
        }
    }

    fn semicolon(&mut self, outside_blocks: bool) {
        self.in_naive = false;
        if outside_blocks {
            self.in_nested = false;
        }
    }
}

/// The uppercase copy of a word in `buf`, or empty when it is too long to be a keyword.
fn upper<'b>(w: &[u8], buf: &'b mut [u8; 20]) -> &'b [u8] {
    let Some(dst) = buf.get_mut(..w.len()) else {
        return &[];
    };
    for (d, s) in dst.iter_mut().zip(w) {
        *d = s.to_ascii_uppercase();
    }
    dst
}

fn is_kw(t: Option<Token<'_>>, kw: &[u8]) -> bool {
    matches!(t, Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
}

fn is_kw_in(t: Option<Token<'_>>, kws: &[&[u8]]) -> bool {
    kws.iter().any(|k| is_kw(t, k))
}

/// The kind a statement's first keyword (uppercase) gives.
fn kind_of(k: &[u8]) -> Kind {
    match k {
        b"SELECT" | b"TABLE" | b"VALUES" | b"WITH" => Kind::Select,
        b"INSERT" => Kind::Insert,
        b"UPDATE" => Kind::Update,
        b"DELETE" => Kind::Delete,
        b"REPLACE" => Kind::Replace,
        b"SET" => Kind::Set,
        b"USE" => Kind::Use,
        b"BEGIN" | b"START" => Kind::Begin,
        b"COMMIT" => Kind::Commit,
        b"ROLLBACK" => Kind::Rollback,
        b"SAVEPOINT" => Kind::Savepoint,
        b"RELEASE" => Kind::Release,
        b"LOCK" => Kind::Lock,
        b"UNLOCK" => Kind::Unlock,
        b"PREPARE" => Kind::Prepare,
        b"EXECUTE" => Kind::Execute,
        b"DEALLOCATE" => Kind::Deallocate,
        b"CREATE" => Kind::Create,
        b"DROP" => Kind::Drop,
        b"ALTER" => Kind::Alter,
        b"CALL" => Kind::Call,
        b"LOAD" => Kind::Load,
        b"SHOW" => Kind::Show,
        b"DO" => Kind::Do,
        b"HANDLER" => Kind::Handler,
        b"FLUSH" => Kind::Flush,
        b"KILL" => Kind::Kill,
        b"XA" => Kind::Xa,
        b"IF" | b"CASE" | b"LOOP" | b"WHILE" | b"REPEAT" | b"FOR" => Kind::Compound,
        _ => Kind::Other,
    }
}

/// Keywords that may stand right before a user variable without a space (`SELECT@a`); after any
/// other word an adjacent `@x` is the host of an account (`root@localhost`).
const BEFORE_VAR: &[&[u8]] = &[
    b"SELECT",
    b"SET",
    b"INTO",
    b"USING",
    b"AND",
    b"OR",
    b"XOR",
    b"NOT",
    b"DIV",
    b"MOD",
    b"IN",
    b"IS",
    b"LIKE",
    b"REGEXP",
    b"RLIKE",
    b"WHEN",
    b"THEN",
    b"ELSE",
    b"CASE",
    b"RETURN",
    b"WHERE",
    b"BY",
    b"ON",
    b"DO",
    b"VALUES",
    b"VALUE",
    b"LIMIT",
    b"OFFSET",
    b"HAVING",
    b"BETWEEN",
    b"FROM",
    b"IF",
    b"ELSEIF",
    b"WHILE",
    b"UNTIL",
    b"INTERVAL",
    b"BINARY",
    b"DISTINCT",
    b"ALL",
    b"ANY",
    b"SOME",
    b"EXISTS",
    b"ESCAPE",
];

/// CREATE ... words that name a stored program (whose body runs later).
const PROGRAMS: &[&[u8]] = &[b"PROCEDURE", b"FUNCTION", b"TRIGGER", b"EVENT", b"PACKAGE"];

/// CREATE ... words that rule a stored program out.
const NOT_PROGRAMS: &[&[u8]] = &[
    b"TABLE",
    b"VIEW",
    b"INDEX",
    b"DATABASE",
    b"SCHEMA",
    b"USER",
    b"ROLE",
    b"SEQUENCE",
    b"SERVER",
    b"TABLESPACE",
    b"LOGFILE",
    b"SPATIAL",
    b"RESOURCE",
];

/// The one-pass state machine behind [`classify`] and [`user_vars_written`].
struct Analyzer<'a> {
    lex: Lexer<'a>,
    /// Produce names of written variables (else only flags).
    names: bool,
    out: Statement<'a>,
    kind_set: bool,
    /// The kind of a first statement whose verb comes later (WITH, SET STATEMENT).
    pending: Option<Kind>,
    prev: Option<Token<'a>>,
    prev_end: usize,
    /// The next token starts a statement.
    at_start: bool,
    /// A `label:` was just read at a statement start.
    label: bool,
    /// The kind of the statement being read (inner statements of compounds included).
    cur: Kind,
    mode: Mode,
    /// The next token starts an item of a SET list.
    item_start: bool,
    /// Parenthesis depth of the current SET list / WITH head.
    base_paren: u32,
    /// After INTO: user variables (and commas) are targets.
    into: bool,
    /// After CREATE, before the object type is known.
    create_head: bool,
    /// The current top-level statement defines a stored program: its body raises no flags.
    program: bool,
    paren: u32,
    blocks: Blocks,
    units: Units,
}

impl<'a> Analyzer<'a> {
    fn new(sql: &'a [u8], backslash_escapes: bool, names: bool) -> Self {
        Analyzer {
            lex: Lexer::with_escapes(sql, backslash_escapes),
            names,
            out: Statement::default(),
            kind_set: false,
            pending: None,
            prev: None,
            prev_end: 0,
            at_start: true,
            label: false,
            cur: Kind::Other,
            mode: Mode::Plain,
            item_start: false,
            base_paren: 0,
            into: false,
            create_head: false,
            program: false,
            paren: 0,
            blocks: Blocks::default(),
            units: Units::default(),
        }
    }

    fn finish(mut self) -> Statement<'a> {
        if let Some(k) = self.pending.take() {
            self.set_kind(k);
        }
        if !self.kind_set && self.units.naive > 0 {
            self.set_kind(Kind::Other);
        }
        let b = &self.blocks;
        self.out.multi_statement = if b.unbalanced || b.depth != 0 {
            self.units.naive > 1
        } else {
            self.units.nested > 1
        };
        self.out
    }

    /// Feeds one token; returns the name of a user variable it assigns.
    fn step(&mut self, t: Spanned<'a>) -> Option<Cow<'a, [u8]>> {
        let written = if t.token == Token::Punct(b';') {
            self.end_statement();
            None
        } else {
            self.statement_token(&t)
        };
        self.prev = Some(t.token);
        self.prev_end = t.end;
        written
    }

    fn statement_token(&mut self, t: &Spanned<'a>) -> Option<Cow<'a, [u8]>> {
        self.units.token();
        let head = self.at_start;
        let opened = self.track_blocks(t.token, head);
        if head {
            self.start(t.token);
        }
        let written = self.common(t, head);
        if self.compound() && self.is_intro(t.token, opened) {
            self.begin_inner();
        }
        written
    }

    fn peek(&self, n: usize) -> Option<Token<'a>> {
        self.lex.clone().nth(n.checked_sub(1)?).map(|s| s.token)
    }

    fn prev_is(&self, kw: &[u8]) -> bool {
        is_kw(self.prev, kw)
    }

    fn compound(&self) -> bool {
        self.program || self.blocks.stmt > 0
    }

    fn set_kind(&mut self, k: Kind) {
        if !self.kind_set {
            self.out.kind = k;
            self.kind_set = true;
        }
    }

    fn raise(&mut self, f: Flag) {
        if self.program {
            return;
        }
        let s = &mut self.out;
        let field = match f {
            Flag::LockTables => &mut s.lock_tables,
            Flag::UnlockTables => &mut s.unlock_tables,
            Flag::FlushWithReadLock => &mut s.flush_with_read_lock,
            Flag::GetLock => &mut s.get_lock,
            Flag::TemporaryTable => &mut s.temporary_table,
            Flag::CalcFoundRows => &mut s.calc_found_rows,
            Flag::FoundRows => &mut s.found_rows,
            Flag::LastInsertId => &mut s.last_insert_id,
            Flag::TextPrepare => &mut s.text_prepare,
            Flag::LoadData => &mut s.load_data,
            Flag::Transaction => &mut s.transaction,
            Flag::UserVarWrite => &mut s.user_var_write,
            Flag::UserVarRead => &mut s.user_var_read,
            Flag::SetsSystemVars => &mut s.sets_system_vars,
            Flag::AutocommitOff => &mut s.autocommit_off,
        };
        *field = true;
    }

    // ---- statement boundaries

    fn end_statement(&mut self) {
        let outside = self.blocks.depth == 0;
        self.units.semicolon(outside);
        self.paren = 0;
        if outside {
            if let Some(k) = self.pending.take() {
                self.set_kind(k);
            }
            self.program = false;
        }
        self.begin_inner();
    }

    /// The next token starts a statement (after `;`, or inside a compound body).
    fn begin_inner(&mut self) {
        self.at_start = true;
        self.label = false;
        self.cur = Kind::Other;
        self.mode = Mode::Plain;
        self.item_start = false;
        self.into = false;
        self.create_head = false;
    }

    /// Words after which a new statement starts inside a compound body.
    fn is_intro(&self, tok: Token<'a>, opened: bool) -> bool {
        let t = Some(tok);
        is_kw_in(t, &[b"THEN", b"ELSE", b"DO", b"ATOMIC"])
            || (opened && is_kw_in(t, &[b"LOOP", b"REPEAT", b"BEGIN"]))
            || (self.program && self.blocks.depth == 0 && is_kw(t, b"ROW"))
    }

    /// Follows BEGIN ... END nesting; true when `tok` opened a block.
    fn track_blocks(&mut self, tok: Token<'a>, at_start: bool) -> bool {
        let Token::Word(w) = tok else { return false };
        if self.prev_is(b"END") {
            return false; // END IF, END LOOP, END CASE, END label...
        }
        let mut buf = [0u8; 20];
        let k = upper(w, &mut buf);
        if k == b"END" {
            if !self.prev_is(b"XA") && !self.prev_is(b"STAGE") {
                self.blocks.close();
            }
            return false;
        }
        let Some(expr) = self.opens_block(k, at_start) else {
            return false;
        };
        self.blocks.open(expr);
        true
    }

    /// Whether keyword `k` opens a block here: `Some(true)` for a CASE expression.
    fn opens_block(&self, k: &[u8], at_start: bool) -> Option<bool> {
        let compound = self.compound();
        let open = match k {
            b"CASE" => return Some(!at_start),
            b"BEGIN" => compound || self.label || (at_start && is_kw(self.peek(1), b"NOT")),
            b"IF" | b"FOR" => at_start,
            b"LOOP" | b"WHILE" => at_start || compound,
            b"REPEAT" => (at_start || compound) && self.peek(1) != Some(Token::Punct(b'(')),
            _ => false,
        };
        open.then_some(false)
    }

    // ---- the first token of a statement

    fn start(&mut self, tok: Token<'a>) {
        match tok {
            // `(SELECT ...) UNION ...`, and the colon of a label: still at the start.
            Token::Punct(b'(') => {}
            Token::Punct(b':') if self.label => {}
            Token::Word(_) if !self.label && self.peek(1) == Some(Token::Punct(b':')) => {
                self.label = true;
            }
            Token::Word(w) => {
                self.at_start = false;
                let mut buf = [0u8; 20];
                let k = upper(w, &mut buf);
                if let Some(kind) = self.head(k) {
                    self.cur = kind;
                    self.set_kind(kind);
                }
                self.label = false;
            }
            _ => {
                self.at_start = false;
                self.label = false;
                self.set_kind(Kind::Other);
            }
        }
    }

    /// The statement's first keyword: its kind (None while not yet known) and the flags its
    /// next few words give.
    fn head(&mut self, k: &[u8]) -> Option<Kind> {
        let kind = kind_of(k);
        match kind {
            Kind::Select if k == b"WITH" => return self.with_head(),
            Kind::Set => return self.set_head(),
            Kind::Begin => return Some(self.begin_head(k)),
            Kind::Drop => return Some(self.drop_head()),
            Kind::Use => self.use_head(),
            Kind::Create => self.create_head(),
            Kind::Prepare | Kind::Execute | Kind::Deallocate => self.raise(Flag::TextPrepare),
            Kind::Lock => self.flag_if_next(&[b"TABLE", b"TABLES"], Flag::LockTables),
            Kind::Unlock => self.flag_if_next(&[b"TABLE", b"TABLES"], Flag::UnlockTables),
            Kind::Load => self.flag_if_next(&[b"DATA", b"XML"], Flag::LoadData),
            Kind::Xa => self.flag_if_next(&[b"START", b"BEGIN"], Flag::Transaction),
            Kind::Other if k == b"GET" => self.diagnostics_head(),
            _ => {}
        }
        Some(kind)
    }

    fn flag_if_next(&mut self, kws: &[&[u8]], f: Flag) {
        if is_kw_in(self.peek(1), kws) {
            self.raise(f);
        }
    }

    fn with_head(&mut self) -> Option<Kind> {
        self.mode = Mode::WithHead;
        self.base_paren = self.paren;
        self.pending = Some(Kind::Select);
        self.cur = Kind::Select;
        None
    }

    fn set_head(&mut self) -> Option<Kind> {
        self.base_paren = self.paren;
        if is_kw(self.peek(1), b"STATEMENT") {
            self.mode = Mode::SetStatementHead;
            self.pending = Some(Kind::Set);
            self.cur = Kind::Set;
            return None;
        }
        self.mode = Mode::SetItems;
        self.item_start = true;
        Some(Kind::Set)
    }

    fn begin_head(&mut self, k: &[u8]) -> Kind {
        let next = self.peek(1);
        if k == b"START" {
            if !is_kw(next, b"TRANSACTION") {
                return Kind::Other;
            }
        } else if self.compound() || self.label || is_kw(next, b"NOT") {
            return Kind::Compound;
        }
        self.raise(Flag::Transaction);
        Kind::Begin
    }

    fn drop_head(&mut self) -> Kind {
        let next = self.peek(1);
        if is_kw(next, b"PREPARE") {
            self.raise(Flag::TextPrepare);
            return Kind::Deallocate;
        }
        if is_kw(next, b"TEMPORARY") {
            self.raise(Flag::TemporaryTable);
        }
        Kind::Drop
    }

    fn create_head(&mut self) {
        self.create_head = true;
        let n = if is_kw(self.peek(1), b"OR") { 3 } else { 1 };
        if is_kw(self.peek(n), b"TEMPORARY") {
            self.raise(Flag::TemporaryTable);
        }
    }

    fn use_head(&mut self) {
        let db = match self.peek(1) {
            Some(Token::Word(w)) => Cow::Borrowed(w),
            Some(Token::Ident(raw)) => unquote(raw, b'`', false),
            _ => return,
        };
        if !self.program {
            self.out.use_db = Some(db);
        }
    }

    fn diagnostics_head(&mut self) {
        if is_kw_in(self.peek(1), &[b"DIAGNOSTICS", b"CURRENT", b"STACKED"]) {
            self.mode = Mode::Diagnostics;
        }
    }

    // ---- every token

    fn common(&mut self, t: &Spanned<'a>, was_head: bool) -> Option<Cow<'a, [u8]>> {
        self.parens(t.token);
        let target = !was_head && self.mode_step(t.token);
        let into = self.track_into(t.token);
        match t.token {
            Token::Word(w) => {
                self.word_rules(w);
                None
            }
            Token::SysVar(s) => {
                self.sysvar_rules(s);
                None
            }
            Token::UserVar { raw, quote } => self.user_var(t, raw, quote, target, into),
            _ => None,
        }
    }

    fn parens(&mut self, tok: Token<'a>) {
        match tok {
            Token::Punct(b'(') => {
                self.paren = self.paren.saturating_add(1);
                self.create_head = false;
            }
            Token::Punct(b')') => self.paren = self.paren.saturating_sub(1),
            _ => {}
        }
    }

    /// Mode-specific meaning of a token; true when it is an assignment target.
    fn mode_step(&mut self, tok: Token<'a>) -> bool {
        let top = self.paren == self.base_paren;
        match self.mode {
            Mode::SetItems => self.set_item(tok),
            Mode::SetStatementHead => {
                if top && is_kw(Some(tok), b"FOR") {
                    self.begin_inner();
                }
                false
            }
            Mode::WithHead => {
                let verbs: &[&[u8]] = &[b"SELECT", b"INSERT", b"UPDATE", b"DELETE", b"REPLACE"];
                if let (true, Token::Word(w)) = (top && is_kw_in(Some(tok), verbs), tok) {
                    let mut buf = [0u8; 20];
                    self.cur = kind_of(upper(w, &mut buf));
                    self.set_kind(self.cur);
                    self.mode = Mode::Plain;
                }
                false
            }
            Mode::Diagnostics => true,
            Mode::Plain => false,
        }
    }

    /// An item of a SET list; true when it is a user variable (the assignment target).
    fn set_item(&mut self, tok: Token<'a>) -> bool {
        if tok == Token::Punct(b',') && self.paren == self.base_paren {
            self.item_start = true;
            return false;
        }
        if !std::mem::take(&mut self.item_start) {
            return false;
        }
        if let Token::UserVar { .. } = tok {
            return true;
        }
        self.raise(Flag::SetsSystemVars);
        let autocommit = match tok {
            Token::SysVar(s) => session_autocommit(s) && self.value_is_off(0),
            Token::Word(w) | Token::Ident(w) => self.word_item_autocommit_off(w),
            _ => false,
        };
        if autocommit {
            self.raise(Flag::AutocommitOff);
        }
        false
    }

    /// `autocommit = off` or `SESSION|LOCAL autocommit = off` starting at word `w`.
    fn word_item_autocommit_off(&self, w: &[u8]) -> bool {
        let mut buf = [0u8; 20];
        match upper(w, &mut buf) {
            b"AUTOCOMMIT" => self.value_is_off(0),
            b"SESSION" | b"LOCAL" => is_kw(self.peek(1), b"AUTOCOMMIT") && self.value_is_off(1),
            _ => false,
        }
    }

    /// After the current token and `skip` more: `=` or `:=`, then 0 / OFF / FALSE (bare or quoted), then the end of
    /// the item.
    fn value_is_off(&self, skip: usize) -> bool {
        let mut l = self.lex.clone().skip(skip).map(|s| s.token);
        let eq = matches!(l.next(), Some(Token::Punct(b'=') | Token::Assign));
        let off = |v: &[u8]| {
            [&b"0"[..], b"OFF", b"FALSE"]
                .iter()
                .any(|k| v.eq_ignore_ascii_case(k))
        };
        let value = match l.next() {
            Some(Token::Word(v)) | Some(Token::Str { raw: v, .. }) => off(v),
            _ => false,
        };
        let end = matches!(l.next(), None | Some(Token::Punct(b';' | b',')));
        eq && value && end
    }

    /// Follows `INTO @a, @b`; true when this token is such a target.
    fn track_into(&mut self, tok: Token<'a>) -> bool {
        let target = self.into && matches!(tok, Token::UserVar { .. });
        if !matches!(tok, Token::UserVar { .. } | Token::Punct(b',')) {
            self.into = false;
        }
        if self.mode != Mode::SetItems && is_kw(Some(tok), b"INTO") {
            self.into = true;
        }
        target
    }

    fn word_rules(&mut self, w: &[u8]) {
        let mut buf = [0u8; 20];
        let k = upper(w, &mut buf);
        let call =
            || self.peek(1) == Some(Token::Punct(b'(')) && self.prev != Some(Token::Punct(b'.'));
        let flag = match k {
            b"GET_LOCK" | b"RELEASE_LOCK" | b"RELEASE_ALL_LOCKS" | b"IS_USED_LOCK"
            | b"IS_FREE_LOCK"
                if call() =>
            {
                Some(Flag::GetLock)
            }
            b"FOUND_ROWS" if call() => Some(Flag::FoundRows),
            b"LAST_INSERT_ID" if call() => Some(Flag::LastInsertId),
            b"SQL_CALC_FOUND_ROWS" => Some(Flag::CalcFoundRows),
            b"WITH" | b"FOR" if self.cur == Kind::Flush && self.flush_lock_tail(k) => {
                Some(Flag::FlushWithReadLock)
            }
            _ => None,
        };
        if let Some(f) = flag {
            self.raise(f);
        }
        self.create_rules(k);
    }

    /// `WITH READ LOCK` or `FOR EXPORT` follows (`k` is WITH or FOR).
    fn flush_lock_tail(&self, k: &[u8]) -> bool {
        if k == b"FOR" {
            return is_kw(self.peek(1), b"EXPORT");
        }
        is_kw(self.peek(1), b"READ") && is_kw(self.peek(2), b"LOCK")
    }

    /// After CREATE: finds out whether a stored program is defined.
    fn create_rules(&mut self, k: &[u8]) {
        if !self.create_head || self.cur != Kind::Create {
            return;
        }
        if PROGRAMS.contains(&k) && self.blocks.depth == 0 {
            self.program = true;
            self.create_head = false;
        } else if NOT_PROGRAMS.contains(&k) {
            self.create_head = false;
        }
    }

    fn sysvar_rules(&mut self, s: &[u8]) {
        let name = scoped_name(s);
        if name.eq_ignore_ascii_case(b"identity") || name.eq_ignore_ascii_case(b"last_insert_id") {
            self.raise(Flag::LastInsertId);
        }
    }

    /// The host of an account (`'u'@'h'`, `` `u`@`h` ``, `root@localhost`), not a variable.
    fn is_host(&self, t: &Spanned<'a>) -> bool {
        if t.start != self.prev_end {
            return false;
        }
        match self.prev {
            Some(Token::Str { .. } | Token::Ident(_)) => true,
            Some(Token::Word(_)) => !is_kw_in(self.prev, BEFORE_VAR),
            _ => false,
        }
    }

    /// A bare user variable in an argument list that may write it back: `CALL p(@a)` (OUT and
    /// INOUT parameters), `EXECUTE s USING @a` (those of a prepared CALL), and the column list of
    /// LOAD DATA / LOAD XML (`(@a, col)`). `next` is the token after the variable.
    fn out_argument(&self, next: Option<Token<'a>>) -> bool {
        let (prev_in, next_in): (&[Token<'_>], &[Option<Token<'_>>]) = match self.cur {
            Kind::Call | Kind::Load => (
                &[Token::Punct(b'('), Token::Punct(b',')],
                &[Some(Token::Punct(b',')), Some(Token::Punct(b')'))],
            ),
            Kind::Execute => (
                &[Token::Punct(b',')],
                &[Some(Token::Punct(b',')), Some(Token::Punct(b';')), None],
            ),
            _ => return false,
        };
        let prev_ok = self.prev.is_some_and(|p| prev_in.contains(&p))
            || (self.cur == Kind::Execute && self.prev_is(b"USING"));
        prev_ok && next_in.contains(&next)
    }

    fn user_var(
        &mut self,
        t: &Spanned<'a>,
        raw: &'a [u8],
        quote: u8,
        target: bool,
        into: bool,
    ) -> Option<Cow<'a, [u8]>> {
        if self.is_host(t) {
            return None;
        }
        let next = self.peek(1);
        let out_arg = self.out_argument(next);
        let assigned = next == Some(Token::Assign)
            || (target && next == Some(Token::Punct(b'=')))
            || into
            || out_arg;
        if !assigned || out_arg {
            self.raise(Flag::UserVarRead);
        }
        if !assigned {
            return None;
        }
        self.raise(Flag::UserVarWrite);
        (self.names && !self.program).then(|| unquote(raw, quote, self.lex.backslash))
    }
}

/// The name of a system variable without its `session.` / `local.` / `global.` scope.
fn scoped_name(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == b'.') {
        Some(i) => s.get(i + 1..).unwrap_or(&[]),
        None => s,
    }
}

/// `@@autocommit`, `@@session.autocommit` or `@@local.autocommit` (not `@@global.`).
fn session_autocommit(s: &[u8]) -> bool {
    let scope_ok = match s.iter().position(|&b| b == b'.') {
        Some(i) => {
            let scope = &s[..i];
            scope.eq_ignore_ascii_case(b"session") || scope.eq_ignore_ascii_case(b"local")
        }
        None => true,
    };
    scope_ok && scoped_name(s).eq_ignore_ascii_case(b"autocommit")
}

#[cfg(test)]
mod pipeline_tests {
    use super::*;

    #[test]
    fn only_plain_selects_without_session_effects_are_pipelined() {
        for ok in [
            "SELECT c FROM sbtest1 WHERE id=42",
            "select 1",
            "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c",
            "SELECT SUM(k) FROM t WHERE id IN (1,2,3)",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "SELECT 'it''s' /* comment */",
        ] {
            assert!(pipeline_shape(ok.as_bytes()).is_some(), "{ok}");
        }
        for no in [
            "INSERT INTO t VALUES (1)",
            "SELECT 1; SELECT 2",
            "SELECT @a := 1",
            "SELECT @a",
            "SELECT c INTO @x FROM t",
            "SELECT * FROM t INTO OUTFILE '/tmp/x'",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "SELECT * FROM t FOR SHARE",
            "SELECT SLEEP(1)",
            "SELECT GET_LOCK('a', 1)",
            "SELECT SQL_CALC_FOUND_ROWS * FROM t",
            "SELECT FOUND_ROWS()",
            "SELECT LAST_INSERT_ID()",
            "SELECT ROW_COUNT()",
            "SELECT NEXTVAL(s)",
            "SELECT NEXT VALUE FOR s",
            "SET @a = 1",
            "BEGIN",
            "SHOW WARNINGS",
        ] {
            assert_eq!(pipeline_shape(no.as_bytes()), None, "{no}");
        }
    }

    #[test]
    fn statements_differing_only_in_literals_share_a_shape() {
        let a = pipeline_shape(b"SELECT c FROM sbtest1 WHERE id=42");
        assert_eq!(a, pipeline_shape(b"select c from sbtest1 where id = 7"));
        assert_eq!(
            pipeline_shape(b"SELECT * FROM t WHERE a = 'x'"),
            pipeline_shape(b"SELECT * FROM t WHERE a = 'yy'")
        );
        assert_ne!(a, pipeline_shape(b"SELECT c FROM sbtest2 WHERE id=42"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(sql: &str) -> Vec<Token<'_>> {
        Lexer::new(sql.as_bytes()).map(|s| s.token).collect()
    }

    fn c(sql: &str) -> Statement<'_> {
        classify(sql.as_bytes())
    }

    fn written(sql: &str) -> Vec<String> {
        user_vars_written(sql.as_bytes())
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect()
    }

    fn w(s: &str) -> Token<'_> {
        Token::Word(s.as_bytes())
    }

    // ---- lexer

    #[test]
    fn lexer_skips_all_three_comment_styles() {
        assert_eq!(
            toks("SELECT -- c1\n 1 # c2\n, /* c3 ; */ 2 /* unterminated"),
            [w("SELECT"), w("1"), Token::Punct(b','), w("2")]
        );
        // `--` without a following space or control byte is two minus signs.
        assert_eq!(
            toks("SELECT 1--1"),
            [
                w("SELECT"),
                w("1"),
                Token::Punct(b'-'),
                Token::Punct(b'-'),
                w("1")
            ]
        );
        assert_eq!(toks("SELECT 1 --\tx"), [w("SELECT"), w("1")]);
        assert_eq!(toks("SELECT 1 --"), [w("SELECT"), w("1")]);
    }

    #[test]
    fn lexer_reads_executable_comments_as_code() {
        assert_eq!(
            toks("/*!40101 SET NAMES utf8 */;"),
            [w("SET"), w("NAMES"), w("utf8"), Token::Punct(b';')]
        );
        assert_eq!(toks("/*M!100100 LOCK */ x"), [w("LOCK"), w("x")]);
        assert_eq!(toks("/*!SELECT*/ 1"), [w("SELECT"), w("1")]);
        // A 6-digit version (MariaDB 10.x, MySQL 8.0.34+).
        assert_eq!(toks("/*!100101 KILL */"), [w("KILL")]);
        // Fewer than 5 digits are not a version.
        assert_eq!(toks("/*!123 */"), [w("123")]);
        // Outside an executable comment `*/` is two operators.
        assert_eq!(
            toks("a */"),
            [w("a"), Token::Punct(b'*'), Token::Punct(b'/')]
        );
        // `*/` inside a string does not end the comment.
        assert_eq!(
            toks("/*!50001 '*/' */ b"),
            [
                Token::Str {
                    raw: b"*/",
                    quote: b'\''
                },
                w("b")
            ]
        );
    }

    #[test]
    fn lexer_strings_and_identifiers() {
        let s = |raw: &'static str, quote| Token::Str {
            raw: raw.as_bytes(),
            quote,
        };
        assert_eq!(
            toks(r#"'a\'b' "c""d" 'e''f' `g``h` 'open"#),
            [
                s(r"a\'b", b'\''),
                s(r#"c""d"#, b'"'),
                s("e''f", b'\''),
                Token::Ident(b"g``h"),
                s("open", b'\'')
            ]
        );
        // Without backslash escapes the backslash is an ordinary byte.
        let t: Vec<_> = Lexer::with_escapes(br"'a\' b", false)
            .map(|s| s.token)
            .collect();
        assert_eq!(t, [s(r"a\", b'\''), w("b")]);
        assert_eq!(toks(r"'\"), [s(r"\", b'\'')]);
        assert_eq!(unquote(br"a\'b", b'\'', true), &b"a'b"[..]);
        assert_eq!(unquote(b"e''f", b'\'', true), &b"e'f"[..]);
        assert_eq!(unquote(b"g``h", b'`', true), &b"g`h"[..]);
        assert_eq!(unquote(br"\n\%\x", b'"', true), &b"\n\\%x"[..]);
        assert!(matches!(unquote(b"plain", b'\'', true), Cow::Borrowed(_)));
    }

    #[test]
    fn lexer_variables_and_assign() {
        let uv = |raw: &'static str, quote| Token::UserVar {
            raw: raw.as_bytes(),
            quote,
        };
        assert_eq!(
            toks("@a:=@b.c+@'x y'+@\"q\"+@`r`+@@session.sql_mode+@@x+@ +@1"),
            [
                uv("a", 0),
                Token::Assign,
                uv("b.c", 0),
                Token::Punct(b'+'),
                uv("x y", b'\''),
                Token::Punct(b'+'),
                uv("q", b'"'),
                Token::Punct(b'+'),
                uv("r", b'`'),
                Token::Punct(b'+'),
                Token::SysVar(b"session.sql_mode"),
                Token::Punct(b'+'),
                Token::SysVar(b"x"),
                Token::Punct(b'+'),
                Token::Punct(b'@'),
                Token::Punct(b'+'),
                uv("1", 0),
            ]
        );
        assert_eq!(toks("a : b"), [w("a"), Token::Punct(b':'), w("b")]);
    }

    #[test]
    fn lexer_spans() {
        let v: Vec<_> = Lexer::new(b" ab /*x*/ 'c'").collect();
        assert_eq!((v[0].start, v[0].end), (1, 3));
        assert_eq!((v[1].start, v[1].end), (10, 13));
    }

    // ---- kinds

    #[test]
    fn kinds_of_first_keywords() {
        let cases = [
            ("select 1", Kind::Select),
            ("  (SELECT 1) UNION (SELECT 2)", Kind::Select),
            ("TABLE t", Kind::Select),
            ("VALUES (1)", Kind::Select),
            ("WITH c AS (SELECT 1) SELECT * FROM c", Kind::Select),
            ("WITH c AS (SELECT 1) UPDATE t, c SET t.a = 1", Kind::Update),
            (
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION SELECT n+1 FROM c) DELETE FROM t",
                Kind::Delete,
            ),
            ("Insert into t values (1)", Kind::Insert),
            ("UPDATE t SET a=1", Kind::Update),
            ("DELETE FROM t", Kind::Delete),
            ("REPLACE INTO t VALUES (1)", Kind::Replace),
            ("SET NAMES utf8", Kind::Set),
            (
                "SET STATEMENT max_statement_time=1 FOR SELECT 1",
                Kind::Select,
            ),
            (
                "SET STATEMENT max_statement_time=1 FOR UPDATE t SET a=1",
                Kind::Update,
            ),
            ("use db", Kind::Use),
            ("BEGIN", Kind::Begin),
            ("begin work", Kind::Begin),
            ("START TRANSACTION READ ONLY", Kind::Begin),
            ("START SLAVE", Kind::Other),
            ("BEGIN NOT ATOMIC SELECT 1; END", Kind::Compound),
            ("IF 1 THEN SELECT 1; END IF", Kind::Compound),
            ("lbl: LOOP LEAVE lbl; END LOOP", Kind::Compound),
            ("COMMIT", Kind::Commit),
            ("ROLLBACK TO SAVEPOINT s", Kind::Rollback),
            ("SAVEPOINT s", Kind::Savepoint),
            ("RELEASE SAVEPOINT s", Kind::Release),
            ("LOCK TABLES t READ", Kind::Lock),
            ("UNLOCK TABLES", Kind::Unlock),
            ("PREPARE s FROM 'SELECT 1'", Kind::Prepare),
            ("EXECUTE s", Kind::Execute),
            ("DEALLOCATE PREPARE s", Kind::Deallocate),
            ("DROP PREPARE s", Kind::Deallocate),
            ("CREATE TABLE t (a int)", Kind::Create),
            ("DROP TABLE t", Kind::Drop),
            ("ALTER TABLE t ADD b int", Kind::Alter),
            ("CALL p()", Kind::Call),
            ("LOAD DATA INFILE 'f' INTO TABLE t", Kind::Load),
            ("SHOW TABLES", Kind::Show),
            ("DO SLEEP(1)", Kind::Do),
            ("HANDLER t OPEN", Kind::Handler),
            ("FLUSH TABLES", Kind::Flush),
            ("KILL 5", Kind::Kill),
            ("XA START 'x'", Kind::Xa),
            ("EXPLAIN SELECT 1", Kind::Other),
            ("  /* only a comment */ ;; ", Kind::Empty),
            ("", Kind::Empty),
            ("(", Kind::Other),
            ("/*!40101 SET NAMES utf8 */", Kind::Set),
            ("-- c\n# d\nSELECT 1", Kind::Select),
        ];
        for (sql, kind) in cases {
            assert_eq!(c(sql).kind, kind, "{sql}");
        }
    }

    // ---- flags

    #[test]
    fn multi_statement() {
        for sql in [
            "SELECT 1; SELECT 2",
            "SELECT 1;SELECT 2;",
            "SET @a=1; /* c */ SELECT @a",
            "CREATE PROCEDURE p() SELECT 1; SELECT 2",
            "CREATE PROCEDURE p() BEGIN SELECT 1; END; CALL p()",
            "SELECT CASE WHEN 1 THEN 2 END; SELECT 3",
            // Unbalanced nesting: split at every `;`.
            "SELECT 1; END; SELECT 2",
        ] {
            assert!(c(sql).multi_statement, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "SELECT 1;",
            "SELECT 1 ; ; -- x",
            "SELECT ';'",
            "SELECT 1 /* ; */",
            "SELECT 1 # ;\n",
            "SELECT `a;b`",
            "CREATE PROCEDURE p() BEGIN DECLARE x INT; SET x = 1; IF x THEN SELECT 1; ELSE SELECT 2; END IF; END",
            "CREATE DEFINER=`root`@`localhost` PROCEDURE p() BEGIN WHILE 1 DO SELECT 1; END WHILE; END;",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.a = 1; END",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW IF NEW.a THEN SET NEW.b = 1; END IF",
            "BEGIN NOT ATOMIC DECLARE x INT DEFAULT 0; lbl: LOOP SET x = x + 1; IF x > 3 THEN LEAVE lbl; END IF; END LOOP; SELECT x; END",
            "IF (SELECT 1) THEN SELECT 1; ELSEIF 2 THEN SELECT 2; END IF",
            "BEGIN NOT ATOMIC REPEAT SELECT REPEAT('a', 2); UNTIL 1 END REPEAT; END",
            "BEGIN NOT ATOMIC SELECT CASE WHEN 1 THEN 2 ELSE 3 END; CASE 1 WHEN 1 THEN SELECT 1; END CASE; END",
            "BEGIN NOT ATOMIC FOR i IN 1..3 DO SELECT i; END FOR; END",
        ] {
            assert!(!c(sql).multi_statement, "{sql}");
        }
    }

    #[test]
    fn lock_and_unlock_tables() {
        assert!(c("LOCK TABLES t WRITE").lock_tables);
        assert!(c("lock table t read").lock_tables);
        assert!(c("/*!40000 LOCK TABLES t WRITE */").lock_tables);
        assert!(c("SELECT 1; LOCK TABLES t WRITE").lock_tables);
        assert!(!c("SELECT 'LOCK TABLES'").lock_tables);
        assert!(!c("SELECT 1 -- LOCK TABLES").lock_tables);
        assert!(!c("SELECT * FROM t LOCK IN SHARE MODE").lock_tables);
        assert!(!c("LOCK INSTANCE FOR BACKUP").lock_tables);
        assert!(c("UNLOCK TABLES").unlock_tables);
        assert!(c("unlock table").unlock_tables);
        assert!(!c("SELECT 'UNLOCK TABLES'").unlock_tables);
        assert!(!c("UNLOCK INSTANCE").unlock_tables);
    }

    #[test]
    fn flush_with_read_lock() {
        assert!(c("FLUSH TABLES WITH READ LOCK").flush_with_read_lock);
        assert!(c("flush no_write_to_binlog tables t1, t2 with read lock").flush_with_read_lock);
        assert!(c("FLUSH TABLES t FOR EXPORT").flush_with_read_lock);
        assert!(!c("FLUSH TABLES").flush_with_read_lock);
        assert!(!c("SELECT 'FLUSH TABLES WITH READ LOCK'").flush_with_read_lock);
        assert!(!c("SELECT * FROM t WITH READ LOCK").flush_with_read_lock);
    }

    #[test]
    fn get_lock_calls() {
        for sql in [
            "SELECT GET_LOCK('a', 10)",
            "select get_lock ('a', 10)",
            "SELECT RELEASE_LOCK('a')",
            "DO RELEASE_ALL_LOCKS()",
            "SELECT IS_USED_LOCK('a')",
            "SELECT IS_FREE_LOCK('a')",
            "SELECT 1 FROM t WHERE GET_LOCK(/* c */ 'x', 0)",
        ] {
            assert!(c(sql).get_lock, "{sql}");
        }
        for sql in [
            "SELECT get_lock_count FROM t",
            "SELECT 'GET_LOCK(1)'",
            "SELECT `get_lock`",
            "SELECT get_lock FROM t",
            "SELECT db.get_lock(1)",
            "SELECT 1 /* GET_LOCK('a', 1) */",
        ] {
            assert!(!c(sql).get_lock, "{sql}");
        }
    }

    #[test]
    fn user_lock_calls_with_their_literal_names() {
        use LockCall::*;
        let calls = |q: &str| user_lock_calls(q.as_bytes(), true);
        let name = |n: &str| Some(n.as_bytes().to_vec());
        assert_eq!(
            calls("SELECT GET_LOCK('a', 10), get_lock(\"b\", 0), GET_LOCK(CONCAT('x', 1), 0)"),
            [Get(name("a")), Get(name("b")), Get(None)]
        );
        assert_eq!(
            calls("DO RELEASE_LOCK('a'), RELEASE_ALL_LOCKS()"),
            [Release(name("a")), ReleaseAll]
        );
        assert_eq!(calls("SELECT RELEASE_LOCK(@n);"), [Release(None)]);
        // A release that does not run now is not one.
        assert!(calls("CREATE PROCEDURE p() SELECT RELEASE_LOCK('a')").is_empty());
        assert!(calls("SELECT 1; DO RELEASE_LOCK('a')").is_empty());
        assert!(calls("SELECT 'GET_LOCK(1)', t.get_lock(1) FROM t").is_empty());
    }

    #[test]
    fn temporary_table_changes() {
        let t = |q: &str| temp_tables(q.as_bytes(), true);
        let name = |s: Option<&str>, n: &str| TableName {
            schema: s.map(|s| s.as_bytes().to_vec()),
            name: n.as_bytes().to_vec(),
        };
        assert_eq!(
            t("CREATE TEMPORARY TABLE IF NOT EXISTS `my t` (a int)"),
            Some(TempTables::Create(name(None, "my t")))
        );
        assert_eq!(
            t("create or replace temporary table db.t select 1"),
            Some(TempTables::Create(name(Some("db"), "t")))
        );
        assert_eq!(
            t("DROP TEMPORARY TABLE IF EXISTS a, db.b;"),
            Some(TempTables::Drop(vec![
                name(None, "a"),
                name(Some("db"), "b")
            ]))
        );
        assert_eq!(
            t("drop table t cascade"),
            Some(TempTables::Drop(vec![name(None, "t")]))
        );
        assert_eq!(t("CREATE TABLE t (a int)"), None);
        assert_eq!(t("DROP TABLE t; SELECT 1"), None);
        assert_eq!(t("DROP VIEW v"), None);
        assert_eq!(t("SELECT 'DROP TABLE t'"), None);
    }

    #[test]
    fn temporary_tables() {
        assert!(c("CREATE TEMPORARY TABLE t (a int)").temporary_table);
        assert!(c("create or replace temporary table t (a int)").temporary_table);
        assert!(c("DROP TEMPORARY TABLE IF EXISTS t").temporary_table);
        assert!(!c("CREATE TABLE t (temporary int)").temporary_table);
        assert!(!c("DROP TABLE temporary").temporary_table);
        assert!(!c("SELECT 'CREATE TEMPORARY TABLE'").temporary_table);
    }

    #[test]
    fn found_rows_and_last_insert_id() {
        assert!(c("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1").calc_found_rows);
        assert!(!c("SELECT 'SQL_CALC_FOUND_ROWS'").calc_found_rows);
        assert!(c("SELECT FOUND_ROWS()").found_rows);
        assert!(!c("SELECT found_rows FROM t").found_rows);
        assert!(!c("SELECT SQL_CALC_FOUND_ROWS 1").found_rows);
        assert!(c("SELECT LAST_INSERT_ID()").last_insert_id);
        assert!(c("select @@identity").last_insert_id);
        assert!(c("SELECT @@session.last_insert_id").last_insert_id);
        assert!(!c("SELECT last_insert_id FROM t").last_insert_id);
    }

    #[test]
    fn text_prepare_and_load_data() {
        for sql in [
            "PREPARE s FROM 'SELECT 1'",
            "EXECUTE s USING @a",
            "EXECUTE IMMEDIATE 'SELECT 1'",
            "DEALLOCATE PREPARE s",
            "DROP PREPARE s",
        ] {
            assert!(c(sql).text_prepare, "{sql}");
        }
        assert!(!c("SELECT 'PREPARE s FROM x'").text_prepare);
        assert!(!c("DROP TABLE prepare").text_prepare);
        assert!(c("LOAD DATA LOCAL INFILE 'f' INTO TABLE t").load_data);
        assert!(c("load xml infile 'f' into table t").load_data);
        assert!(!c("LOAD INDEX INTO CACHE t").load_data);
        assert!(!c("SELECT 'LOAD DATA'").load_data);
    }

    #[test]
    fn transactions() {
        for sql in [
            "BEGIN",
            "BEGIN WORK",
            "START TRANSACTION",
            "start transaction with consistent snapshot",
            "XA START 'x'",
            "XA BEGIN 'x'",
            "SELECT 1; BEGIN",
        ] {
            assert!(c(sql).transaction, "{sql}");
        }
        for sql in [
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET SESSION TRANSACTION READ ONLY",
            "BEGIN NOT ATOMIC SELECT 1; END",
            "START SLAVE",
            "XA END 'x'",
            "SELECT 'BEGIN'",
            "COMMIT",
        ] {
            assert!(!c(sql).transaction, "{sql}");
        }
    }

    #[test]
    fn user_variable_writes() {
        assert_eq!(written("SET @a=1"), ["a"]);
        assert_eq!(
            written("SET @a:=1, @`b c` = 2, NAMES utf8, @'d''e' = 3"),
            ["a", "b c", "d'e"]
        );
        assert_eq!(written("set @a = @b"), ["a"]);
        assert_eq!(written("SELECT @a := 1, @b:=@b+1 FROM t"), ["a", "b"]);
        assert_eq!(written("SELECT 1, 2 INTO @x, @y"), ["x", "y"]);
        assert_eq!(written("SELECT a INTO @x FROM t"), ["x"]);
        assert_eq!(written("SELECT a FROM t INTO @x FOR UPDATE"), ["x"]);
        assert_eq!(written("CALL p(@out, 1, @io)"), ["out", "io"]);
        assert_eq!(written("GET DIAGNOSTICS @n = NUMBER"), ["n"]);
        assert_eq!(
            written("GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT"),
            ["m"]
        );
        assert_eq!(written("SET @a = 1; SELECT @b := 2"), ["a", "b"]);
        assert_eq!(written("SET STATEMENT x=1 FOR SELECT 1 INTO @r"), ["r"]);
        assert_eq!(written("/*!50001 SET @saved = @@sql_mode */"), ["saved"]);
        assert_eq!(written("SET @a.b$c = 1"), ["a.b$c"]);
        assert!(written("SELECT @a = 1").is_empty());
        assert!(written("SELECT @a").is_empty());
        assert!(written("SELECT '@a := 1', `@b`").is_empty());
        assert!(written("INSERT INTO t VALUES (@a)").is_empty());
        assert_eq!(written("EXECUTE s USING @a, @b"), ["a", "b"]);
        assert!(written("EXECUTE s USING @a + 1").is_empty());
        assert_eq!(
            written("LOAD DATA INFILE 'f' INTO TABLE t (a, @skip, @b) SET c = @b"),
            ["skip", "b"]
        );
        assert!(written("CALL p(@a + 1)").is_empty());
        assert!(written("SET STATEMENT @x = 1 FOR SELECT 1").is_empty());
        // The body of a stored program runs later.
        assert!(written("CREATE PROCEDURE p() BEGIN SET @a = 1; SELECT 1 INTO @b; END").is_empty());
        // An anonymous compound statement runs now.
        assert_eq!(
            written("BEGIN NOT ATOMIC SET @a = 1; IF 1 THEN SET @b = 2; END IF; END"),
            ["a", "b"]
        );
        assert!(c("SET @a = 1").user_var_write);
        assert!(!c("SET @a = 1").user_var_read);
        assert!(!c("SELECT @a").user_var_write);
    }

    #[test]
    fn user_variable_reads() {
        for sql in [
            "SELECT @a",
            "SELECT @a = 1",
            "SET @b = @a",
            "INSERT INTO t VALUES (@a)",
            "EXECUTE s USING @a",
            "PREPARE s FROM @sql",
            "SELECT @a := @a + 1",
            "CALL p(@inout)",
            "SELECT@a",
        ] {
            assert!(c(sql).user_var_read, "{sql}");
        }
        for sql in [
            "SELECT `@a`",
            "SELECT '@a'",
            "SELECT 1 -- @a",
            "SET @a = 1",
            "SELECT @@sql_mode",
            "SELECT 1 INTO @a",
            "CREATE USER 'u'@'%'",
            "CREATE DEFINER=root@localhost VIEW v AS SELECT 1",
            "GRANT ALL ON *.* TO `u`@`h`",
            "SELECT 1 @ 2",
        ] {
            assert!(!c(sql).user_var_read, "{sql}");
        }
    }

    #[test]
    fn system_variable_sets() {
        for sql in [
            "SET NAMES utf8mb4",
            "SET CHARACTER SET latin1",
            "SET autocommit = 1",
            "SET @@session.sql_mode = ''",
            "SET @@sql_mode = ''",
            "SET SESSION wait_timeout = 10",
            "SET LOCAL wait_timeout = 10",
            "SET GLOBAL wait_timeout = 10",
            "set time_zone='+00:00'",
            "SET @a = 1, sql_mode = ''",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET ROLE r",
            "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */",
        ] {
            assert!(c(sql).sets_system_vars, "{sql}");
        }
        for sql in [
            "SET @a = 1",
            "SET @a := 1, @b = (SELECT 1, 2)",
            "SET STATEMENT max_statement_time = 1 FOR SELECT 1",
            "SELECT @@sql_mode",
            "UPDATE t SET a = 1",
            "INSERT INTO t SET a = 1",
            "SELECT 'SET NAMES x'",
            "CREATE PROCEDURE p() SET x = 1",
        ] {
            assert!(!c(sql).sets_system_vars, "{sql}");
        }
    }

    #[test]
    fn autocommit_off() {
        for sql in [
            "SET autocommit=0",
            "set AUTOCOMMIT = OFF",
            "SET autocommit = false",
            "SET autocommit := 0",
            "SET SESSION autocommit = 0",
            "SET LOCAL autocommit = 0",
            "SET @@autocommit = 0",
            "SET @@session.autocommit=0;",
            "SET @@LOCAL.autocommit = 'OFF'",
            "SET NAMES utf8, autocommit = 0",
            "SET autocommit = 0, @a = 1",
            "/*!40101 SET autocommit=0 */",
        ] {
            assert!(c(sql).autocommit_off, "{sql}");
        }
        for sql in [
            "SET autocommit = 1",
            "SET autocommit = ON",
            "SET GLOBAL autocommit = 0",
            "SET @@global.autocommit = 0",
            "SET autocommit = 1 - 1",
            "SELECT @@autocommit = 0",
            "SET @autocommit = 0",
            "SET sql_mode = 'autocommit=0'",
        ] {
            assert!(!c(sql).autocommit_off, "{sql}");
        }
    }

    #[test]
    fn use_db() {
        assert_eq!(c("USE db").use_db.as_deref(), Some(&b"db"[..]));
        assert_eq!(c("use `my``db`;").use_db.as_deref(), Some(&b"my`db"[..]));
        assert_eq!(c("USE a; USE b").use_db.as_deref(), Some(&b"b"[..]));
        assert_eq!(c("SELECT 'USE x'").use_db, None);
        assert_eq!(c("USE").use_db, None);
    }

    #[test]
    fn case_insensitive_and_comment_tolerant() {
        let s = c("/* x */ sElEcT Get_Lock('a', 1)");
        assert_eq!(s.kind, Kind::Select);
        assert!(s.get_lock);
        let s = c("lOcK /* c */ TaBlEs t WRITE");
        assert!(s.lock_tables);
    }

    #[test]
    fn no_backslash_escapes_mode() {
        // With escapes the string runs on past `\'`; without, it ends there and LOCK is code.
        let sql = br"SELECT 'a\'; LOCK TABLES t WRITE; SELECT '";
        assert!(!classify(sql).lock_tables);
        let s = classify_with(sql, false);
        assert!(s.lock_tables && s.multi_statement);
    }

    // ---- fuzz

    const FRAGMENTS: &[&str] = &[
        "SELECT",
        "SET",
        "BEGIN",
        "END",
        "IF",
        "THEN",
        "ELSE",
        "CASE",
        "WHEN",
        "LOOP",
        "REPEAT",
        "WHILE",
        "DO",
        "FOR",
        "CREATE",
        "PROCEDURE",
        "TEMPORARY",
        "LOCK",
        "TABLES",
        "USE",
        "INTO",
        "CALL",
        "GET_LOCK",
        "(",
        ")",
        ",",
        ";",
        "=",
        ":=",
        ":",
        "@a",
        "@'b'",
        "@@x",
        "@@session.autocommit",
        "autocommit",
        "0",
        "'s'",
        "`i`",
        "\"d\"",
        "/*!50001",
        "*/",
        "/*",
        "-- ",
        "#",
        "\n",
        " ",
        "\\",
        "'",
        "`",
        "@",
        "NOT",
        "ATOMIC",
        "WITH",
        "STATEMENT",
        "XA",
        "START",
        "TRANSACTION",
        "FLUSH",
        "READ",
        "GET",
        "DIAGNOSTICS",
        "ROW",
        "é",
    ];

    fn soup() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..40)
            .prop_map(|v| v.join(" "))
    }

    fn check_lexer(b: &[u8]) {
        let mut last = 0;
        for s in Lexer::new(b) {
            assert!(s.start >= last && s.end > s.start && s.end <= b.len());
            last = s.end;
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200), esc in any::<bool>()) {
            check_lexer(&b);
            let s = classify_with(&b, esc);
            let n = user_vars_written_with(&b, esc).count();
            prop_assert_eq!(s.user_var_write, n > 0);
        }

        #[test]
        fn sql_soup_never_panics(sql in soup(), esc in any::<bool>()) {
            check_lexer(sql.as_bytes());
            let s = classify_with(sql.as_bytes(), esc);
            let n = user_vars_written_with(sql.as_bytes(), esc).count();
            prop_assert_eq!(s.user_var_write, n > 0);
        }
    }
}

// ----------------------------------------------------------------------- system variables set

/// What the SET statements of `sql` assign to the session's system variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysVarsSet {
    /// Session variable names assigned (lowercase; NAMES and CHARACTER SET give the variables
    /// they set).
    pub names: Vec<Vec<u8>>,
    /// Something a name list cannot describe was set (SET [SESSION] TRANSACTION, SET ROLE...).
    pub opaque: bool,
}

/// The session system variables SET statements in `sql` assign (global ones are left out).
pub fn system_vars_set(sql: &[u8]) -> SysVarsSet {
    let mut out = SysVarsSet::default();
    let tokens: Vec<Token<'_>> = Lexer::new(sql).map(|s| s.token).collect();
    for stmt in tokens.split(|t| *t == Token::Punct(b';')) {
        if let [Token::Word(w), rest @ ..] = stmt {
            if w.eq_ignore_ascii_case(b"SET") {
                set_items(rest, &mut out);
            }
        }
    }
    // Only plain names go into a read-back; anything else cannot be read back.
    let plain =
        |n: &Vec<u8>| !n.is_empty() && n.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
    out.opaque |= !out.names.iter().all(plain);
    out.names.retain(plain);
    out.names.sort();
    out.names.dedup();
    out
}

/// The assignments of one SET, split at top-level commas.
fn set_items(tokens: &[Token<'_>], out: &mut SysVarsSet) {
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth = depth.saturating_sub(1),
            Token::Punct(b',') if depth == 0 => {
                set_item(&tokens[start..i], out);
                start = i + 1;
            }
            _ => {}
        }
    }
    set_item(&tokens[start..], out);
}

fn word_is(t: Option<&Token<'_>>, w: &[u8]) -> bool {
    matches!(t, Some(Token::Word(x)) if x.eq_ignore_ascii_case(w))
}

/// One assignment: `[SESSION|LOCAL|GLOBAL] name = …`, `@@[scope.]name = …`, `NAMES …`,
/// `CHARACTER SET …`, `TRANSACTION …`, `@user = …`.
fn set_item(item: &[Token<'_>], out: &mut SysVarsSet) {
    let mut t = item;
    let mut global = false;
    while let Some(Token::Word(w)) = t.first() {
        let scope = [
            &b"SESSION"[..],
            b"LOCAL",
            b"GLOBAL",
            b"PERSIST",
            b"PERSIST_ONLY",
        ];
        match scope.iter().find(|s| w.eq_ignore_ascii_case(s)) {
            Some(s) => {
                global |= !matches!(*s, b"SESSION" | b"LOCAL");
                t = &t[1..];
            }
            None => break,
        }
    }
    const CHARSET_VARS: [&[u8]; 3] = [
        b"character_set_client",
        b"character_set_connection",
        b"character_set_results",
    ];
    match t.first() {
        Some(Token::UserVar { .. }) | None => {}
        Some(Token::SysVar(raw)) => {
            let lower = raw.to_ascii_lowercase();
            if lower.starts_with(b"global.") {
                return;
            }
            let name = lower
                .strip_prefix(b"session.")
                .or_else(|| lower.strip_prefix(b"local."))
                .unwrap_or(&lower);
            out.names.push(name.to_vec());
        }
        Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"NAMES") => {
            out.names.extend(CHARSET_VARS.iter().map(|v| v.to_vec()));
            out.names.push(b"collation_connection".to_vec());
        }
        Some(Token::Word(w))
            if w.eq_ignore_ascii_case(b"CHARSET")
                || (w.eq_ignore_ascii_case(b"CHARACTER") && word_is(t.get(1), b"SET")) =>
        {
            out.names.extend(CHARSET_VARS.iter().map(|v| v.to_vec()));
            out.names.push(b"collation_connection".to_vec());
        }
        Some(Token::Word(w))
            if w.eq_ignore_ascii_case(b"PASSWORD") || w.eq_ignore_ascii_case(b"DEFAULT") => {}
        Some(Token::Word(w))
            if w.eq_ignore_ascii_case(b"TRANSACTION") || w.eq_ignore_ascii_case(b"ROLE") =>
        {
            out.opaque |= !global;
        }
        Some(Token::Word(w)) | Some(Token::Ident(w)) if !global => {
            out.names.push(w.to_ascii_lowercase())
        }
        _ => {}
    }
}

#[cfg(test)]
mod sysvar_tests {
    use super::*;

    fn names(sql: &str) -> Vec<String> {
        let s = system_vars_set(sql.as_bytes());
        s.names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn set_names_scopes_and_sysvar_forms() {
        assert_eq!(
            names("SET sql_mode = 'ANSI', @a = 1, SESSION time_zone = '+01:00'"),
            ["sql_mode", "time_zone"]
        );
        assert_eq!(
            names("set @@session.Wait_Timeout = 5, @@global.max_connections = 9, GLOBAL x = 1"),
            ["wait_timeout"]
        );
        assert_eq!(
            names("SET @@sql_select_limit = 10; select 1; set local autocommit = IF(1, 0, 1)"),
            ["autocommit", "sql_select_limit"]
        );
        assert_eq!(names("SET NAMES latin1")[0], "character_set_client");
        assert_eq!(names("SET CHARACTER SET utf8").len(), 4);
        assert!(names("SELECT 1").is_empty());
        assert!(names("SET PASSWORD = 'x'").is_empty());
    }

    #[test]
    fn transactions_and_roles_are_opaque() {
        assert!(system_vars_set(b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").opaque);
        assert!(system_vars_set(b"SET TRANSACTION READ ONLY").opaque);
        assert!(!system_vars_set(b"SET GLOBAL TRANSACTION READ ONLY").opaque);
        assert!(system_vars_set(b"SET ROLE r").opaque);
    }
}

// ------------------------------------------------------------------------------------- KILL

/// `KILL [HARD | SOFT] [CONNECTION | QUERY] [ID] n`: `(query_only, n)`; `None` for other
/// statements (and for `KILL ... USER name`, which names no thread).
pub fn kill_target(sql: &[u8]) -> Option<(bool, u64)> {
    let mut words = Lexer::new(sql)
        .map(|s| s.token)
        .filter(|t| *t != Token::Punct(b';'));
    match words.next() {
        Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"KILL") => {}
        _ => return None,
    }
    let mut query = false;
    for t in words {
        let Token::Word(w) = t else { return None };
        if w.first().is_some_and(u8::is_ascii_digit) {
            return std::str::from_utf8(w)
                .ok()?
                .parse()
                .ok()
                .map(|n| (query, n));
        }
        match w.to_ascii_uppercase().as_slice() {
            b"HARD" | b"SOFT" | b"CONNECTION" | b"ID" => {}
            b"QUERY" => query = true,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod kill_tests {
    use super::kill_target;

    #[test]
    fn kill_forms() {
        assert_eq!(kill_target(b"KILL 5"), Some((false, 5)));
        assert_eq!(kill_target(b"kill query 17;"), Some((true, 17)));
        assert_eq!(kill_target(b"KILL HARD CONNECTION 3"), Some((false, 3)));
        assert_eq!(kill_target(b"KILL QUERY ID 9"), Some((true, 9)));
        assert_eq!(kill_target(b"KILL USER app"), None);
        assert_eq!(kill_target(b"SELECT 1"), None);
    }
}
