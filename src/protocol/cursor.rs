//! The one bounds-checked reader every parser of the codec uses ([`Cursor`]), plus the encoders of
//! length-encoded integers and strings. Reading past the end is an error, never a panic.

use super::error::{ProtoError, Result};

/// A forward-only reader over a byte slice. Every read checks bounds and returns
/// [`ProtoError::Truncated`] when the input is too short (without moving the cursor); slices
/// returned borrow from the input.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.bytes_named(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn bytes_named(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(ProtoError::truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(ProtoError::truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8> {
        let [b] = self.take::<1>("u8")?;
        Ok(b)
    }

    pub fn u16_le(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take::<2>("u16")?))
    }

    pub fn u24_le(&mut self) -> Result<u32> {
        let [a, b, c] = self.take::<3>("u24")?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    pub fn u32_le(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take::<4>("u32")?))
    }

    pub fn u64_le(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take::<8>("u64")?))
    }

    /// The next byte without consuming it.
    pub fn peek_u8(&self) -> Result<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(ProtoError::truncated("u8"))
    }

    /// A length-encoded integer. The NULL marker (0xfb) and 0xff are errors here.
    pub fn lenenc_int(&mut self) -> Result<u64> {
        let start = self.pos;
        match self.lenenc_int_or_null()? {
            Some(v) => Ok(v),
            None => {
                self.pos = start;
                Err(ProtoError::malformed(
                    "length-encoded integer",
                    "unexpected NULL marker 0xfb",
                ))
            }
        }
    }

    /// A length-encoded integer, or `None` for the NULL marker 0xfb. 0xff is an error.
    pub fn lenenc_int_or_null(&mut self) -> Result<Option<u64>> {
        let first = self
            .peek_u8()
            .map_err(|_| ProtoError::truncated("length-encoded integer"))?;
        let v = match first {
            0x00..=0xfa => {
                self.pos += 1;
                u64::from(first)
            }
            0xfb => {
                self.pos += 1;
                return Ok(None);
            }
            0xfc => {
                let [_, a, b] = self.take::<3>("length-encoded integer")?;
                u64::from(u16::from_le_bytes([a, b]))
            }
            0xfd => {
                let [_, a, b, c] = self.take::<4>("length-encoded integer")?;
                u64::from(u32::from_le_bytes([a, b, c, 0]))
            }
            0xfe => {
                let [_, a, b, c, d, e, f, g, h] = self.take::<9>("length-encoded integer")?;
                u64::from_le_bytes([a, b, c, d, e, f, g, h])
            }
            0xff => {
                return Err(ProtoError::malformed(
                    "length-encoded integer",
                    "invalid first byte 0xff",
                ))
            }
        };
        Ok(Some(v))
    }

    /// A length-encoded string: a length-encoded integer then that many bytes.
    /// On error the cursor does not move.
    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8]> {
        let start = self.pos;
        let n = self.lenenc_int()?;
        let r = usize::try_from(n)
            .map_err(|_| ProtoError::truncated("length-encoded string"))
            .and_then(|n| self.bytes_named(n, "length-encoded string"));
        if r.is_err() {
            self.pos = start;
        }
        r
    }

    /// Exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        self.bytes_named(n, "bytes")
    }

    /// Bytes up to the next NUL; the NUL is consumed but not returned. Error if there is none.
    pub fn nul_bytes(&mut self) -> Result<&'a [u8]> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let i = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtoError::truncated("NUL-terminated string"))?;
        let s = &rest[..i];
        self.pos += i + 1;
        Ok(s)
    }

    /// Everything not yet consumed (the cursor is then empty).
    pub fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        s
    }

    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.bytes_named(n, "bytes").map(|_| ())
    }
}

/// Append `v` as a length-encoded integer (1, 3, 4 or 9 bytes).
pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    if v < 0xfb {
        out.push(v as u8);
    } else if v <= 0xffff {
        out.push(0xfc);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= 0xff_ffff {
        out.push(0xfd);
        out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
    } else {
        out.push(0xfe);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Append `b` as a length-encoded string.
pub fn put_lenenc_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_lenenc_int(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Total encoded length of a length-encoded integer, from its first byte (1 for the NULL marker
/// 0xfb); `None` for 0xff, which never starts one.
pub fn lenenc_int_len(first_byte: u8) -> Option<usize> {
    match first_byte {
        0x00..=0xfb => Some(1),
        0xfc => Some(3),
        0xfd => Some(4),
        0xfe => Some(9),
        0xff => None,
    }
}

/// Number of bytes [`put_lenenc_int`] writes for `v`.
pub fn lenenc_int_size(v: u64) -> usize {
    if v < 0xfb {
        1
    } else if v <= 0xffff {
        3
    } else if v <= 0xff_ffff {
        4
    } else {
        9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_ints_little_endian() {
        let b = [
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
        ];
        let mut c = Cursor::new(&b);
        assert_eq!(c.u8().unwrap(), 1);
        assert_eq!(c.u16_le().unwrap(), 0x0302);
        assert_eq!(c.u24_le().unwrap(), 0x060504);
        assert_eq!(c.u32_le().unwrap(), 0x0a090807);
        assert_eq!(c.u64_le().unwrap(), 0x1211100f0e0d0c0b);
        assert!(c.is_empty());
        assert_eq!(c.position(), 18);
        assert_eq!(c.u8(), Err(ProtoError::truncated("u8")));
    }

    #[test]
    fn truncated_reads_do_not_advance() {
        let b = [1, 2, 3];
        let mut c = Cursor::new(&b);
        assert!(c.u32_le().is_err());
        assert_eq!(c.position(), 0);
        assert_eq!(c.u24_le().unwrap(), 0x030201);
        assert!(c.peek_u8().is_err());
        assert!(c.skip(1).is_err());
        assert!(c.bytes(usize::MAX).is_err());
    }

    #[test]
    fn lenenc_boundaries() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (250, &[0xfa]),
            (251, &[0xfc, 0xfb, 0x00]),
            (0xffff, &[0xfc, 0xff, 0xff]),
            (0x10000, &[0xfd, 0x00, 0x00, 0x01]),
            (0xff_ffff, &[0xfd, 0xff, 0xff, 0xff]),
            (0x100_0000, &[0xfe, 0, 0, 0, 1, 0, 0, 0, 0]),
            (
                u64::MAX,
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for &(v, enc) in cases {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            assert_eq!(out, enc, "encoding {v:#x}");
            assert_eq!(lenenc_int_size(v), enc.len());
            assert_eq!(lenenc_int_len(enc[0]), Some(enc.len()));
            let mut c = Cursor::new(enc);
            assert_eq!(c.lenenc_int().unwrap(), v);
            assert!(c.is_empty());
            // One byte short is truncated.
            let mut c = Cursor::new(&enc[..enc.len() - 1]);
            assert!(c.lenenc_int().is_err());
        }
    }

    #[test]
    fn lenenc_null_and_ff() {
        let mut c = Cursor::new(&[0xfb, 0x05]);
        assert_eq!(c.lenenc_int_or_null().unwrap(), None);
        assert_eq!(c.lenenc_int_or_null().unwrap(), Some(5));
        assert!(Cursor::new(&[0xfb]).lenenc_int().is_err());
        assert!(Cursor::new(&[0xff]).lenenc_int().is_err());
        assert!(Cursor::new(&[0xff]).lenenc_int_or_null().is_err());
        assert_eq!(lenenc_int_len(0xff), None);
        assert_eq!(lenenc_int_len(0xfb), Some(1));
    }

    #[test]
    fn strings() {
        let b = b"\x03abcdef\0gh";
        let mut c = Cursor::new(b);
        assert_eq!(c.lenenc_bytes().unwrap(), b"abc");
        assert_eq!(c.nul_bytes().unwrap(), b"def");
        assert_eq!(c.peek_u8().unwrap(), b'g');
        assert!(c.clone().nul_bytes().is_err());
        assert_eq!(c.rest(), b"gh");
        assert_eq!(c.rest(), b"");
        assert!(Cursor::new(b"\x05ab").lenenc_bytes().is_err());
        // A huge announced length must not panic or overflow.
        let huge = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1];
        assert!(Cursor::new(&huge).lenenc_bytes().is_err());
        let mut out = Vec::new();
        put_lenenc_bytes(&mut out, &[7u8; 300]);
        assert_eq!(&out[..3], &[0xfc, 0x2c, 0x01]);
        assert_eq!(Cursor::new(&out).lenenc_bytes().unwrap(), &[7u8; 300][..]);
    }

    /// Runs a sequence of reads: a failed read leaves the position where it was, and the position
    /// never passes the end.
    fn check_reads(b: &[u8], ops: &[u8]) {
        let mut c = Cursor::new(b);
        for &op in ops {
            let before = c.position();
            let ok = match op {
                0 => c.u8().is_ok(),
                1 => c.u16_le().is_ok(),
                2 => c.u24_le().is_ok(),
                3 => c.u32_le().is_ok(),
                4 => c.u64_le().is_ok(),
                5 => c.lenenc_int().is_ok(),
                6 => c.lenenc_int_or_null().is_ok(),
                7 => c.lenenc_bytes().is_ok(),
                8 => c.nul_bytes().is_ok(),
                9 => c.bytes(3).is_ok(),
                10 => c.skip(2).is_ok(),
                _ => {
                    c.rest();
                    true
                }
            };
            if !ok {
                assert_eq!(c.position(), before, "op {op} failed but moved the cursor");
            }
            assert!(c.position() <= b.len());
            assert_eq!(c.remaining(), b.len() - c.position());
        }
    }

    /// Cases proptest once shrank to (a lenenc string whose length prefix claims more bytes than
    /// remain, and a 9-byte lenenc int prefix at the very end).
    #[test]
    fn regression_reads_found_by_proptest() {
        check_reads(&[1], &[7]);
        check_reads(
            &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 251],
            &[7, 10, 10, 1, 1, 1, 5],
        );
    }

    proptest! {
        #[test]
        fn lenenc_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            put_lenenc_int(&mut out, v);
            prop_assert_eq!(out.len(), lenenc_int_size(v));
            prop_assert_eq!(lenenc_int_len(out[0]), Some(out.len()));
            let mut c = Cursor::new(&out);
            prop_assert_eq!(c.lenenc_int().unwrap(), v);
            prop_assert!(c.is_empty());
        }

        #[test]
        fn arbitrary_reads_never_panic(b in proptest::collection::vec(any::<u8>(), 0..40), ops in proptest::collection::vec(0u8..12, 0..20)) {
            check_reads(&b, &ops);
        }
    }
}
