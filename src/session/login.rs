//! A client's login to a MySQL server, without I/O: HandshakeV10 → HandshakeResponse41,
//! AuthSwitchRequest, caching_sha2_password's fast path. The caller feeds received bytes in and
//! sends what comes out; the result is the negotiated capabilities or why the login failed.
//! loadgen logs in with it, the simulation's clients too, and the proxy will log in to backends
//! with it in pooled mode.

use crate::protocol::auth::Plugin;
use crate::protocol::constants::*;
use crate::protocol::framing::{split_packet, write_packet};
use crate::protocol::handshake::{
    encode_handshake_response41, parse_auth_more_data, parse_auth_switch_request,
    parse_handshake_v10, HandshakeResponse41,
};
use crate::protocol::packets::parse_err;

/// Capabilities a client asks for (each only if the server offers it).
const CLIENT_WANT: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_LONG_FLAG
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_DEPRECATE_EOF;

/// utf8mb4_general_ci, known to MySQL 5.5+ and every MariaDB.
const CHARSET: u8 = 45;

/// Largest login packet accepted; a greeting or auth packet is a few hundred bytes.
const MAX_LOGIN_BYTES: usize = 64 * 1024;

/// Who logs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    /// SHA1(password), when only that is known (a pooling proxy learns it from a client's
    /// mysql_native_password login): enough for mysql_native_password, and used then.
    pub stage1: Option<[u8; 20]>,
    /// Default schema; `None` sends no CLIENT_CONNECT_WITH_DB.
    pub db: Option<String>,
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// The server refused with an ERR packet (wrong password, too many connections, ...).
    Server { code: u16, message: String },
    /// The server wants something this client does not do (another auth plugin, TLS, RSA).
    Unsupported(String),
    /// Bytes that are not the MySQL login exchange.
    Protocol(String),
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Server { code, message } => {
                write!(f, "login refused: ERROR {code}: {message}")
            }
            LoginError::Unsupported(m) => write!(f, "login: {m}"),
            LoginError::Protocol(m) => write!(f, "login: protocol error: {m}"),
        }
    }
}

fn server_err(payload: &[u8]) -> LoginError {
    match parse_err(payload, CLIENT_PROTOCOL_41) {
        Ok(e) => LoginError::Server {
            code: e.code,
            message: String::from_utf8_lossy(e.message).into_owned(),
        },
        Err(e) => LoginError::Protocol(format!("bad ERR packet: {e}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginState {
    Greeting,
    AuthResult,
}

/// The login exchange of one connection. Buffers whole packets (login packets are small);
/// dropped once the login is done.
#[derive(Debug)]
pub struct Login {
    buf: Vec<u8>,
    state: LoginState,
    plugin: Plugin,
    caps: u32,
    /// Capabilities asked for (each only if the server offers it), and the character set.
    want: u32,
    charset: u8,
    /// The connection (thread) id the server's greeting gave.
    pub connection_id: u32,
    /// The greeting's scramble (a COM_CHANGE_USER later answers it).
    pub nonce: Vec<u8>,
}

impl Default for Login {
    fn default() -> Self {
        Self::new()
    }
}

impl Login {
    pub fn new() -> Login {
        Login::with_capabilities(CLIENT_WANT, CHARSET)
    }

    /// The default login without the capabilities in `clear` (e.g. CLIENT_DEPRECATE_EOF, to
    /// behave as an older client).
    pub fn without(clear: u32) -> Login {
        Login::with_capabilities(CLIENT_WANT & !clear, CHARSET)
    }

    /// A login asking for `want` (protocol 4.1, secure connection and plugin auth are always
    /// asked) with character set `charset`.
    pub fn with_capabilities(want: u32, charset: u8) -> Login {
        Login {
            buf: Vec::new(),
            state: LoginState::Greeting,
            plugin: Plugin::Native,
            caps: 0,
            want: want | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH,
            charset,
            connection_id: 0,
            nonce: Vec::new(),
        }
    }

    /// COM_CHANGE_USER to `cred` on a connection logged in with capabilities `caps`, whose
    /// greeting gave `nonce`: the login that reads the server's answer (through
    /// [`Login::feed`], ending with the OK as a login does) and the packet to send.
    pub fn change_user(
        caps: u32,
        charset: u8,
        nonce: &[u8],
        cred: &Credentials,
    ) -> (Login, Vec<u8>) {
        let mut login = Login::with_capabilities(caps, charset);
        login.caps = caps;
        login.state = LoginState::AuthResult;
        login.nonce = nonce.to_vec();
        let auth = login.answer(cred, nonce);
        let mut rest = u16::from(charset).to_le_bytes().to_vec();
        if caps & CLIENT_PLUGIN_AUTH != 0 {
            rest.extend_from_slice(login.plugin.name());
            rest.push(0);
        }
        if caps & CLIENT_CONNECT_ATTRS != 0 {
            rest.push(0);
        }
        let cmd = crate::protocol::command::Command::ChangeUser {
            user: cred.user.as_bytes(),
            auth_response: &auth,
            database: cred.db.as_deref().unwrap_or("").as_bytes(),
            rest: &rest,
        };
        let mut payload = Vec::with_capacity(64);
        cmd.encode(caps, &mut payload);
        let mut pkt = Vec::with_capacity(payload.len() + 4);
        write_packet(&mut pkt, 0, &payload);
        (login, pkt)
    }

    /// The answer to `nonce` for the plugin in use.
    fn answer(&self, cred: &Credentials, nonce: &[u8]) -> Vec<u8> {
        match (self.plugin, cred.stage1) {
            (Plugin::Native, Some(stage1)) => {
                crate::protocol::auth::native_password_from_stage1(&stage1, nonce)
            }
            (plugin, _) => plugin.scramble(cred.password.as_bytes(), nonce),
        }
    }

    /// Feeds received bytes; appends to `out` what must be sent. Returns the negotiated
    /// capabilities once the server's OK arrived, `None` while the exchange goes on.
    pub fn feed(
        &mut self,
        data: &[u8],
        cred: &Credentials,
        out: &mut Vec<u8>,
    ) -> Result<Option<u32>, LoginError> {
        self.buf.extend_from_slice(data);
        let mut buf = std::mem::take(&mut self.buf);
        let mut at = 0;
        let result = loop {
            let Some((h, payload, used)) = split_packet(&buf[at..]) else {
                if buf.len() - at > MAX_LOGIN_BYTES {
                    break Err(LoginError::Protocol(format!(
                        "login packet larger than {MAX_LOGIN_BYTES} bytes"
                    )));
                }
                break Ok(None);
            };
            match self.packet(h.seq, payload, cred, out) {
                Err(e) => break Err(e),
                Ok(true) if at + used != buf.len() => {
                    break Err(LoginError::Protocol(
                        "bytes after the login OK before any command".into(),
                    ))
                }
                Ok(true) => break Ok(Some(self.caps)),
                Ok(false) => at += used,
            }
        };
        if let Ok(None) = result {
            buf.drain(..at);
            self.buf = buf;
        }
        result
    }

    fn packet(
        &mut self,
        seq: u8,
        payload: &[u8],
        cred: &Credentials,
        out: &mut Vec<u8>,
    ) -> Result<bool, LoginError> {
        let first = payload.first().copied();
        if first == Some(ERR_HEADER) {
            return Err(server_err(payload));
        }
        match self.state {
            LoginState::Greeting => self.on_greeting(seq, payload, cred, out),
            LoginState::AuthResult => match first {
                Some(OK_HEADER) => Ok(true),
                Some(AUTH_SWITCH_HEADER) => {
                    let sw = parse_auth_switch_request(payload)
                        .map_err(|e| LoginError::Protocol(format!("auth switch: {e}")))?;
                    let plugin = Plugin::from_name(sw.plugin_name).ok_or_else(|| {
                        LoginError::Unsupported(format!(
                            "the server asks for auth plugin {}; this client speaks only \
                             mysql_native_password, caching_sha2_password and client_ed25519",
                            String::from_utf8_lossy(sw.plugin_name)
                        ))
                    })?;
                    self.plugin = plugin;
                    // ed25519's nonce is 32 raw bytes: its last one may be a 0, which the
                    // parser's NUL stripping (right for the other plugins) would take off.
                    let data = match plugin {
                        Plugin::Ed25519 => {
                            let rest = &payload[(2 + sw.plugin_name.len()).min(payload.len())..];
                            &rest[..rest.len().min(32)]
                        }
                        _ => sw.plugin_data,
                    };
                    let auth = self.answer(cred, data);
                    write_packet(out, seq.wrapping_add(1), &auth);
                    Ok(false)
                }
                Some(AUTH_MORE_DATA_HEADER) if self.plugin == Plugin::CachingSha2 => {
                    let data = parse_auth_more_data(payload)
                        .map_err(|e| LoginError::Protocol(format!("auth more data: {e}")))?;
                    match data {
                        // Fast authentication succeeded; the OK follows.
                        [3] => Ok(false),
                        [4] => Err(LoginError::Unsupported(
                            "caching_sha2_password full authentication needs TLS or RSA: not \
                             supported (log in once with another client to fill the server's \
                             cache, or use mysql_native_password)"
                                .into(),
                        )),
                        _ => Err(LoginError::Protocol(format!(
                            "unexpected caching_sha2_password data {data:02x?}"
                        ))),
                    }
                }
                Some(b) => Err(LoginError::Protocol(format!(
                    "unexpected packet {b:#04x} during authentication"
                ))),
                None => Err(LoginError::Protocol(
                    "empty packet during authentication".into(),
                )),
            },
        }
    }

    /// The server's greeting: the handshake response answers it.
    fn on_greeting(
        &mut self,
        seq: u8,
        payload: &[u8],
        cred: &Credentials,
        out: &mut Vec<u8>,
    ) -> Result<bool, LoginError> {
        let g = parse_handshake_v10(payload)
            .map_err(|e| LoginError::Protocol(format!("greeting: {e}")))?;
        if g.capabilities & CLIENT_PROTOCOL_41 == 0 {
            return Err(LoginError::Unsupported(
                "the server does not speak protocol 4.1".into(),
            ));
        }
        self.connection_id = g.connection_id;
        self.nonce = g.scramble().to_vec();
        let mut caps = self.want & g.capabilities;
        if cred.db.is_some() {
            caps |= CLIENT_CONNECT_WITH_DB & g.capabilities;
        }
        self.caps = caps;
        self.plugin = g
            .auth_plugin_name
            .and_then(Plugin::from_name)
            .unwrap_or(Plugin::Native);
        let auth = self.answer(cred, &self.nonce);
        let resp = HandshakeResponse41 {
            capabilities: caps,
            max_packet_size: 1 << 24,
            charset: self.charset,
            mariadb_ext_capabilities: 0,
            username: cred.user.as_bytes(),
            auth_response: &auth,
            database: cred.db.as_deref().map(str::as_bytes),
            auth_plugin_name: Some(self.plugin.name()),
            connect_attrs: None,
        };
        let mut p = Vec::with_capacity(128);
        encode_handshake_response41(&resp, &mut p);
        write_packet(out, seq.wrapping_add(1), &p);
        self.state = LoginState::AuthResult;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::{encode_handshake_v10, HandshakeV10};
    use crate::protocol::packets::{write_err_packet, write_ok_packet};

    fn cred() -> Credentials {
        Credentials {
            user: "app".into(),
            password: "pw".into(),
            stage1: None,
            db: Some("app".into()),
        }
    }

    fn greeting(plugin: &[u8]) -> Vec<u8> {
        let h = HandshakeV10 {
            protocol_version: 10,
            server_version: b"10.11.19-MariaDB",
            connection_id: 7,
            auth_data_1: b"abcdefgh",
            capabilities: 0xffff_fffe,
            charset: 45,
            status: 2,
            auth_data_len: 21,
            mariadb_ext_capabilities: 0,
            auth_data_2: b"ijklmnopqrst",
            auth_plugin_name: Some(plugin),
        };
        let mut p = Vec::new();
        encode_handshake_v10(&h, &mut p);
        let mut out = Vec::new();
        write_packet(&mut out, 0, &p);
        out
    }

    fn ok(seq: u8) -> Vec<u8> {
        let mut out = Vec::new();
        write_ok_packet(&mut out, seq, 0, 0, 2, 0);
        out
    }

    fn response_of(out: &[u8]) -> (u8, Vec<u8>) {
        let (h, payload, used) = split_packet(out).unwrap();
        assert_eq!(used, out.len());
        (h.seq, payload.to_vec())
    }

    #[test]
    fn native_login_in_arbitrary_chunks() {
        let mut l = Login::new();
        let mut out = Vec::new();
        let g = greeting(b"mysql_native_password");
        for b in &g[..g.len() - 1] {
            assert_eq!(l.feed(&[*b], &cred(), &mut out), Ok(None));
        }
        assert!(out.is_empty());
        assert_eq!(l.feed(&g[g.len() - 1..], &cred(), &mut out), Ok(None));
        let (seq, payload) = response_of(&out);
        assert_eq!(seq, 1);
        let r = crate::protocol::handshake::parse_handshake_response41(&payload).unwrap();
        assert_eq!(r.username, b"app");
        assert_eq!(r.database, Some(&b"app"[..]));
        assert_eq!(r.auth_plugin_name, Some(&b"mysql_native_password"[..]));
        assert_eq!(
            r.auth_response,
            Plugin::Native.scramble(b"pw", b"abcdefghijklmnopqrst")
        );
        assert_ne!(r.capabilities & CLIENT_DEPRECATE_EOF, 0);
        out.clear();
        let caps = l.feed(&ok(2), &cred(), &mut out).unwrap().unwrap();
        assert!(out.is_empty());
        assert_ne!(caps & CLIENT_PROTOCOL_41, 0);
    }

    #[test]
    fn wrong_password_is_a_server_error() {
        let mut l = Login::new();
        let mut out = Vec::new();
        l.feed(&greeting(b"mysql_native_password"), &cred(), &mut out)
            .unwrap();
        let mut err = Vec::new();
        write_err_packet(&mut err, 2, 1045, b"28000", b"Access denied for user 'app'");
        match l.feed(&err, &cred(), &mut out) {
            Err(LoginError::Server { code, message }) => {
                assert_eq!(code, 1045);
                assert!(message.contains("Access denied"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_switch_and_sha2_fast_path() {
        let mut l = Login::new();
        let mut out = Vec::new();
        l.feed(&greeting(b"caching_sha2_password"), &cred(), &mut out)
            .unwrap();
        let (_, payload) = response_of(&out);
        let r = crate::protocol::handshake::parse_handshake_response41(&payload).unwrap();
        assert_eq!(
            r.auth_response,
            crate::protocol::auth::caching_sha2_scramble(b"pw", b"abcdefghijklmnopqrst")
        );
        // Switch to native with a new nonce.
        out.clear();
        let mut sw = vec![0xfe];
        sw.extend_from_slice(b"mysql_native_password\0");
        sw.extend_from_slice(b"ABCDEFGHIJKLMNOPQRST\0");
        let mut pkt = Vec::new();
        write_packet(&mut pkt, 2, &sw);
        assert_eq!(l.feed(&pkt, &cred(), &mut out), Ok(None));
        let (seq, payload) = response_of(&out);
        assert_eq!(seq, 3);
        assert_eq!(
            payload,
            Plugin::Native.scramble(b"pw", b"ABCDEFGHIJKLMNOPQRST")
        );
        assert!(l.feed(&ok(4), &cred(), &mut out).unwrap().is_some());

        // Fast path: 01 03 then OK, arriving in one chunk.
        let mut l = Login::new();
        out.clear();
        l.feed(&greeting(b"caching_sha2_password"), &cred(), &mut out)
            .unwrap();
        let mut chunk = Vec::new();
        write_packet(&mut chunk, 2, &[1, 3]);
        chunk.extend_from_slice(&ok(3));
        assert!(l.feed(&chunk, &cred(), &mut out).unwrap().is_some());

        // Full authentication is refused plainly.
        let mut l = Login::new();
        l.feed(&greeting(b"caching_sha2_password"), &cred(), &mut out)
            .unwrap();
        let mut full = Vec::new();
        write_packet(&mut full, 2, &[1, 4]);
        match l.feed(&full, &cred(), &mut out) {
            Err(LoginError::Unsupported(m)) => assert!(m.contains("needs TLS or RSA")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ed25519_switch_signs_the_raw_nonce() {
        let mut l = Login::new();
        let mut out = Vec::new();
        l.feed(&greeting(b"mysql_native_password"), &cred(), &mut out)
            .unwrap();
        // A nonce whose last byte is 0: it must not be taken for a terminator.
        let mut nonce = [9u8; 32];
        nonce[31] = 0;
        let mut sw = b"\xfeclient_ed25519\0".to_vec();
        sw.extend_from_slice(&nonce);
        let mut pkt = Vec::new();
        write_packet(&mut pkt, 2, &sw);
        out.clear();
        assert_eq!(l.feed(&pkt, &cred(), &mut out), Ok(None));
        let (seq, payload) = response_of(&out);
        assert_eq!(seq, 3);
        assert_eq!(
            payload,
            crate::protocol::auth::ed25519_signature(b"pw", &nonce)
        );
    }

    #[test]
    fn unknown_plugin_switch_is_unsupported() {
        let mut l = Login::new();
        let mut out = Vec::new();
        l.feed(&greeting(b"mysql_native_password"), &cred(), &mut out)
            .unwrap();
        let mut pkt = Vec::new();
        write_packet(&mut pkt, 2, b"\xfedialog\0nonce\0");
        assert!(matches!(
            l.feed(&pkt, &cred(), &mut out),
            Err(LoginError::Unsupported(_))
        ));
    }
}
