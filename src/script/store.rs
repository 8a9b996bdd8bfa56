//! `proxy.global`: values scripts share across connections and across every worker's VM. The
//! store holds copies (nil, booleans, numbers, strings, nested tables); a script reads a scalar
//! as a copy and a nested table as a view by path, so `proxy.global.config.x = 1` writes
//! through. Behind one mutex: scripts touch it rarely compared with packets.

use std::collections::BTreeMap;
use std::sync::Mutex;

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
        store
    }

    /// The value at `path` + `key` (a table comes back whole: the caller shows a view of it).
    pub fn get(&self, path: &[Key], key: &Key) -> Option<Value> {
        let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        let table = walk(&root, path)?;
        table.get(key).map(|v| match v {
            Value::Table(_) => Value::Table(BTreeMap::new()),
            other => other.clone(),
        })
    }

    /// The keys of the table at `path` (empty when `path` names none), in the store's order.
    pub fn keys(&self, path: &[Key]) -> Vec<Key> {
        let root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        walk(&root, path).map_or_else(Vec::new, |t| t.keys().cloned().collect())
    }

    /// Sets (or, with `None`, removes) the value at `path` + `key`; false when `path` does not
    /// name a table.
    pub fn set(&self, path: &[Key], key: Key, value: Option<Value>) -> bool {
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
    }
}
