//! Resultsets as whole packets: encoding a text resultset the proxy generates (column
//! definitions, rows, EOF terminators, as a client without `CLIENT_DEPRECATE_EOF` expects), and
//! decoding one a server sent into its columns and rows (the first result of a response; text
//! rows, or binary rows given in their text form).

use super::binary::{self, Param};
use super::constants::*;
use super::cursor::{put_lenenc_bytes, put_lenenc_int, Cursor};
use super::error::Result;
use super::packets::{is_eof_packet, parse_eof, parse_err, parse_ok};

/// Collation id of utf8mb3_general_ci, which generated columns announce.
const UTF8_GENERAL_CI: u16 = 33;

/// One column: its name and `MYSQL_TYPE_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: Vec<u8>,
    pub kind: u8,
}

/// A decoded response: an OK, an ERR, or the first resultset of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    /// 0x00 (OK or resultset) or 0xff (ERR).
    pub status_byte: u8,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    pub is_resultset: bool,
    pub affected_rows: u64,
    pub insert_id: u64,
    pub server_status: u16,
    pub warnings: u16,
    pub error_code: u16,
    pub error_message: Vec<u8>,
    pub sql_state: Vec<u8>,
}

/// The payloads of a text resultset: the column count, each column definition, an EOF, each row
/// (`None` is NULL), an EOF with `status`.
pub fn encode(columns: &[Column], rows: &[Vec<Option<Vec<u8>>>], status: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(columns.len() + rows.len() + 3);
    let mut count = Vec::new();
    put_lenenc_int(&mut count, columns.len() as u64);
    out.push(count);
    for c in columns {
        out.push(column_definition(c));
    }
    out.push(eof_payload(status));
    for row in rows {
        let mut p = Vec::new();
        for i in 0..columns.len() {
            match row.get(i).and_then(Option::as_ref) {
                Some(v) => put_lenenc_bytes(&mut p, v),
                None => p.push(0xfb),
            }
        }
        out.push(p);
    }
    out.push(eof_payload(status));
    out
}

fn column_definition(c: &Column) -> Vec<u8> {
    let mut p = Vec::with_capacity(32 + 2 * c.name.len());
    for part in [&b"def"[..], b"", b"", b"", &c.name, &c.name] {
        put_lenenc_bytes(&mut p, part);
    }
    p.push(0x0c);
    p.extend_from_slice(&UTF8_GENERAL_CI.to_le_bytes());
    p.extend_from_slice(&1024u32.to_le_bytes());
    p.push(c.kind);
    p.extend_from_slice(&0u16.to_le_bytes());
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p
}

/// An EOF payload (4.1 form) with no warnings.
pub fn eof_payload(status: u16) -> Vec<u8> {
    let mut p = vec![EOF_HEADER, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

/// How a resultset's rows are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Not decoded (counted only).
    Skip,
    /// Text protocol (COM_QUERY).
    Text,
    /// Binary protocol (COM_STMT_EXECUTE): values are given in their text form.
    Binary,
}

/// Decodes the response payloads `packets` for a connection with `caps`; a resultset's rows as
/// `rows` says.
pub fn decode(packets: &[Vec<u8>], caps: u32, rows: Rows) -> Result<Decoded> {
    let mut d = Decoded::default();
    let Some(first) = packets.first() else {
        return Ok(d);
    };
    match first.first() {
        Some(&ERR_HEADER) => {
            let e = parse_err(first, caps)?;
            d.status_byte = ERR_HEADER;
            d.error_code = e.code;
            d.error_message = e.message.to_vec();
            d.sql_state = e.sql_state.map(|s| s.to_vec()).unwrap_or_default();
        }
        Some(&OK_HEADER) => {
            let ok = parse_ok(first, caps)?;
            d.affected_rows = ok.affected_rows;
            d.insert_id = ok.last_insert_id;
            d.server_status = ok.status;
            d.warnings = ok.warnings;
        }
        _ => decode_resultset(packets, caps, rows, &mut d)?,
    }
    Ok(d)
}

fn decode_resultset(packets: &[Vec<u8>], caps: u32, rows: Rows, d: &mut Decoded) -> Result<()> {
    d.is_resultset = true;
    let n = Cursor::new(&packets[0]).lenenc_int()? as usize;
    let mut at = 1;
    let mut unsigned = Vec::with_capacity(n);
    for p in packets.iter().skip(1).take(n) {
        let mut c = Cursor::new(p);
        for _ in 0..4 {
            c.lenenc_bytes()?;
        }
        let name = c.lenenc_bytes()?.to_vec();
        c.lenenc_bytes()?;
        c.lenenc_int()?;
        c.skip(2 + 4)?;
        let kind = c.u8()?;
        unsigned.push(c.u16_le()? & UNSIGNED_FLAG != 0);
        d.columns.push(Column { name, kind });
        at += 1;
    }
    if caps & CLIENT_DEPRECATE_EOF == 0 {
        at += 1;
    }
    for p in packets.iter().skip(at) {
        if is_terminator(p) {
            end_of_rows(p, caps, d)?;
            break;
        }
        d.rows.push(match rows {
            Rows::Skip => Vec::new(),
            Rows::Text => decode_row(p, n)?,
            Rows::Binary => decode_binary_row(p, &d.columns, &unsigned)?,
        });
    }
    Ok(())
}

fn is_terminator(p: &[u8]) -> bool {
    p.first() == Some(&ERR_HEADER)
        || (!p.is_empty() && is_eof_packet(p.len() as u32, p[0]) && p.len() < 0xff_ffff)
}

fn end_of_rows(p: &[u8], caps: u32, d: &mut Decoded) -> Result<()> {
    if p[0] == ERR_HEADER {
        let e = parse_err(p, caps)?;
        d.status_byte = ERR_HEADER;
        d.error_code = e.code;
        d.error_message = e.message.to_vec();
    } else if caps & CLIENT_DEPRECATE_EOF != 0 {
        let ok = parse_ok(p, caps)?;
        d.server_status = ok.status;
        d.warnings = ok.warnings;
    } else {
        let eof = parse_eof(p)?;
        d.server_status = eof.status;
        d.warnings = eof.warnings;
    }
    Ok(())
}

fn decode_row(p: &[u8], n: usize) -> Result<Vec<Option<Vec<u8>>>> {
    let mut c = Cursor::new(p);
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        if c.peek_u8()? == 0xfb {
            c.u8()?;
            row.push(None);
        } else {
            row.push(Some(c.lenenc_bytes()?.to_vec()));
        }
    }
    Ok(row)
}

/// A binary row (0x00, a NULL bitmap offset by 2, the values by column type), in text form.
fn decode_binary_row(
    p: &[u8],
    columns: &[Column],
    unsigned: &[bool],
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut c = Cursor::new(p);
    c.u8()?;
    let nulls = c.bytes((columns.len() + 7 + 2) / 8)?;
    let mut row = Vec::with_capacity(columns.len());
    for (i, col) in columns.iter().enumerate() {
        let bit = i + 2;
        if nulls[bit / 8] & (1 << (bit % 8)) != 0 {
            row.push(None);
            continue;
        }
        let u = unsigned.get(i).copied().unwrap_or(false);
        row.push(match binary::decode_value(&mut c, col.kind, u)? {
            Param::Null => None,
            Param::Int(v) => Some(v.to_string().into_bytes()),
            Param::UInt(v) => Some(v.to_string().into_bytes()),
            Param::Double(v) => Some(v.to_string().into_bytes()),
            Param::Bytes(b) => Some(b.to_vec()),
            Param::Text(t) => Some(t.into_bytes()),
        });
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_resultsets_decode_to_what_went_in() {
        let cols = vec![
            Column {
                name: b"id".to_vec(),
                kind: MYSQL_TYPE_LONG,
            },
            Column {
                name: b"name".to_vec(),
                kind: MYSQL_TYPE_VAR_STRING,
            },
        ];
        let rows = vec![
            vec![Some(b"1".to_vec()), Some(b"one".to_vec())],
            vec![Some(b"2".to_vec()), None],
        ];
        let packets = encode(&cols, &rows, SERVER_STATUS_AUTOCOMMIT);
        assert_eq!(packets.len(), 1 + 2 + 1 + 2 + 1);
        let d = decode(&packets, CLIENT_PROTOCOL_41, Rows::Text).unwrap();
        assert!(d.is_resultset);
        assert_eq!(d.columns, cols);
        assert_eq!(d.rows, rows);
        assert_eq!(d.server_status, SERVER_STATUS_AUTOCOMMIT);
    }

    #[test]
    fn ok_and_err_decode() {
        let ok = vec![vec![0, 3, 7, 2, 0, 1, 0]];
        let d = decode(&ok, CLIENT_PROTOCOL_41, Rows::Text).unwrap();
        assert_eq!((d.affected_rows, d.insert_id, d.warnings), (3, 7, 1));
        let mut err = vec![0xff, 0x28, 0x04, b'#'];
        err.extend_from_slice(b"42000oops");
        let d = decode(&[err], CLIENT_PROTOCOL_41, Rows::Text).unwrap();
        assert_eq!((d.status_byte, d.error_code), (0xff, 1064));
        assert_eq!(d.error_message, b"oops");
    }
}
