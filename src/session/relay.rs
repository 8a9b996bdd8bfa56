//! A packet relay for streams the proxy must act on packet by packet (a pooled session's
//! commands, a pooled backend's responses): for every packet, once its head is known, the
//! caller decides its [`Fate`] — its bytes go on as they are (ranges of the received buffer, no
//! copy), are captured whole (to be parsed, and then sent as they are or rewritten), or are
//! dropped. A packet whose header or head is not complete at the end of a chunk is held back
//! (a few bytes, copied) and decided with the next chunk, so no byte ever leaves before the
//! decision about its packet.

use super::action::Action;
use crate::protocol::constants::HEADER_LEN;
use crate::protocol::framing::{PacketHead, PacketStream, HEAD_CAP};

/// What happens to a packet's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Sent on as they are.
    Forward,
    /// Gathered into one buffer and handed back whole (header included).
    Capture,
    /// Dropped.
    Drop,
}

/// What the relay gives back for a chunk, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes `from..to` of the chunk, to send on.
    Bytes { from: usize, to: usize },
    /// Held-back bytes of an earlier chunk, to send on.
    Held(Vec<u8>),
    /// A captured packet, whole.
    Packet(Vec<u8>),
}

impl Piece {
    /// The action that sends these bytes on to the other side (captured packets go back to the
    /// caller, who decides).
    pub fn forward_action(self) -> Option<Action> {
        match self {
            Piece::Bytes { from, to } => Some(Action::Forward { from, to }),
            Piece::Held(v) => Some(Action::SendPeer(v)),
            Piece::Packet(_) => None,
        }
    }
}

/// A packet being captured.
#[derive(Debug)]
struct Capture {
    /// Header and payload length.
    total: usize,
    bytes: Vec<u8>,
}

/// The relay state of one direction of one connection.
#[derive(Debug, Default)]
pub struct Relay {
    stream: PacketStream,
    /// Held-back bytes: the start of a packet whose head is not complete.
    held: Vec<u8>,
    /// The fate of the bytes from `cursor` on (the packet they belong to).
    fate: Option<Fate>,
    /// Stream offset up to which bytes have been disposed of.
    cursor: u64,
    capture: Option<Capture>,
}

/// One contiguous stretch of input at a stream offset: held bytes (joined with the start of the
/// chunk) or part of the chunk, which starts at `chunk_off` in it.
struct Segment<'a> {
    bytes: &'a [u8],
    start: u64,
    /// Where the segment starts in the chunk; `None` for held (owned) bytes.
    chunk_off: Option<usize>,
}

impl Relay {
    pub fn new() -> Relay {
        Relay::default()
    }

    /// True when no packet is half-relayed (a new command or response may begin).
    pub fn at_boundary(&self) -> bool {
        self.stream.at_logical_boundary() && self.held.is_empty()
    }

    /// Feeds `chunk`; `decide` names each packet's fate from its head; the pieces come out in
    /// order through `out`. `decide` errors stop the relay (the connection is then ended).
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        decide: &mut dyn FnMut(&PacketHead<'_>) -> Result<Fate, E>,
        out: &mut dyn FnMut(Piece),
    ) -> Result<(), E> {
        let start = self.stream.position();
        if self.held.is_empty() {
            let seg = Segment {
                bytes: chunk,
                start,
                chunk_off: Some(0),
            };
            self.feed_segment(&seg, decide, out)?;
            self.hold_unreported(&[], chunk);
            return Ok(());
        }
        // The held packet start, joined with enough of the chunk to complete its head.
        let mut k = chunk.len().min(HEADER_LEN + HEAD_CAP);
        let held_len = self.held.len();
        let mut joined = std::mem::take(&mut self.held);
        joined.extend_from_slice(&chunk[..k]);
        let first = Segment {
            bytes: &joined,
            start,
            chunk_off: None,
        };
        self.feed_segment(&first, decide, out)?;
        if k < chunk.len() {
            if let Some(s) = self.stream.unreported_start() {
                // A later packet starts in the joined bytes and its head runs on into the rest
                // of the chunk: it is fed again from its start, in the chunk (the held packet
                // itself is complete: its head fits in what was joined).
                self.stream.rewind_unreported();
                k = (s - start) as usize - held_len;
            }
        }
        let first = &joined[..held_len + k];
        let rest = Segment {
            bytes: &chunk[k..],
            start: start + first.len() as u64,
            chunk_off: Some(k),
        };
        self.feed_segment(&rest, decide, out)?;
        self.hold_unreported(first, &chunk[k..]);
        Ok(())
    }

    fn feed_segment<E>(
        &mut self,
        seg: &Segment<'_>,
        decide: &mut dyn FnMut(&PacketHead<'_>) -> Result<Fate, E>,
        out: &mut dyn FnMut(Piece),
    ) -> Result<(), E> {
        let (fate, cursor, capture) = (&mut self.fate, &mut self.cursor, &mut self.capture);
        self.stream.feed(seg.bytes, |p| {
            dispose(seg, cursor, p.start, *fate, capture, out);
            let f = decide(&p)?;
            *fate = Some(f);
            if f == Fate::Capture {
                let total = HEADER_LEN + p.len as usize;
                *capture = Some(Capture {
                    total,
                    bytes: Vec::with_capacity(total),
                });
            }
            Ok(())
        })?;
        let end = match self.stream.unreported_start() {
            Some(s) if s >= seg.start => s,
            _ => seg.start + seg.bytes.len() as u64,
        };
        dispose(seg, cursor, end, *fate, capture, out);
        Ok(())
    }

    /// Keeps the bytes of a trailing packet whose head is incomplete (they lie at the end of
    /// `first` followed by `second`), to feed them again with the next chunk.
    fn hold_unreported(&mut self, first: &[u8], second: &[u8]) {
        let Some(start) = self.stream.unreported_start() else {
            return;
        };
        let from_end = (self.stream.position() - start) as usize;
        let mut bytes = Vec::with_capacity(from_end);
        if from_end > second.len() {
            bytes.extend_from_slice(&first[first.len() - (from_end - second.len())..]);
            bytes.extend_from_slice(second);
        } else {
            bytes.extend_from_slice(&second[second.len() - from_end..]);
        }
        self.stream.rewind_unreported();
        self.held = bytes;
    }
}

/// Disposes of the segment's bytes from `cursor` up to `until` (a stream offset) with `fate`.
fn dispose(
    seg: &Segment<'_>,
    cursor: &mut u64,
    until: u64,
    fate: Option<Fate>,
    capture: &mut Option<Capture>,
    out: &mut dyn FnMut(Piece),
) {
    let from = (*cursor).max(seg.start);
    let to = until.min(seg.start + seg.bytes.len() as u64);
    if to <= from {
        return;
    }
    *cursor = to;
    let (a, b) = ((from - seg.start) as usize, (to - seg.start) as usize);
    match (fate, seg.chunk_off) {
        (Some(Fate::Forward), None) => out(Piece::Held(seg.bytes[a..b].to_vec())),
        (Some(Fate::Forward), Some(off)) => out(Piece::Bytes {
            from: a + off,
            to: b + off,
        }),
        (Some(Fate::Capture), _) => {
            let c = capture.as_mut().expect("a capture for a captured packet");
            c.bytes.extend_from_slice(&seg.bytes[a..b]);
            if c.bytes.len() >= c.total {
                let c = capture.take().expect("checked");
                out(Piece::Packet(c.bytes));
            }
        }
        (Some(Fate::Drop) | None, _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::write_packet;

    fn wire(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            write_packet(&mut out, i as u8, p);
        }
        out
    }

    /// Relays `wire` in chunks of `cut` bytes; captures packets starting with `c`, drops those
    /// starting with `d`; returns (forwarded bytes, captured packets).
    fn run(wire: &[u8], cut: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut r = Relay::new();
        let (mut fwd, mut caps) = (Vec::new(), Vec::new());
        for chunk in wire.chunks(cut) {
            let mut decide = |p: &PacketHead<'_>| {
                Ok::<Fate, ()>(match p.head.first() {
                    Some(b'c') => Fate::Capture,
                    Some(b'd') => Fate::Drop,
                    _ => Fate::Forward,
                })
            };
            let mut out = |piece: Piece| match piece {
                Piece::Bytes { from, to } => fwd.extend_from_slice(&chunk[from..to]),
                Piece::Held(v) => fwd.extend_from_slice(&v),
                Piece::Packet(p) => caps.push(p),
            };
            r.feed(chunk, &mut decide, &mut out).unwrap();
        }
        assert!(r.at_boundary());
        (fwd, caps)
    }

    #[test]
    fn every_packet_meets_its_fate_whatever_the_chunking() {
        let big = vec![b'x'; 300];
        let packets: Vec<&[u8]> = vec![b"keep", b"capture me", b"drop me", &big, b"", b"c2"];
        let all = wire(&packets);
        let mut want_fwd = Vec::new();
        write_packet(&mut want_fwd, 0, b"keep");
        write_packet(&mut want_fwd, 3, &big);
        write_packet(&mut want_fwd, 4, b"");
        let mut c1 = Vec::new();
        write_packet(&mut c1, 1, b"capture me");
        let mut c2 = Vec::new();
        write_packet(&mut c2, 5, b"c2");
        for cut in [1, 2, 3, 4, 5, 7, 13, 64, 100, 1000] {
            let (fwd, caps) = run(&all, cut);
            assert_eq!(fwd, want_fwd, "forwarded, chunks of {cut}");
            assert_eq!(
                caps,
                vec![c1.clone(), c2.clone()],
                "captured, chunks of {cut}"
            );
        }
    }

    #[test]
    fn many_small_packets_survive_every_chunking() {
        // Rows of a result set: packets shorter than a head, so that after a held packet start
        // more packets follow within the bytes joined to it, one of them running past them.
        let rows: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                let text = (i * 7919 % 100_000).to_string();
                let mut row = vec![text.len() as u8];
                row.extend_from_slice(text.as_bytes());
                row
            })
            .collect();
        let packets: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let all = wire(&packets);
        for cut in (1..=120).chain([1000, 4096]) {
            let (fwd, caps) = run(&all, cut);
            assert!(caps.is_empty());
            assert!(fwd == all, "forwarded bytes differ, chunks of {cut}");
        }
    }

    #[test]
    fn nothing_of_a_packet_leaves_before_its_head_is_known() {
        let all = wire(&[b"capture"]);
        let mut r = Relay::new();
        let mut pieces = Vec::new();
        let mut decide = |_: &PacketHead<'_>| Ok::<Fate, ()>(Fate::Capture);
        r.feed(&all[..3], &mut decide, &mut |p| pieces.push(p))
            .unwrap();
        assert!(pieces.is_empty(), "a partial header was held: {pieces:?}");
        assert!(!r.at_boundary());
        r.feed(&all[3..], &mut decide, &mut |p| pieces.push(p))
            .unwrap();
        assert_eq!(pieces, vec![Piece::Packet(all)]);
    }
}
