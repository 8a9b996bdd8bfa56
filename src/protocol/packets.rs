//! The generic response packets: OK (0x00, and the 0xfe form that ends a resultset under
//! CLIENT_DEPRECATE_EOF), ERR (0xff) and EOF (0xfe, shorter than 9 bytes). Parsers borrow from the
//! payload; `encode_*` write payloads, `write_*` write whole framed packets.

use super::constants::{
    CLIENT_PROTOCOL_41, CLIENT_SESSION_TRACK, CLIENT_TRANSACTIONS, EOF_HEADER, ERR_HEADER,
    HEADER_LEN, MAX_PAYLOAD_LEN, OK_HEADER, SERVER_SESSION_STATE_CHANGED,
};
use super::cursor::{put_lenenc_bytes, put_lenenc_int, Cursor};
use super::error::{ProtoError, Result};
use super::framing::write_packet;

/// An OK packet (or the 0xfe-headed OK that replaces EOF under CLIENT_DEPRECATE_EOF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkPacket<'a> {
    /// 0x00, or 0xfe for the resultset terminator under CLIENT_DEPRECATE_EOF.
    pub header: u8,
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    /// Human-readable info (e.g. "Rows matched: 1  Changed: 1  Warnings: 0").
    pub info: &'a [u8],
    /// Raw session-state-change block when CLIENT_SESSION_TRACK and SERVER_SESSION_STATE_CHANGED.
    pub session_state: Option<&'a [u8]>,
}

/// Parse an OK payload. `capabilities` are those agreed for the connection.
pub fn parse_ok(payload: &[u8], capabilities: u32) -> Result<OkPacket<'_>> {
    let mut c = Cursor::new(payload);
    let header = c.u8().map_err(|_| ProtoError::truncated("OK packet"))?;
    if header != OK_HEADER && header != EOF_HEADER {
        return Err(ProtoError::malformed(
            "OK packet",
            format!("header byte {header:#04x}"),
        ));
    }
    let affected_rows = c.lenenc_int()?;
    let last_insert_id = c.lenenc_int()?;
    let (status, warnings) = if capabilities & CLIENT_PROTOCOL_41 != 0 {
        (c.u16_le()?, c.u16_le()?)
    } else if capabilities & CLIENT_TRANSACTIONS != 0 {
        (c.u16_le()?, 0)
    } else {
        (0, 0)
    };
    let (info, session_state) = if capabilities & CLIENT_SESSION_TRACK != 0 {
        // Servers leave out the (empty) info string when nothing follows it.
        let info = if c.is_empty() {
            &[][..]
        } else {
            c.lenenc_bytes()?
        };
        let state = if status & SERVER_SESSION_STATE_CHANGED != 0 && !c.is_empty() {
            Some(c.lenenc_bytes()?)
        } else {
            None
        };
        (info, state)
    } else {
        // Servers send the info as a length-encoded string here too (MySQL's net_send_ok);
        // a plain rest-of-packet string is read as such.
        let rest = c.rest();
        let mut lenenc = Cursor::new(rest);
        match lenenc.lenenc_bytes() {
            Ok(info) if lenenc.is_empty() && !rest.is_empty() => (info, None),
            _ => (rest, None),
        }
    };
    Ok(OkPacket {
        header,
        affected_rows,
        last_insert_id,
        status,
        warnings,
        info,
        session_state,
    })
}

/// Append the payload of `ok` as a server with `capabilities` would send it.
pub fn encode_ok(ok: &OkPacket<'_>, capabilities: u32, out: &mut Vec<u8>) {
    out.push(ok.header);
    put_lenenc_int(out, ok.affected_rows);
    put_lenenc_int(out, ok.last_insert_id);
    if capabilities & CLIENT_PROTOCOL_41 != 0 {
        out.extend_from_slice(&ok.status.to_le_bytes());
        out.extend_from_slice(&ok.warnings.to_le_bytes());
    } else if capabilities & CLIENT_TRANSACTIONS != 0 {
        out.extend_from_slice(&ok.status.to_le_bytes());
    }
    if capabilities & CLIENT_SESSION_TRACK != 0 {
        let state = ok
            .session_state
            .filter(|_| ok.status & SERVER_SESSION_STATE_CHANGED != 0);
        if !ok.info.is_empty() || state.is_some() {
            put_lenenc_bytes(out, ok.info);
        }
        if let Some(s) = state {
            put_lenenc_bytes(out, s);
        }
    } else if !ok.info.is_empty() {
        put_lenenc_bytes(out, ok.info);
    }
}

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket<'a> {
    pub code: u16,
    /// The 5-character SQLSTATE after the '#' marker (4.1 protocol), if present.
    pub sql_state: Option<[u8; 5]>,
    pub message: &'a [u8],
}

/// Parse an ERR payload. With CLIENT_PROTOCOL_41 a '#' marker and SQLSTATE are read when present
/// (servers omit them in some early errors). MariaDB's progress report (code 0xffff) parses as an
/// ERR with that code; only clients that asked for progress reports receive it.
pub fn parse_err(payload: &[u8], capabilities: u32) -> Result<ErrPacket<'_>> {
    let mut c = Cursor::new(payload);
    let header = c.u8().map_err(|_| ProtoError::truncated("ERR packet"))?;
    if header != ERR_HEADER {
        return Err(ProtoError::malformed(
            "ERR packet",
            format!("header byte {header:#04x}"),
        ));
    }
    let code = c
        .u16_le()
        .map_err(|_| ProtoError::truncated("ERR packet"))?;
    let mut sql_state = None;
    if capabilities & CLIENT_PROTOCOL_41 != 0 && c.peek_u8() == Ok(b'#') && c.remaining() >= 6 {
        c.skip(1)?;
        let s = c.bytes(5)?;
        sql_state = Some([s[0], s[1], s[2], s[3], s[4]]);
    }
    Ok(ErrPacket {
        code,
        sql_state,
        message: c.rest(),
    })
}

/// Append the payload of `err` as a server with `capabilities` would send it.
pub fn encode_err(err: &ErrPacket<'_>, capabilities: u32, out: &mut Vec<u8>) {
    out.push(ERR_HEADER);
    out.extend_from_slice(&err.code.to_le_bytes());
    if capabilities & CLIENT_PROTOCOL_41 != 0 {
        if let Some(s) = err.sql_state {
            out.push(b'#');
            out.extend_from_slice(&s);
        }
    }
    out.extend_from_slice(err.message);
}

/// An EOF packet (the pre-CLIENT_DEPRECATE_EOF resultset separator/terminator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EofPacket {
    pub warnings: u16,
    pub status: u16,
}

/// True when a payload of `payload_len` bytes starting with `first_byte` is an EOF packet
/// (0xfe and shorter than 9 bytes; longer 0xfe payloads are rows or OK packets).
pub fn is_eof_packet(payload_len: u32, first_byte: u8) -> bool {
    first_byte == EOF_HEADER && payload_len < 9
}

/// Parse an EOF payload: 0xfe then warnings and status (4.1), or the 1-byte pre-4.1 form.
pub fn parse_eof(payload: &[u8]) -> Result<EofPacket> {
    match payload.first() {
        None => return Err(ProtoError::truncated("EOF packet")),
        Some(&b) if b != EOF_HEADER => {
            return Err(ProtoError::malformed(
                "EOF packet",
                format!("header byte {b:#04x}"),
            ))
        }
        Some(_) => {}
    }
    if payload.len() >= 9 {
        return Err(ProtoError::malformed(
            "EOF packet",
            format!("{} bytes long (an EOF is shorter than 9)", payload.len()),
        ));
    }
    if payload.len() == 1 {
        return Ok(EofPacket {
            warnings: 0,
            status: 0,
        });
    }
    let mut c = Cursor::new(payload);
    c.skip(1)?;
    let warnings = c
        .u16_le()
        .map_err(|_| ProtoError::truncated("EOF packet"))?;
    let status = c
        .u16_le()
        .map_err(|_| ProtoError::truncated("EOF packet"))?;
    Ok(EofPacket { warnings, status })
}

/// Append the (4.1) payload of an EOF packet.
pub fn encode_eof(eof: &EofPacket, out: &mut Vec<u8>) {
    out.push(EOF_HEADER);
    out.extend_from_slice(&eof.warnings.to_le_bytes());
    out.extend_from_slice(&eof.status.to_le_bytes());
}

/// Frame whatever `body` appends as one logical packet with sequence id `seq`, writing the
/// payload in place (no temporary) unless it turns out longer than one physical packet.
fn framed(out: &mut Vec<u8>, seq: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    body(out);
    let len = out.len() - start - HEADER_LEN;
    if len <= MAX_PAYLOAD_LEN {
        let l = (len as u32).to_le_bytes();
        out[start..start + HEADER_LEN].copy_from_slice(&[l[0], l[1], l[2], seq]);
    } else {
        let payload = out.split_off(start + HEADER_LEN);
        out.truncate(start);
        write_packet(out, seq, &payload);
    }
}

/// Append a framed OK packet (4.1 form, no info string).
pub fn write_ok_packet(
    out: &mut Vec<u8>,
    seq: u8,
    affected_rows: u64,
    last_insert_id: u64,
    status: u16,
    warnings: u16,
) {
    framed(out, seq, |out| {
        out.push(OK_HEADER);
        put_lenenc_int(out, affected_rows);
        put_lenenc_int(out, last_insert_id);
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&warnings.to_le_bytes());
    });
}

/// Append a framed ERR packet in the 4.1 form ('#' marker and SQLSTATE).
pub fn write_err_packet(
    out: &mut Vec<u8>,
    seq: u8,
    code: u16,
    sql_state: &[u8; 5],
    message: &[u8],
) {
    framed(out, seq, |out| {
        encode_err(
            &ErrPacket {
                code,
                sql_state: Some(*sql_state),
                message,
            },
            CLIENT_PROTOCOL_41,
            out,
        )
    });
}

/// Append a framed EOF packet (4.1 form).
pub fn write_eof_packet(out: &mut Vec<u8>, seq: u8, warnings: u16, status: u16) {
    framed(out, seq, |out| {
        encode_eof(&EofPacket { warnings, status }, out)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::constants::*;
    use crate::protocol::framing::split_packet;
    use proptest::prelude::*;

    const CAPS41: u32 = CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn real_ok_with_session_state() {
        // Captured from MariaDB 10.11.19 through a Python TCP relay: the OK that ends a mariadb CLI
        // login with database "codecdb" (client capabilities 0x00bfa28c, session tracking on).
        let pkt = hex("1300000200000002400000000a010807636f6465636462");
        let (h, payload, _) = split_packet(&pkt).unwrap();
        assert_eq!((h.len, h.seq), (19, 2));
        let ok = parse_ok(payload, 0x00bf_a28c).unwrap();
        assert_eq!(ok.header, 0);
        assert_eq!((ok.affected_rows, ok.last_insert_id), (0, 0));
        assert_eq!(
            ok.status,
            SERVER_STATUS_AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED
        );
        assert_eq!(ok.warnings, 0);
        assert_eq!(ok.info, b"");
        // Tracker type 1 (SESSION_TRACK_SCHEMA), 8 bytes: lenenc "codecdb".
        assert_eq!(ok.session_state, Some(&b"\x01\x08\x07codecdb"[..]));
        let mut out = Vec::new();
        encode_ok(&ok, 0x00bf_a28c, &mut out);
        assert_eq!(out, payload);
    }

    #[test]
    fn ok_variants() {
        // affected 300 (0xfc), insert id 5, status autocommit, 1 warning, info "hi".
        let p = b"\x00\xfc\x2c\x01\x05\x02\x00\x01\x00hi";
        let ok = parse_ok(p, CAPS41).unwrap();
        assert_eq!(
            ok,
            OkPacket {
                header: 0,
                affected_rows: 300,
                last_insert_id: 5,
                status: 2,
                warnings: 1,
                info: b"hi",
                session_state: None
            }
        );
        // The 0xfe terminator under CLIENT_DEPRECATE_EOF.
        let ok = parse_ok(b"\xfe\x00\x00\x22\x00\x00\x00", CAPS41).unwrap();
        assert_eq!((ok.header, ok.status), (0xfe, 0x22));
        // Pre-4.1 with transactions: no warnings.
        let ok = parse_ok(b"\x00\x01\x00\x02\x00", CLIENT_TRANSACTIONS).unwrap();
        assert_eq!((ok.affected_rows, ok.status, ok.warnings), (1, 2, 0));
        assert!(parse_ok(b"\x00\x01\x00\x02", CAPS41).is_err());
        assert!(parse_ok(b"\x01\x00\x00\x00\x00\x00\x00", CAPS41).is_err());
        assert!(parse_ok(b"", CAPS41).is_err());
        // Session track: info present but state flag set and state block truncated.
        assert!(parse_ok(
            b"\x00\x00\x00\x00\x40\x00\x00\x00\x05ab",
            CAPS41 | CLIENT_SESSION_TRACK
        )
        .is_err());
    }

    #[test]
    fn real_err_and_written_err() {
        // Captured from MariaDB 10.11.19: the reply to a login with a wrong user (seq 2).
        let pkt = hex("49000002ff15042332383030304163636573732064656e69656420666f7220757365722027636f6465632740276c6f63616c686f73742720287573696e672070617373776f72643a2059455329");
        let (_, payload, _) = split_packet(&pkt).unwrap();
        let e = parse_err(payload, CAPS41).unwrap();
        assert_eq!(e.code, 1045);
        assert_eq!(e.sql_state, Some(*b"28000"));
        assert_eq!(
            e.message,
            b"Access denied for user 'codec'@'localhost' (using password: YES)"
        );
        let mut out = Vec::new();
        write_err_packet(&mut out, 2, 1045, b"28000", e.message);
        assert_eq!(out, pkt);
        // Without 4.1, '#' is part of the message.
        let e = parse_err(payload, 0).unwrap();
        assert_eq!((e.sql_state, &e.message[..6]), (None, &b"#28000"[..]));
        // 4.1 error without a marker (early errors).
        let e = parse_err(b"\xff\x10\x04Too many", CAPS41).unwrap();
        assert_eq!(
            (e.code, e.sql_state, e.message),
            (1040, None, &b"Too many"[..])
        );
        assert!(parse_err(b"\xff\x10", CAPS41).is_err());
        assert!(parse_err(b"\x00\x10\x04", CAPS41).is_err());
    }

    #[test]
    fn real_eof_and_written_eof() {
        // Captured from MariaDB 10.11.19: EOF after the column definitions of "SELECT 1" (seq 3).
        let pkt = hex("05000003fe00000200");
        let (_, payload, _) = split_packet(&pkt).unwrap();
        assert!(is_eof_packet(5, payload[0]));
        assert_eq!(
            parse_eof(payload).unwrap(),
            EofPacket {
                warnings: 0,
                status: SERVER_STATUS_AUTOCOMMIT
            }
        );
        let mut out = Vec::new();
        write_eof_packet(&mut out, 3, 0, SERVER_STATUS_AUTOCOMMIT);
        assert_eq!(out, pkt);
        assert_eq!(
            parse_eof(b"\xfe").unwrap(),
            EofPacket {
                warnings: 0,
                status: 0
            }
        );
        assert!(parse_eof(b"\xfe\x00\x00").is_err());
        assert!(parse_eof(b"\xfe\0\0\0\0\0\0\0\0").is_err());
        assert!(parse_eof(b"\x00\0\0\0\0").is_err());
        assert!(!is_eof_packet(9, 0xfe));
        assert!(!is_eof_packet(5, 0x00));
    }

    #[test]
    fn written_ok() {
        let mut out = vec![0xaa];
        write_ok_packet(&mut out, 1, 251, 0, 2, 0);
        assert_eq!(
            out,
            b"\xaa\x09\x00\x00\x01\x00\xfc\xfb\x00\x00\x02\x00\x00\x00"
        );
        let ok = parse_ok(&out[5..], CAPS41 | CLIENT_SESSION_TRACK).unwrap();
        assert_eq!((ok.affected_rows, ok.status, ok.info), (251, 2, &b""[..]));
    }

    #[test]
    fn huge_err_message_is_split() {
        let msg = vec![b'x'; MAX_PAYLOAD_LEN];
        let mut out = Vec::new();
        write_err_packet(&mut out, 0, 1, b"HY000", &msg);
        let lp = crate::protocol::framing::split_logical(&out, usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(lp.consumed, out.len());
        assert_eq!(lp.last_seq, 1);
        assert_eq!(
            parse_err(&lp.payload, CAPS41).unwrap().message.len(),
            msg.len()
        );
    }

    fn caps_strategy() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0),
            Just(CLIENT_TRANSACTIONS),
            Just(CAPS41),
            Just(CAPS41 | CLIENT_SESSION_TRACK)
        ]
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..48), caps in any::<u32>()) {
            let _ = parse_ok(&b, caps);
            let _ = parse_err(&b, caps);
            let _ = parse_eof(&b);
        }

        #[test]
        fn ok_round_trip(
            header in prop_oneof![Just(0u8), Just(0xfeu8)],
            affected_rows in any::<u64>(), last_insert_id in any::<u64>(),
            status in any::<u16>(), warnings in any::<u16>(),
            info in proptest::collection::vec(any::<u8>(), 0..40),
            state in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            caps in caps_strategy(),
        ) {
            let p41 = caps & CLIENT_PROTOCOL_41 != 0;
            let track = caps & CLIENT_SESSION_TRACK != 0;
            let status = if p41 || caps & CLIENT_TRANSACTIONS != 0 { status } else { 0 };
            let status = if state.is_some() && track { status | SERVER_SESSION_STATE_CHANGED } else { status & !SERVER_SESSION_STATE_CHANGED };
            let ok = OkPacket {
                header, affected_rows, last_insert_id, status,
                warnings: if p41 { warnings } else { 0 },
                info: &info,
                session_state: if track { state.as_deref() } else { None },
            };
            let mut out = Vec::new();
            encode_ok(&ok, caps, &mut out);
            prop_assert_eq!(parse_ok(&out, caps).unwrap(), ok);
        }

        #[test]
        fn err_round_trip(code in any::<u16>(), state in proptest::option::of(proptest::array::uniform5(b'0'..=b'Z')),
                          msg in proptest::collection::vec(any::<u8>(), 0..40)) {
            // A message starting with '#' after a state-less 4.1 ERR would be read as a marker.
            prop_assume!(state.is_some() || msg.first() != Some(&b'#'));
            let e = ErrPacket { code, sql_state: state, message: &msg };
            let mut out = Vec::new();
            encode_err(&e, CLIENT_PROTOCOL_41, &mut out);
            prop_assert_eq!(parse_err(&out, CLIENT_PROTOCOL_41).unwrap(), e);
        }

        #[test]
        fn eof_round_trip(warnings in any::<u16>(), status in any::<u16>(), seq in any::<u8>()) {
            let mut out = Vec::new();
            write_eof_packet(&mut out, seq, warnings, status);
            let (h, p, _) = split_packet(&out).unwrap();
            prop_assert_eq!(h.seq, seq);
            prop_assert!(is_eof_packet(h.len, p[0]));
            prop_assert_eq!(parse_eof(p).unwrap(), EofPacket { warnings, status });
        }
    }
}
