//! The compressed protocol's framing (CLIENT_COMPRESS / CLIENT_ZSTD_COMPRESSION_ALGORITHM), pure
//! and I/O-free: a streaming [`Inflater`] that turns one direction's compressed byte stream back
//! into the ordinary packet stream with bounded memory, and frame writers for packets a proxy
//! injects. It owns the 7-byte compressed header and the zlib/zstd payloads, nothing above them.
//!
//! # Wire format
//! Every compressed packet is a 7-byte header — `int<3>` length of the payload as sent, `int<1>`
//! compressed sequence id, `int<3>` length before compression — and the payload. A length before
//! compression of 0 means the payload is stored as is; otherwise it is one zlib stream (RFC 1950,
//! as written by zlib's `compress()`) or, with zstd, one zstd frame (`ZSTD_compressCCtx`). The
//! uncompressed contents of consecutive compressed packets concatenate to the ordinary packet
//! stream (4-byte headers): one compressed packet may hold several ordinary packets or a piece of
//! one, and an ordinary packet may span compressed packets. Sources: MySQL source documentation,
//! "Compression" and "Compressed Packet" (`page_protocol_basic_compression[_packet]`, in
//! sql-common/net_serv.cc), whose two example packets are tests below.
//!
//! # When compression starts
//! Only after authentication: the OK that ends the connection phase is itself *not* compressed
//! (plain 4-byte header), and the first compressed packet is the client's first command. Nor is
//! anything before it (greeting, HandshakeResponse, AuthSwitch, AuthMoreData, or an auth ERR).
//! Sources: a capture of `mariadb --compress` against MariaDB 10.11.19 (the OK arrived as
//! `07 00 00 02 00 00 00 02 00 00 00`, the next client bytes as compressed packet 0); MySQL 5.6's
//! sql_connect.cc, where `login_connection()` sends the OK (`protocol->end_statement()`) and only
//! then `prepare_new_connection_state()` sets `net.compress`; go-sql-driver/mysql ("compression
//! is enabled after auth, not right after sending handshake response"). The algorithm: zstd when
//! only CLIENT_ZSTD_COMPRESSION_ALGORITHM is agreed (the HandshakeResponse then ends with an
//! `int<1>` zstd level), zlib when CLIENT_COMPRESS is, also when both are ([`Algorithm::negotiated`]).
//!
//! # The compressed sequence id
//! A counter of its own, reset like the ordinary one: 0 at the start of every command, +1 per
//! compressed packet, continuing across directions within the command — the client's command is
//! compressed packet 0 (or 0..n when it spans several), the server's first response packet is
//! n + 1, the next one n + 2, and the next command starts at 0 again. The inner packets keep their
//! own sequence ids (0 for the command, 1.. for the response), which MySQL's reader does not even
//! check in compressed mode; the writer syncs its inner counter to the compressed one on every
//! flush (`net_flush`: `pkt_nr = compress_pkt_nr`). Sources: the doc page ("reset in the same way
//! as the Protocol::Packet, but incremented independently"), net_serv.cc (`net_read_packet_header`
//! checks byte 3 of the 7-byte header against `pkt_nr`, then `compress_pkt_nr = pkt_nr`;
//! `compress_packet` writes `compress_pkt_nr++`; `pkt_nr` is reset per command, both by the
//! client's `net_clear`), and the capture (commands at 0, responses at 1 and at 1, 2). So a proxy
//! answering a command itself uses compressed id `last_seq + 1` of the client-to-server
//! [`Inflater`] ([`Inflater::last_seq`]).
//!
//! # Memory
//! Neither a whole compressed packet nor a whole decompressed payload is ever buffered: stored
//! payloads pass through uncopied, compressed ones inflate into one [`SCRATCH_LEN`] buffer. An
//! [`Inflater`] is 32 bytes and holds no heap memory until the first compressed payload, nor after
//! [`Inflater::release_idle_memory`]. In between it keeps the scratch buffer and the decoder,
//! reset rather than freed between packets. Measured: zlib 58 KiB in all (miniz_oxide, the
//! default backend; 55 KiB with C zlib); zstd 16 KiB + a 94 KiB context that grows during a
//! frame by about min(window, content) + 2 blocks — 222 KiB for a 64 KiB frame, 2.5 MiB for a
//! 16 MiB frame at zstd's default level, at most 16.5 MiB (window 2^[`ZSTD_WINDOW_LOG_MAX`]).
//! A context grown past [`ZSTD_KEEP_MAX`] (512 KiB) is freed at the end of its packet, so between
//! packets an Inflater holds at most about 530 KiB (zstd) or 58 KiB (zlib).

use std::io::Write;

use flate2::{Compression, Decompress, FlushDecompress, Status};
use thiserror::Error;
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

use super::constants::{CLIENT_COMPRESS, CLIENT_ZSTD_COMPRESSION_ALGORITHM, MAX_PAYLOAD_LEN};

/// Length of the compressed packet header.
pub const COMP_HEADER_LEN: usize = 7;
/// Largest slice [`Inflater::feed`] hands its sink at once, and its output buffer's size.
pub const SCRATCH_LEN: usize = 16 * 1024;
/// Largest zstd window accepted (2^24 = 16 MiB): a payload is at most 0xFF_FFFF bytes, so no
/// legitimate frame needs more, and zstd caps a frame's window to its content size.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// A zstd context that grew beyond this (for a large window) is freed at the end of its packet
/// rather than kept for the next one.
pub const ZSTD_KEEP_MAX: usize = 512 * 1024;

/// The compression algorithm of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Zlib,
    Zstd,
}

impl Algorithm {
    /// The algorithm the capabilities both sides agreed on select, if any (zlib wins when both
    /// flags are set).
    pub fn negotiated(agreed_caps: u32) -> Option<Algorithm> {
        if agreed_caps & CLIENT_COMPRESS != 0 {
            Some(Algorithm::Zlib)
        } else if agreed_caps & CLIENT_ZSTD_COMPRESSION_ALGORITHM != 0 {
            Some(Algorithm::Zstd)
        } else {
            None
        }
    }
}

/// A decoded compressed packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedHeader {
    /// Length of the payload as sent (after the header).
    pub payload_len: u32,
    /// Compressed sequence id.
    pub seq: u8,
    /// Length before compression; 0 means the payload is stored uncompressed.
    pub uncompressed_len: u32,
}

/// Decode a 7-byte compressed packet header.
pub fn parse_compressed_header(h: [u8; COMP_HEADER_LEN]) -> CompressedHeader {
    CompressedHeader {
        payload_len: u32::from_le_bytes([h[0], h[1], h[2], 0]),
        seq: h[3],
        uncompressed_len: u32::from_le_bytes([h[4], h[5], h[6], 0]),
    }
}

/// Append a compressed packet header (only the low 24 bits of each length are written).
pub fn put_compressed_header(out: &mut Vec<u8>, payload_len: u32, seq: u8, uncompressed_len: u32) {
    let p = payload_len.to_le_bytes();
    let u = uncompressed_len.to_le_bytes();
    out.extend_from_slice(&[p[0], p[1], p[2], seq, u[0], u[1], u[2]]);
}

/// What is wrong with a compressed stream (or, for `Codec`, with the codec library).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompressError {
    /// The zlib or zstd data of compressed packet `seq` does not decode.
    #[error("corrupt {alg:?} data in compressed packet {seq}: {detail}")]
    Corrupt {
        alg: Algorithm,
        seq: u8,
        detail: String,
    },
    /// Packet `seq` inflated to a different length than its header announced (`actual` is a
    /// lower bound when the output was too long: inflating stops at the first excess byte).
    #[error("compressed packet {seq} announced {announced} bytes but inflated to {actual}")]
    LengthMismatch {
        seq: u8,
        announced: u32,
        actual: u64,
    },
    /// Packet `seq` has bytes after the end of its zlib stream / zstd frame.
    #[error("compressed packet {seq} has {extra} bytes after the end of its {alg:?} data")]
    TrailingData { alg: Algorithm, seq: u8, extra: u32 },
    /// Packet `seq` ended before its zlib stream / zstd frame did.
    #[error("compressed packet {seq} ended inside its {alg:?} data")]
    Truncated { alg: Algorithm, seq: u8 },
    /// The [`Inflater`] already failed; it accepts nothing more.
    #[error("the compressed stream already failed")]
    Failed,
    /// The codec library itself failed (creating a context, compressing).
    #[error("{alg:?} codec: {detail}")]
    Codec { alg: Algorithm, detail: String },
}

/// Why [`Inflater::feed`] stopped: bad input, or an error from the caller's sink.
#[derive(Debug, Error)]
pub enum InflateError<E> {
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error("sink: {0}")]
    Sink(E),
}

/// Where an [`Inflater`] is in the compressed stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a header: `have` of its 7 bytes so far.
    Header {
        buf: [u8; COMP_HEADER_LEN],
        have: u8,
    },
    /// Passing a stored payload through: `left` bytes to go.
    Stored {
        left: u32,
    },
    /// Inflating a compressed payload.
    Inflating(Pending),
    Failed,
}

/// A compressed payload being inflated.
#[derive(Debug, Clone, Copy)]
struct Pending {
    alg: Algorithm,
    seq: u8,
    /// Length before compression, from the header.
    announced: u32,
    /// Compressed bytes still to read.
    in_left: u32,
    /// Decompressed bytes still to produce.
    out_left: u32,
}

const AT_BOUNDARY: State = State::Header {
    buf: [0; COMP_HEADER_LEN],
    have: 0,
};

/// Streaming decompressor of one direction of a compressed connection. Feed it the bytes as they
/// arrive, in chunks split anywhere; it hands the ordinary packet stream to a sink in order, in
/// slices of at most [`SCRATCH_LEN`] bytes. See the module docs for its memory bounds.
pub struct Inflater {
    alg: Algorithm,
    state: State,
    /// Decoder and output buffer, created at the first compressed payload.
    engine: Option<Box<Engine>>,
    last_seq: Option<u8>,
    packets: u32,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("decoder_allocated", &self.engine.is_some())
            .field("last_seq", &self.last_seq)
            .field("packets", &self.packets)
            .finish()
    }
}

impl Inflater {
    pub fn new(alg: Algorithm) -> Self {
        Inflater {
            alg,
            state: AT_BOUNDARY,
            engine: None,
            last_seq: None,
            packets: 0,
        }
    }

    /// Consume `chunk`, calling `out` with the decompressed bytes in order. The first error ends
    /// the stream: later calls return [`CompressError::Failed`].
    pub fn feed<E>(
        &mut self,
        chunk: &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), InflateError<E>> {
        let mut rest = chunk;
        let result = self.feed_all(&mut rest, out);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// True between compressed packets (no header byte of the next one seen yet).
    pub fn at_frame_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Sequence id of the last compressed packet whose header was read.
    pub fn last_seq(&self) -> Option<u8> {
        self.last_seq
    }

    /// Compressed packets whose header was read since creation or [`Self::reset_count`].
    pub fn packets_since_reset(&self) -> u32 {
        self.packets
    }

    /// Restart [`Self::packets_since_reset`] (e.g. when a new command starts).
    pub fn reset_count(&mut self) {
        self.packets = 0;
    }

    /// Free the decoder and output buffer if at a packet boundary (they are recreated on
    /// demand). Returns whether nothing is held on the heap any more.
    pub fn release_idle_memory(&mut self) -> bool {
        if self.at_frame_boundary() {
            self.engine = None;
        }
        self.engine.is_none()
    }

    fn feed_all<E>(
        &mut self,
        rest: &mut &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), InflateError<E>> {
        loop {
            match self.state {
                State::Failed => return Err(CompressError::Failed.into()),
                State::Inflating { .. } => {
                    self.inflate(rest, out)?;
                    if matches!(self.state, State::Inflating { .. }) {
                        return Ok(()); // the decoder needs more input
                    }
                }
                _ if rest.is_empty() => return Ok(()),
                State::Header { .. } => self.read_header(rest),
                State::Stored { left } => {
                    let n = rest.len().min(left as usize).min(SCRATCH_LEN);
                    let (now, later) = rest.split_at(n);
                    *rest = later;
                    self.state = after_stored(left - n as u32);
                    out(now).map_err(InflateError::Sink)?;
                }
            }
        }
    }

    /// Take header bytes from `rest`; on the 7th, start the packet.
    fn read_header(&mut self, rest: &mut &[u8]) {
        let State::Header { mut buf, have } = self.state else {
            return;
        };
        let have = have as usize;
        let n = rest.len().min(COMP_HEADER_LEN - have);
        buf[have..have + n].copy_from_slice(&rest[..n]);
        *rest = &rest[n..];
        if have + n < COMP_HEADER_LEN {
            self.state = State::Header {
                buf,
                have: (have + n) as u8,
            };
            return;
        }
        let h = parse_compressed_header(buf);
        self.last_seq = Some(h.seq);
        self.packets = self.packets.wrapping_add(1);
        self.state = match h.uncompressed_len {
            0 => after_stored(h.payload_len),
            len => State::Inflating(Pending {
                alg: self.alg,
                seq: h.seq,
                announced: len,
                in_left: h.payload_len,
                out_left: len,
            }),
        };
    }

    /// Run the decoder on this packet's part of `rest` until it needs more input or the packet
    /// ends.
    fn inflate<E>(
        &mut self,
        rest: &mut &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), InflateError<E>> {
        let State::Inflating(mut p) = self.state else {
            return Ok(());
        };
        let engine = match &mut self.engine {
            Some(e) => e,
            slot => slot.insert(Box::new(Engine::new(p.alg)?)),
        };
        loop {
            let take = rest.len().min(p.in_left as usize);
            let step = engine.step(&rest[..take]).map_err(|e| p.corrupt(e))?;
            *rest = &rest[step.used..];
            p.advance(&step)?;
            self.state = State::Inflating(p);
            if step.made > 0 {
                out(&engine.scratch[..step.made]).map_err(InflateError::Sink)?;
            }
            if step.ended {
                p.finish()?;
                self.state = AT_BOUNDARY;
                if !engine.decoder.reset() {
                    self.engine = None;
                }
                return Ok(());
            }
            if step.used == 0 && step.made == 0 {
                return p.stalled(take > 0).map_err(Into::into);
            }
        }
    }
}

fn after_stored(left: u32) -> State {
    match left {
        0 => AT_BOUNDARY,
        left => State::Stored { left },
    }
}

impl Pending {
    /// Account for one decoder step: an error once the output exceeds the announced length.
    fn advance(&mut self, step: &Step) -> Result<(), CompressError> {
        self.in_left -= step.used as u32;
        let left = self.out_left.checked_sub(step.made as u32);
        self.out_left = left.ok_or_else(|| self.mismatch(step.made))?;
        Ok(())
    }

    /// The stream ended: it must end the packet too, at the announced length.
    fn finish(&self) -> Result<(), CompressError> {
        if self.in_left > 0 {
            let (alg, seq, extra) = (self.alg, self.seq, self.in_left);
            return Err(CompressError::TrailingData { alg, seq, extra });
        }
        match self.out_left {
            0 => Ok(()),
            _ => Err(self.mismatch(0)),
        }
    }

    /// The decoder made no progress: fine while waiting for input that the packet still has.
    fn stalled(&self, had_input: bool) -> Result<(), CompressError> {
        let (alg, seq) = (self.alg, self.seq);
        match (self.in_left, had_input) {
            (0, _) => Err(CompressError::Truncated { alg, seq }),
            (_, false) => Ok(()),
            _ => Err(self.corrupt("the decoder made no progress".to_owned())),
        }
    }

    fn mismatch(&self, extra: usize) -> CompressError {
        let (seq, announced) = (self.seq, self.announced);
        let actual = u64::from(announced - self.out_left) + extra as u64;
        CompressError::LengthMismatch {
            seq,
            announced,
            actual,
        }
    }

    fn corrupt(&self, detail: String) -> CompressError {
        let (alg, seq) = (self.alg, self.seq);
        CompressError::Corrupt { alg, seq, detail }
    }
}

/// The decoder of one algorithm and its output buffer.
struct Engine {
    decoder: Decoder,
    scratch: Box<[u8]>,
}

enum Decoder {
    Zlib(Decompress),
    Zstd(DCtx<'static>),
}

/// What one decoder call did.
struct Step {
    /// Input bytes consumed.
    used: usize,
    /// Output bytes written to the scratch buffer.
    made: usize,
    /// The zlib stream / zstd frame ended (and all its output has been handed out).
    ended: bool,
}

impl Engine {
    fn new(alg: Algorithm) -> Result<Self, CompressError> {
        let decoder = match alg {
            Algorithm::Zlib => Decoder::Zlib(Decompress::new(true)),
            Algorithm::Zstd => Decoder::Zstd(new_zstd_decoder().ok_or_else(|| {
                let detail = "cannot create a decompression context".to_owned();
                CompressError::Codec { alg, detail }
            })?),
        };
        Ok(Engine {
            decoder,
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
        })
    }

    fn step(&mut self, input: &[u8]) -> Result<Step, String> {
        let output = &mut self.scratch[..];
        match &mut self.decoder {
            Decoder::Zlib(d) => {
                let (in0, out0) = (d.total_in(), d.total_out());
                let status = d
                    .decompress(input, output, FlushDecompress::None)
                    .map_err(|e| e.to_string())?;
                Ok(Step {
                    used: (d.total_in() - in0) as usize,
                    made: (d.total_out() - out0) as usize,
                    ended: status == Status::StreamEnd,
                })
            }
            Decoder::Zstd(d) => {
                let mut input = InBuffer::around(input);
                let mut output = OutBuffer::around(output);
                let hint = d
                    .decompress_stream(&mut output, &mut input)
                    .map_err(|code| zstd_safe::get_error_name(code).to_owned())?;
                Ok(Step {
                    used: input.pos(),
                    made: output.pos(),
                    // 0: the frame is decoded and all its output handed out.
                    ended: hint == 0,
                })
            }
        }
    }
}

impl Decoder {
    /// Ready the decoder for the next packet, keeping its allocations. False when it is not
    /// worth keeping (a zstd context grown past [`ZSTD_KEEP_MAX`]).
    fn reset(&mut self) -> bool {
        match self {
            Decoder::Zlib(d) => {
                d.reset(true);
                true
            }
            // Resetting the session only keeps the window limit.
            Decoder::Zstd(d) => {
                d.reset(ResetDirective::SessionOnly).is_ok() && d.sizeof() <= ZSTD_KEEP_MAX
            }
        }
    }
}

fn new_zstd_decoder() -> Option<DCtx<'static>> {
    let mut d = DCtx::try_create()?;
    d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
        .ok()?;
    Some(d)
}

/// Append `inner` (ordinary packets, or any part of the packet stream) as stored compressed
/// packets — uncompressed length 0 — of at most 0xFF_FFFF bytes each, the first with compressed
/// sequence id `seq`. Writes nothing for an empty `inner`. Returns the next compressed id.
pub fn write_uncompressed_frame(out: &mut Vec<u8>, seq: u8, inner: &[u8]) -> u8 {
    let mut seq = seq;
    for piece in inner.chunks(MAX_PAYLOAD_LEN) {
        put_compressed_header(out, piece.len() as u32, seq, 0);
        out.extend_from_slice(piece);
        seq = seq.wrapping_add(1);
    }
    seq
}

/// Append `inner` as compressed packets of at most 0xFF_FFFF uncompressed bytes each, the first
/// with compressed sequence id `seq`. Like MySQL's `compress_packet`, a piece that does not
/// shrink (or that the codec fails on) is stored instead. `level` is zstd's level, or zlib's
/// clamped to 0..=9. Writes nothing for an empty `inner`. Returns the next compressed id.
pub fn write_compressed_frame(
    out: &mut Vec<u8>,
    seq: u8,
    inner: &[u8],
    alg: Algorithm,
    level: i32,
) -> u8 {
    let mut seq = seq;
    for piece in inner.chunks(MAX_PAYLOAD_LEN) {
        let start = out.len();
        match compress_packet(out, seq, piece, alg, level) {
            Ok(payload_len) if payload_len < piece.len() => {}
            _ => {
                out.truncate(start);
                write_uncompressed_frame(out, seq, piece);
            }
        }
        seq = seq.wrapping_add(1);
    }
    seq
}

/// Append one compressed packet holding all of `piece` (at most 0xFF_FFFF bytes), compressed
/// even when that makes it longer. Returns the payload length; appends nothing on error.
fn compress_packet(
    out: &mut Vec<u8>,
    seq: u8,
    piece: &[u8],
    alg: Algorithm,
    level: i32,
) -> Result<usize, CompressError> {
    let start = out.len();
    put_compressed_header(out, 0, seq, piece.len() as u32);
    let result = compress_into(out, piece, alg, level);
    let payload_len = out.len() - start - COMP_HEADER_LEN;
    let result = result.and_then(|()| match payload_len {
        n if n <= MAX_PAYLOAD_LEN => Ok(n),
        n => Err(format!("{n} compressed bytes do not fit a packet")),
    });
    match result {
        Ok(n) => {
            out[start..start + 3].copy_from_slice(&(n as u32).to_le_bytes()[..3]);
            Ok(n)
        }
        Err(detail) => {
            out.truncate(start);
            Err(CompressError::Codec { alg, detail })
        }
    }
}

/// Append `piece` as one zlib stream or one zstd frame (with its content size).
fn compress_into(
    out: &mut Vec<u8>,
    piece: &[u8],
    alg: Algorithm,
    level: i32,
) -> Result<(), String> {
    match alg {
        Algorithm::Zlib => {
            let level = Compression::new(level.clamp(0, 9) as u32);
            let mut enc = flate2::write::ZlibEncoder::new(out, level);
            enc.write_all(piece).map_err(|e| e.to_string())?;
            enc.finish().map(drop).map_err(|e| e.to_string())
        }
        Algorithm::Zstd => {
            let frame = zstd::bulk::compress(piece, level).map_err(|e| e.to_string())?;
            out.extend_from_slice(&frame);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        let nibble = |c: u8| (c as char).to_digit(16).unwrap() as u8;
        digits
            .chunks(2)
            .map(|p| nibble(p[0]) << 4 | nibble(p[1]))
            .collect()
    }

    /// Feed `chunks` in order; every sink slice must respect [`SCRATCH_LEN`].
    fn inflate_chunks<'a>(
        inf: &mut Inflater,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<u8>, CompressError> {
        let mut got = Vec::new();
        let mut sink = |s: &[u8]| -> Result<(), ()> {
            assert!(
                !s.is_empty() && s.len() <= SCRATCH_LEN,
                "slice of {}",
                s.len()
            );
            got.extend_from_slice(s);
            Ok(())
        };
        for c in chunks {
            inf.feed(c, &mut sink).map_err(|e| match e {
                InflateError::Compress(e) => e,
                InflateError::Sink(()) => unreachable!(),
            })?;
        }
        Ok(got)
    }

    fn inflate_all(alg: Algorithm, wire: &[u8]) -> Result<Vec<u8>, CompressError> {
        inflate_chunks(&mut Inflater::new(alg), [wire])
    }

    fn inflate_bytewise(alg: Algorithm, wire: &[u8]) -> Result<Vec<u8>, CompressError> {
        inflate_chunks(&mut Inflater::new(alg), wire.chunks(1))
    }

    /// (payload length, sequence id) of each ordinary packet in `stream`.
    fn packets(stream: &[u8]) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(h) = stream.get(at..at + 4) {
            let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
            out.push((len, h[3]));
            at += 4 + len;
        }
        assert_eq!(at, stream.len(), "stream ends mid-packet");
        out
    }

    fn forced(alg: Algorithm, seq: u8, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compress_packet(&mut out, seq, inner, alg, 3).unwrap();
        out
    }

    fn patterned(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i / 4099) as u8).collect()
    }

    // MySQL source documentation, "Compressed Packet": one COM_QUERY, zlib-compressed.
    const DOC_QUERY: &str =
        "22 00 00 00 32 00 00 78 9c d3 63 60 60 60 2e 4e cd 49 4d 2e 51 50 32 30
        34 32 36 31 35 33 b7 b0 c4 cd 52 02 00 0c d1 0a 6c";
    // Same page: the result set of SELECT repeat("a", 50), five packets in one compressed packet.
    const DOC_RESULTSET: &str = "4a 00 00 01 77 00 00 78 9c 63 64 60 60 64 54 65 60 60 62 4e 49 4d
        63 60 60 e0 2f 4a 2d 48 4d 2c d1 50 4a 54 d2 51 30 35 d0 64 e0 e1 60 30 02 8a ff 65 64 90
        67 60 60 65 60 60 fe 07 54 cc 60 cc c0 c0 62 94 48 32 00 ea 67 05 eb 07 00 8d f9 1c 64";
    // Captured between `mariadb --compress` and MariaDB 10.11.19: the client's
    // `select repeat('a',100) as x` (stored) and the server's answer (zlib).
    const CAPTURED_QUERY: &str =
        "200000000000001c0000000373656c65637420726570656174282761272c313030
        292061732078";
    const CAPTURED_RESPONSE: &str =
        "3e0000019d0000789c63626060646494606060624e494d6300f22a1818781419
        74181918fe3230a83330b0323030ff03ca33a43230b0a424d201006d6405db08006cb12c0c";
    // The same capture for `select repeat('ab',9000) as x`: two compressed packets (ids 1, 2),
    // the first inflating to exactly 16384 bytes, the 18003-byte row packet spanning both.
    const CAPTURED_SPANNING: &str =
        "59000001004000789cedc9c10dc1000040d1df969b015c9d6cd2b3c404a4cc60
        4e931800d1211c5fdee9e78f350cc3bec669b9dd5beb51bb43af677dea58db9abeebef3cb7799fe6cb1500000000
        0000000000000000000000f8af1f0db75672200000028b0600789c4b4c4a1c85a370148ec251380a0700b23230b0
        fe636060620000b4a77bac";

    #[test]
    fn mysql_doc_single_query() {
        let got = inflate_all(Algorithm::Zlib, &hex(DOC_QUERY)).unwrap();
        let mut want = hex("2e 00 00 00 03");
        want.extend_from_slice(b"select \"012345678901234567890123456789012345\"");
        assert_eq!(got, want);
        assert_eq!(
            inflate_bytewise(Algorithm::Zlib, &hex(DOC_QUERY)).unwrap(),
            want
        );
    }

    #[test]
    fn mysql_doc_resultset_of_five_packets() {
        let got = inflate_all(Algorithm::Zlib, &hex(DOC_RESULTSET)).unwrap();
        assert_eq!(got.len(), 0x77);
        assert_eq!(packets(&got), [(1, 1), (37, 2), (5, 3), (51, 4), (5, 5)]);
        assert_eq!(&got[got.len() - 9..], hex("05 00 00 05 fe 00 00 02 00"));
    }

    #[test]
    fn mysql_doc_stored_select_1() {
        let wire = hex("0d 00 00 00 00 00 00 09 00 00 00 03 53 45 4c 45 43 54 20 31");
        let mut inf = Inflater::new(Algorithm::Zlib);
        let got = inflate_chunks(&mut inf, [&wire[..]]).unwrap();
        assert_eq!(got, hex("09 00 00 00 03 53 45 4c 45 43 54 20 31"));
        assert!(inf.engine.is_none(), "stored payloads need no decoder");
    }

    #[test]
    fn mariadb_capture_query_and_response() {
        let query = inflate_all(Algorithm::Zlib, &hex(CAPTURED_QUERY)).unwrap();
        assert_eq!(&query[..5], hex("1c 00 00 00 03"));
        assert_eq!(&query[5..], b"select repeat('a',100) as x");

        let mut inf = Inflater::new(Algorithm::Zlib);
        let resp = inflate_chunks(&mut inf, hex(CAPTURED_RESPONSE).chunks(5)).unwrap();
        assert_eq!(resp.len(), 0x9d);
        assert_eq!(packets(&resp), [(2, 1), (24, 2), (5, 3), (101, 4), (5, 5)]);
        assert_eq!(
            &resp[resp.len() - 110..resp.len() - 9],
            [&[100u8][..], &[b'a'; 100]].concat()
        );
        assert_eq!((inf.last_seq(), inf.packets_since_reset()), (Some(1), 1));
        assert!(inf.at_frame_boundary());
    }

    #[test]
    fn mariadb_capture_row_spans_two_compressed_packets() {
        let wire = hex(CAPTURED_SPANNING);
        let mut inf = Inflater::new(Algorithm::Zlib);
        let first_len = 7 + 0x59;
        let first = inflate_chunks(&mut inf, [&wire[..first_len]]).unwrap();
        assert_eq!(first.len(), 16384);
        assert_eq!((inf.last_seq(), inf.at_frame_boundary()), (Some(1), true));
        let rest = inflate_chunks(&mut inf, [&wire[first_len..]]).unwrap();
        assert_eq!((inf.last_seq(), inf.packets_since_reset()), (Some(2), 2));
        let all = [first, rest].concat();
        assert_eq!(packets(&all), [(2, 1), (24, 2), (5, 3), (18003, 4), (5, 5)]);
        let row = &all[all.len() - 9 - 18003..all.len() - 9];
        assert_eq!(&row[..3], hex("fc 50 46")); // lenenc 18000
        assert!(row[3..].chunks(2).all(|p| p == b"ab"));
    }

    #[test]
    fn stored_and_empty_frames() {
        let mut wire = hex("00 00 00 05 00 00 00"); // empty stored packet
        write_uncompressed_frame(&mut wire, 6, b"\x01\x00\x00\x00\x0e");
        let mut inf = Inflater::new(Algorithm::Zstd);
        let got = inflate_chunks(&mut inf, wire.chunks(3)).unwrap();
        assert_eq!(got, b"\x01\x00\x00\x00\x0e");
        assert_eq!((inf.last_seq(), inf.packets_since_reset()), (Some(6), 2));
    }

    #[test]
    fn packet_continues_across_compressed_packets_of_both_kinds() {
        let mut inner = vec![0x10, 0x27, 0x00, 0x03];
        inner.extend(patterned(10_000));
        let (a, b) = inner.split_at(4321);
        for alg in [Algorithm::Zlib, Algorithm::Zstd] {
            let mut wire = forced(alg, 0, a);
            write_uncompressed_frame(&mut wire, 1, &b[..100]);
            wire.extend(forced(alg, 2, &b[100..]));
            assert_eq!(inflate_all(alg, &wire).unwrap(), inner);
            assert_eq!(inflate_bytewise(alg, &wire).unwrap(), inner);
        }
    }

    #[test]
    fn zstd_frames_decode() {
        let inner = patterned(50_000);
        let mut wire = Vec::new();
        let next = write_compressed_frame(&mut wire, 254, &inner, Algorithm::Zstd, 3);
        assert_eq!(next, 255);
        assert_eq!(&wire[..4], &[wire[0], wire[1], wire[2], 254]);
        assert_eq!(&wire[7..11], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
        assert_eq!(inflate_all(Algorithm::Zstd, &wire).unwrap(), inner);
        assert_eq!(inflate_bytewise(Algorithm::Zstd, &wire).unwrap(), inner);
        // A zstd frame is corrupt zlib data and vice versa.
        let err = inflate_all(Algorithm::Zlib, &wire).unwrap_err();
        assert!(matches!(
            err,
            CompressError::Corrupt {
                alg: Algorithm::Zlib,
                seq: 254,
                ..
            }
        ));
        let err = inflate_all(Algorithm::Zstd, &hex(DOC_QUERY)).unwrap_err();
        assert!(matches!(
            err,
            CompressError::Corrupt {
                alg: Algorithm::Zstd,
                seq: 0,
                ..
            }
        ));
    }

    #[test]
    fn zstd_window_over_the_limit_is_rejected() {
        use zstd::stream::raw::{CParameter, Encoder, Operation};
        let inner = patterned(1000);
        let mut enc = Encoder::new(3).unwrap();
        enc.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX + 1))
            .unwrap();
        enc.set_parameter(CParameter::ContentSizeFlag(false))
            .unwrap();
        let mut frame = vec![0u8; 2000];
        let mut output = OutBuffer::around(&mut frame[..]);
        enc.run(&mut InBuffer::around(&inner), &mut output).unwrap();
        assert_eq!(enc.finish(&mut output, true).unwrap(), 0);
        let n = output.pos();
        frame.truncate(n);
        let mut wire = Vec::new();
        put_compressed_header(&mut wire, n as u32, 0, inner.len() as u32);
        wire.extend_from_slice(&frame);
        let err = inflate_all(Algorithm::Zstd, &wire).unwrap_err();
        assert!(
            matches!(&err, CompressError::Corrupt { detail, .. } if detail.contains("memory")),
            "{err}"
        );
    }

    #[test]
    fn zstd_context_is_kept_for_small_frames_only() {
        let mut inf = Inflater::new(Algorithm::Zstd);
        let small = patterned(10_000);
        assert_eq!(
            inflate_chunks(&mut inf, [&forced(Algorithm::Zstd, 0, &small)[..]]),
            Ok(small)
        );
        assert!(inf.engine.is_some());
        let big = patterned(2 << 20);
        let wire = forced(Algorithm::Zstd, 1, &big);
        assert!(inflate_chunks(&mut inf, [&wire[..]]).unwrap() == big);
        assert!(
            inf.engine.is_none(),
            "a context grown past ZSTD_KEEP_MAX is freed"
        );
    }

    #[test]
    fn corrupt_zlib_fails_and_stays_failed() {
        let mut wire = hex(DOC_QUERY);
        wire[12..20].copy_from_slice(&[0xff; 8]);
        let mut inf = Inflater::new(Algorithm::Zlib);
        let err = inflate_chunks(&mut inf, [&wire[..]]).unwrap_err();
        assert!(matches!(
            err,
            CompressError::Corrupt {
                alg: Algorithm::Zlib,
                seq: 0,
                ..
            }
        ));
        assert_eq!(
            inflate_chunks(&mut inf, [&wire[..]]),
            Err(CompressError::Failed)
        );
        // A wrong zlib header is caught as well.
        let mut wire = hex(DOC_QUERY);
        wire[7] = 0x79;
        assert!(matches!(
            inflate_all(Algorithm::Zlib, &wire),
            Err(CompressError::Corrupt { .. })
        ));
    }

    #[test]
    fn announced_length_must_match() {
        for alg in [Algorithm::Zlib, Algorithm::Zstd] {
            let inner = patterned(5000);
            let good = forced(alg, 3, &inner);
            let mut short = good.clone();
            short[4..7].copy_from_slice(&4999u32.to_le_bytes()[..3]);
            assert_eq!(
                inflate_all(alg, &short),
                Err(CompressError::LengthMismatch {
                    seq: 3,
                    announced: 4999,
                    actual: 5000
                })
            );
            let mut long = good.clone();
            long[4..7].copy_from_slice(&5001u32.to_le_bytes()[..3]);
            assert_eq!(
                inflate_bytewise(alg, &long),
                Err(CompressError::LengthMismatch {
                    seq: 3,
                    announced: 5001,
                    actual: 5000
                })
            );
        }
    }

    #[test]
    fn bytes_after_the_stream_end_are_rejected() {
        for alg in [Algorithm::Zlib, Algorithm::Zstd] {
            let mut wire = forced(alg, 9, b"\x01\x00\x00\x00\x0e and more bytes to compress");
            let len = u32::from_le_bytes([wire[0], wire[1], wire[2], 0]) + 3;
            wire[..3].copy_from_slice(&len.to_le_bytes()[..3]);
            wire.extend_from_slice(b"xyz");
            assert_eq!(
                inflate_all(alg, &wire),
                Err(CompressError::TrailingData {
                    alg,
                    seq: 9,
                    extra: 3
                })
            );
        }
    }

    #[test]
    fn packet_ending_inside_the_stream_is_truncated() {
        for alg in [Algorithm::Zlib, Algorithm::Zstd] {
            let mut wire = forced(alg, 4, &patterned(3000));
            let len = u32::from_le_bytes([wire[0], wire[1], wire[2], 0]) - 2;
            wire[..3].copy_from_slice(&len.to_le_bytes()[..3]);
            wire.truncate(wire.len() - 2);
            wire.extend(hex("00 00 00 05 00 00 00")); // what follows is read as stream data
            let err = inflate_all(alg, &wire).unwrap_err();
            assert_eq!(err, CompressError::Truncated { alg, seq: 4 });
            // An empty payload that announces content.
            let empty = hex("00 00 00 07 05 00 00");
            assert_eq!(
                inflate_all(alg, &empty),
                Err(CompressError::Truncated { alg, seq: 7 })
            );
        }
    }

    #[test]
    fn sink_error_stops_the_stream() {
        let mut inf = Inflater::new(Algorithm::Zlib);
        let r = inf.feed(&hex(DOC_QUERY), &mut |_: &[u8]| Err("full"));
        assert!(matches!(r, Err(InflateError::Sink("full"))));
        let r = inf.feed(b"", &mut |_: &[u8]| Ok::<(), ()>(()));
        assert!(matches!(
            r,
            Err(InflateError::Compress(CompressError::Failed))
        ));
    }

    #[test]
    fn large_payload_streams_with_bounded_scratch() {
        // More than one compressed packet's worth (16 MiB - 1) of packet stream.
        let inner = patterned(MAX_PAYLOAD_LEN + 70_000);
        for alg in [Algorithm::Zlib, Algorithm::Zstd] {
            let mut wire = Vec::new();
            assert_eq!(write_compressed_frame(&mut wire, 0, &inner, alg, 1), 2);
            assert!(wire.len() < inner.len() / 2, "{alg:?} compressed");
            let mut inf = Inflater::new(alg);
            let (mut offset, mut calls, mut largest) = (0usize, 0usize, 0usize);
            let mut sink = |s: &[u8]| -> Result<(), ()> {
                assert_eq!(s, &inner[offset..offset + s.len()]);
                offset += s.len();
                calls += 1;
                largest = largest.max(s.len());
                Ok(())
            };
            for chunk in wire.chunks(65_536) {
                inf.feed(chunk, &mut sink).unwrap();
            }
            assert_eq!(offset, inner.len());
            assert_eq!(largest, SCRATCH_LEN);
            assert!(calls >= inner.len() / SCRATCH_LEN);
            assert_eq!((inf.last_seq(), inf.packets_since_reset()), (Some(1), 2));
        }
    }

    #[test]
    fn write_uncompressed_frame_splits_at_max_payload() {
        let inner = patterned(MAX_PAYLOAD_LEN + 10);
        let mut wire = Vec::new();
        assert_eq!(write_uncompressed_frame(&mut wire, 255, &inner), 1);
        assert_eq!(&wire[..7], &[0xff, 0xff, 0xff, 255, 0, 0, 0]);
        let second = 7 + MAX_PAYLOAD_LEN;
        assert_eq!(&wire[second..second + 7], &[10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(wire.len(), inner.len() + 14);
        assert!(inflate_all(Algorithm::Zlib, &wire).unwrap() == inner);

        let mut exact = Vec::new();
        assert_eq!(
            write_uncompressed_frame(&mut exact, 0, &inner[..MAX_PAYLOAD_LEN]),
            1
        );
        assert_eq!(exact.len(), MAX_PAYLOAD_LEN + 7);
        let mut none = Vec::new();
        assert_eq!(write_uncompressed_frame(&mut none, 4, b""), 4);
        assert!(none.is_empty());
    }

    #[test]
    fn write_compressed_frame_stores_what_does_not_shrink() {
        let mut wire = Vec::new();
        assert_eq!(
            write_compressed_frame(&mut wire, 7, b"\x01\x00\x00\x00\x0e", Algorithm::Zlib, 6),
            8
        );
        assert_eq!(wire, hex("05 00 00 07 00 00 00 01 00 00 00 0e"));
        let mut wire = Vec::new();
        write_compressed_frame(&mut wire, 0, &[b'a'; 200], Algorithm::Zlib, 6);
        let h = parse_compressed_header(wire[..7].try_into().unwrap());
        assert_eq!((h.seq, h.uncompressed_len), (0, 200));
        assert_eq!(h.payload_len as usize, wire.len() - 7);
        assert_eq!(wire[7], 0x78, "a zlib header");
    }

    #[test]
    fn sequence_tracking_and_boundaries() {
        let mut wire = forced(Algorithm::Zlib, 0, b"first");
        wire.extend(forced(Algorithm::Zlib, 1, b"second"));
        let mut inf = Inflater::new(Algorithm::Zlib);
        assert_eq!((inf.last_seq(), inf.packets_since_reset()), (None, 0));
        inflate_chunks(&mut inf, [&wire[..3]]).unwrap();
        assert!(!inf.at_frame_boundary() && inf.release_idle_memory());
        assert_eq!(inflate_chunks(&mut inf, [&wire[3..10]]).unwrap(), b"");
        assert!(
            !inf.release_idle_memory(),
            "mid-packet, the decoder is kept"
        );
        let first_end = wire.len() - forced(Algorithm::Zlib, 1, b"second").len();
        assert_eq!(
            inflate_chunks(&mut inf, [&wire[10..first_end]]).unwrap(),
            b"first"
        );
        assert!(inf.at_frame_boundary() && inf.engine.is_some());
        assert!(inf.release_idle_memory() && inf.engine.is_none());
        inf.reset_count();
        assert_eq!(
            inflate_chunks(&mut inf, [&wire[first_end..]]).unwrap(),
            b"second"
        );
        assert_eq!((inf.last_seq(), inf.packets_since_reset()), (Some(1), 1));
    }

    #[test]
    fn negotiated_algorithm() {
        let both = CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION_ALGORITHM;
        assert_eq!(Algorithm::negotiated(both), Some(Algorithm::Zlib));
        assert_eq!(
            Algorithm::negotiated(CLIENT_COMPRESS),
            Some(Algorithm::Zlib)
        );
        let zstd = CLIENT_ZSTD_COMPRESSION_ALGORITHM;
        assert_eq!(Algorithm::negotiated(zstd), Some(Algorithm::Zstd));
        assert_eq!(Algorithm::negotiated(0), None);
    }

    /// A stream of stored and compressed packets of random content.
    fn arb_stream() -> impl Strategy<Value = (Algorithm, Vec<u8>, Vec<u8>)> {
        let alg = prop_oneof![Just(Algorithm::Zlib), Just(Algorithm::Zstd)];
        let piece = (any::<bool>(), 0usize..3000, any::<u8>());
        (alg, prop::collection::vec(piece, 1..6)).prop_map(|(alg, pieces)| {
            let (mut wire, mut inner) = (Vec::new(), Vec::new());
            for (i, (compress, len, salt)) in pieces.into_iter().enumerate() {
                let content: Vec<u8> = patterned(len).iter().map(|b| b ^ salt).collect();
                match compress && len > 0 {
                    true => wire.extend(forced(alg, i as u8, &content)),
                    false => drop(write_uncompressed_frame(&mut wire, i as u8, &content)),
                }
                inner.extend(content);
            }
            (alg, wire, inner)
        })
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_output(
            (alg, wire, inner) in arb_stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            at.extend([0, wire.len()]);
            at.sort_unstable();
            let chunks = at.windows(2).map(|w| &wire[w[0]..w[1]]);
            let mut inf = Inflater::new(alg);
            prop_assert_eq!(inflate_chunks(&mut inf, chunks).unwrap(), inner);
            prop_assert!(inf.at_frame_boundary());
        }

        #[test]
        fn garbage_never_panics(
            zstd in any::<bool>(),
            wire in prop::collection::vec(any::<u8>(), 0..400),
            chunk in 1usize..50,
        ) {
            let alg = if zstd { Algorithm::Zstd } else { Algorithm::Zlib };
            let _ = inflate_chunks(&mut Inflater::new(alg), wire.chunks(chunk));
        }
    }
}
