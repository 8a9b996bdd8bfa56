//! Packet framing: the 4-byte header (3-byte little-endian length, 1-byte sequence id), payloads of
//! 16 MiB and more split into continuation packets, and a streaming splitter that sees packet
//! boundaries in a byte stream arriving in arbitrary chunks without buffering whole packets.

/// How many leading payload bytes of each physical packet [`PacketStream`] hands to its caller.
/// Enough for every decision the response scanner makes (OK/EOF status flags, prepare-OK counts).
pub const HEAD_CAP: usize = 64;

/// One physical packet as seen by the streaming splitter: its header and its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHead<'a> {
    /// Payload length of this physical packet (0..=0xFF_FFFF).
    pub len: u32,
    /// Sequence id from the header.
    pub seq: u8,
    /// The first `min(len, HEAD_CAP)` bytes of the payload.
    pub head: &'a [u8],
    /// True when the previous physical packet had a payload of exactly 0xFF_FFFF bytes, so this
    /// packet continues the same logical payload (it is not a new command or response packet).
    pub continuation: bool,
    /// Where this packet's header starts in the chunk being fed; `None` when it started in an
    /// earlier chunk.
    pub at: Option<usize>,
    /// Where this packet's header starts in the whole stream (bytes fed before it), so a caller
    /// can find its payload in the chunks that carry it.
    pub start: u64,
}

use std::borrow::Cow;

use super::constants::{HEADER_LEN, MAX_PAYLOAD_LEN};
use super::error::{ProtoError, Result};

/// A decoded 4-byte packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Payload length (0..=0xFF_FFFF).
    pub len: u32,
    /// Sequence id.
    pub seq: u8,
}

/// Decode a 4-byte packet header.
pub fn parse_header(h: [u8; 4]) -> PacketHeader {
    PacketHeader {
        len: u32::from_le_bytes([h[0], h[1], h[2], 0]),
        seq: h[3],
    }
}

/// Append a packet header. Only the low 24 bits of `len` are written; callers pass at most
/// 0xFF_FFFF ([`write_packet`] splits longer payloads).
pub fn put_header(out: &mut Vec<u8>, len: u32, seq: u8) {
    debug_assert!(len as usize <= MAX_PAYLOAD_LEN);
    let l = len.to_le_bytes();
    out.extend_from_slice(&[l[0], l[1], l[2], seq]);
}

fn header_at(buf: &[u8], at: usize) -> Option<PacketHeader> {
    let h = buf.get(at..at.checked_add(HEADER_LEN)?)?;
    Some(parse_header([h[0], h[1], h[2], h[3]]))
}

/// One whole physical packet off the front of `buf`; `None` when incomplete.
/// Returns (header, payload, bytes consumed including the header).
pub fn split_packet(buf: &[u8]) -> Option<(PacketHeader, &[u8], usize)> {
    let h = header_at(buf, 0)?;
    let end = HEADER_LEN + h.len as usize;
    let payload = buf.get(HEADER_LEN..end)?;
    Some((h, payload, end))
}

/// One logical packet: one or more physical packets joined (every one but the last has a payload
/// of exactly 0xFF_FFFF bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalPacket<'a> {
    /// Sequence id of the first physical packet.
    pub first_seq: u8,
    /// Sequence id of the last physical packet (the next packet in the exchange uses last_seq + 1).
    pub last_seq: u8,
    /// The joined payload: borrowed from the input when it is one physical packet.
    pub payload: Cow<'a, [u8]>,
    /// Bytes of input the logical packet occupies (all headers included).
    pub consumed: usize,
}

/// One whole logical packet off the front of `buf`. `Ok(None)` when incomplete;
/// `Err(TooLarge)` as soon as the headers seen so far announce more than `max_len` payload bytes.
pub fn split_logical(buf: &[u8], max_len: usize) -> Result<Option<LogicalPacket<'_>>> {
    let mut at = 0usize;
    let mut total: u64 = 0;
    let mut first_seq = None;
    let mut pieces = 0usize;
    let last_seq = loop {
        let Some(h) = header_at(buf, at) else {
            return Ok(None);
        };
        first_seq.get_or_insert(h.seq);
        total += u64::from(h.len);
        if total > max_len as u64 {
            return Err(ProtoError::TooLarge {
                len: total,
                max: max_len as u64,
            });
        }
        let end = at + HEADER_LEN + h.len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        at = end;
        pieces += 1;
        if h.len as usize != MAX_PAYLOAD_LEN {
            break h.seq;
        }
    };
    let first_seq = first_seq.unwrap_or(last_seq);
    let payload = if pieces == 1 {
        Cow::Borrowed(&buf[HEADER_LEN..at])
    } else {
        let mut joined = Vec::with_capacity(total as usize);
        let mut p = 0usize;
        while p < at {
            let Some((_, piece, used)) = split_packet(&buf[p..at]) else {
                break;
            };
            joined.extend_from_slice(piece);
            p += used;
        }
        Cow::Owned(joined)
    };
    Ok(Some(LogicalPacket {
        first_seq,
        last_seq,
        payload,
        consumed: at,
    }))
}

/// Append `payload` framed as one logical packet whose first physical packet has sequence id
/// `seq`: pieces of 0xFF_FFFF bytes, and a trailing empty packet when the length is an exact
/// multiple of 0xFF_FFFF (including exactly 0xFF_FFFF). Returns the next sequence id (wrapping).
pub fn write_packet(out: &mut Vec<u8>, seq: u8, payload: &[u8]) -> u8 {
    let pieces = payload.len() / MAX_PAYLOAD_LEN + 1;
    out.reserve(payload.len() + pieces * HEADER_LEN);
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD_LEN);
        let (piece, tail) = rest.split_at(n);
        put_header(out, n as u32, seq);
        out.extend_from_slice(piece);
        seq = seq.wrapping_add(1);
        rest = tail;
        if n < MAX_PAYLOAD_LEN {
            return seq;
        }
    }
}

/// How far [`PacketStream::feed_until`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// The whole chunk was consumed.
    All,
    /// Stopped before a packet: bytes from this offset on must be fed again later.
    StoppedAt(usize),
}

/// Streaming packet splitter for a byte stream that arrives in arbitrary chunks. It keeps only a
/// fixed-size inline buffer (a header plus [`HEAD_CAP`] payload bytes) and never allocates:
/// payload bytes beyond the head are counted, not stored.
#[derive(Debug, Clone)]
pub struct PacketStream {
    /// Header bytes (0..4) then head bytes of the current packet, when they straddle chunks.
    buf: [u8; HEADER_LEN + HEAD_CAP],
    /// Header bytes of the current packet seen so far (0..=4); 0 means at a packet boundary.
    header_seen: u8,
    /// Whether the current packet (header complete) has been reported.
    reported: bool,
    /// Whether the current packet continues the previous one.
    continuation: bool,
    /// Whether the packet after the current one is a continuation (current len == 0xFF_FFFF).
    next_continuation: bool,
    /// Current packet's header (valid when header_seen == 4).
    len: u32,
    seq: u8,
    /// Payload bytes of the current packet seen so far.
    payload_seen: u32,
    /// Stream offset of the chunk being fed (bytes fed before it).
    base: u64,
    /// Stream offset of the current packet's header.
    start: u64,
}

impl Default for PacketStream {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketStream {
    pub const fn new() -> Self {
        PacketStream {
            buf: [0; HEADER_LEN + HEAD_CAP],
            header_seen: 0,
            reported: false,
            continuation: false,
            next_continuation: false,
            len: 0,
            seq: 0,
            payload_seen: 0,
            base: 0,
            start: 0,
        }
    }

    /// Bytes fed so far: the stream offset of the next byte.
    pub fn position(&self) -> u64 {
        self.base
    }

    /// Feed the next chunk of the stream. Calls `on_packet` once per physical packet, in stream
    /// order, as soon as its header and first `min(len, HEAD_CAP)` payload bytes have been seen.
    /// Stops at and returns the first error `on_packet` returns (the state is then unspecified).
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        on_packet: impl FnMut(PacketHead<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let r = self.feed_chunk(chunk, on_packet);
        self.base += chunk.len() as u64;
        r
    }

    fn feed_chunk<E>(
        &mut self,
        chunk: &[u8],
        mut on_packet: impl FnMut(PacketHead<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut input = chunk;
        // Where the current packet's header started in this chunk (None: in an earlier one).
        let mut start_at: Option<usize> = None;
        loop {
            if self.header_seen == 0 {
                // Fast path: a whole header and head inside this chunk are reported in place.
                if let Some(h) = header_at(input, 0) {
                    let want = (h.len as usize).min(HEAD_CAP);
                    if let Some(head) = input.get(HEADER_LEN..HEADER_LEN + want) {
                        let at = chunk.len() - input.len();
                        self.start = self.base + at as u64;
                        self.start_packet(h);
                        self.reported = true;
                        on_packet(self.head_view(head, Some(at)))?;
                        let avail = input.len() - HEADER_LEN;
                        let take = avail.min(h.len as usize);
                        input = &input[HEADER_LEN + take..];
                        self.payload_seen = take as u32;
                        self.finish_if_done();
                        continue;
                    }
                }
                if input.is_empty() {
                    return Ok(());
                }
            }
            if self.header_seen == 0 {
                let at = chunk.len() - input.len();
                start_at = Some(at);
                self.start = self.base + at as u64;
            }
            if self.header_seen < HEADER_LEN as u8 {
                let have = self.header_seen as usize;
                let take = (HEADER_LEN - have).min(input.len());
                self.buf[have..have + take].copy_from_slice(&input[..take]);
                input = &input[take..];
                self.header_seen += take as u8;
                if (self.header_seen as usize) < HEADER_LEN {
                    return Ok(());
                }
                let h = parse_header([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                self.start_packet(h);
            }
            let want = (self.len as usize).min(HEAD_CAP);
            let seen = self.payload_seen as usize;
            if !self.reported {
                if seen < want {
                    let take = (want - seen).min(input.len());
                    self.buf[HEADER_LEN + seen..HEADER_LEN + seen + take]
                        .copy_from_slice(&input[..take]);
                    input = &input[take..];
                    self.payload_seen += take as u32;
                }
                if (self.payload_seen as usize) < want {
                    return Ok(());
                }
                self.reported = true;
                let head = &self.buf[HEADER_LEN..HEADER_LEN + want];
                on_packet(PacketHead {
                    len: self.len,
                    seq: self.seq,
                    head,
                    continuation: self.continuation,
                    at: start_at,
                    start: self.start,
                })?;
            }
            let left = (self.len - self.payload_seen) as usize;
            let take = left.min(input.len());
            input = &input[take..];
            self.payload_seen += take as u32;
            self.finish_if_done();
            if self.header_seen != 0 {
                // The chunk ended inside this packet's payload.
                return Ok(());
            }
        }
    }

    fn start_packet(&mut self, h: PacketHeader) {
        self.header_seen = HEADER_LEN as u8;
        self.len = h.len;
        self.seq = h.seq;
        self.payload_seen = 0;
        self.reported = false;
        self.continuation = self.next_continuation;
        self.next_continuation = h.len as usize == MAX_PAYLOAD_LEN;
    }

    fn head_view<'h>(&self, head: &'h [u8], at: Option<usize>) -> PacketHead<'h> {
        PacketHead {
            len: self.len,
            seq: self.seq,
            head,
            continuation: self.continuation,
            at,
            start: self.start,
        }
    }

    /// Like [`PacketStream::feed`], but `on_packet` may also answer `Ok(false)`: "not this
    /// packet yet". The stream then rewinds to just before that packet and the result says from
    /// which offset of `chunk` the caller must keep the bytes and feed them again later (0 when
    /// the packet began in an earlier chunk: the stream kept that part itself).
    pub fn feed_until<E>(
        &mut self,
        chunk: &[u8],
        mut on_packet: impl FnMut(PacketHead<'_>) -> std::result::Result<bool, E>,
    ) -> std::result::Result<Fed, E> {
        let before = self.clone();
        let mut stop: Option<(Option<usize>, bool)> = None;
        let r = self.feed(chunk, |p| match on_packet(p) {
            Ok(true) => Ok(()),
            Ok(false) => {
                stop = Some((p.at, p.continuation));
                Err(None)
            }
            Err(e) => Err(Some(e)),
        });
        match (r, stop) {
            (Ok(()), _) => Ok(Fed::All),
            (Err(Some(e)), _) => Err(e),
            (Err(None), Some((Some(at), continuation))) => {
                *self = PacketStream::new();
                self.next_continuation = continuation;
                self.base = before.base + at as u64;
                Ok(Fed::StoppedAt(at))
            }
            (Err(None), _) => {
                *self = before;
                Ok(Fed::StoppedAt(0))
            }
        }
    }

    fn finish_if_done(&mut self) {
        if self.header_seen as usize == HEADER_LEN && self.payload_seen == self.len {
            self.header_seen = 0;
        }
    }

    /// Where the last packet fed began, when its header or head is not complete yet (it has not
    /// been reported).
    pub fn unreported_start(&self) -> Option<u64> {
        // `reported` belongs to the previous packet until this one's header is complete.
        let partial_header = self.header_seen > 0 && (self.header_seen as usize) < HEADER_LEN;
        let partial_head = self.header_seen as usize == HEADER_LEN && !self.reported;
        (partial_header || partial_head).then_some(self.start)
    }

    /// Forgets the packet [`PacketStream::unreported_start`] names, as if its bytes had not been
    /// fed: they are to be fed again, with what follows them.
    pub fn rewind_unreported(&mut self) {
        let Some(start) = self.unreported_start() else {
            return;
        };
        if self.header_seen as usize == HEADER_LEN {
            // `start_packet` ran: undo its shift of the continuation flags.
            self.next_continuation = self.continuation;
        }
        self.header_seen = 0;
        self.payload_seen = 0;
        self.base = start;
    }

    /// True when the bytes fed so far end exactly at a packet end (or nothing was fed).
    pub fn at_boundary(&self) -> bool {
        self.header_seen == 0
    }

    /// Payload bytes of the current packet not yet fed; 0 at a boundary or while its header is
    /// still incomplete.
    pub fn payload_remaining(&self) -> usize {
        if self.header_seen as usize == HEADER_LEN {
            (self.len - self.payload_seen) as usize
        } else {
            0
        }
    }

    /// True when the bytes fed so far end exactly at the end of a logical packet: at a physical
    /// boundary and the last packet was not 0xFF_FFFF bytes long (no continuation is pending).
    pub fn at_logical_boundary(&self) -> bool {
        self.header_seen == 0 && !self.next_continuation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packets_report_their_stream_offsets_whatever_the_chunking() {
        let mut wire = Vec::new();
        let mut starts = Vec::new();
        for (i, len) in [0usize, 3, 70, 200, 1].iter().enumerate() {
            starts.push(wire.len() as u64);
            write_packet(&mut wire, i as u8, &vec![9; *len]);
        }
        for cut in [1usize, 2, 3, 5, 7, 64, 1000] {
            let mut s = PacketStream::new();
            let mut seen = Vec::new();
            for chunk in wire.chunks(cut) {
                s.feed(chunk, |p| {
                    seen.push(p.start);
                    Ok::<(), ()>(())
                })
                .unwrap();
            }
            assert_eq!(seen, starts, "chunks of {cut}");
            assert_eq!(s.position(), wire.len() as u64);
        }
        // A stop rewinds the offset too.
        let mut s = PacketStream::new();
        let fed = s.feed_until(&wire, |p| Ok::<bool, ()>(p.seq < 2)).unwrap();
        assert_eq!(fed, Fed::StoppedAt(starts[2] as usize));
        assert_eq!(s.position(), starts[2]);
    }

    #[test]
    fn header_round_trip() {
        let h = parse_header([0x2c, 0x01, 0x00, 0x07]);
        assert_eq!(h, PacketHeader { len: 300, seq: 7 });
        let mut out = Vec::new();
        put_header(&mut out, 0xff_ffff, 0xff);
        assert_eq!(out, [0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            parse_header([0xff, 0xff, 0xff, 0x00]).len as usize,
            MAX_PAYLOAD_LEN
        );
    }

    #[test]
    fn split_packet_needs_whole_packet() {
        // COM_QUERY "SELECT 1" as the mariadb CLI sent it.
        let pkt = b"\x09\x00\x00\x00\x03SELECT 1";
        for n in 0..pkt.len() {
            assert_eq!(split_packet(&pkt[..n]), None, "prefix of {n} bytes");
        }
        let mut two = pkt.to_vec();
        two.extend_from_slice(b"\x01\x00\x00\x00\x01");
        let (h, p, used) = split_packet(&two).unwrap();
        assert_eq!(h, PacketHeader { len: 9, seq: 0 });
        assert_eq!(p, b"\x03SELECT 1");
        assert_eq!(used, 13);
        let (h, p, used) = split_packet(&two[used..]).unwrap();
        assert_eq!((h.len, h.seq, p, used), (1, 0, &b"\x01"[..], 5));
    }

    #[test]
    fn write_packet_small_and_empty() {
        let mut out = Vec::new();
        assert_eq!(write_packet(&mut out, 3, b"abc"), 4);
        assert_eq!(out, b"\x03\x00\x00\x03abc");
        out.clear();
        assert_eq!(write_packet(&mut out, 255, b""), 0);
        assert_eq!(out, [0, 0, 0, 255]);
        let lp = split_logical(&out, 10).unwrap().unwrap();
        assert_eq!((lp.first_seq, lp.last_seq, lp.consumed), (255, 255, 4));
        assert!(lp.payload.is_empty());
        assert!(matches!(lp.payload, Cow::Borrowed(_)));
    }

    #[test]
    fn exactly_max_payload_gets_trailing_empty_packet() {
        let payload = patterned(MAX_PAYLOAD_LEN);
        let mut out = Vec::new();
        assert_eq!(write_packet(&mut out, 0, &payload), 2);
        assert_eq!(out.len(), MAX_PAYLOAD_LEN + 8);
        assert_eq!(&out[..4], &[0xff, 0xff, 0xff, 0x00]);
        assert_eq!(&out[out.len() - 4..], &[0x00, 0x00, 0x00, 0x01]);
        // Without the trailing empty packet the logical packet is incomplete.
        assert_eq!(split_logical(&out[..out.len() - 4], usize::MAX), Ok(None));
        let lp = split_logical(&out, MAX_PAYLOAD_LEN).unwrap().unwrap();
        assert_eq!((lp.first_seq, lp.last_seq, lp.consumed), (0, 1, out.len()));
        assert!(lp.payload[..] == payload[..]);
        assert!(matches!(lp.payload, Cow::Owned(_)));
    }

    #[test]
    fn exactly_16_mib_payload() {
        // 16 MiB = 0xFF_FFFF + 1: one full packet, then one packet of 1 byte.
        let payload = vec![0x5au8; 16 * 1024 * 1024];
        let mut out = Vec::new();
        assert_eq!(write_packet(&mut out, 0, &payload), 2);
        assert_eq!(out.len(), payload.len() + 8);
        assert_eq!(&out[..4], &[0xff, 0xff, 0xff, 0x00]);
        assert_eq!(
            &out[MAX_PAYLOAD_LEN + 4..MAX_PAYLOAD_LEN + 9],
            &[0x01, 0x00, 0x00, 0x01, 0x5a]
        );
        let lp = split_logical(&out, payload.len()).unwrap().unwrap();
        assert_eq!(lp.payload.len(), payload.len());
        assert_eq!(lp.last_seq, 1);
        assert_eq!(
            split_logical(&out, payload.len() - 1),
            Err(ProtoError::TooLarge {
                len: payload.len() as u64,
                max: payload.len() as u64 - 1
            })
        );
    }

    #[test]
    fn twenty_mib_and_two_exact_multiples() {
        let payload = patterned(20 * 1024 * 1024);
        let mut out = Vec::new();
        assert_eq!(write_packet(&mut out, 254, &payload), 0);
        assert_eq!(out.len(), payload.len() + 8);
        let lp = split_logical(&out, 32 << 20).unwrap().unwrap();
        assert_eq!((lp.first_seq, lp.last_seq), (254, 255));
        assert!(lp.payload[..] == payload[..]);

        let payload = vec![1u8; 2 * MAX_PAYLOAD_LEN];
        out.clear();
        assert_eq!(write_packet(&mut out, 0, &payload), 3);
        assert_eq!(out.len(), payload.len() + 12);
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 2]);
        let lp = split_logical(&out, usize::MAX).unwrap().unwrap();
        assert_eq!(lp.payload.len(), payload.len());
        assert_eq!(lp.consumed, out.len());
    }

    #[test]
    fn too_large_is_reported_from_the_header_alone() {
        // Only the header of a 1000-byte packet has arrived.
        assert_eq!(
            split_logical(&[0xe8, 0x03, 0x00, 0x00], 999),
            Err(ProtoError::TooLarge {
                len: 1000,
                max: 999
            })
        );
        assert_eq!(split_logical(&[0xe8, 0x03, 0x00, 0x00], 1000), Ok(None));
        // A continuation header pushes past the limit before any of its bytes arrive.
        let mut buf = vec![0xff, 0xff, 0xff, 0x00];
        buf.resize(4 + MAX_PAYLOAD_LEN, 0);
        buf.extend_from_slice(&[0x02, 0x00, 0x00, 0x01]);
        assert_eq!(
            split_logical(&buf, MAX_PAYLOAD_LEN + 1),
            Err(ProtoError::TooLarge {
                len: MAX_PAYLOAD_LEN as u64 + 2,
                max: MAX_PAYLOAD_LEN as u64 + 1
            })
        );
        assert_eq!(split_logical(&buf, MAX_PAYLOAD_LEN + 2), Ok(None));
    }

    /// (len, seq, head, continuation) of one reported packet.
    type Seen = (u32, u8, Vec<u8>, bool);

    /// Reference: every physical packet of a complete stream, as the streaming splitter reports it.
    fn reference_heads(stream: &[u8]) -> Vec<Seen> {
        let mut v = Vec::new();
        let mut at = 0;
        let mut cont = false;
        while let Some((h, p, used)) = split_packet(&stream[at..]) {
            v.push((h.len, h.seq, p[..p.len().min(HEAD_CAP)].to_vec(), cont));
            cont = h.len as usize == MAX_PAYLOAD_LEN;
            at += used;
        }
        assert_eq!(at, stream.len());
        v
    }

    fn feed_in_chunks(stream: &[u8], cuts: &[usize]) -> (Vec<Seen>, PacketStream) {
        let mut ps = PacketStream::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(stream.len());
        for cut in cuts {
            ps.feed(&stream[at..cut], |p| {
                got.push((p.len, p.seq, p.head.to_vec(), p.continuation));
                Ok::<(), ()>(())
            })
            .unwrap();
            at = cut;
        }
        (got, ps)
    }

    fn build_stream(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = 0u8;
        for (i, &n) in lens.iter().enumerate() {
            let payload: Vec<u8> = if n > 4096 {
                patterned(n)
            } else {
                (0..n).map(|j| (i * 31 + j) as u8).collect()
            };
            seq = write_packet(&mut out, seq, &payload);
        }
        out
    }

    #[test]
    fn stream_byte_at_a_time() {
        let stream = build_stream(&[0, 1, 63, 64, 65, 200, 3, 0]);
        let want = reference_heads(&stream);
        let mut ps = PacketStream::new();
        let mut got = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            ps.feed(std::slice::from_ref(b), |p| {
                got.push((p.len, p.seq, p.head.to_vec(), p.continuation));
                Ok::<(), ()>(())
            })
            .unwrap();
            if i == 7 {
                // Header of the 1-byte packet seen after the empty one; its byte not yet.
                assert!(!ps.at_boundary());
                assert_eq!(ps.payload_remaining(), 1);
            }
        }
        assert_eq!(got, want);
        assert!(ps.at_boundary());
        assert_eq!(ps.payload_remaining(), 0);
    }

    #[test]
    fn stream_reports_head_as_soon_as_it_is_seen() {
        let stream = build_stream(&[100]);
        let mut ps = PacketStream::new();
        let mut n = 0;
        ps.feed(&stream[..4 + HEAD_CAP - 1], |_| {
            n += 1;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(n, 0);
        assert_eq!(ps.payload_remaining(), 100 - (HEAD_CAP - 1));
        ps.feed(&stream[4 + HEAD_CAP - 1..4 + HEAD_CAP], |p| {
            n += 1;
            assert_eq!(p.head, &stream[4..4 + HEAD_CAP]);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(ps.payload_remaining(), 100 - HEAD_CAP);
        ps.feed(&stream[4 + HEAD_CAP..], |_| Err(())).unwrap();
        assert!(ps.at_boundary() && ps.at_logical_boundary());
    }

    #[test]
    fn stream_stops_at_first_error() {
        let stream = build_stream(&[1, 2, 3]);
        let mut ps = PacketStream::new();
        let mut seen = Vec::new();
        let r = ps.feed(&stream, |p| {
            seen.push(p.len);
            if p.len == 2 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("stop"));
        assert_eq!(seen, [1, 2]);
    }

    #[test]
    fn stream_marks_continuations() {
        let stream = build_stream(&[MAX_PAYLOAD_LEN, 10, 2 * MAX_PAYLOAD_LEN + 5]);
        let want = reference_heads(&stream);
        assert_eq!(want.len(), 2 + 1 + 3);
        assert_eq!(
            want.iter().map(|w| w.3).collect::<Vec<_>>(),
            [false, true, false, false, true, true]
        );
        let (got, ps) = feed_in_chunks(&stream, &[3, 70, 1 << 20, 0xff_ffff + 2, 0xff_ffff + 6]);
        assert_eq!(got, want);
        assert!(ps.at_logical_boundary());
        // Stopping right after the first 0xFF_FFFF packet: physical but not logical boundary.
        let (_, ps) = feed_in_chunks(&stream[..MAX_PAYLOAD_LEN + 4], &[]);
        assert!(ps.at_boundary());
        assert!(!ps.at_logical_boundary());
    }

    /// A payload whose 4 KiB blocks are numbered, so misordered or dropped pieces show.
    fn patterned(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        for (k, block) in p.chunks_mut(4096).enumerate() {
            block.fill(k as u8 ^ (k >> 8) as u8);
            if let Some(b) = block.last_mut() {
                *b = 0xa5;
            }
        }
        p
    }

    fn check_write_then_split(len: usize, seq: u8, trailer: &[u8]) -> Result<(), TestCaseError> {
        let payload = patterned(len);
        let mut out = Vec::new();
        let next = write_packet(&mut out, seq, &payload);
        let pieces = len / MAX_PAYLOAD_LEN + 1;
        prop_assert_eq!(next, seq.wrapping_add(pieces as u8));
        prop_assert_eq!(out.len(), len + 4 * pieces);
        let framed = out.len();
        out.extend_from_slice(trailer);
        let lp = split_logical(&out, len).unwrap().unwrap();
        prop_assert_eq!(lp.first_seq, seq);
        prop_assert_eq!(lp.last_seq, next.wrapping_sub(1));
        prop_assert_eq!(lp.consumed, framed);
        prop_assert!(lp.payload[..] == payload[..]);
        if len > 0 {
            let too_small = split_logical(&out, len - 1);
            prop_assert!(
                matches!(too_small, Err(ProtoError::TooLarge { .. })),
                "expected TooLarge"
            );
        }
        prop_assert_eq!(split_logical(&out[..framed - 1], len), Ok(None));
        Ok(())
    }

    proptest! {
        // Lengths near one and two times 0xFF_FFFF; few cases because each moves 16-32 MiB.
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn write_then_split_logical_near_max(
            k in 1usize..=2, delta in -2isize..=2, seq in any::<u8>(),
            trailer in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let len = (k * MAX_PAYLOAD_LEN).saturating_add_signed(delta);
            check_write_then_split(len, seq, &trailer)?;
        }
    }

    proptest! {
        #[test]
        fn stream_random_splits_match_whole(
            lens in proptest::collection::vec(prop_oneof![0usize..8, 60usize..70, 0usize..300], 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let stream = build_stream(&lens);
            let want = reference_heads(&stream);
            let (whole, _) = feed_in_chunks(&stream, &[]);
            prop_assert_eq!(&whole, &want);
            let (got, ps) = feed_in_chunks(&stream, &cuts);
            prop_assert_eq!(&got, &want);
            prop_assert!(ps.at_boundary());
            // A strict prefix ends at a boundary exactly when it ends at a packet end.
            if let Some(&c) = cuts.first() {
                let c = c % (stream.len() + 1);
                let (_, ps) = feed_in_chunks(&stream[..c], &cuts[1..]);
                let mut ends = vec![0usize];
                let mut at = 0;
                while let Some((_, _, used)) = split_packet(&stream[at..]) { at += used; ends.push(at); }
                prop_assert_eq!(ps.at_boundary(), ends.contains(&c));
            }
        }

        #[test]
        fn write_then_split_logical_small(len in 0usize..600, seq in any::<u8>(),
                                          trailer in proptest::collection::vec(any::<u8>(), 0..8)) {
            check_write_then_split(len, seq, &trailer)?;
        }

        #[test]
        fn split_functions_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..100) {
            let _ = split_packet(&b);
            let _ = split_logical(&b, max);
            let mut ps = PacketStream::new();
            let _ = ps.feed(&b, |p| { assert!(p.head.len() <= HEAD_CAP); Ok::<(), ()>(()) });
            let _ = ps.payload_remaining();
        }
    }
}
