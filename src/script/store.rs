//! `proxy.global`: values scripts share across connections and across every worker's VM. The
//! store holds copies (nil, booleans, numbers, strings, nested tables); a script reads a scalar
//! as a copy and a nested table as a view by path, so `proxy.global.config.x = 1` writes
//! through. Behind one mutex: scripts touch it rarely compared with packets.
//!
//! A hook call's reads and writes of the store are atomic together: the first access makes the
//! calling thread the store's holder until its VM ends the call ([`Store::leave`]), and another
//! worker's hook waits meanwhile, so `proxy.global.n = proxy.global.n + 1` loses no update (MySQL
//! Proxy, with one Lua state behind one lock, gave scripts that for every hook).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::thread::{self, ThreadId};

/// A key of a stored table: Lua's strings and numbers (integral numbers as integers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Int(i64),
    Str(Vec<u8>),
}

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Vec<u8>),
    Table(BTreeMap<Key, Value>),
}

/// The shared root table.
#[derive(Debug, Default)]
pub struct Store {
    root: Mutex<BTreeMap<Key, Value>>,
    /// The thread whose hook call uses the store now.
    holder: Mutex<Option<ThreadId>>,
    released: Condvar,
}

impl Store {
    /// A store holding an empty `config` table, as MySQL Proxy's `proxy.global.config` (scripts
    /// keep their settings there: `proxy.global.config.rwsplit = {...}`).
    pub fn with_config_table() -> Store {
        let store = Store::default();
        store.set(
            &[],
            Key::Str(b"config".to_vec()),
            Some(Value::Table(BTreeMap::new())),
        );
        store.leave();
        store
    }

    /// Makes the calling thread the holder (waiting while another thread is); a no-op for the
    /// holder itself.
    fn enter(&self) {
        let me = thread::current().id();
        let mut holder = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        while holder.is_some_and(|h| h != me) {
            holder = self
                .released
                .wait(holder)
                .unwrap_or_else(|p| p.into_inner());
        }
        *holder = Some(me);
    }

    /// The calling thread's hook call ended: another thread may take the store.
    pub fn leave(&self) {
        let me = thread::current().id();
        let mut holder = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if *holder == Some(me) {
            *holder = None;
            self.released.notify_one();
        }
    }

    /// The value at `path` + `key` (a table comes back whole: the caller shows a view of it).
    pub fn get(&self, path: &[Key], key: &Key) -> Option<Value> {
        self.enter();
        let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        let table = walk(&root, path)?;
        table.get(key).map(|v| match v {
            Value::Table(_) => Value::Table(BTreeMap::new()),
            other => other.clone(),
        })
    }

    /// The keys of the table at `path` (empty when `path` names none), in the store's order.
    pub fn keys(&self, path: &[Key]) -> Vec<Key> {
        self.enter();
        let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        walk(&root, path).map_or_else(Vec::new, |t| t.keys().cloned().collect())
    }

    /// Sets (or, with `None`, removes) the value at `path` + `key`; false when `path` does not
    /// name a table.
    pub fn set(&self, path: &[Key], key: Key, value: Option<Value>) -> bool {
        self.enter();
        let mut root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        let Some(table) = walk_mut(&mut root, path) else {
            return false;
        };
        match value {
            Some(v) => table.insert(key, v),
            None => table.remove(&key),
        };
        true
    }
}

fn walk<'a>(mut t: &'a BTreeMap<Key, Value>, path: &[Key]) -> Option<&'a BTreeMap<Key, Value>> {
    for k in path {
        match t.get(k)? {
            Value::Table(inner) => t = inner,
            _ => return None,
        }
    }
    Some(t)
}

fn walk_mut<'a>(
    mut t: &'a mut BTreeMap<Key, Value>,
    path: &[Key],
) -> Option<&'a mut BTreeMap<Key, Value>> {
    for k in path {
        match t.get_mut(k)? {
            Value::Table(inner) => t = inner,
            _ => return None,
        }
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Key {
        Key::Str(x.into())
    }

    #[test]
    fn nested_tables_are_written_through_their_path() {
        let store = Store::default();
        assert!(store.set(&[], s("config"), Some(Value::Table(BTreeMap::new()))));
        assert!(store.set(&[s("config")], s("x"), Some(Value::Int(1))));
        assert_eq!(store.get(&[s("config")], &s("x")), Some(Value::Int(1)));
        assert_eq!(
            store.get(&[], &s("config")),
            Some(Value::Table(BTreeMap::new()))
        );
        assert!(!store.set(&[s("nope")], s("x"), Some(Value::Int(1))));
        assert!(store.set(&[s("config")], s("x"), None));
        assert_eq!(store.get(&[s("config")], &s("x")), None);
        store.leave();
    }

    #[test]
    fn a_holders_read_modify_write_loses_no_update() {
        let store = std::sync::Arc::new(Store::default());
        store.set(&[], s("n"), Some(Value::Int(0)));
        store.leave();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = std::sync::Arc::clone(&store);
                thread::spawn(move || {
                    for _ in 0..1000 {
                        let Some(Value::Int(n)) = store.get(&[], &s("n")) else {
                            panic!("n is gone");
                        };
                        thread::yield_now();
                        store.set(&[], s("n"), Some(Value::Int(n + 1)));
                        store.leave();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.get(&[], &s("n")), Some(Value::Int(4000)));
    }
}
