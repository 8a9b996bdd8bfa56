//! Hexadecimal text: the `*`-prefixed native password hashes of configurations and of
//! `mysql.user`, and the `HEX()` / `X'…'` forms the pooled sessions read and replay user
//! variables in.

/// The bytes `hex` spells (two digits per byte, either case); `None` for an odd length or a
/// character that is not a hex digit.
pub fn decode(hex: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

/// Appends `bytes` as upper-case hex digits.
pub fn encode_upper_into(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mut out = Vec::new();
        encode_upper_into(&[0x00, 0xab, 0x7f], &mut out);
        assert_eq!(out, b"00AB7F");
        assert_eq!(decode(b"00ab7F"), Some(vec![0x00, 0xab, 0x7f]));
        assert_eq!(decode(b""), Some(vec![]));
        assert_eq!(decode(b"abc"), None);
        assert_eq!(decode(b"zz"), None);
    }
}
