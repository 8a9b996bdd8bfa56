//! A pooled session's client connection, as an I/O-free state machine: the proxy's own
//! greeting, the client's login checked by the proxy ([`ServerAuth`]: native, caching_sha2
//! fast and full path, ed25519, auth switch), then the command phase, where the client's
//! packets come out whole for the session ([`super::pooled`]) to run on a pooled backend
//! connection or answer itself. The compressed protocol, when the client asks for it, is
//! undone here on input ([`Inflater`]); output is compressed by [`PooledClient::frame`].
//!
//! The machine does not look users up nor decide when to answer: it reports the login
//! ([`Event::Login`]) and the session calls [`PooledClient::check`] (after a lookup, a reload
//! of the backends' users, or a delay after failures), then [`PooledClient::accept_login`] or
//! [`PooledClient::deny`] once the backend side agreed.

use std::net::SocketAddr;
use std::time::Instant;

use crate::error::Error;
use crate::protocol::auth::Plugin;
use crate::protocol::auth_server::{
    access_denied_message, Learned, Next, RsaKeys, ServerAuth, Stored, ER_ACCESS_DENIED_ERROR,
};
use crate::protocol::compress::{write_compressed_frame, Algorithm, Inflater};
use crate::protocol::constants::*;
use crate::protocol::framing::{split_logical, write_packet};
use crate::protocol::handshake::{
    encode_handshake_response41, is_ssl_request, parse_handshake_response41, write_greeting,
    HandshakeResponse41, HandshakeV10,
};
use crate::protocol::packets::{write_err_packet, write_ok_packet};
use crate::protocol::ProtoError;

/// Capabilities the proxy offers pooled clients. No TLS, no MariaDB extensions (the
/// CLIENT_LONG_PASSWORD bit says "MySQL layout").
pub const OFFERED: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_COMPRESS
    | CLIENT_LOCAL_FILES
    | CLIENT_IGNORE_SPACE
    | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF;

/// Capabilities of the client that change what the server sends or accepts: a pooled backend
/// connection is logged in with these, and only serves sessions with the same ones.
pub const SHAPING: u32 = CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_LOCAL_FILES
    | CLIENT_IGNORE_SPACE
    | CLIENT_INTERACTIVE
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_DEPRECATE_EOF;

/// Largest login packet accepted (a handshake response is a few hundred bytes; attributes can
/// add a few KiB).
const MAX_LOGIN_PACKET: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The greeting went out; waiting for the handshake response.
    Greeted,
    /// The session looks the user up (or waits to answer).
    Lookup,
    /// An auth exchange with the client goes on.
    Auth,
    /// The password is right; the session checks the backend side (login, schema).
    Confirm,
    Command,
    Ended,
}

/// What the client's handshake response asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub user: String,
    pub database: Option<String>,
    pub plugin: Vec<u8>,
    pub answer: Vec<u8>,
    pub caps: u32,
    pub charset: u8,
}

/// What the machine reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Send these bytes to the client.
    Send(Vec<u8>),
    /// The handshake response arrived: look the user up and call [`PooledClient::check`].
    Login,
    /// The password is right: confirm on the backend side, then accept or deny.
    Verified(Option<Learned>),
    /// The password is wrong (or the user unknown): [`PooledClient::deny`] when due.
    Denied,
    /// A whole packet of the command phase: its sequence id and payload.
    Packet { seq: u8, payload: Vec<u8> },
    /// End the session: with this error (an ERR packet goes out), or quietly (`None`).
    End(Option<Error>),
}

/// The client side of one pooled session.
pub struct PooledClient {
    pub peer: Option<SocketAddr>,
    pub accepted_at: Instant,
    phase: Phase,
    nonce: [u8; 20],
    conn_id: u32,
    /// Received bytes not yet whole packets (plain, after decompression).
    inbuf: Vec<u8>,
    /// Boxed, as `login`: only a session logging in has them.
    auth: Option<Box<ServerAuth>>,
    /// The next sequence id of an auth packet to the client.
    seq: u8,
    /// What the client asked for at login (dropped once logged in: an idle session keeps one
    /// pointer, not the whole request).
    pub login: Option<Box<LoginRequest>>,
    /// The character set of the last login (a COM_CHANGE_USER without one keeps it).
    charset: u8,
    /// Capabilities agreed with the client.
    pub caps: u32,
    inflater: Option<Inflater>,
    alg: Option<Algorithm>,
    max_packet: usize,
    /// The handshake response's payload, kept until the login is decided.
    response: Vec<u8>,
    /// Output of a compressed connection waiting for the rest of its packet.
    unframed: Vec<u8>,
}

impl PooledClient {
    pub fn new(
        peer: Option<SocketAddr>,
        nonce: [u8; 20],
        conn_id: u32,
        max_packet: usize,
        now: Instant,
    ) -> PooledClient {
        PooledClient {
            peer,
            accepted_at: now,
            phase: Phase::Greeted,
            nonce,
            conn_id,
            inbuf: Vec::new(),
            auth: None,
            seq: 0,
            login: None,
            charset: 45,
            caps: 0,
            inflater: None,
            alg: None,
            max_packet,
            response: Vec::new(),
            unframed: Vec::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn authenticated(&self) -> bool {
        self.phase == Phase::Command
    }

    /// The greeting: the proxy's nonce, mysql_native_password, `version`.
    pub fn greeting(&self, version: &[u8]) -> Vec<u8> {
        let h = HandshakeV10 {
            protocol_version: 10,
            server_version: version,
            connection_id: self.conn_id,
            auth_data_1: &self.nonce[..8],
            capabilities: OFFERED,
            charset: 45, // utf8mb4_general_ci
            status: SERVER_STATUS_AUTOCOMMIT,
            auth_data_len: 21,
            mariadb_ext_capabilities: 0,
            auth_data_2: &self.nonce[8..],
            auth_plugin_name: Some(Plugin::Native.name()),
        };
        let mut out = Vec::with_capacity(128);
        write_greeting(&mut out, &h);
        out
    }

    /// Bytes from the client. Whole packets are taken straight from `data`; only a packet's
    /// incomplete rest (or a compressed connection's input) is copied into `inbuf`, which is
    /// freed once it is empty again, so an idle session holds no input buffer.
    pub fn on_bytes(&mut self, data: &[u8], events: &mut Vec<Event>) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.inflater.is_none() && self.inbuf.is_empty() {
            let used = self.on_packets(data, events);
            if self.phase != Phase::Ended {
                self.inbuf.extend_from_slice(&data[used..]);
            }
            return;
        }
        if let Err(e) = self.take_in(data) {
            return self.fail(e, events);
        }
        let inbuf = std::mem::take(&mut self.inbuf);
        let used = self.on_packets(&inbuf, events);
        self.inbuf = inbuf;
        self.inbuf.drain(..used);
        if self.inbuf.is_empty() {
            self.inbuf = Vec::new();
        }
    }

    /// Handles the whole packets at the start of `bytes`; returns how many bytes they took.
    fn on_packets(&mut self, bytes: &[u8], events: &mut Vec<Event>) -> usize {
        let mut used = 0;
        while self.phase != Phase::Ended {
            match self.next_packet(&bytes[used..]) {
                Ok(Some((seq, payload, n))) => {
                    used += n;
                    self.on_packet(seq, payload, events);
                }
                Ok(None) => break,
                Err(e) => self.fail(e, events),
            }
        }
        used
    }

    fn take_in(&mut self, data: &[u8]) -> Result<(), Error> {
        let Some(inf) = self.inflater.as_mut() else {
            self.inbuf.extend_from_slice(data);
            return Ok(());
        };
        let inbuf = &mut self.inbuf;
        inf.feed(data, &mut |b: &[u8]| {
            inbuf.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .map_err(|e| Error::client_protocol(format!("compressed packet: {e:?}")))
    }

    /// The next whole packet at the start of `bytes`, if any: its sequence id, its payload and
    /// the bytes it took.
    fn next_packet(&self, bytes: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, Error> {
        let max = match self.phase {
            Phase::Command => self.max_packet,
            _ => MAX_LOGIN_PACKET,
        };
        match split_logical(bytes, max) {
            Ok(Some(p)) => Ok(Some((p.first_seq, p.payload.into_owned(), p.consumed))),
            Ok(None) => Ok(None),
            Err(ProtoError::TooLarge { .. }) => Err(Error::packet_too_large(max as u64)),
            Err(e) => Err(Error::client_protocol(e.to_string())),
        }
    }

    fn fail(&mut self, e: Error, events: &mut Vec<Event>) {
        self.phase = Phase::Ended;
        events.push(Event::End(Some(e)));
    }

    fn on_packet(&mut self, seq: u8, payload: Vec<u8>, events: &mut Vec<Event>) {
        self.seq = seq.wrapping_add(1);
        match self.phase {
            Phase::Greeted => self.on_response(&payload, events),
            Phase::Auth => self.on_auth_packet(&payload, events),
            Phase::Command => events.push(Event::Packet { seq, payload }),
            Phase::Lookup | Phase::Confirm => self.fail(
                Error::client_protocol("a packet arrived before the login was answered"),
                events,
            ),
            Phase::Ended => {}
        }
    }

    fn on_response(&mut self, payload: &[u8], events: &mut Vec<Event>) {
        if is_ssl_request(payload) {
            let e = Error::bad_handshake("ringproxy's pooled listener does not offer TLS");
            return self.fail(e, events);
        }
        let r = match parse_handshake_response41(payload) {
            Ok(r) => r,
            Err(e) => {
                return self.fail(
                    Error::bad_handshake(format!("handshake response: {e}")),
                    events,
                )
            }
        };
        self.caps = r.capabilities & OFFERED;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.login = Some(Box::new(LoginRequest {
            user: text(r.username),
            database: r.database.filter(|d| !d.is_empty()).map(text),
            plugin: r.auth_plugin_name.unwrap_or_default().to_vec(),
            answer: r.auth_response.to_vec(),
            caps: self.caps,
            charset: r.charset,
        }));
        self.charset = r.charset;
        self.response = payload.to_vec();
        self.phase = Phase::Lookup;
        events.push(Event::Login);
    }

    /// The handshake response rewritten for a server that is to authenticate the client itself
    /// (a pass-through session): the same capabilities, user, schema, character set and
    /// attributes, naming mysql_native_password with an empty answer, so that a server whose
    /// account uses another plugin switches the client to it. The whole packet (sequence id 1).
    /// `None` after a COM_CHANGE_USER (no handshake response to rewrite).
    pub fn passthrough_response(&self) -> Option<Vec<u8>> {
        let r = parse_handshake_response41(&self.response).ok()?;
        let rewritten = HandshakeResponse41 {
            capabilities: (r.capabilities & OFFERED) | CLIENT_PLUGIN_AUTH,
            auth_response: &[],
            auth_plugin_name: Some(Plugin::Native.name()),
            ..r
        };
        let mut payload = Vec::with_capacity(self.response.len());
        encode_handshake_response41(&rewritten, &mut payload);
        let mut out = Vec::with_capacity(payload.len() + 4);
        write_packet(&mut out, 1, &payload);
        Some(out)
    }

    /// A COM_CHANGE_USER: the login starts over for another user (checked against the
    /// greeting's nonce, as servers do), reported as [`Event::Login`]. The capabilities (and
    /// compression) of the connection stay.
    pub fn change_user(&mut self, payload: &[u8], events: &mut Vec<Event>) {
        let parsed = crate::protocol::command::parse_command_with_caps(payload, self.caps);
        let Ok(crate::protocol::command::Command::ChangeUser {
            user,
            auth_response,
            database,
            rest,
        }) = parsed
        else {
            return self.fail(Error::client_protocol("malformed COM_CHANGE_USER"), events);
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        // rest: charset (2 bytes), then the plugin name (NUL-terminated), then attributes.
        let charset = rest.first().copied().unwrap_or(self.charset);
        let plugin = rest
            .get(2..)
            .map_or(&[][..], |p| p.split(|&b| b == 0).next().unwrap_or(&[]));
        self.login = Some(Box::new(LoginRequest {
            user: text(user),
            database: (!database.is_empty()).then(|| text(database)),
            plugin: plugin.to_vec(),
            answer: auth_response.to_vec(),
            caps: self.caps,
            charset,
        }));
        self.charset = charset;
        self.auth = None;
        self.response.clear();
        self.seq = 1;
        self.phase = Phase::Lookup;
        events.push(Event::Login);
    }

    /// The user's credential is known (`None`: unknown user, refused like a wrong password).
    pub fn check(
        &mut self,
        stored: Option<Stored>,
        sha2_cached: Option<[u8; 32]>,
        fresh: &[u8; 32],
        events: &mut Vec<Event>,
    ) {
        let Some(login) = self.login.as_ref().filter(|_| self.phase == Phase::Lookup) else {
            return;
        };
        let mut auth = ServerAuth::new(&self.nonce, Plugin::Native);
        let next =
            auth.handshake_response(stored, sha2_cached, &login.plugin, &login.answer, fresh);
        self.auth = Some(Box::new(auth));
        self.phase = Phase::Auth;
        self.on_next(next, events);
    }

    fn on_auth_packet(&mut self, payload: &[u8], events: &mut Vec<Event>) {
        // The RSA keys are only needed by caching_sha2's full path.
        let keys = rsa_keys();
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        let next = match keys {
            Some(k) => auth.client_packet(payload, k),
            None => Next::Deny,
        };
        self.on_next(next, events);
    }

    fn on_next(&mut self, next: Next, events: &mut Vec<Event>) {
        match next {
            Next::Ok => self.verified(events),
            Next::SendThenOk(more) => {
                self.send_auth(&more, events);
                self.verified(events);
            }
            Next::Send(payload) => self.send_auth(&payload, events),
            Next::Deny => {
                self.phase = Phase::Confirm;
                events.push(Event::Denied);
            }
        }
    }

    fn verified(&mut self, events: &mut Vec<Event>) {
        self.phase = Phase::Confirm;
        let learned = self.auth.as_mut().and_then(|a| a.take_learned());
        events.push(Event::Verified(learned));
    }

    fn send_auth(&mut self, payload: &[u8], events: &mut Vec<Event>) {
        let mut out = Vec::with_capacity(payload.len() + 4);
        self.seq = write_packet(&mut out, self.seq, payload);
        events.push(Event::Send(out));
    }

    /// Logs the client in: the OK, then the command phase (compressed from now on if agreed).
    pub fn accept_login(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        write_ok_packet(&mut out, self.seq, 0, 0, SERVER_STATUS_AUTOCOMMIT, 0);
        self.phase = Phase::Command;
        self.auth = None;
        self.login = None;
        self.response = Vec::new();
        if self.inflater.is_none() {
            // The first login: compression (if agreed) starts after this OK.
            let agreed = self.caps & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION_ALGORITHM);
            self.alg = Algorithm::negotiated(agreed);
            self.inflater = self.alg.map(Inflater::new);
        }
        out
    }

    /// The ERR 1045 of a refused login (the session then ends).
    pub fn deny(&mut self) -> Vec<u8> {
        let (user, used) = match (&self.login, &self.auth) {
            (Some(l), Some(a)) => (l.user.as_str(), a.password_used()),
            (Some(l), None) => (l.user.as_str(), !l.answer.is_empty()),
            _ => ("", false),
        };
        let host = self
            .peer
            .map_or_else(|| "localhost".to_string(), |p| p.ip().to_string());
        let msg = access_denied_message(user, &host, used);
        self.phase = Phase::Ended;
        let mut out = Vec::with_capacity(msg.len() + 16);
        write_err_packet(
            &mut out,
            self.seq,
            ER_ACCESS_DENIED_ERROR,
            b"28000",
            msg.as_bytes(),
        );
        out
    }

    /// An ERR to the client at the login's current sequence id (the login then fails).
    pub fn login_error(&mut self, code: u16, state: &[u8; 5], msg: &str) -> Vec<u8> {
        self.phase = Phase::Ended;
        let mut out = Vec::with_capacity(msg.len() + 16);
        write_err_packet(&mut out, self.seq, code, state, msg.as_bytes());
        out
    }

    pub fn end(&mut self) {
        self.phase = Phase::Ended;
    }

    /// Whether output to the client is compressed.
    pub fn compressed(&self) -> bool {
        self.alg.is_some()
    }

    /// The compressed sequence id the response to the command just received starts at.
    pub fn response_comp_seq(&self) -> u8 {
        self.inflater
            .as_ref()
            .and_then(Inflater::last_seq)
            .map_or(0, |s| s.wrapping_add(1))
    }

    /// `bytes` (a piece of the ordinary packet stream) as the client reads them: as they are,
    /// or, compressed, the whole packets so far as compressed frames starting at compressed id
    /// `*comp_seq` (advanced); the start of a packet not whole yet waits for the rest (some
    /// clients, mysql-connector-python's pure reader among them, cannot take a packet split
    /// across compressed frames). Empty when nothing is ready.
    pub fn frame(&mut self, bytes: Vec<u8>, comp_seq: &mut u8) -> Vec<u8> {
        let Some(alg) = self.alg else { return bytes };
        let bytes = if self.unframed.is_empty() {
            bytes
        } else {
            let mut joined = std::mem::take(&mut self.unframed);
            joined.extend_from_slice(&bytes);
            joined
        };
        let whole = whole_packets_len(&bytes);
        let (bytes, rest) = (&bytes[..whole], &bytes[whole..]);
        self.unframed = rest.to_vec();
        if bytes.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(bytes.len() / 2 + 16);
        let level = if alg == Algorithm::Zlib { 6 } else { 3 };
        // Small packets are stored (compressing them costs more than it saves).
        *comp_seq = if bytes.len() < 50 {
            crate::protocol::compress::write_uncompressed_frame(&mut out, *comp_seq, bytes)
        } else {
            write_compressed_frame(&mut out, *comp_seq, bytes, alg, level)
        };
        out
    }
}

/// The length of the whole packets at the start of `bytes`.
fn whole_packets_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(h) = bytes.get(at..at + HEADER_LEN) {
        let end = at + HEADER_LEN + u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
        if end > bytes.len() {
            break;
        }
        at = end;
    }
    at
}

/// The proxy's RSA key pair for caching_sha2's full authentication, made once per process.
pub fn rsa_keys() -> Option<&'static RsaKeys> {
    static KEYS: std::sync::OnceLock<Option<RsaKeys>> = std::sync::OnceLock::new();
    KEYS.get_or_init(RsaKeys::generate).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::auth::native_password_scramble;
    use crate::protocol::handshake::{encode_handshake_response41, HandshakeResponse41};

    fn response(user: &str, answer: &[u8], caps: u32) -> Vec<u8> {
        let r = HandshakeResponse41 {
            capabilities: caps,
            max_packet_size: 1 << 24,
            charset: 45,
            mariadb_ext_capabilities: 0,
            username: user.as_bytes(),
            auth_response: answer,
            database: None,
            auth_plugin_name: Some(b"mysql_native_password"),
            connect_attrs: None,
        };
        let mut payload = Vec::new();
        encode_handshake_response41(&r, &mut payload);
        let mut out = Vec::new();
        write_packet(&mut out, 1, &payload);
        out
    }

    fn client() -> PooledClient {
        PooledClient::new(None, [7; 20], 5, 1 << 20, Instant::now())
    }

    const CAPS: u32 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;

    #[test]
    fn a_native_login_is_verified_then_accepted() {
        let mut c = client();
        let mut ev = Vec::new();
        let answer = native_password_scramble(b"pw", &[7; 20]);
        c.on_bytes(&response("app", &answer, CAPS), &mut ev);
        assert_eq!(ev, vec![Event::Login]);
        assert_eq!(c.login.as_ref().unwrap().user, "app");
        ev.clear();
        c.check(
            Some(Stored::Cleartext(b"pw".to_vec())),
            None,
            &[1; 32],
            &mut ev,
        );
        assert!(
            matches!(ev.as_slice(), [Event::Verified(Some(Learned::Password(_)))]),
            "{ev:?}"
        );
        let ok = c.accept_login();
        assert_eq!(&ok[..5], &[7, 0, 0, 2, 0]);
        assert!(c.authenticated());
        ev.clear();
        let mut cmd = Vec::new();
        write_packet(&mut cmd, 0, b"\x03SELECT 1");
        c.on_bytes(&cmd[..5], &mut ev);
        assert!(ev.is_empty());
        c.on_bytes(&cmd[5..], &mut ev);
        assert_eq!(
            ev,
            vec![Event::Packet {
                seq: 0,
                payload: b"\x03SELECT 1".to_vec()
            }]
        );
    }

    #[test]
    fn a_wrong_password_is_denied_with_1045() {
        let mut c = client();
        let mut ev = Vec::new();
        let answer = native_password_scramble(b"nope", &[7; 20]);
        c.on_bytes(&response("app", &answer, CAPS), &mut ev);
        ev.clear();
        c.check(
            Some(Stored::Cleartext(b"pw".to_vec())),
            None,
            &[1; 32],
            &mut ev,
        );
        assert_eq!(ev, vec![Event::Denied]);
        let err = c.deny();
        assert_eq!(err[3], 2);
        assert_eq!(u16::from_le_bytes([err[5], err[6]]), 1045);
        let text = String::from_utf8_lossy(&err);
        assert!(
            text.contains("#28000Access denied for user 'app'@'localhost' (using password: YES)"),
            "{text}"
        );
    }

    #[test]
    fn a_packet_before_the_answer_ends_the_session() {
        let mut c = client();
        let mut ev = Vec::new();
        c.on_bytes(&response("app", b"", CAPS), &mut ev);
        ev.clear();
        c.on_bytes(&[1, 0, 0, 2, 0], &mut ev);
        assert!(matches!(ev.as_slice(), [Event::End(Some(_))]), "{ev:?}");
    }

    #[test]
    fn an_oversized_command_ends_the_session_with_1153() {
        let mut c = client();
        let mut ev = Vec::new();
        c.on_bytes(&response("app", b"", CAPS), &mut ev);
        c.check(Some(Stored::Cleartext(vec![])), None, &[1; 32], &mut ev);
        c.accept_login();
        ev.clear();
        let mut big = Vec::new();
        write_packet(&mut big, 0, &vec![3u8; (1 << 20) + 1]);
        c.on_bytes(&big[..100], &mut ev);
        match ev.as_slice() {
            [Event::End(Some(e))] => assert_eq!(e.code, 1153),
            other => panic!("{other:?}"),
        }
    }
}
