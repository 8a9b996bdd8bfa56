//! One client connection's MySQL conversation, without I/O: the login (the library's
//! [`Login`]) and the command phase ([`Replies`]: where each reply ends, via the codec's
//! `PacketStream` and `ResponseTracker`, and how many rows it carried). The service feeds
//! received bytes in and sends what comes out.

use ringproxy::protocol::constants::*;
use ringproxy::protocol::cursor::Cursor;
use ringproxy::protocol::framing::{split_packet, PacketHead, PacketStream, HEAD_CAP};
use ringproxy::protocol::scanner::{Expect, ResponseTracker, ServerPacket};
use ringproxy::protocol::ProtoError;

pub use ringproxy::session::login::{Credentials, Login, LoginError};

/// One reply of the command phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reply {
    /// Rows of all its resultsets (0 for an OK).
    pub rows: u64,
    /// The error code when it ended with an ERR.
    pub error: Option<u16>,
    /// For a COM_STMT_PREPARE: the statement id and its parameter count.
    pub stmt_id: u32,
    pub params: u16,
    /// An ERR with no command pending (the server is about to close the connection).
    pub unsolicited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowPhase {
    Start,
    Columns(u64),
    ColumnsEof,
    Rows,
    /// The rest of a prepare-OK (parameter and column definitions).
    Skip,
}

/// The command phase of one connection: tell the tracker each command sent, feed received bytes,
/// get one [`Reply`] per finished response. Fixed size, no allocation.
#[derive(Debug, Clone)]
pub struct Replies {
    stream: PacketStream,
    tracker: ResponseTracker,
    deprecate_eof: bool,
    phase: RowPhase,
    rows: u64,
    stmt_id: u32,
    params: u16,
}

impl Replies {
    /// For a connection that negotiated `caps`.
    pub fn new(caps: u32) -> Replies {
        Replies {
            stream: PacketStream::new(),
            tracker: ResponseTracker::new(caps),
            deprecate_eof: caps & CLIENT_DEPRECATE_EOF != 0,
            phase: RowPhase::Start,
            rows: 0,
            stmt_id: 0,
            params: 0,
        }
    }

    /// Records a command about to be sent: `packet` is the whole framed packet.
    pub fn command(&mut self, packet: &[u8]) -> Result<(), ProtoError> {
        let (h, payload, _) = split_packet(packet).ok_or(ProtoError::truncated("command"))?;
        let head = &payload[..payload.len().min(HEAD_CAP)];
        self.tracker.on_client_packet(&PacketHead {
            len: h.len,
            seq: h.seq,
            head,
            continuation: false,
            at: None,
            start: 0,
        })?;
        Ok(())
    }

    /// Commands sent whose replies have not ended.
    pub fn pending(&self) -> usize {
        self.tracker.pending()
    }

    /// Feeds received bytes; pushes every reply that ended onto `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Reply>) -> Result<(), ProtoError> {
        let Replies {
            stream,
            tracker,
            deprecate_eof,
            phase,
            rows,
            stmt_id,
            params,
        } = self;
        stream.feed(data, |p| {
            let expect = tracker.current();
            let r = tracker.on_server_packet(&p)?;
            let first = p.head.first().copied().unwrap_or(0);
            if !p.continuation {
                match *phase {
                    RowPhase::Start => {
                        if expect == Some(Expect::StmtPrepare) && first == OK_HEADER {
                            let mut c = Cursor::new(p.head);
                            c.skip(1)?;
                            *stmt_id = c.u32_le()?;
                            let _columns = c.u16_le()?;
                            *params = c.u16_le()?;
                            *phase = RowPhase::Skip;
                        } else if first != OK_HEADER && first != ERR_HEADER {
                            let n = Cursor::new(p.head).lenenc_int()?;
                            if n > 0 {
                                *phase = RowPhase::Columns(n);
                            }
                        }
                    }
                    RowPhase::Columns(n) => {
                        *phase = if n > 1 {
                            RowPhase::Columns(n - 1)
                        } else if *deprecate_eof {
                            RowPhase::Rows
                        } else {
                            RowPhase::ColumnsEof
                        };
                    }
                    RowPhase::ColumnsEof => *phase = RowPhase::Rows,
                    RowPhase::Rows => {
                        if r == ServerPacket::Part {
                            if first == EOF_HEADER && (p.len as usize) < MAX_PAYLOAD_LEN {
                                // A terminator announcing another result of the same command.
                                *phase = RowPhase::Start;
                            } else {
                                *rows += 1;
                            }
                        }
                    }
                    RowPhase::Skip => {}
                }
            }
            match r {
                ServerPacket::Part => {}
                ServerPacket::ResponseEnd { error, .. } => {
                    out.push(Reply {
                        rows: *rows,
                        error,
                        stmt_id: *stmt_id,
                        params: *params,
                        unsolicited: false,
                    });
                    *phase = RowPhase::Start;
                    *rows = 0;
                    *stmt_id = 0;
                    *params = 0;
                }
                ServerPacket::AwaitClient => {
                    return Err(ProtoError::Unexpected {
                        what: "request for client data (LOCAL INFILE)",
                        state: "loadgen sends none",
                    })
                }
                ServerPacket::Unsolicited { error } => out.push(Reply {
                    error,
                    unsolicited: true,
                    ..Reply::default()
                }),
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringproxy::protocol::framing::write_packet;
    use ringproxy::protocol::packets::{write_eof_packet, write_err_packet, write_ok_packet};

    fn ok(seq: u8) -> Vec<u8> {
        let mut out = Vec::new();
        write_ok_packet(&mut out, seq, 0, 0, 2, 0);
        out
    }

    /// A text resultset of `rows` rows of one column, with or without EOF after the columns.
    fn resultset(rows: usize, deprecate_eof: bool, status: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seq = write_packet(&mut out, 1, &[1]);
        let coldef =
            b"\x03def\x00\x00\x00\x011\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00";
        seq = write_packet(&mut out, seq, coldef);
        if !deprecate_eof {
            write_eof_packet(&mut out, seq, 0, 2);
            seq += 1;
        }
        for _ in 0..rows {
            seq = write_packet(&mut out, seq, b"\x011");
        }
        if deprecate_eof {
            let mut term = vec![0xfe, 0, 0];
            term.extend_from_slice(&status.to_le_bytes());
            term.extend_from_slice(&[0, 0]);
            write_packet(&mut out, seq, &term);
        } else {
            write_eof_packet(&mut out, seq, 0, status);
        }
        out
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![COM_QUERY];
        p.extend_from_slice(sql.as_bytes());
        let mut out = Vec::new();
        write_packet(&mut out, 0, &p);
        out
    }

    #[test]
    fn counts_rows_in_pipelined_replies_fed_byte_by_byte() {
        for deprecate in [false, true] {
            let caps = CLIENT_PROTOCOL_41 | if deprecate { CLIENT_DEPRECATE_EOF } else { 0 };
            let mut r = Replies::new(caps);
            let mut wire = Vec::new();
            for n in [1usize, 0, 10] {
                r.command(&query("SELECT")).unwrap();
                wire.extend_from_slice(&resultset(n, deprecate, 2));
            }
            r.command(&query("DO 1")).unwrap();
            wire.extend_from_slice(&ok(1));
            r.command(&query("bad")).unwrap();
            write_err_packet(&mut wire, 1, 1064, b"42000", b"syntax");
            assert_eq!(r.pending(), 5);
            let mut out = Vec::new();
            for b in &wire {
                r.feed(&[*b], &mut out).unwrap();
            }
            let got: Vec<(u64, Option<u16>)> = out.iter().map(|x| (x.rows, x.error)).collect();
            assert_eq!(
                got,
                vec![(1, None), (0, None), (10, None), (0, None), (0, Some(1064))]
            );
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn rows_of_every_result_of_a_multi_result_reply_add_up() {
        let mut r = Replies::new(CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF);
        r.command(&query("CALL p()")).unwrap();
        let mut wire = resultset(2, true, 2 | SERVER_MORE_RESULTS_EXISTS);
        wire.extend_from_slice(&resultset(3, true, 2 | SERVER_MORE_RESULTS_EXISTS));
        wire.extend_from_slice(&ok(1));
        let mut out = Vec::new();
        r.feed(&wire, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rows, 5);
    }

    #[test]
    fn prepare_ok_gives_statement_id_and_params() {
        let mut r = Replies::new(CLIENT_PROTOCOL_41);
        let mut p = vec![COM_STMT_PREPARE];
        p.extend_from_slice(b"SELECT 1");
        let mut cmd = Vec::new();
        write_packet(&mut cmd, 0, &p);
        r.command(&cmd).unwrap();
        let mut wire = Vec::new();
        // stmt id 9, 1 column, 0 params.
        let mut seq = write_packet(&mut wire, 1, &[0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        seq = write_packet(
            &mut wire,
            seq,
            b"\x03def\x00\x00\x00\x011\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00",
        );
        write_eof_packet(&mut wire, seq, 0, 2);
        let mut out = Vec::new();
        r.feed(&wire, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].stmt_id, out[0].params, out[0].error), (9, 0, None));
    }

    #[test]
    fn garbage_and_unsolicited_errors() {
        let mut r = Replies::new(CLIENT_PROTOCOL_41);
        let mut out = Vec::new();
        let mut err = Vec::new();
        write_err_packet(&mut err, 0, 1927, b"70100", b"Connection was killed");
        r.feed(&err, &mut out).unwrap();
        assert!(out[0].unsolicited);
        assert_eq!(out[0].error, Some(1927));
        // An OK with no command pending is not a reply to anything.
        assert!(r.feed(&ok(1), &mut out).is_err());
    }
}
