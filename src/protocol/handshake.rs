//! The connection phase: the server greeting (HandshakeV10), the client's HandshakeResponse41 and
//! SSLRequest, AuthSwitchRequest, AuthMoreData, in-place capability patching of relayed greetings
//! and responses, and the mysql_native_password scramble.
//!
//! MariaDB puts 4 bytes of extended capabilities in the greeting's reserved filler and in bytes
//! 19..23 of the response's 23-byte filler, when the sender clears capability bit 0
//! (CLIENT_LONG_PASSWORD, which MariaDB calls CLIENT_MYSQL).

use super::constants::{
    AUTH_MORE_DATA_HEADER, AUTH_SWITCH_HEADER, CLIENT_CONNECT_ATTRS, CLIENT_CONNECT_WITH_DB,
    CLIENT_LONG_PASSWORD, CLIENT_PLUGIN_AUTH, CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION, CLIENT_SSL, ERR_HEADER,
};
use super::cursor::{put_lenenc_bytes, Cursor};
use super::error::{ProtoError, Result};
use super::packets::parse_err;

/// The server greeting, protocol version 10.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeV10<'a> {
    pub protocol_version: u8,
    pub server_version: &'a [u8],
    pub connection_id: u32,
    /// First 8 bytes of the auth plugin data (scramble).
    pub auth_data_1: &'a [u8],
    /// Both 16-bit halves of the capability flags.
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    /// Total length of the auth plugin data as announced (0 without CLIENT_PLUGIN_AUTH).
    pub auth_data_len: u8,
    /// MariaDB's extended capabilities (present when CLIENT_LONG_PASSWORD is clear); 0 otherwise.
    pub mariadb_ext_capabilities: u32,
    /// The rest of the auth plugin data, without its trailing NUL.
    pub auth_data_2: &'a [u8],
    pub auth_plugin_name: Option<&'a [u8]>,
}

impl HandshakeV10<'_> {
    /// The full auth plugin data: `auth_data_1 ++ auth_data_2` (20 bytes for native passwords).
    pub fn scramble(&self) -> Vec<u8> {
        let mut s = Vec::with_capacity(self.auth_data_1.len() + self.auth_data_2.len());
        s.extend_from_slice(self.auth_data_1);
        s.extend_from_slice(self.auth_data_2);
        s
    }
}

/// Byte offsets of the patchable fields inside a greeting payload.
struct GreetingLayout {
    caps_lo: usize,
    caps_hi: Option<usize>,
    mariadb_ext: Option<usize>,
}

fn server_error(payload: &[u8], what: &'static str) -> ProtoError {
    match parse_err(payload, CLIENT_PROTOCOL_41) {
        Ok(e) => ProtoError::malformed(
            what,
            format!(
                "server sent error {}: {}",
                e.code,
                String::from_utf8_lossy(e.message)
            ),
        ),
        Err(_) => ProtoError::malformed(what, "server sent a truncated error packet"),
    }
}

fn parse_greeting(payload: &[u8]) -> Result<(HandshakeV10<'_>, GreetingLayout)> {
    let what = "handshake";
    if payload.first() == Some(&ERR_HEADER) {
        return Err(server_error(payload, what));
    }
    let mut c = Cursor::new(payload);
    let protocol_version = c.u8().map_err(|_| ProtoError::truncated(what))?;
    if protocol_version != 10 {
        return Err(ProtoError::malformed(
            what,
            format!("protocol version {protocol_version}, expected 10"),
        ));
    }
    let server_version = c.nul_bytes()?;
    let connection_id = c.u32_le()?;
    let auth_data_1 = c.bytes(8)?;
    c.skip(1)?; // filler
    let caps_lo = c.position();
    let mut capabilities = u32::from(c.u16_le()?);
    let mut h = HandshakeV10 {
        protocol_version,
        server_version,
        connection_id,
        auth_data_1,
        capabilities,
        charset: 0,
        status: 0,
        auth_data_len: 0,
        mariadb_ext_capabilities: 0,
        auth_data_2: &[],
        auth_plugin_name: None,
    };
    let mut layout = GreetingLayout {
        caps_lo,
        caps_hi: None,
        mariadb_ext: None,
    };
    if c.is_empty() {
        // Very old servers stop after the lower capability flags.
        return Ok((h, layout));
    }
    h.charset = c.u8()?;
    h.status = c.u16_le()?;
    layout.caps_hi = Some(c.position());
    capabilities |= u32::from(c.u16_le()?) << 16;
    h.capabilities = capabilities;
    h.auth_data_len = c.u8()?;
    c.skip(6)?;
    if capabilities & CLIENT_LONG_PASSWORD == 0 {
        layout.mariadb_ext = Some(c.position());
        h.mariadb_ext_capabilities = c.u32_le()?;
    } else {
        c.skip(4)?;
    }
    if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let n = usize::from(h.auth_data_len).saturating_sub(8).max(13);
        // Some servers send fewer bytes than announced when nothing follows.
        let n = n.min(c.remaining());
        let d = c.bytes(n)?;
        h.auth_data_2 = d.strip_suffix(&[0]).unwrap_or(d);
    }
    if capabilities & CLIENT_PLUGIN_AUTH != 0 && !c.is_empty() {
        // MySQL 5.5.7..5.5.9 left out the terminating NUL.
        let name = c.nul_bytes().or_else(|_| Ok::<_, ProtoError>(c.rest()))?;
        h.auth_plugin_name = Some(name);
    }
    Ok((h, layout))
}

/// Parse a server greeting. A server ERR packet (e.g. "Too many connections", "Host blocked") is
/// reported as `Malformed { what: "handshake" }` whose detail carries the server's message.
pub fn parse_handshake_v10(payload: &[u8]) -> Result<HandshakeV10<'_>> {
    parse_greeting(payload).map(|(h, _)| h)
}

/// Append the payload of a greeting. `auth_data_2` is followed by a NUL and zero-padded to the
/// length `auth_data_len` implies (at least 13 bytes) when CLIENT_SECURE_CONNECTION is set.
pub fn encode_handshake_v10(h: &HandshakeV10<'_>, out: &mut Vec<u8>) {
    out.push(h.protocol_version);
    out.extend_from_slice(h.server_version);
    out.push(0);
    out.extend_from_slice(&h.connection_id.to_le_bytes());
    let mut a1 = [0u8; 8];
    let n = h.auth_data_1.len().min(8);
    a1[..n].copy_from_slice(&h.auth_data_1[..n]);
    out.extend_from_slice(&a1);
    out.push(0);
    out.extend_from_slice(&(h.capabilities as u16).to_le_bytes());
    out.push(h.charset);
    out.extend_from_slice(&h.status.to_le_bytes());
    out.extend_from_slice(&((h.capabilities >> 16) as u16).to_le_bytes());
    out.push(h.auth_data_len);
    out.extend_from_slice(&[0; 6]);
    if h.capabilities & CLIENT_LONG_PASSWORD == 0 {
        out.extend_from_slice(&h.mariadb_ext_capabilities.to_le_bytes());
    } else {
        out.extend_from_slice(&[0; 4]);
    }
    if h.capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let want = usize::from(h.auth_data_len).saturating_sub(8).max(13);
        out.extend_from_slice(h.auth_data_2);
        out.push(0);
        let written = h.auth_data_2.len() + 1;
        if written < want {
            out.resize(out.len() + (want - written), 0);
        }
    }
    if h.capabilities & CLIENT_PLUGIN_AUTH != 0 {
        if let Some(name) = h.auth_plugin_name {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
}

/// Appends `h` as a whole greeting packet (sequence id 0), as a server sends it.
pub fn write_greeting(out: &mut Vec<u8>, h: &HandshakeV10<'_>) {
    let mut payload = Vec::with_capacity(96);
    encode_handshake_v10(h, &mut payload);
    super::framing::write_packet(out, 0, &payload);
}

/// What the proxy needs to remember of a relayed greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreetingSummary {
    pub connection_id: u32,
    pub capabilities: u32,
    pub mariadb_ext_capabilities: u32,
    pub server_version: Vec<u8>,
    /// Empty when the greeting names no plugin.
    pub auth_plugin_name: Vec<u8>,
}

/// Patch a server greeting in place: clear `clear_caps` in the capability flags and
/// `clear_mariadb_ext` in MariaDB's extended capabilities (when present). Returns the greeting as
/// it reads after patching. Errors on anything that is not a valid HandshakeV10; a server ERR
/// packet gives `Malformed { what: "handshake" }` with the server's message in the detail.
pub fn patch_server_greeting(
    payload: &mut [u8],
    clear_caps: u32,
    clear_mariadb_ext: u32,
) -> Result<GreetingSummary> {
    let layout = parse_greeting(payload)?.1;
    clear_bits_u16(payload, layout.caps_lo, clear_caps as u16);
    if let Some(at) = layout.caps_hi {
        clear_bits_u16(payload, at, (clear_caps >> 16) as u16);
    }
    if let Some(at) = layout.mariadb_ext {
        clear_bits_u32(payload, at, clear_mariadb_ext);
    }
    let h = parse_handshake_v10(payload)?;
    Ok(GreetingSummary {
        connection_id: h.connection_id,
        capabilities: h.capabilities,
        mariadb_ext_capabilities: h.mariadb_ext_capabilities,
        server_version: h.server_version.to_vec(),
        auth_plugin_name: h.auth_plugin_name.unwrap_or(&[]).to_vec(),
    })
}

fn clear_bits_u16(buf: &mut [u8], at: usize, mask: u16) {
    if let Some(b) = buf.get_mut(at..at.saturating_add(2)) {
        let v = u16::from_le_bytes([b[0], b[1]]) & !mask;
        b.copy_from_slice(&v.to_le_bytes());
    }
}

fn clear_bits_u32(buf: &mut [u8], at: usize, mask: u32) {
    if let Some(b) = buf.get_mut(at..at.saturating_add(4)) {
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & !mask;
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// The client's reply to the greeting (protocol 4.1 form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse41<'a> {
    pub capabilities: u32,
    pub max_packet_size: u32,
    pub charset: u8,
    /// Bytes 19..23 of the 23-byte filler when CLIENT_LONG_PASSWORD is clear (MariaDB); else 0.
    pub mariadb_ext_capabilities: u32,
    pub username: &'a [u8],
    pub auth_response: &'a [u8],
    pub database: Option<&'a [u8]>,
    pub auth_plugin_name: Option<&'a [u8]>,
    /// The content of the length-encoded connection-attributes block (key/value lenenc pairs).
    pub connect_attrs: Option<&'a [u8]>,
}

/// Offset of the MariaDB extended capabilities inside a HandshakeResponse41 / SSLRequest.
const RESPONSE_EXT_CAPS_AT: usize = 4 + 4 + 1 + 19;
/// Length of the fixed part of a HandshakeResponse41 (also the whole SSLRequest).
const RESPONSE_FIXED_LEN: usize = 32;

/// Parse a HandshakeResponse41. Errors when CLIENT_PROTOCOL_41 is clear (the 3.20 form is not
/// supported). Call [`is_ssl_request`] first: an SSLRequest is only the fixed 32-byte prefix.
pub fn parse_handshake_response41(payload: &[u8]) -> Result<HandshakeResponse41<'_>> {
    let what = "handshake response";
    let mut c = Cursor::new(payload);
    let capabilities = c.u32_le().map_err(|_| ProtoError::truncated(what))?;
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err(ProtoError::malformed(
            what,
            "CLIENT_PROTOCOL_41 not set (pre-4.1 clients are not supported)",
        ));
    }
    let max_packet_size = c.u32_le().map_err(|_| ProtoError::truncated(what))?;
    let charset = c.u8().map_err(|_| ProtoError::truncated(what))?;
    c.skip(19).map_err(|_| ProtoError::truncated(what))?;
    let ext = c.u32_le().map_err(|_| ProtoError::truncated(what))?;
    let mariadb_ext_capabilities = if capabilities & CLIENT_LONG_PASSWORD == 0 {
        ext
    } else {
        0
    };
    let username = c.nul_bytes()?;
    let auth_response = if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        c.lenenc_bytes()?
    } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let n = c.u8()?;
        c.bytes(usize::from(n))?
    } else {
        c.nul_bytes()?
    };
    let database = if capabilities & CLIENT_CONNECT_WITH_DB != 0 {
        Some(c.nul_bytes()?)
    } else {
        None
    };
    let auth_plugin_name = if capabilities & CLIENT_PLUGIN_AUTH != 0 && !c.is_empty() {
        Some(c.nul_bytes()?)
    } else {
        None
    };
    let connect_attrs = if capabilities & CLIENT_CONNECT_ATTRS != 0 && !c.is_empty() {
        Some(c.lenenc_bytes()?)
    } else {
        None
    };
    Ok(HandshakeResponse41 {
        capabilities,
        max_packet_size,
        charset,
        mariadb_ext_capabilities,
        username,
        auth_response,
        database,
        auth_plugin_name,
        connect_attrs,
    })
}

/// Append the payload of a HandshakeResponse41, laid out as its capability flags say.
pub fn encode_handshake_response41(r: &HandshakeResponse41<'_>, out: &mut Vec<u8>) {
    let caps = r.capabilities;
    out.extend_from_slice(&caps.to_le_bytes());
    out.extend_from_slice(&r.max_packet_size.to_le_bytes());
    out.push(r.charset);
    out.extend_from_slice(&[0; 19]);
    if caps & CLIENT_LONG_PASSWORD == 0 {
        out.extend_from_slice(&r.mariadb_ext_capabilities.to_le_bytes());
    } else {
        out.extend_from_slice(&[0; 4]);
    }
    out.extend_from_slice(r.username);
    out.push(0);
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        put_lenenc_bytes(out, r.auth_response);
    } else if caps & CLIENT_SECURE_CONNECTION != 0 {
        let n = r.auth_response.len().min(255);
        out.push(n as u8);
        out.extend_from_slice(&r.auth_response[..n]);
    } else {
        out.extend_from_slice(r.auth_response);
        out.push(0);
    }
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        out.extend_from_slice(r.database.unwrap_or(&[]));
        out.push(0);
    }
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        if let Some(name) = r.auth_plugin_name {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    if caps & CLIENT_CONNECT_ATTRS != 0 {
        if let Some(attrs) = r.connect_attrs {
            put_lenenc_bytes(out, attrs);
        }
    }
}

/// True for an SSLRequest: exactly the 32-byte fixed prefix of a response, with CLIENT_SSL set.
pub fn is_ssl_request(payload: &[u8]) -> bool {
    payload.len() == RESPONSE_FIXED_LEN
        && matches!(payload.first_chunk::<4>(), Some(c) if u32::from_le_bytes(*c) & CLIENT_SSL != 0)
}

/// Patch a client's HandshakeResponse41 (or SSLRequest) in place: clear `clear_caps` in its
/// capability flags and `clear_mariadb_ext` in MariaDB's extended capabilities (when present).
/// Returns (capabilities, mariadb extended capabilities) after patching. Errors, leaving the
/// payload unchanged, when it is not a valid response or when clearing would change how the rest
/// of the packet is read (a client used a flag the proxy never offered).
pub fn patch_handshake_response(
    payload: &mut [u8],
    clear_caps: u32,
    clear_mariadb_ext: u32,
) -> Result<(u32, u32)> {
    let what = "handshake response";
    if payload.len() < RESPONSE_FIXED_LEN {
        return Err(ProtoError::truncated(what));
    }
    let before = if is_ssl_request(payload) {
        None
    } else {
        Some(response_layout(
            payload,
            &parse_handshake_response41(payload)?,
        ))
    };
    let mut saved = [0u8; RESPONSE_FIXED_LEN];
    saved.copy_from_slice(&payload[..RESPONSE_FIXED_LEN]);
    let caps = read_u32(payload, 0) & !clear_caps;
    payload[..4].copy_from_slice(&caps.to_le_bytes());
    let ext = if caps & CLIENT_LONG_PASSWORD == 0 {
        let e = read_u32(payload, RESPONSE_EXT_CAPS_AT) & !clear_mariadb_ext;
        payload[RESPONSE_EXT_CAPS_AT..RESPONSE_FIXED_LEN].copy_from_slice(&e.to_le_bytes());
        e
    } else {
        0
    };
    if let Some(before) = before {
        let after = parse_handshake_response41(payload)
            .ok()
            .map(|r| response_layout(payload, &r));
        if after != Some(before) {
            payload[..RESPONSE_FIXED_LEN].copy_from_slice(&saved);
            return Err(ProtoError::malformed(
                what,
                format!("clearing capabilities {clear_caps:#x} would change the packet layout"),
            ));
        }
    }
    Ok((caps, ext))
}

/// (offset, length) of a field borrowed from `base`.
type Span = (usize, usize);

fn span(base: &[u8], field: &[u8]) -> Span {
    (
        (field.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize),
        field.len(),
    )
}

/// Where the fields the server authenticates with sit inside a response payload.
fn response_layout(base: &[u8], r: &HandshakeResponse41<'_>) -> [Option<Span>; 4] {
    [
        Some(span(base, r.username)),
        Some(span(base, r.auth_response)),
        r.database.map(|d| span(base, d)),
        r.auth_plugin_name.map(|p| span(base, p)),
    ]
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut c = Cursor::new(buf);
    c.skip(at).and_then(|_| c.u32_le()).unwrap_or(0)
}

/// AuthSwitchRequest: the server asks the client to authenticate with another plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitchRequest<'a> {
    pub plugin_name: &'a [u8],
    /// Plugin data (e.g. a new 20-byte scramble), without the trailing NUL servers append.
    pub plugin_data: &'a [u8],
}

/// Parse an AuthSwitchRequest (0xfe, NUL-terminated plugin name, plugin data). The 1-byte form
/// (just 0xfe) is the old switch to mysql_old_password, returned with that name and no data.
pub fn parse_auth_switch_request(payload: &[u8]) -> Result<AuthSwitchRequest<'_>> {
    let what = "auth switch request";
    let mut c = Cursor::new(payload);
    let h = c.u8().map_err(|_| ProtoError::truncated(what))?;
    if h != AUTH_SWITCH_HEADER {
        return Err(ProtoError::malformed(what, format!("header byte {h:#04x}")));
    }
    if c.is_empty() {
        return Ok(AuthSwitchRequest {
            plugin_name: b"mysql_old_password",
            plugin_data: &[],
        });
    }
    let plugin_name = c.nul_bytes()?;
    let d = c.rest();
    Ok(AuthSwitchRequest {
        plugin_name,
        plugin_data: d.strip_suffix(&[0]).unwrap_or(d),
    })
}

/// Append the payload of an AuthSwitchRequest (plugin data followed by a NUL, as servers send it).
pub fn encode_auth_switch_request(r: &AuthSwitchRequest<'_>, out: &mut Vec<u8>) {
    out.push(AUTH_SWITCH_HEADER);
    out.extend_from_slice(r.plugin_name);
    out.push(0);
    out.extend_from_slice(r.plugin_data);
    out.push(0);
}

/// Parse AuthMoreData (0x01 then plugin data); returns the data.
pub fn parse_auth_more_data(payload: &[u8]) -> Result<&[u8]> {
    match payload.split_first() {
        Some((&AUTH_MORE_DATA_HEADER, data)) => Ok(data),
        Some((&h, _)) => Err(ProtoError::malformed(
            "auth more data",
            format!("header byte {h:#04x}"),
        )),
        None => Err(ProtoError::truncated("auth more data")),
    }
}

pub use super::auth::native_password_scramble;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::constants::*;
    use crate::protocol::framing::split_packet;
    use proptest::prelude::*;
    use sha1::{Digest, Sha1};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Captured on this machine: a throwaway MariaDB 10.11.19 (Debian 12's mariadb-server, port
    // 3399) behind a small Python TCP relay that logged each direction in hex, while the mariadb
    // CLI (libmariadb 3.3.20) ran `mariadb -h127.0.0.1 -P3400 -ucodec -psecret codecdb --skip-ssl
    // -e "SELECT 1"`. Whole packets, headers included.
    const REAL_GREETING: &str = "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100060000002e24675f2536244e00fef72d0200ff81150000000000001d0000003f2e69455f306c5133474d2e006d7973716c5f6e61746976655f70617373776f726400";
    const REAL_RESPONSE: &str = "d80000018ca2bf000000100021000000000000000000000000000000000000001d000000636f64656300147786070f23f620257d403e6f1b38d45a022f4589636f6465636462006d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404343239330f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31";

    fn payload_of(hex_packet: &str) -> Vec<u8> {
        let pkt = hex(hex_packet);
        let (_, p, used) = split_packet(&pkt).unwrap();
        assert_eq!(used, pkt.len());
        p.to_vec()
    }

    #[test]
    fn real_mariadb_greeting() {
        let p = payload_of(REAL_GREETING);
        let h = parse_handshake_v10(&p).unwrap();
        assert_eq!(h.protocol_version, 10);
        assert_eq!(h.server_version, b"5.5.5-10.11.19-MariaDB-0+deb12u1");
        assert_eq!(h.connection_id, 6);
        assert_eq!(h.capabilities, 0x81ff_f7fe);
        assert_eq!(h.capabilities & CLIENT_LONG_PASSWORD, 0);
        assert_eq!(h.charset, 0x2d);
        assert_eq!(h.status, SERVER_STATUS_AUTOCOMMIT);
        assert_eq!(h.auth_data_len, 21);
        assert_eq!(
            h.mariadb_ext_capabilities,
            MARIADB_CLIENT_PROGRESS
                | MARIADB_CLIENT_STMT_BULK_OPERATIONS
                | MARIADB_CLIENT_EXTENDED_TYPE_INFO
                | MARIADB_CLIENT_CACHE_METADATA
        );
        assert_eq!(h.auth_data_2.len(), 12);
        assert_eq!(
            h.scramble(),
            hex("2e24675f2536244e3f2e69455f306c5133474d2e")
        );
        assert_eq!(h.auth_plugin_name, Some(&b"mysql_native_password"[..]));
        let mut out = Vec::new();
        encode_handshake_v10(&h, &mut out);
        assert_eq!(out, p);
    }

    #[test]
    fn real_mariadb_cli_response() {
        let p = payload_of(REAL_RESPONSE);
        assert!(!is_ssl_request(&p));
        let r = parse_handshake_response41(&p).unwrap();
        assert_eq!(r.capabilities, 0x00bf_a28c);
        assert_eq!(r.max_packet_size, 0x0010_0000);
        assert_eq!(r.charset, 0x21);
        assert_eq!(
            r.mariadb_ext_capabilities,
            MARIADB_CLIENT_PROGRESS
                | MARIADB_CLIENT_STMT_BULK_OPERATIONS
                | MARIADB_CLIENT_EXTENDED_TYPE_INFO
                | MARIADB_CLIENT_CACHE_METADATA
        );
        assert_eq!(r.username, b"codec");
        assert_eq!(r.database, Some(&b"codecdb"[..]));
        assert_eq!(r.auth_plugin_name, Some(&b"mysql_native_password"[..]));
        let attrs = r.connect_attrs.unwrap();
        assert_eq!(attrs.len(), 0x7e);
        let mut c = Cursor::new(attrs);
        assert_eq!(c.lenenc_bytes().unwrap(), b"_os");
        assert_eq!(c.lenenc_bytes().unwrap(), b"Linux");
        // The auth response is the native scramble of "secret" with the greeting's scramble.
        let g = payload_of(REAL_GREETING);
        let scramble = parse_handshake_v10(&g).unwrap().scramble();
        assert_eq!(
            r.auth_response,
            &native_password_scramble(b"secret", &scramble)[..]
        );
        assert_ne!(
            r.auth_response,
            &native_password_scramble(b"secreT", &scramble)[..]
        );
        let mut out = Vec::new();
        encode_handshake_response41(&r, &mut out);
        assert_eq!(out, p);
    }

    #[test]
    fn native_password_known_answer() {
        // SHA1("secret") and the scramble arithmetic, checked independently of the capture.
        assert_eq!(native_password_scramble(b"", b"abc"), Vec::<u8>::new());
        let s = native_password_scramble(b"secret", &[0u8; 20]);
        assert_eq!(s.len(), 20);
        let stage1 = Sha1::digest(b"secret");
        assert_eq!(
            stage1[..],
            hex("e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4")[..]
        );
        // XOR with stage1 recovers SHA1(scramble ++ SHA1(stage1)).
        let mut h = Sha1::new();
        h.update([0u8; 20]);
        h.update(Sha1::digest(stage1));
        let mix = h.finalize();
        let back: Vec<u8> = s.iter().zip(stage1.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(back, mix.to_vec());
        // Only the first 20 bytes of the scramble count (a trailing NUL is ignored).
        assert_eq!(
            native_password_scramble(b"x", &[1u8; 21]),
            native_password_scramble(b"x", &[1u8; 20])
        );
    }

    #[test]
    fn patch_greeting_clears_flags() {
        let mut p = payload_of(REAL_GREETING);
        let orig = p.clone();
        let clear = CLIENT_SSL | CLIENT_COMPRESS | CLIENT_SESSION_TRACK;
        let s = patch_server_greeting(&mut p, clear, MARIADB_CLIENT_PROGRESS).unwrap();
        assert_eq!(s.connection_id, 6);
        assert_eq!(s.capabilities, 0x81ff_f7fe & !clear);
        assert_eq!(s.mariadb_ext_capabilities, 0x1d & !MARIADB_CLIENT_PROGRESS);
        assert_eq!(s.server_version, b"5.5.5-10.11.19-MariaDB-0+deb12u1");
        assert_eq!(s.auth_plugin_name, b"mysql_native_password");
        // Only the capability bytes changed.
        let diff: Vec<usize> = (0..p.len()).filter(|&i| p[i] != orig[i]).collect();
        assert_eq!(diff, [47, 52, 61]);
        let h = parse_handshake_v10(&p).unwrap();
        assert_eq!(h.capabilities, s.capabilities);
        assert_eq!(h.scramble(), parse_handshake_v10(&orig).unwrap().scramble());
    }

    #[test]
    fn patch_greeting_reports_server_error() {
        // A MariaDB "Too many connections" ERR sent instead of a greeting.
        let mut p = b"\xff\x10\x04Too many connections".to_vec();
        match patch_server_greeting(&mut p, 0, 0) {
            Err(ProtoError::Malformed { what, detail }) => {
                assert_eq!(what, "handshake");
                assert!(detail.contains("1040"), "{detail}");
                assert!(detail.contains("Too many connections"), "{detail}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(parse_handshake_v10(b"\x09abc\0").is_err());
        assert!(patch_server_greeting(&mut [], 0, 0).is_err());
    }

    #[test]
    fn greeting_without_mariadb_ext() {
        // A MySQL-style greeting: CLIENT_LONG_PASSWORD set, so the 4 filler bytes are reserved.
        let h = HandshakeV10 {
            protocol_version: 10,
            server_version: b"8.0.36",
            connection_id: 77,
            auth_data_1: b"abcdefgh",
            capabilities: 0xdfff_ffff,
            charset: 255,
            status: 2,
            auth_data_len: 21,
            mariadb_ext_capabilities: 0,
            auth_data_2: b"ijklmnopqrst",
            auth_plugin_name: Some(b"caching_sha2_password"),
        };
        let mut p = Vec::new();
        encode_handshake_v10(&h, &mut p);
        assert_eq!(parse_handshake_v10(&p).unwrap(), h);
        let s = patch_server_greeting(&mut p, CLIENT_SSL, u32::MAX).unwrap();
        assert_eq!(s.capabilities, 0xdfff_ffff & !CLIENT_SSL);
        assert_eq!(s.mariadb_ext_capabilities, 0);
    }

    #[test]
    fn ssl_request_and_patching_response() {
        let p = payload_of(REAL_RESPONSE);
        let mut ssl = p[..32].to_vec();
        ssl[1] |= (CLIENT_SSL >> 8) as u8;
        assert!(is_ssl_request(&ssl));
        assert!(!is_ssl_request(&p[..32]));
        assert!(!is_ssl_request(&ssl[..31]));
        let (caps, ext) = patch_handshake_response(&mut ssl, CLIENT_SSL, 0).unwrap();
        assert_eq!(caps & CLIENT_SSL, 0);
        assert_eq!(ext, 0x1d);

        // Clearing flags the client did not use leaves the layout alone.
        let mut q = p.clone();
        let (caps, ext) = patch_handshake_response(
            &mut q,
            CLIENT_COMPRESS | CLIENT_INTERACTIVE,
            MARIADB_CLIENT_PROGRESS,
        )
        .unwrap();
        assert_eq!(caps, 0x00bf_a28c & !CLIENT_INTERACTIVE);
        assert_eq!(ext, 0x1c);
        let r = parse_handshake_response41(&q).unwrap();
        assert_eq!((r.capabilities, r.mariadb_ext_capabilities), (caps, ext));
        assert_eq!(q[4..28], p[4..28]);
        assert_eq!(q[32..], p[32..]);

        // Clearing CLIENT_CONNECT_WITH_DB would make the server read the database as the plugin.
        let mut q = p.clone();
        assert!(patch_handshake_response(&mut q, CLIENT_CONNECT_WITH_DB, 0).is_err());
        assert_eq!(q, p, "payload restored on error");
        // Not a response at all.
        assert!(patch_handshake_response(&mut [0u8; 10], 0, 0).is_err());
    }

    #[test]
    fn response_layouts() {
        // No plugin-auth/lenenc: 1-byte length auth; no db.
        let r = HandshakeResponse41 {
            capabilities: CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_LONG_PASSWORD,
            max_packet_size: 1 << 24,
            charset: 8,
            mariadb_ext_capabilities: 0,
            username: b"root",
            auth_response: &[9; 20],
            database: None,
            auth_plugin_name: None,
            connect_attrs: None,
        };
        let mut p = Vec::new();
        encode_handshake_response41(&r, &mut p);
        assert_eq!(p.len(), 32 + 5 + 21);
        assert_eq!(p[37], 20);
        assert_eq!(parse_handshake_response41(&p).unwrap(), r);
        // Pre-4.1 rejected; truncated rejected.
        let mut old = p.clone();
        old[1] &= !((CLIENT_PROTOCOL_41 >> 8) as u8);
        assert!(parse_handshake_response41(&old).is_err());
        assert!(parse_handshake_response41(&p[..40]).is_err());
    }

    #[test]
    fn auth_switch_and_more_data() {
        // As MariaDB sends it when switching to mysql_native_password: name, 20-byte scramble, NUL.
        let mut p = b"\xfemysql_native_password\0".to_vec();
        p.extend_from_slice(&[7u8; 20]);
        p.push(0);
        let r = parse_auth_switch_request(&p).unwrap();
        assert_eq!(r.plugin_name, b"mysql_native_password");
        assert_eq!(r.plugin_data, &[7u8; 20]);
        let mut out = Vec::new();
        encode_auth_switch_request(&r, &mut out);
        assert_eq!(out, p);
        let old = parse_auth_switch_request(b"\xfe").unwrap();
        assert_eq!(old.plugin_name, b"mysql_old_password");
        assert!(parse_auth_switch_request(b"\xfeabc").is_err());
        assert!(parse_auth_switch_request(b"\x00abc\0").is_err());
        assert!(parse_auth_switch_request(b"").is_err());
        // caching_sha2_password "fast auth success".
        assert_eq!(parse_auth_more_data(b"\x01\x03").unwrap(), b"\x03");
        assert!(parse_auth_more_data(b"\x02\x03").is_err());
        assert!(parse_auth_more_data(b"").is_err());
    }

    fn no_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..max)
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..120), clear in any::<u32>(), ext in any::<u32>()) {
            let _ = parse_handshake_v10(&b);
            let _ = parse_handshake_response41(&b);
            let _ = parse_auth_switch_request(&b);
            let _ = parse_auth_more_data(&b);
            let _ = is_ssl_request(&b);
            let mut m = b.clone();
            let _ = patch_server_greeting(&mut m, clear, ext);
            let mut m = b.clone();
            if patch_handshake_response(&mut m, clear, ext).is_err() && b.len() >= 32 {
                prop_assert_eq!(&m, &b);
            }
        }

        #[test]
        fn greeting_mutations_never_panic(i in 0usize..103, v in any::<u8>(), cut in 0usize..104) {
            let mut p = payload_of(REAL_GREETING);
            if let Some(b) = p.get_mut(i) { *b = v; }
            p.truncate(cut);
            let _ = parse_handshake_v10(&p);
            let _ = patch_server_greeting(&mut p, 0xffff_ffff, 0xffff_ffff);
        }

        #[test]
        fn greeting_round_trip(
            server_version in no_nul(40), connection_id in any::<u32>(), a1 in proptest::array::uniform8(any::<u8>()),
            caps in any::<u32>(), charset in any::<u8>(), status in any::<u16>(), ext in any::<u32>(),
            a2 in no_nul(30), plugin in no_nul(30),
        ) {
            let caps = caps | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
            let a2 = if a2.len() < 12 { vec![1u8; 12] } else { a2 };
            let h = HandshakeV10 {
                protocol_version: 10, server_version: &server_version, connection_id, auth_data_1: &a1,
                capabilities: caps, charset, status, auth_data_len: (a2.len() + 9) as u8,
                mariadb_ext_capabilities: if caps & CLIENT_LONG_PASSWORD == 0 { ext } else { 0 },
                auth_data_2: &a2, auth_plugin_name: Some(&plugin),
            };
            let mut out = Vec::new();
            encode_handshake_v10(&h, &mut out);
            prop_assert_eq!(parse_handshake_v10(&out).unwrap(), h);
        }

        #[test]
        fn response_round_trip(
            caps in any::<u32>(), max_packet_size in any::<u32>(), charset in any::<u8>(), ext in any::<u32>(),
            username in no_nul(20), auth in proptest::collection::vec(any::<u8>(), 0..300),
            db in no_nul(20), plugin in no_nul(20), attrs in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let caps = caps | CLIENT_PROTOCOL_41;
            let lenenc = caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0;
            let secure = caps & CLIENT_SECURE_CONNECTION != 0;
            let auth: Vec<u8> = if lenenc { auth } else if secure { auth.into_iter().take(255).collect() }
                else { auth.into_iter().filter(|&b| b != 0).collect() };
            let r = HandshakeResponse41 {
                capabilities: caps, max_packet_size, charset,
                mariadb_ext_capabilities: if caps & CLIENT_LONG_PASSWORD == 0 { ext } else { 0 },
                username: &username, auth_response: &auth,
                database: (caps & CLIENT_CONNECT_WITH_DB != 0).then_some(&db[..]),
                auth_plugin_name: (caps & CLIENT_PLUGIN_AUTH != 0).then_some(&plugin[..]),
                connect_attrs: (caps & CLIENT_CONNECT_ATTRS != 0).then_some(&attrs[..]),
            };
            let mut out = Vec::new();
            encode_handshake_response41(&r, &mut out);
            prop_assert_eq!(parse_handshake_response41(&out).unwrap(), r);
        }

        #[test]
        fn auth_switch_round_trip(name in no_nul(30), data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = AuthSwitchRequest { plugin_name: &name, plugin_data: &data };
            let mut out = Vec::new();
            encode_auth_switch_request(&r, &mut out);
            prop_assert_eq!(parse_auth_switch_request(&out).unwrap(), r);
        }
    }
}
