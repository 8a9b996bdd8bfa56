//! A worker's Lua VM (LuaJIT through mlua): the `proxy` table and its constants, the preloaded
//! modules, `print` straight to standard output, the script (compiled once, its chunk run in a
//! fresh environment for every connection, as MySQL Proxy does), the hook calls and what they
//! decide, the instruction budget per call and the memory limit, and reloading the script when
//! its file changes or SIGHUP asks.
//!
//! A hook that raises an error, exceeds its budget or returns something unusable is logged with
//! the script's file:line and counts as no decision: the proxy goes on as without the hook (what
//! MySQL Proxy does).

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mlua::{Function, HookTriggers, Lua, MultiValue, Table, Value, VmState};

use super::api;
use super::store::Value as Stored;
use super::{Call, ConnInfo, Decision, Hook, HookName, Hooks, Injected, Ret, ScriptShared, Update};
use crate::protocol::constants::*;

/// How often the script file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// Instructions between two looks at the budget.
const BUDGET_STEP: u32 = 1000;
/// `proxy.PROXY_VERSION`: MySQL Proxy 0.8.5's API level, which scripts test.
const PROXY_VERSION: i64 = 0x00805;

/// Counts of what the VM did, for the worker's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmCounts {
    pub calls: u64,
    pub errors: u64,
    pub reloads: u64,
}

/// The Lua side of one worker.
pub struct Vm {
    lua: Lua,
    shared: Arc<ScriptShared>,
    rp: Table,
    /// `rp.call`, and the hooks' names as Lua strings (by [`HookName`]), looked up once.
    call_fn: Function,
    names: Vec<mlua::LuaString>,
    chunk: Option<Function>,
    conns: HashMap<u64, Table>,
    budget: Rc<Cell<i64>>,
    mtime: Option<SystemTime>,
    reloads_seen: u64,
    last_check: Instant,
    pub counts: VmCounts,
}

impl Vm {
    /// A VM with the prelude, the modules and the script (a script that does not load is logged
    /// and leaves the VM without hooks until a reload succeeds).
    pub fn new(shared: Arc<ScriptShared>) -> mlua::Result<Vm> {
        let lua = Lua::new();
        lua.set_memory_limit(shared.memory_limit)?;
        install_print(&lua)?;
        set_paths(&lua, &shared)?;
        super::modules::preload(&lua)?;
        let rp: Table = lua
            .load(include_str!("prelude.lua"))
            .set_name("=ringproxy/prelude")
            .eval()?;
        let call_fn: Function = rp.get("call")?;
        let names = ALL_HOOKS
            .iter()
            .map(|h| lua.create_string(h.lua_name()))
            .collect::<mlua::Result<Vec<_>>>()?;
        let mut vm = Vm {
            call_fn,
            names,
            budget: Rc::new(Cell::new(i64::MAX)),
            reloads_seen: shared.reloads.load(Ordering::Relaxed),
            lua,
            shared,
            rp,
            chunk: None,
            conns: HashMap::new(),
            mtime: None,
            last_check: Instant::now(),
            counts: VmCounts::default(),
        };
        vm.install_proxy()?;
        vm.install_budget()?;
        vm.load_script();
        Ok(vm)
    }

    /// Runs one call and says what the script decided.
    pub fn run(&mut self, call: Call) -> Decision {
        self.maybe_reload();
        self.counts.calls += 1;
        let mut d = Decision::none(call.conn);
        let name = hook_of(&call.hook);
        if let Err(e) = self.apply(call.conn, &call.updates) {
            log::warn!("lua: proxy.connection: {}", first_line(&e));
        }
        let result = match call.hook {
            Hook::Open(info) => self.open(call.conn, &info, &call.updates, &mut d),
            Hook::Close => self.close(call.conn),
            other => self.hook(call.conn, other, &mut d),
        };
        // The call is over: another worker's hook may use proxy.global now.
        self.shared.store.leave();
        if let Err(e) = result {
            self.counts.errors += 1;
            let limit = match e {
                mlua::Error::MemoryError(_) => {
                    format!(" (lua_memory_limit = {} bytes)", self.shared.memory_limit)
                }
                _ => String::new(),
            };
            log::warn!("lua: {}: {}{limit}", name.lua_name(), first_line(&e));
            // What a failed call left (a runaway's garbage above all) goes now, not at the next
            // allocation that would hit the limit.
            let _ = self.lua.gc_collect();
            d = Decision {
                hooks: d.hooks,
                ..Decision::none(call.conn)
            };
        }
        d
    }

    fn open(
        &mut self,
        conn: u64,
        info: &ConnInfo,
        updates: &[Update],
        d: &mut Decision,
    ) -> mlua::Result<()> {
        let Some(chunk) = self.chunk.clone() else {
            return Ok(());
        };
        let table = api::connection_table(&self.lua, info.client, info.proxy)?;
        let new: Function = self.rp.get("new_connection")?;
        self.budget.set(self.max_instructions());
        let state: Table = new.call((chunk, table))?;
        let hooks: Function = self.rp.get("hooks")?;
        d.hooks = Hooks(hooks.call::<u8>(&state)?);
        self.conns.insert(conn, state);
        self.apply(conn, updates)?;
        if d.hooks.has(HookName::ConnectServer) && !info.pooled {
            self.call(conn, HookName::ConnectServer, Value::Nil, d)?;
            d.backend_ndx = self.backend_ndx(conn)?;
        }
        Ok(())
    }

    /// `proxy.connection.backend_ndx` of `conn`, 0-based (None when the script chose none).
    fn backend_ndx(&self, conn: u64) -> mlua::Result<Option<usize>> {
        let connection: Table = self.conns[&conn].get("connection")?;
        Ok(match connection.get::<Value>("backend_ndx")? {
            Value::Integer(n) if n > 0 => Some(n as usize - 1),
            Value::Number(n) if n >= 1.0 => Some(n as usize - 1),
            _ => None,
        })
    }

    fn close(&mut self, conn: u64) -> mlua::Result<()> {
        if !self.conns.contains_key(&conn) {
            return Ok(());
        }
        let mut d = Decision::none(conn);
        let result = self.call(conn, HookName::DisconnectClient, Value::Nil, &mut d);
        self.conns.remove(&conn);
        result
    }

    /// Shows what the connection learned in its `proxy.connection`.
    fn apply(&self, conn: u64, updates: &[Update]) -> mlua::Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let Some(state) = self.conns.get(&conn) else {
            return Ok(());
        };
        let connection: Table = state.get("connection")?;
        for u in updates {
            match u {
                Update::Server {
                    greeting,
                    ndx,
                    addr,
                } => api::set_server(&self.lua, &connection, greeting, *ndx, *addr)?,
                Update::Client { response } => api::set_client(&self.lua, &connection, response)?,
                Update::Identity {
                    username,
                    default_db,
                } => api::set_identity(&self.lua, &connection, username, default_db)?,
            }
        }
        Ok(())
    }

    fn hook(&mut self, conn: u64, hook: Hook, d: &mut Decision) -> mlua::Result<()> {
        if !self.conns.contains_key(&conn) {
            return Ok(());
        }
        let lua = &self.lua;
        let (name, arg) = match hook {
            Hook::Handshake => (HookName::ReadHandshake, Value::Nil),
            Hook::Auth => (HookName::ReadAuth, Value::Nil),
            Hook::AuthResult(packet) => {
                let t = lua.create_table()?;
                t.set("packet", lua.create_string(&packet)?)?;
                (HookName::ReadAuthResult, Value::Table(t))
            }
            Hook::Query(packet) => (
                HookName::ReadQuery,
                Value::String(lua.create_string(&packet)?),
            ),
            Hook::Result(inj) => (HookName::ReadQueryResult, Value::Table(self.inj(&inj)?)),
            Hook::Open(_) | Hook::Close => unreachable!("handled by run"),
        };
        self.call(conn, name, arg, d)?;
        if name == HookName::ReadQuery {
            d.backend_ndx = self.backend_ndx(conn)?;
        }
        Ok(())
    }

    fn inj(&self, inj: &Injected) -> mlua::Result<Table> {
        let rows: Function = self.rp.get("rows")?;
        api::inj_table(&self.lua, inj, &rows)
    }

    /// Calls hook `name` of `conn` (when its environment defines it) and reads its decision.
    fn call(
        &mut self,
        conn: u64,
        name: HookName,
        arg: Value,
        d: &mut Decision,
    ) -> mlua::Result<()> {
        let state = &self.conns[&conn];
        self.budget.set(self.max_instructions());
        let name = self.names[name as usize].clone();
        let (ret, response, items): (Value, Value, Option<Table>) =
            self.call_fn.call((state, name, arg))?;
        d.ret = ret_of(&ret);
        if d.ret == Ret::SendResult {
            let Value::Table(resp) = response else {
                return Err(mlua::Error::runtime(
                    "returned PROXY_SEND_RESULT without setting proxy.response",
                ));
            };
            d.response = Some(api::response_packets(&resp)?);
        }
        if let Some(items) = items {
            d.queries = api::injections(&items)?;
        }
        Ok(())
    }

    fn max_instructions(&self) -> i64 {
        match self.shared.max_instructions {
            0 => i64::MAX,
            n => n.min(i64::MAX as u64) as i64,
        }
    }

    /// The instruction budget: a count hook every [`BUDGET_STEP`] instructions. LuaJIT's compiled
    /// code never calls hooks, so with a budget the JIT compiler is off (the interpreter runs
    /// everything); without one (lua_max_instructions = 0) it stays on.
    fn install_budget(&mut self) -> mlua::Result<()> {
        if self.shared.max_instructions == 0 {
            return Ok(());
        }
        self.lua.load("jit.off()").exec()?;
        let budget = Rc::clone(&self.budget);
        let max = self.shared.max_instructions;
        let triggers = HookTriggers::new().every_nth_instruction(BUDGET_STEP);
        self.lua.set_hook(triggers, move |_, _| {
            let left = budget.get() - i64::from(BUDGET_STEP);
            budget.set(left);
            if left < 0 {
                return Err(mlua::Error::runtime(format!(
                    "stopped: the hook ran more than lua_max_instructions = {max} instructions"
                )));
            }
            Ok(VmState::Continue)
        })
    }

    /// The `proxy` table: constants, `proxy.global` and its store functions.
    fn install_proxy(&mut self) -> mlua::Result<()> {
        let lua = &self.lua;
        let proxy = lua.create_table()?;
        for (name, value) in constants() {
            proxy.set(name, value)?;
        }
        lua.globals().set("proxy", &proxy)?;
        let store = Arc::clone(&self.shared);
        self.rp.set(
            "store_get",
            lua.create_function(move |lua, (path, key): (Table, Value)| {
                let path = store_path(&path)?;
                let found = store.store.get(&path, &api::store_key(&key)?);
                match found {
                    Some(Stored::Table(_)) => Ok((Value::Nil, true)),
                    Some(v) => Ok((api::from_stored(lua, &v)?, false)),
                    None => Ok((Value::Nil, false)),
                }
            })?,
        )?;
        let store = Arc::clone(&self.shared);
        self.rp.set(
            "store_set",
            lua.create_function(move |_, (path, key, value): (Table, Value, Value)| {
                let path = store_path(&path)?;
                let value = api::to_stored(&value, 0)?;
                if !store.store.set(&path, api::store_key(&key)?, value) {
                    return Err(mlua::Error::runtime("proxy.global: no such table"));
                }
                Ok(())
            })?,
        )?;
        let store = Arc::clone(&self.shared);
        self.rp.set(
            "store_keys",
            lua.create_function(move |lua, path: Table| {
                let keys = store.store.keys(&store_path(&path)?);
                let list = lua.create_table_with_capacity(keys.len(), 0)?;
                for (i, k) in keys.iter().enumerate() {
                    list.set(i + 1, api::key_value(lua, k)?)?;
                }
                Ok(list)
            })?,
        )?;
        let shared = Arc::clone(&self.shared);
        let pool_users: Function = self.rp.get("pool_users")?;
        self.rp.set(
            "backends",
            lua.create_function(move |lua, ()| backends(lua, &shared, &pool_users))?,
        )?;
        let view: Function = self.rp.get("global_view")?;
        proxy.set("global", view.call::<Table>(lua.create_table()?)?)?;
        Ok(())
    }

    /// Compiles the script; on failure the previous script (if any) stays.
    fn load_script(&mut self) {
        let path = &self.shared.path;
        self.mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) => return log::error!("lua: can't read {}: {e}", path.display()),
        };
        let name = format!("@{}", path.display());
        match self.lua.load(text).set_name(name).into_function() {
            Ok(f) => self.chunk = Some(f),
            Err(e) => log::error!("lua: {} does not load: {}", path.display(), first_line(&e)),
        }
    }

    /// Reloads the script when SIGHUP asked or its file changed (looked at every second); new
    /// connections get the new script, open ones keep theirs.
    fn maybe_reload(&mut self) {
        let asked = self.shared.reloads.load(Ordering::Relaxed);
        let now = Instant::now();
        let changed = now.duration_since(self.last_check) >= RELOAD_CHECK && {
            self.last_check = now;
            let m = std::fs::metadata(&self.shared.path)
                .and_then(|m| m.modified())
                .ok();
            m.is_some() && m != self.mtime
        };
        if asked != self.reloads_seen || changed {
            self.reloads_seen = asked;
            self.counts.reloads += 1;
            self.load_script();
            log::info!("lua: {} reloaded", self.shared.path.display());
        }
    }
}

/// Every hook, in [`HookName`]'s order.
const ALL_HOOKS: [HookName; 7] = [
    HookName::ConnectServer,
    HookName::ReadHandshake,
    HookName::ReadAuth,
    HookName::ReadAuthResult,
    HookName::ReadQuery,
    HookName::ReadQueryResult,
    HookName::DisconnectClient,
];

fn hook_of(h: &Hook) -> HookName {
    match h {
        Hook::Open(_) => HookName::ConnectServer,
        Hook::Handshake => HookName::ReadHandshake,
        Hook::Auth => HookName::ReadAuth,
        Hook::AuthResult(_) => HookName::ReadAuthResult,
        Hook::Query(_) => HookName::ReadQuery,
        Hook::Result(_) => HookName::ReadQueryResult,
        Hook::Close => HookName::DisconnectClient,
    }
}

fn ret_of(v: &Value) -> Ret {
    let n = match v {
        Value::Integer(i) => *i,
        Value::Number(n) => *n as i64,
        _ => return Ret::NoDecision,
    };
    match n {
        super::PROXY_SEND_QUERY => Ret::SendQuery,
        super::PROXY_SEND_RESULT => Ret::SendResult,
        super::PROXY_IGNORE_RESULT => Ret::IgnoreResult,
        _ => Ret::NoDecision,
    }
}

/// An error's first line (tracebacks are long; the first line has file:line and the message).
fn first_line(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or("").to_owned()
}

fn store_path(path: &Table) -> mlua::Result<Vec<super::store::Key>> {
    path.sequence_values::<Value>()
        .map(|k| api::store_key(&k?))
        .collect()
}

/// `proxy.global.backends`: a fresh snapshot per read.
fn backends(lua: &Lua, shared: &ScriptShared, pool_users: &Function) -> mlua::Result<Table> {
    let list = lua.create_table()?;
    for (i, b) in shared.backends.iter().enumerate() {
        let t = lua.create_table()?;
        let dst = lua.create_table()?;
        dst.set("name", b.addr.to_string())?;
        dst.set("address", b.addr.ip().to_string())?;
        dst.set("port", b.addr.port())?;
        t.set("dst", dst)?;
        t.set("state", 1)?;
        t.set("type", b.kind)?;
        t.set(
            "connected_clients",
            b.connected_clients.load(Ordering::Relaxed),
        )?;
        let pool = lua.create_table()?;
        pool.set("users", pool_users.call::<Table>(())?)?;
        pool.set("min_idle_connections", 0)?;
        pool.set("max_idle_connections", 0)?;
        t.set("pool", pool)?;
        list.set(i + 1, t)?;
    }
    Ok(list)
}

/// `print`: its arguments, tab-separated, as one line on standard output, flushed at once.
fn install_print(lua: &Lua) -> mlua::Result<()> {
    let print = lua.create_function(|lua, args: MultiValue| {
        let tostring: Function = lua.globals().get("tostring")?;
        let mut line = Vec::new();
        for (i, a) in args.into_iter().enumerate() {
            if i > 0 {
                line.push(b'\t');
            }
            let s: mlua::LuaString = tostring.call(a)?;
            line.extend_from_slice(&s.as_bytes());
        }
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&line).and_then(|()| out.flush());
        Ok(())
    })?;
    lua.globals().set("print", print)
}

/// `package.path`/`cpath`: the script's directory first, then lua_path (else LUA_PATH, else
/// LuaJIT's default, which LuaJIT itself read from the environment).
fn set_paths(lua: &Lua, shared: &ScriptShared) -> mlua::Result<()> {
    let package: Table = lua.globals().get("package")?;
    let dir = shared
        .path
        .parent()
        .map(|d| d.display().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ".".into());
    let base = match &shared.lua_path {
        Some(p) => p.clone(),
        None => package.get::<String>("path")?,
    };
    package.set("path", format!("{dir}/?.lua;{base}"))?;
    if let Some(c) = &shared.lua_cpath {
        package.set("cpath", c.clone())?;
    }
    Ok(())
}

/// The constants of the `proxy` table.
fn constants() -> Vec<(&'static str, i64)> {
    let mut v: Vec<(&'static str, i64)> = vec![
        ("PROXY_SEND_QUERY", super::PROXY_SEND_QUERY),
        ("PROXY_SEND_RESULT", super::PROXY_SEND_RESULT),
        ("PROXY_IGNORE_RESULT", super::PROXY_IGNORE_RESULT),
        ("PROXY_VERSION", PROXY_VERSION),
        ("MYSQLD_PACKET_OK", api::MYSQLD_PACKET_OK),
        ("MYSQLD_PACKET_ERR", api::MYSQLD_PACKET_ERR),
        ("MYSQLD_PACKET_RAW", api::MYSQLD_PACKET_RAW),
        ("BACKEND_STATE_UNKNOWN", 0),
        ("BACKEND_STATE_UP", 1),
        ("BACKEND_STATE_DOWN", 2),
        ("BACKEND_TYPE_UNKNOWN", 0),
        ("BACKEND_TYPE_RW", 1),
        ("BACKEND_TYPE_RO", 2),
    ];
    let coms: [(&str, u8); 29] = [
        ("COM_SLEEP", 0),
        ("COM_QUIT", COM_QUIT),
        ("COM_INIT_DB", COM_INIT_DB),
        ("COM_QUERY", COM_QUERY),
        ("COM_FIELD_LIST", COM_FIELD_LIST),
        ("COM_CREATE_DB", 5),
        ("COM_DROP_DB", 6),
        ("COM_REFRESH", 7),
        ("COM_SHUTDOWN", 8),
        ("COM_STATISTICS", 9),
        ("COM_PROCESS_INFO", 10),
        ("COM_CONNECT", 11),
        ("COM_PROCESS_KILL", 12),
        ("COM_DEBUG", 13),
        ("COM_PING", 14),
        ("COM_TIME", 15),
        ("COM_DELAYED_INSERT", 16),
        ("COM_CHANGE_USER", 17),
        ("COM_BINLOG_DUMP", 18),
        ("COM_TABLE_DUMP", 19),
        ("COM_CONNECT_OUT", 20),
        ("COM_REGISTER_SLAVE", 21),
        ("COM_STMT_PREPARE", 22),
        ("COM_STMT_EXECUTE", 23),
        ("COM_STMT_SEND_LONG_DATA", 24),
        ("COM_STMT_CLOSE", 25),
        ("COM_STMT_RESET", 26),
        ("COM_SET_OPTION", 27),
        ("COM_STMT_FETCH", 28),
    ];
    v.extend(coms.iter().map(|(n, c)| (*n, i64::from(*c))));
    v.push(("COM_DAEMON", 29));
    let types: [(&str, i64); 27] = [
        ("MYSQL_TYPE_DECIMAL", 0),
        ("MYSQL_TYPE_TINY", 1),
        ("MYSQL_TYPE_SHORT", 2),
        ("MYSQL_TYPE_LONG", 3),
        ("MYSQL_TYPE_FLOAT", 4),
        ("MYSQL_TYPE_DOUBLE", 5),
        ("MYSQL_TYPE_NULL", 6),
        ("MYSQL_TYPE_TIMESTAMP", 7),
        ("MYSQL_TYPE_LONGLONG", 8),
        ("MYSQL_TYPE_INT24", 9),
        ("MYSQL_TYPE_DATE", 10),
        ("MYSQL_TYPE_TIME", 11),
        ("MYSQL_TYPE_DATETIME", 12),
        ("MYSQL_TYPE_YEAR", 13),
        ("MYSQL_TYPE_NEWDATE", 14),
        ("MYSQL_TYPE_BIT", 16),
        ("MYSQL_TYPE_NEWDECIMAL", 246),
        ("MYSQL_TYPE_ENUM", 247),
        ("MYSQL_TYPE_SET", 248),
        ("MYSQL_TYPE_TINY_BLOB", 249),
        ("MYSQL_TYPE_MEDIUM_BLOB", 250),
        ("MYSQL_TYPE_LONG_BLOB", 251),
        ("MYSQL_TYPE_BLOB", 252),
        ("MYSQL_TYPE_VAR_STRING", 253),
        ("MYSQL_TYPE_STRING", 254),
        ("MYSQL_TYPE_GEOMETRY", 255),
        ("MYSQL_TYPE_VARCHAR", 15),
    ];
    v.extend(types);
    v
}
