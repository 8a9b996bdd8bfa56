//! Unit tests of the connection state machines on byte literals: each step's input bytes and the
//! actions that come out, with no socket and no ring.

use std::time::Instant;

use super::action::{Action, End};
use super::backend::{self, BackendConn};
use super::client::{self, ClientConn, CommandSink};
use super::ClientId;
use crate::protocol::constants::*;
use crate::protocol::framing::write_packet;
use crate::protocol::handshake::{
    encode_handshake_response41, encode_handshake_v10, parse_handshake_response41,
    parse_handshake_v10, HandshakeResponse41, HandshakeV10,
};
use crate::protocol::packets::{parse_err, write_eof_packet, write_err_packet, write_ok_packet};
use crate::runtime::{Key, SockId};

const SOCK: SockId = Key {
    index: 1,
    generation: 0,
};

fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_packet(&mut out, seq, payload);
    out
}

/// MariaDB 10.11's greeting shape: native password, SSL and compression offered.
fn greeting() -> Vec<u8> {
    let h = HandshakeV10 {
        protocol_version: 10,
        server_version: b"5.5.5-10.11.19-MariaDB",
        connection_id: 42,
        auth_data_1: b"abcdefgh",
        capabilities: 0xf7fe | (0x81bf << 16) | CLIENT_SSL | CLIENT_COMPRESS,
        charset: 45,
        status: SERVER_STATUS_AUTOCOMMIT,
        auth_data_len: 21,
        mariadb_ext_capabilities: MARIADB_CLIENT_PROGRESS | MARIADB_CLIENT_STMT_BULK_OPERATIONS,
        auth_data_2: b"ijklmnopqrst",
        auth_plugin_name: Some(b"mysql_native_password"),
    };
    let mut p = Vec::new();
    encode_handshake_v10(&h, &mut p);
    pkt(0, &p)
}

fn response(caps: u32) -> Vec<u8> {
    let r = HandshakeResponse41 {
        capabilities: caps,
        max_packet_size: 1 << 24,
        charset: 45,
        mariadb_ext_capabilities: 0,
        username: b"app",
        auth_response: &[7; 20],
        database: None,
        auth_plugin_name: Some(b"mysql_native_password"),
        connect_attrs: None,
    };
    let mut p = Vec::new();
    encode_handshake_response41(&r, &mut p);
    pkt(1, &p)
}

const CAPS: u32 = CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_LONG_PASSWORD
    | CLIENT_TRANSACTIONS
    | CLIENT_DEPRECATE_EOF;

fn ok(seq: u8) -> Vec<u8> {
    let mut out = Vec::new();
    write_ok_packet(&mut out, seq, 0, 0, SERVER_STATUS_AUTOCOMMIT, 0);
    out
}

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![COM_QUERY];
    p.extend_from_slice(sql.as_bytes());
    pkt(0, &p)
}

/// A command sink that records classification and has `room` places.
struct Sink {
    room: usize,
    commands: Vec<u8>,
}

impl CommandSink for Sink {
    fn client_packet(
        &mut self,
        p: &crate::protocol::framing::PacketHead<'_>,
    ) -> Result<crate::protocol::scanner::ClientPacket, crate::protocol::ProtoError> {
        if p.continuation {
            return Ok(crate::protocol::scanner::ClientPacket::Continuation);
        }
        let cmd = p.head[0];
        self.commands.push(cmd);
        self.room = self.room.saturating_sub(1);
        Ok(crate::protocol::scanner::ClientPacket::Command {
            cmd,
            expect: crate::protocol::scanner::expect_for_command(cmd),
        })
    }
    fn room(&self) -> usize {
        self.room
    }
    fn awaits_client_data(&self) -> bool {
        false
    }
}

fn sink(room: usize) -> Sink {
    Sink {
        room,
        commands: Vec::new(),
    }
}

/// A client machine that has relayed the greeting and the handshake response.
fn client_in_auth() -> ClientConn {
    let mut c = ClientConn::new(SOCK, None, 1 << 30, Instant::now());
    let mut out = Vec::new();
    c.on_greeting(&greeting(), &mut out);
    c.on_bytes(&response(CAPS), &mut sink(32), &mut out);
    assert_eq!(
        c.phase(),
        client::Phase::Auth {
            server_asked: false
        }
    );
    c
}

fn client_in_command(max_packet: u64) -> ClientConn {
    let mut c = ClientConn::new(SOCK, None, max_packet, Instant::now());
    let mut out = Vec::new();
    c.on_greeting(&greeting(), &mut out);
    c.on_bytes(&response(CAPS), &mut sink(32), &mut out);
    c.on_auth_done(true, None, &mut sink(32), &mut out);
    assert_eq!(c.phase(), client::Phase::Command);
    c
}

fn sent_client(out: &[Action]) -> Vec<&Vec<u8>> {
    out.iter()
        .filter_map(|a| match a {
            Action::SendClient(v) => Some(v),
            _ => None,
        })
        .collect()
}

#[test]
fn greeting_is_relayed_without_tls_and_with_compression() {
    let mut c = ClientConn::new(SOCK, None, 1 << 30, Instant::now());
    let mut out = Vec::new();
    c.on_greeting(&greeting(), &mut out);
    let sent = sent_client(&out);
    assert_eq!(sent.len(), 1);
    let g = parse_handshake_v10(&sent[0][4..]).unwrap();
    assert_eq!(g.capabilities & CLIENT_SSL, 0, "TLS is not offered");
    assert_ne!(
        g.capabilities & CLIENT_COMPRESS,
        0,
        "compression is relayed"
    );
    assert_eq!(g.mariadb_ext_capabilities & MARIADB_CLIENT_PROGRESS, 0);
    assert_eq!(g.scramble(), b"abcdefghijklmnopqrst");
    assert_eq!(c.phase(), client::Phase::AwaitResponse);
}

#[test]
fn handshake_response_is_relayed_and_compression_negotiated() {
    let mut c = ClientConn::new(SOCK, None, 1 << 30, Instant::now());
    let mut out = Vec::new();
    c.on_greeting(&greeting(), &mut out);
    out.clear();
    let resp = response(CAPS | CLIENT_COMPRESS | CLIENT_SSL);
    // Byte by byte: nothing happens until the packet is whole.
    for b in &resp[..resp.len() - 1] {
        c.on_bytes(&[*b], &mut sink(32), &mut out);
    }
    assert!(out.is_empty());
    c.on_bytes(&resp[resp.len() - 1..], &mut sink(32), &mut out);
    let Action::SendBackend(sent) = &out[0] else {
        panic!("{out:?}")
    };
    let r = parse_handshake_response41(&sent[4..]).unwrap();
    assert_eq!(r.capabilities & CLIENT_SSL, 0);
    assert_eq!(r.username, b"app");
    match out[1] {
        Action::LoginRelayed { caps, compress, .. } => {
            assert_ne!(caps & CLIENT_COMPRESS, 0);
            assert_eq!(compress, Some(crate::protocol::compress::Algorithm::Zlib));
        }
        ref a => panic!("{a:?}"),
    }
}

#[test]
fn an_ssl_request_gets_a_bad_handshake_error() {
    let mut c = ClientConn::new(SOCK, None, 1 << 30, Instant::now());
    let mut out = Vec::new();
    c.on_greeting(&greeting(), &mut out);
    out.clear();
    let mut ssl = (CAPS | CLIENT_SSL).to_le_bytes().to_vec();
    ssl.extend_from_slice(&[0; 28]);
    c.on_bytes(&pkt(1, &ssl), &mut sink(32), &mut out);
    match &out[..] {
        [Action::End(End::Error(e))] => {
            assert_eq!(e.code, ER_HANDSHAKE_ERROR);
            assert!(e.message.contains("TLS"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.next_seq(), 2, "the ERR follows the client's packet 1");
}

/// Issue 6, item 4: a command pipelined behind the handshake response waits for the end of
/// authentication, then goes to the command phase.
#[test]
fn command_pipelined_behind_the_handshake_response() {
    let mut c = ClientConn::new(SOCK, None, 1 << 30, Instant::now());
    let mut out = Vec::new();
    c.on_greeting(&greeting(), &mut out);
    out.clear();
    let mut both = response(CAPS);
    both.extend_from_slice(&query("SELECT 1"));
    c.on_bytes(&both, &mut sink(32), &mut out);
    assert!(matches!(out[0], Action::SendBackend(_)));
    assert!(matches!(out[1], Action::LoginRelayed { .. }));
    assert_eq!(out.len(), 2, "the query is held: {out:?}");
    out.clear();
    let mut s = sink(32);
    c.on_auth_done(true, None, &mut s, &mut out);
    assert_eq!(out, vec![Action::SendBackend(query("SELECT 1"))]);
    assert_eq!(s.commands, vec![COM_QUERY]);
}

/// An auth answer goes to the server only when it asked for one.
#[test]
fn auth_answers_wait_for_the_servers_request() {
    let mut c = client_in_auth();
    let mut out = Vec::new();
    let answer = pkt(3, &[9; 20]);
    c.on_bytes(&answer, &mut sink(32), &mut out);
    assert!(out.is_empty(), "nobody asked: {out:?}");
    c.on_auth_more_wanted(&mut out);
    assert_eq!(out, vec![Action::AuthAnswer(answer)]);
}

/// Issue 6, item 5: more than 32 pipelined commands stall the client at the first command the
/// backend has no room for; nothing fails.
#[test]
fn more_than_32_pipelined_commands_stall_the_client() {
    let mut c = client_in_command(1 << 30);
    let mut out = Vec::new();
    let ping = pkt(0, &[COM_PING]);
    let wire: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 100)
        .collect();
    let mut s = sink(32);
    c.on_bytes(&wire, &mut s, &mut out);
    let at = 32 * ping.len();
    assert_eq!(
        out,
        vec![Action::Forward { from: 0, to: at }, Action::Stall(at)]
    );
    assert_eq!(s.commands.len(), 32);
    // Room again: the rest goes on, from where it stalled.
    out.clear();
    let mut s = sink(100);
    c.on_bytes(&wire[at..], &mut s, &mut out);
    assert_eq!(
        out,
        vec![Action::Forward {
            from: 0,
            to: wire.len() - at
        }]
    );
    assert_eq!(s.commands.len(), 68);
}

/// A stall in the middle of a packet header split across chunks restarts at that packet.
#[test]
fn a_stall_on_a_header_split_across_chunks() {
    let mut c = client_in_command(1 << 30);
    let mut out = Vec::new();
    let mut wire = query("SELECT 1");
    wire.extend_from_slice(&query("SELECT 2"));
    let cut = query("SELECT 1").len() + 2;
    c.on_bytes(&wire[..cut], &mut sink(1), &mut out);
    assert_eq!(out, vec![Action::Forward { from: 0, to: cut }]);
    out.clear();
    // The second query's header began in the first chunk: the stall keeps this whole chunk.
    c.on_bytes(&wire[cut..], &mut sink(0), &mut out);
    assert_eq!(out, vec![Action::Stall(0)]);
    out.clear();
    let mut s = sink(1);
    c.on_bytes(&wire[cut..], &mut s, &mut out);
    assert_eq!(s.commands, vec![COM_QUERY]);
    assert_eq!(
        out,
        vec![Action::Forward {
            from: 0,
            to: wire.len() - cut
        }]
    );
}

/// Issue 6, item 1: a packet over max_packet_size gets ERR 1153 at once with the sequence id
/// the client expects, and the rest of the packet is read and dropped before the close.
#[test]
fn oversized_packet_gets_err_1153_and_is_drained() {
    let mut c = client_in_command(100);
    let mut out = Vec::new();
    let big = query(&"x".repeat(300));
    c.on_bytes(&big[..150], &mut sink(32), &mut out);
    let sent = sent_client(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][3], 1, "sequence id after the client's packet 0");
    let e = parse_err(&sent[0][4..], CLIENT_PROTOCOL_41).unwrap();
    assert_eq!(e.code, ER_NET_PACKET_TOO_LARGE);
    assert!(!out.iter().any(|a| matches!(a, Action::Forward { .. })));
    assert_eq!(c.phase(), client::Phase::Discarding);
    out.clear();
    c.on_bytes(&big[150..], &mut sink(32), &mut out);
    assert_eq!(out, vec![Action::End(End::Flush)]);
}

/// Payloads of exactly 2 × 0xFFFFFF: continuation packets, the trailing empty packet, and the
/// limit counted over the whole logical packet.
#[test]
fn logical_packets_of_exactly_two_max_payloads() {
    let payload = vec![b'a'; 2 * MAX_PAYLOAD_LEN];
    let mut wire = Vec::new();
    write_packet(&mut wire, 0, &payload);
    assert_eq!(
        wire.len(),
        2 * MAX_PAYLOAD_LEN + 12,
        "two full packets and an empty one"
    );
    let mut c = client_in_command(1 << 30);
    let mut out = Vec::new();
    let mut s = sink(32);
    for chunk in wire.chunks(1 << 20) {
        c.on_bytes(chunk, &mut s, &mut out);
    }
    assert_eq!(s.commands.len(), 1, "one command, two continuations");
    assert!(out.iter().all(|a| matches!(a, Action::Forward { .. })));
    // The same payload is too large for a limit one byte below it.
    let mut c = client_in_command(2 * MAX_PAYLOAD_LEN as u64 - 1);
    out.clear();
    for chunk in wire.chunks(1 << 20) {
        c.on_bytes(chunk, &mut sink(32), &mut out);
    }
    let sent = sent_client(&out);
    assert_eq!(sent[0][3], 2, "ERR after the client's packets 0 and 1");
    assert_eq!(out.last(), Some(&Action::End(End::Flush)));
}

// ---- backend ----

fn backend() -> BackendConn {
    let mut b = BackendConn::new(SOCK, "127.0.0.1:3306".parse().unwrap(), Instant::now());
    b.on_connected();
    b
}

fn ready_backend() -> BackendConn {
    let mut b = backend();
    let mut out = Vec::new();
    b.on_bytes(&greeting(), &mut out);
    assert_eq!(out, vec![Action::Greeting]);
    b
}

fn idle_backend(caps: u32) -> BackendConn {
    let mut b = ready_backend();
    b.attach(ClientId(SOCK));
    b.on_login_relayed(caps, 0, None);
    let mut out = Vec::new();
    b.on_bytes(&ok(2), &mut out);
    assert_eq!(out[1], Action::AuthDone(true));
    b
}

#[test]
fn greeting_in_pieces_makes_the_backend_ready() {
    let mut b = backend();
    let mut out = Vec::new();
    let g = greeting();
    b.on_bytes(&g[..10], &mut out);
    assert!(out.is_empty());
    b.on_bytes(&g[10..], &mut out);
    assert_eq!(out, vec![Action::Greeting]);
    assert_eq!(b.phase(), backend::Phase::Ready);
    assert_eq!(b.greeting(), &g[..]);
}

#[test]
fn a_server_that_refuses_at_once_gets_its_err_relayed() {
    let mut b = backend();
    let mut out = Vec::new();
    let mut err = Vec::new();
    write_err_packet(&mut err, 0, 1129, b"HY000", b"Host '127.0.0.2' is blocked");
    b.on_bytes(&err, &mut out);
    assert_eq!(out, vec![Action::SendClient(err), Action::End(End::Flush)]);
}

#[test]
fn relayed_auth_ends_with_ok_err_or_asks_for_more() {
    let mut b = ready_backend();
    b.on_login_relayed(CAPS, 0, None);
    let mut out = Vec::new();
    // An auth switch: the client must answer.
    let mut sw = vec![AUTH_SWITCH_HEADER];
    sw.extend_from_slice(b"client_ed25519\0nonce-of-32-bytes-abcdefghijklmnop\0");
    b.on_bytes(&pkt(2, &sw), &mut out);
    assert_eq!(out[1], Action::AuthMoreWanted);
    // caching_sha2's fast-auth success asks nothing; the OK then ends it.
    out.clear();
    let mut both = pkt(4, &[AUTH_MORE_DATA_HEADER, 3]);
    both.extend_from_slice(&ok(5));
    b.on_bytes(&both, &mut out);
    assert!(matches!(out[0], Action::SendClient(_)));
    assert!(matches!(out[1], Action::SendClient(_)));
    assert_eq!(out[2], Action::AuthDone(true));
    assert_eq!(b.phase(), backend::Phase::Idle);
    // A wrong password instead.
    let mut b = ready_backend();
    b.on_login_relayed(CAPS, 0, None);
    out.clear();
    let mut err = Vec::new();
    write_err_packet(&mut err, 2, 1045, b"28000", b"Access denied");
    b.on_bytes(&err, &mut out);
    assert_eq!(out, vec![Action::SendClient(err), Action::AuthDone(false)]);
}

#[test]
fn data_after_authentication_without_a_command_is_a_backend_error() {
    let mut b = ready_backend();
    b.on_login_relayed(CAPS, 0, None);
    let mut out = Vec::new();
    let mut both = ok(2);
    both.extend_from_slice(&ok(1));
    b.on_bytes(&both, &mut out);
    match out.last() {
        Some(Action::End(End::Error(e))) => assert_eq!(e.side, crate::error::Side::Backend),
        other => panic!("{other:?}"),
    }
}

#[test]
fn responses_are_tracked_and_forwarded_whole() {
    let mut b = idle_backend(CAPS);
    let mut s = sink(0);
    let _ = &mut s;
    let q = query("SELECT 1");
    let head = crate::protocol::framing::PacketHead {
        len: (q.len() - 4) as u32,
        seq: 0,
        head: &q[4..],
        continuation: false,
        at: Some(0),
        start: 0,
    };
    b.client_packet(&head).unwrap();
    assert_eq!(b.phase(), backend::Phase::Busy);
    assert!(b.response_untouched());
    // Column count, column definition, row, OK-as-EOF (CLIENT_DEPRECATE_EOF).
    let mut resp = pkt(1, &[1]);
    let mut coldef = Vec::new();
    for s in [&b"def"[..], b"", b"", b"", b"1", b""] {
        coldef.push(s.len() as u8);
        coldef.extend_from_slice(s);
    }
    coldef.extend_from_slice(&[0x0c, 0x3f, 0, 1, 0, 0, 0, 8, 0x81, 0, 0, 0, 0]);
    resp.extend_from_slice(&pkt(2, &coldef));
    resp.extend_from_slice(&pkt(3, b"\x011"));
    resp.extend_from_slice(&pkt(4, &[0xfe, 0, 0, 2, 0, 0, 0]));
    let mut out = Vec::new();
    b.on_bytes(&resp[..9], &mut out);
    assert_eq!(out, vec![Action::Forward { from: 0, to: 9 }]);
    assert!(!b.response_untouched(), "part of it went out");
    out.clear();
    b.on_bytes(&resp[9..], &mut out);
    assert_eq!(
        out,
        vec![
            Action::Forward {
                from: 0,
                to: resp.len() - 9
            },
            Action::ResponseEnd
        ]
    );
    assert!(b.is_idle());
    assert_eq!(b.take_counts(), (4, 1));
    let _ = write_eof_packet;
}

/// Issue 6, item 7: a connection that must go before its handshake ended finishes it with a
/// login the server refuses (an authentication error, which does not count against the host),
/// never by closing it unfinished (a handshake error, which does).
#[test]
fn a_ready_connection_is_retired_with_a_refused_login() {
    let mut b = ready_backend();
    let mut out = Vec::new();
    assert!(b.retire(&mut out));
    let Action::SendBackend(login) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(login[3], 1, "the answer to the greeting");
    let r = parse_handshake_response41(&login[4..]).unwrap();
    assert_eq!(r.username, b"ringproxy-retired-handshake");
    assert_eq!(r.auth_plugin_name, Some(&b"mysql_native_password"[..]));
    out.clear();
    let mut err = Vec::new();
    write_err_packet(&mut err, 2, 1045, b"28000", b"Access denied");
    b.on_bytes(&err, &mut out);
    assert_eq!(out, vec![Action::End(End::Quiet)]);
    // If such an account existed, the login would go through: then it quits cleanly.
    let mut b = ready_backend();
    out.clear();
    b.retire(&mut out);
    out.clear();
    b.on_bytes(&ok(2), &mut out);
    assert_eq!(
        out,
        vec![
            Action::SendBackend(pkt(0, &[COM_QUIT])),
            Action::End(End::Flush)
        ]
    );
}

#[test]
fn a_connection_waiting_for_auth_data_is_retired_with_a_wrong_answer() {
    let mut b = ready_backend();
    b.on_login_relayed(CAPS, 0, None);
    let mut out = Vec::new();
    let mut sw = vec![AUTH_SWITCH_HEADER];
    sw.extend_from_slice(b"mysql_native_password\0abcdefghijklmnopqrst\0");
    b.on_bytes(&pkt(2, &sw), &mut out);
    out.clear();
    assert!(b.retire(&mut out));
    assert_eq!(out, vec![Action::SendBackend(pkt(3, &[0; 32]))]);
    // An idle connection has nothing to finish.
    let mut b = idle_backend(CAPS);
    assert!(!b.retire(&mut out));
}
