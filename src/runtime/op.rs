//! The `user_data` of every submission: which operation kind it is and which socket-table entry
//! (index and generation, a [`Key`]) it belongs to, so a completion that arrives after its socket
//! was closed and the entry reused is recognised as stale.
//!
//! Layout (64 bits): `kind` in bits 56..64, the packed key below (generation in bits 32..56,
//! index in bits 0..32). Accepts carry `listener << 8 | accept slot` as their index; operations
//! of no socket (the wake-up read, cancels of accepts) carry [`NO_SOCKET`].

use super::slab::Key;

/// What a submission was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Socket = 4,
    SetOpt = 5,
    Connect = 6,
    ConnectTimeout = 7,
    Close = 8,
    Cancel = 9,
    Bind = 10,
    Shutdown = 11,
    Wake = 12,
}

impl OpKind {
    const ALL: [OpKind; 12] = [
        OpKind::Accept,
        OpKind::Recv,
        OpKind::Send,
        OpKind::Socket,
        OpKind::SetOpt,
        OpKind::Connect,
        OpKind::ConnectTimeout,
        OpKind::Close,
        OpKind::Cancel,
        OpKind::Bind,
        OpKind::Shutdown,
        OpKind::Wake,
    ];

    fn from_u8(v: u8) -> Option<OpKind> {
        OpKind::ALL.iter().copied().find(|k| *k as u8 == v)
    }
}

/// The key of operations that belong to no socket.
pub const NO_SOCKET: Key = Key {
    index: u32::MAX,
    generation: 0,
};

/// Packs an operation's identity into `user_data`.
pub fn encode(kind: OpKind, key: Key) -> u64 {
    ((kind as u64) << 56) | key.pack()
}

/// Unpacks `user_data`; `None` for values this runtime never produces.
pub fn decode(user_data: u64) -> Option<(OpKind, Key)> {
    let kind = OpKind::from_u8((user_data >> 56) as u8)?;
    Some((kind, Key::unpack(user_data)))
}

/// The `Key` an accept carries: listener and accept slot.
pub fn accept_key(listener: u32, slot: u32) -> Key {
    Key {
        index: listener << 8 | slot,
        generation: 0,
    }
}

/// The listener and accept slot of an accept's key.
pub fn accept_of(key: Key) -> (u32, u32) {
    (key.index >> 8, key.index & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind_and_extreme_values() {
        for kind in OpKind::ALL {
            for (index, generation) in [(0, 0), (u32::MAX, 0x00ff_ffff), (12345, 77)] {
                let key = Key { index, generation };
                assert_eq!(decode(encode(kind, key)), Some((kind, key)));
            }
        }
        assert_eq!(accept_of(accept_key(3, 17)), (3, 17));
    }

    #[test]
    fn foreign_user_data_is_rejected() {
        assert_eq!(decode(0), None);
        assert_eq!(decode(0xff << 56), None);
    }
}
