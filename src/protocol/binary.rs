//! The binary protocol's values: a COM_STMT_EXECUTE's parameters (the NULL bitmap, the
//! new-params-bound flag, the types, the values) and the values of binary rows (integers,
//! floats, length-encoded strings, dates and times), decoded for scripts
//! (`mysql.proto.from_stmt_execute_packet`, `inj.resultset.rows`).

use super::constants::*;
use super::cursor::Cursor;
use super::error::Result;

/// One parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param<'a> {
    Null,
    Int(i64),
    UInt(u64),
    Double(f64),
    /// Strings, decimals, blobs, JSON... as sent.
    Bytes(&'a [u8]),
    /// Dates and times, as MySQL prints them.
    Text(String),
}

/// A parameter's type (`MYSQL_TYPE_*`), whether it is unsigned, and its value.
pub type Typed<'a> = (u8, bool, Param<'a>);

/// The parameters of an execute's `params` part for a statement of `n` parameters; `None` when
/// the client did not send their types again (new-params-bound flag 0: the types of the previous
/// execute apply, which only the statement's owner knows).
pub fn decode_params(params: &[u8], n: usize) -> Result<Option<Vec<Typed<'_>>>> {
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut c = Cursor::new(params);
    let nulls = c.bytes(n.div_ceil(8))?;
    if c.u8()? != 1 {
        return Ok(None);
    }
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = c.u8()?;
        let flags = c.u8()?;
        types.push((kind, flags & 0x80 != 0));
    }
    let mut out = Vec::with_capacity(n);
    for (i, (kind, unsigned)) in types.into_iter().enumerate() {
        let null = nulls[i / 8] & (1 << (i % 8)) != 0;
        let value = if null {
            Param::Null
        } else {
            decode_value(&mut c, kind, unsigned)?
        };
        out.push((kind, unsigned, value));
    }
    Ok(Some(out))
}

fn int(v: i64, u: u64, unsigned: bool) -> Param<'static> {
    if unsigned {
        Param::UInt(u)
    } else {
        Param::Int(v)
    }
}

/// One value of type `kind` in the binary protocol (parameters and binary rows alike).
pub fn decode_value<'a>(c: &mut Cursor<'a>, kind: u8, unsigned: bool) -> Result<Param<'a>> {
    Ok(match kind {
        MYSQL_TYPE_NULL => Param::Null,
        MYSQL_TYPE_TINY => {
            let b = c.u8()?;
            int(i64::from(b as i8), u64::from(b), unsigned)
        }
        MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR => {
            let v = c.u16_le()?;
            int(i64::from(v as i16), u64::from(v), unsigned)
        }
        MYSQL_TYPE_LONG | MYSQL_TYPE_INT24 => {
            let v = c.u32_le()?;
            int(i64::from(v as i32), u64::from(v), unsigned)
        }
        MYSQL_TYPE_LONGLONG => {
            let v = c.u64_le()?;
            int(v as i64, v, unsigned)
        }
        MYSQL_TYPE_FLOAT => Param::Double(f64::from(f32::from_bits(c.u32_le()?))),
        MYSQL_TYPE_DOUBLE => Param::Double(f64::from_bits(c.u64_le()?)),
        MYSQL_TYPE_DATE | MYSQL_TYPE_DATETIME | MYSQL_TYPE_TIMESTAMP => {
            Param::Text(datetime(c, kind)?)
        }
        MYSQL_TYPE_TIME => Param::Text(time(c)?),
        _ => Param::Bytes(c.lenenc_bytes()?),
    })
}

fn datetime(c: &mut Cursor<'_>, kind: u8) -> Result<String> {
    let len = c.u8()?;
    let b = c.bytes(usize::from(len))?;
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let date = if len >= 4 {
        format!("{:04}-{:02}-{:02}", u16_at(0), b[2], b[3])
    } else {
        "0000-00-00".into()
    };
    if kind == MYSQL_TYPE_DATE {
        return Ok(date);
    }
    let (h, m, s) = if len >= 7 {
        (b[4], b[5], b[6])
    } else {
        (0, 0, 0)
    };
    let mut text = format!("{date} {h:02}:{m:02}:{s:02}");
    if len >= 11 {
        let micros = u32::from_le_bytes([b[7], b[8], b[9], b[10]]);
        text += &format!(".{micros:06}");
    }
    Ok(text)
}

fn time(c: &mut Cursor<'_>) -> Result<String> {
    let len = c.u8()?;
    let b = c.bytes(usize::from(len))?;
    if len < 8 {
        return Ok("00:00:00".into());
    }
    let days = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    let hours = days * 24 + u32::from(b[5]);
    let sign = if b[0] == 1 { "-" } else { "" };
    let mut text = format!("{sign}{hours:02}:{:02}:{:02}", b[6], b[7]);
    if len >= 12 {
        let micros = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        text += &format!(".{micros:06}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_common_type_decodes() {
        // 5 params: NULL, LONGLONG -7, DOUBLE 1.5, VAR_STRING "hi", DATETIME 2026-12-01 10:20:30.
        let mut p = vec![0b0000_0001, 1];
        for (t, f) in [
            (MYSQL_TYPE_NULL, 0),
            (MYSQL_TYPE_LONGLONG, 0),
            (MYSQL_TYPE_DOUBLE, 0),
        ] {
            p.extend_from_slice(&[t, f]);
        }
        p.extend_from_slice(&[MYSQL_TYPE_VAR_STRING, 0, MYSQL_TYPE_DATETIME, 0]);
        p.extend_from_slice(&(-7i64).to_le_bytes());
        p.extend_from_slice(&1.5f64.to_le_bytes());
        p.extend_from_slice(&[2, b'h', b'i']);
        p.extend_from_slice(&[7, 0xEA, 0x07, 12, 1, 10, 20, 30]);
        let got = decode_params(&p, 5).unwrap().unwrap();
        assert_eq!(got[0].2, Param::Null);
        assert_eq!(got[1].2, Param::Int(-7));
        assert_eq!(got[2].2, Param::Double(1.5));
        assert_eq!(got[3].2, Param::Bytes(b"hi"));
        assert_eq!(got[4].2, Param::Text("2026-12-01 10:20:30".into()));
        // Types not sent again: unknown here.
        assert_eq!(decode_params(&[0, 0], 1).unwrap(), None);
        // Truncated: an error, not a panic.
        assert!(decode_params(&p[..p.len() - 3], 5).is_err());
    }
}
