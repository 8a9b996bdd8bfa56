//! The `user_data` of every submission: which operation kind it is, which socket slab entry it
//! belongs to and that entry's generation, so a completion that arrives after its socket was
//! closed and the entry reused is recognised as stale.
//!
//! Layout (64 bits): `kind` in bits 56..64, `generation` in bits 32..56 (24 bits, wrapping),
//! `index` in bits 0..32.

/// What a submission was. Each kind has at most one operation in flight per socket, except
/// `Accept` (one per listener, `index` = listener number) and `Tick`.
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
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        Some(match v {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Socket,
            5 => OpKind::SetOpt,
            6 => OpKind::Connect,
            7 => OpKind::ConnectTimeout,
            8 => OpKind::Close,
            9 => OpKind::Cancel,
            10 => OpKind::Bind,
            11 => OpKind::Shutdown,
            _ => return None,
        })
    }
}

const GEN_MASK: u32 = 0x00ff_ffff;

/// Packs an operation's identity into `user_data`.
pub fn encode(kind: OpKind, index: u32, generation: u32) -> u64 {
    ((kind as u64) << 56) | (((generation & GEN_MASK) as u64) << 32) | index as u64
}

/// Unpacks `user_data`; `None` for values this runtime never produces.
pub fn decode(user_data: u64) -> Option<(OpKind, u32, u32)> {
    let kind = OpKind::from_u8((user_data >> 56) as u8)?;
    let generation = ((user_data >> 32) as u32) & GEN_MASK;
    Some((kind, user_data as u32, generation))
}

/// The next generation after `g`, within the 24 bits `user_data` carries.
pub fn next_generation(g: u32) -> u32 {
    g.wrapping_add(1) & GEN_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind_and_extreme_values() {
        for kind in [
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
        ] {
            for (idx, gen) in [(0, 0), (u32::MAX, GEN_MASK), (12345, 77)] {
                assert_eq!(decode(encode(kind, idx, gen)), Some((kind, idx, gen)));
            }
        }
    }

    #[test]
    fn generation_wraps_within_24_bits() {
        assert_eq!(next_generation(GEN_MASK), 0);
        assert_eq!(decode(encode(OpKind::Recv, 1, GEN_MASK + 5)).unwrap().2, 4);
    }

    #[test]
    fn foreign_user_data_is_rejected() {
        assert_eq!(decode(0), None);
        assert_eq!(decode(0xff << 56), None);
    }
}
