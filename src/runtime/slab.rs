//! A generation-checked slab: entries addressed by [`Key`] (index + generation), so a key kept
//! after its entry was freed and the index reused finds nothing instead of the newcomer. The
//! worker's socket table and the services' connection tables are all built on it; a key packs
//! into 56 bits of a `u64` token (the upper byte is left for the caller's kind tag).

/// Bits of the generation a key carries (it wraps within them).
const GEN_BITS: u32 = 24;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// Where an entry lives and which occupant of that place it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub index: u32,
    pub generation: u32,
}

impl Key {
    /// The key packed into the low 56 bits of a token: generation in bits 32..56, index below.
    pub fn pack(self) -> u64 {
        (u64::from(self.generation & GEN_MASK) << 32) | u64::from(self.index)
    }

    /// The key from a token made by [`Key::pack`] (the upper byte is ignored).
    pub fn unpack(token: u64) -> Key {
        Key {
            index: token as u32,
            generation: (token >> 32) as u32 & GEN_MASK,
        }
    }
}

/// Entries of type `T` with reusable places. Freed places are reused last-in first-out, which
/// keeps the live set dense.
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slab<T> {
    pub const fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    pub fn with_capacity(n: usize) -> Slab<T> {
        Slab {
            entries: Vec::with_capacity(n),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> Key {
        self.insert_with(|_| value)
    }

    /// Stores the value `make` builds from the key it will have.
    pub fn insert_with(&mut self, make: impl FnOnce(Key) -> T) -> Key {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push((0, None));
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[index as usize];
        let key = Key {
            index,
            generation: e.0,
        };
        e.1 = Some(make(key));
        self.live += 1;
        key
    }

    pub fn get(&self, key: Key) -> Option<&T> {
        match self.entries.get(key.index as usize) {
            Some((g, Some(v))) if *g == key.generation => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.entries.get_mut(key.index as usize) {
            Some((g, Some(v))) if *g == key.generation => Some(v),
            _ => None,
        }
    }

    /// Removes the entry; later lookups with `key` find nothing.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let e = self.entries.get_mut(key.index as usize)?;
        if e.0 != key.generation || e.1.is_none() {
            return None;
        }
        let v = e.1.take();
        e.0 = (e.0 + 1) & GEN_MASK;
        self.free.push(key.index);
        self.live -= 1;
        v
    }

    /// The entry at place `index` if one is stored there (for walks that resume where they
    /// stopped; places run from 0 to [`Slab::places`]).
    pub fn at_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index).and_then(|(_, v)| v.as_mut())
    }

    /// Places the table has (used or free).
    pub fn places(&self) -> usize {
        self.entries.len()
    }

    /// Entries stored now.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The keys of every entry stored now (a snapshot, so the caller may remove while walking).
    pub fn keys(&self) -> Vec<Key> {
        self.iter().map(|(k, _)| k).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.entries.iter().enumerate().filter_map(|(i, (g, v))| {
            v.as_ref().map(|v| {
                (
                    Key {
                        index: i as u32,
                        generation: *g,
                    },
                    v,
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_key_finds_nothing_after_reuse() {
        let mut s = Slab::new();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(b.index, a.index, "the place is reused");
        assert_ne!(b.generation, a.generation);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn keys_pack_into_56_bits_and_generations_wrap() {
        let k = Key {
            index: u32::MAX,
            generation: GEN_MASK,
        };
        assert_eq!(k.pack() >> 56, 0);
        assert_eq!(Key::unpack(k.pack() | 0xab << 56), k);
        let mut s = Slab::new();
        let mut last = s.insert(0u8);
        for _ in 0..(GEN_MASK + 2) {
            s.remove(last);
            last = s.insert(0u8);
        }
        assert_eq!(last.generation, 1, "wrapped once within 24 bits");
    }

    #[test]
    fn iteration_sees_live_entries_only() {
        let mut s = Slab::new();
        let keys: Vec<Key> = (0..5).map(|i| s.insert(i)).collect();
        s.remove(keys[1]);
        s.remove(keys[3]);
        let seen: Vec<i32> = s.iter().map(|(_, v)| *v).collect();
        assert_eq!(seen, vec![0, 2, 4]);
        assert_eq!(s.keys(), vec![keys[0], keys[2], keys[4]]);
    }
}
