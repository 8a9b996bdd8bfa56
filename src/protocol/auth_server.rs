//! Authentication, server side: what a proxy needs to authenticate MySQL/MariaDB clients itself.
//!
//! - [`Stored`]: an account's credential as the backends store it (`mysql.user`, MariaDB's
//!   `mysql.global_priv` through [`parse_global_priv`]) or as the proxy is configured with it.
//! - One check per plugin: [`verify_native`] (and [`native_stage1`]), caching_sha2's fast path
//!   ([`verify_sha2_fast`], with the per-user [`Sha2Cache`]), its full path over RSA
//!   ([`RsaKeys::decrypt_password`] then [`Stored::matches_password`], which runs MySQL's
//!   SHA256-crypt, [`sha256_crypt`]), MariaDB's ed25519 ([`verify_ed25519`]).
//! - [`ServerAuth`]: the small state machine a proxy drives for one client login; it says what to
//!   send next ([`Next`]) and what it learned of the password ([`Learned`]) for backend logins.
//! - [`access_denied_message`]: the servers' own wording of error 1045.
//!
//! Pure: no I/O (the RSA key is generated from OS randomness once, by the caller). Nothing here
//! panics on any input; secrets are compared in constant time.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{ed25519_public_key, Plugin};

/// ER_ACCESS_DENIED_ERROR, the error code of a failed login.
pub const ER_ACCESS_DENIED_ERROR: u16 = 1045;
/// The SQLSTATE that goes with [`ER_ACCESS_DENIED_ERROR`].
pub const ACCESS_DENIED_SQLSTATE: &[u8; 5] = b"28000";

/// AuthMoreData's header byte.
const AUTH_MORE_DATA: u8 = 0x01;
/// AuthSwitchRequest's header byte.
const AUTH_SWITCH_REQUEST: u8 = 0xfe;
/// caching_sha2: the client asks for the server's RSA public key.
const REQUEST_PUBLIC_KEY: u8 = 0x02;
/// caching_sha2: the fast path succeeded (an OK follows).
const FAST_AUTH_SUCCESS: u8 = 0x03;
/// caching_sha2: the client must send its password (over TLS, or RSA-encrypted).
const PERFORM_FULL_AUTHENTICATION: u8 = 0x04;
/// The scramble length of mysql_native_password and caching_sha2_password.
const SCRAMBLE_LENGTH: usize = 20;
/// MySQL's CACHING_SHA2_PASSWORD_MAX_PASSWORD_LENGTH: longer passwords never match (SHA256-crypt
/// costs O(length² + length × rounds)).
const MAX_SHA2_PASSWORD_LENGTH: usize = 256;
/// The length of caching_sha2's stored `authentication_string`: `$A$005$`, salt, digest.
const SHA2_CRYPT_LENGTH: usize = 7 + SHA2_SALT_LENGTH + 43;
/// The length of caching_sha2's salt.
const SHA2_SALT_LENGTH: usize = 20;
/// crypt(3)'s base64 alphabet.
const CRYPT_B64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// SHA256-crypt's output order: the digest bytes each group of four characters encodes.
const CRYPT_ORDER: [(usize, usize, usize); 10] = [
    (0, 10, 20),
    (21, 1, 11),
    (12, 22, 2),
    (3, 13, 23),
    (24, 4, 14),
    (15, 25, 5),
    (6, 16, 26),
    (27, 7, 17),
    (18, 28, 8),
    (9, 19, 29),
];

/// An account's credential: what a backend stores, or the password the proxy is configured with.
#[derive(Clone, PartialEq, Eq)]
pub enum Stored {
    /// The password itself; empty: the account has no password.
    Cleartext(Vec<u8>),
    /// mysql_native_password: `SHA1(SHA1(pw))` (`mysql.user` shows `*` and its 40 hex digits).
    NativeHash([u8; 20]),
    /// caching_sha2_password (MySQL 8): the whole `authentication_string`: `$A$`, three hex
    /// digits (rounds / 1000), `$`, a 20-byte salt, the 43-character SHA256-crypt digest.
    Sha256Crypt(String),
    /// MariaDB's ed25519: the account's public key (stored as base64 without padding).
    Ed25519([u8; 32]),
}

impl fmt::Debug for Stored {
    /// Says which kind of credential, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Stored::Cleartext(pw) if pw.is_empty() => "Cleartext(empty)",
            Stored::Cleartext(_) => "Cleartext(..)",
            Stored::NativeHash(_) => "NativeHash(..)",
            Stored::Sha256Crypt(_) => "Sha256Crypt(..)",
            Stored::Ed25519(_) => "Ed25519(..)",
        };
        f.write_str(kind)
    }
}

impl Stored {
    /// The credential a backend stores for an account of `plugin` (`mysql.user.plugin`, or
    /// `mysql.global_priv`'s `"plugin"`) with that `authentication_string`. An empty string is
    /// no password for mysql_native_password and caching_sha2_password. `None` for a string
    /// that is not of the plugin's format (e.g. MariaDB's `invalid`), an ed25519 account without
    /// a key (MariaDB lets no one in), and the plugins a proxy cannot verify (unix_socket, pam…).
    pub fn from_mysql_user(plugin: &str, authentication_string: &[u8]) -> Option<Stored> {
        let s = authentication_string;
        match plugin {
            "mysql_native_password" | "caching_sha2_password" if s.is_empty() => {
                Some(Stored::Cleartext(Vec::new()))
            }
            "mysql_native_password" => parse_native_hash(s).map(Stored::NativeHash),
            "caching_sha2_password" => {
                parse_sha2_crypt(s)?;
                String::from_utf8(s.to_vec()).ok().map(Stored::Sha256Crypt)
            }
            "ed25519" => parse_ed25519_key(s).map(Stored::Ed25519),
            _ => None,
        }
    }

    /// Is `password` this account's password? Constant-time in the secret; a caching_sha2
    /// credential runs SHA256-crypt (about 5000 rounds of SHA-256), and never matches a password
    /// longer than MySQL accepts (256 bytes).
    pub fn matches_password(&self, password: &[u8]) -> bool {
        match self {
            Stored::Cleartext(pw) => ct_eq(pw, password),
            Stored::NativeHash(stage2) => ct_eq(&Sha1::digest(Sha1::digest(password)), stage2),
            Stored::Sha256Crypt(s) => sha2_crypt_matches(s.as_bytes(), password),
            Stored::Ed25519(key) => ct_eq(&ed25519_public_key(password), key),
        }
    }

    /// Is this the credential of an account without a password?
    pub fn is_empty_password(&self) -> bool {
        matches!(self, Stored::Cleartext(pw) if pw.is_empty())
    }

    /// The plugin a client must answer with for this credential; `None` for a cleartext one,
    /// which any of native and caching_sha2 can check.
    fn plugin(&self) -> Option<Plugin> {
        match self {
            Stored::Cleartext(_) => None,
            Stored::NativeHash(_) => Some(Plugin::Native),
            Stored::Sha256Crypt(_) => Some(Plugin::CachingSha2),
            Stored::Ed25519(_) => Some(Plugin::Ed25519),
        }
    }
}

/// `*` and 40 hex digits (either case) → `SHA1(SHA1(pw))`.
fn parse_native_hash(s: &[u8]) -> Option<[u8; 20]> {
    let hex = s.strip_prefix(b"*")?;
    if hex.len() != 40 {
        return None;
    }
    super::hex::decode(hex)?.try_into().ok()
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The parts of caching_sha2's `authentication_string`.
struct Sha2Crypt<'a> {
    rounds: u32,
    salt: &'a [u8],
    digest: &'a [u8],
}

/// `$A$` + rounds / 1000 in three hex digits + `$` + 20-byte salt + 43-character digest
/// (sql/auth/sha2_password.cc, `Caching_sha2_password::deserialize`; the first 8.0 releases
/// wrote and read the count in decimal, the same for the default `005`).
fn parse_sha2_crypt(s: &[u8]) -> Option<Sha2Crypt<'_>> {
    if s.len() != SHA2_CRYPT_LENGTH || s.get(..3)? != b"$A$" || *s.get(6)? != b'$' {
        return None;
    }
    let mut thousands = 0u32;
    for &c in s.get(3..6)? {
        thousands = thousands * 16 + u32::from(hex_digit(c)?);
    }
    if thousands == 0 {
        return None;
    }
    Some(Sha2Crypt {
        rounds: thousands * 1000,
        salt: s.get(7..7 + SHA2_SALT_LENGTH)?,
        digest: s.get(7 + SHA2_SALT_LENGTH..)?,
    })
}

/// Does `password` hash to the digest of caching_sha2's `authentication_string` `s`?
fn sha2_crypt_matches(s: &[u8], password: &[u8]) -> bool {
    let Some(parsed) = parse_sha2_crypt(s) else {
        return false;
    };
    if password.len() > MAX_SHA2_PASSWORD_LENGTH {
        return false;
    }
    // my_crypt_genhash takes the salt up to a '$' or NUL (MySQL's salts have neither).
    let end = parsed.salt.iter().position(|&c| c == b'$' || c == 0);
    let salt = &parsed.salt[..end.unwrap_or(parsed.salt.len())];
    ct_eq(&sha256_crypt(password, salt, parsed.rounds), parsed.digest)
}

/// MariaDB's ed25519 `authentication_string`: the public key in base64 (standard alphabet)
/// without padding, 43 characters. `None` unless it decodes to a valid curve point.
fn parse_ed25519_key(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 43 {
        return None;
    }
    let mut key = [0u8; 32];
    let (mut acc, mut bits, mut at) = (0u32, 0u32, 0usize);
    for &c in s {
        acc = (acc << 6 | base64_value(c)?) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *key.get_mut(at)? = (acc >> bits) as u8;
            at += 1;
        }
    }
    VerifyingKey::from_bytes(&key).ok().map(|_| key)
}

fn base64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// SHA256-crypt (Ulrich Drepper's "Unix crypt using SHA-256", the `$5$` of crypt(3)) of
/// `password` with `salt` (used whole: crypt(3) cuts it to 16 bytes, MySQL's caching_sha2 to 20)
/// and `rounds` (used as given: crypt(3) clamps to 1000..=999999999): the 43-character digest.
/// Costs O(password length² + password length × rounds) SHA-256 input bytes.
pub fn sha256_crypt(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 43] {
    let a = crypt_initial(password, salt);
    let p = repeat_digest(&digest_repeated(password, password.len()), password.len());
    let s = repeat_digest(&digest_repeated(salt, 16 + usize::from(a[0])), salt.len());
    let mut c = a;
    for i in 0..rounds {
        let mut h = Sha256::new();
        h.update(if i & 1 == 1 { &p[..] } else { &c[..] });
        if i % 3 != 0 {
            h.update(&s);
        }
        if i % 7 != 0 {
            h.update(&p);
        }
        h.update(if i & 1 == 1 { &c[..] } else { &p[..] });
        c = h.finalize().into();
    }
    crypt_base64(&c)
}

/// Steps 1–12 of the specification: the digest A.
fn crypt_initial(password: &[u8], salt: &[u8]) -> [u8; 32] {
    let b: [u8; 32] = Sha256::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into();
    let mut a = Sha256::new();
    a.update(password);
    a.update(salt);
    a.update(repeat_digest(&b, password.len()));
    let mut n = password.len();
    while n > 0 {
        a.update(if n & 1 == 1 { &b[..] } else { password });
        n >>= 1;
    }
    a.finalize().into()
}

/// SHA-256 of `data` repeated `times` times.
fn digest_repeated(data: &[u8], times: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    for _ in 0..times {
        h.update(data);
    }
    h.finalize().into()
}

/// `len` bytes of `digest` repeated.
fn repeat_digest(digest: &[u8; 32], len: usize) -> Vec<u8> {
    digest.iter().copied().cycle().take(len).collect()
}

/// crypt(3)'s encoding of a SHA256-crypt digest.
fn crypt_base64(d: &[u8; 32]) -> [u8; 43] {
    let mut out = [0u8; 43];
    let mut chars = out.iter_mut();
    let mut put = |mut w: u32, n: usize| {
        for slot in chars.by_ref().take(n) {
            *slot = CRYPT_B64[(w & 0x3f) as usize];
            w >>= 6;
        }
    };
    let byte = |i: usize| u32::from(d[i % 32]);
    for (b2, b1, b0) in CRYPT_ORDER {
        put(byte(b2) << 16 | byte(b1) << 8 | byte(b0), 4);
    }
    put(byte(31) << 8 | byte(30), 3);
    out
}

/// Constant-time equality (lengths are not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// What a successful login revealed of the password, for the proxy's own logins to backends.
#[derive(Clone, PartialEq, Eq)]
pub enum Learned {
    /// The password itself (a configured cleartext credential, or caching_sha2's full
    /// authentication); empty for an account without a password.
    Password(Vec<u8>),
    /// mysql_native_password's stage1 `SHA1(pw)`, recovered from a native answer: enough to
    /// answer native challenges ([`super::auth::native_password_from_stage1`]).
    NativeStage1([u8; 20]),
    /// caching_sha2's stage1 `SHA256(pw)`, recovered from a fast-path answer: enough to answer
    /// caching_sha2's fast path, not its full authentication.
    Sha2Stage1([u8; 32]),
}

impl fmt::Debug for Learned {
    /// Says which kind, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Learned::Password(_) => "Password(..)",
            Learned::NativeStage1(_) => "NativeStage1(..)",
            Learned::Sha2Stage1(_) => "Sha2Stage1(..)",
        })
    }
}

/// The server side of mysql_native_password for a non-empty answer: unmask `answer` (20 bytes)
/// with `SHA1(nonce ++ stage2)` and check that SHA1 of the result is `stage2 = SHA1(SHA1(pw))`.
/// The recovered stage1 `SHA1(pw)` on success.
pub fn native_stage1(answer: &[u8], nonce: &[u8], stage2: &[u8; 20]) -> Option<[u8; 20]> {
    let answer: &[u8; 20] = answer.try_into().ok()?;
    let mask = Sha1::new()
        .chain_update(first_20(nonce))
        .chain_update(stage2)
        .finalize();
    let mut stage1 = *answer;
    stage1.iter_mut().zip(mask).for_each(|(a, m)| *a ^= m);
    ct_eq(&Sha1::digest(stage1), stage2).then_some(stage1)
}

/// mysql_native_password against a credential: what the login learned, `None` if `answer` is
/// wrong. An empty answer matches exactly an account without a password.
pub fn verify_native(answer: &[u8], nonce: &[u8], stored: &Stored) -> Option<Learned> {
    if answer.is_empty() || stored.is_empty_password() {
        let both = answer.is_empty() && stored.is_empty_password();
        return both.then(|| Learned::Password(Vec::new()));
    }
    match stored {
        Stored::Cleartext(pw) => {
            let stage2: [u8; 20] = Sha1::digest(Sha1::digest(pw)).into();
            native_stage1(answer, nonce, &stage2).map(|_| Learned::Password(pw.clone()))
        }
        Stored::NativeHash(stage2) => {
            native_stage1(answer, nonce, stage2).map(Learned::NativeStage1)
        }
        Stored::Sha256Crypt(_) | Stored::Ed25519(_) => None,
    }
}

/// What caching_sha2's fast path checks against: `SHA256(SHA256(pw))`.
pub fn sha2_fast_digest(password: &[u8]) -> [u8; 32] {
    Sha256::digest(Sha256::digest(password)).into()
}

/// caching_sha2's fast path: unmask `answer` (32 bytes) with `SHA256(digest ++ nonce)` and check
/// that SHA256 of the result is `digest = SHA256(SHA256(pw))`. The recovered stage1 `SHA256(pw)`
/// on success.
pub fn verify_sha2_fast(answer: &[u8], nonce: &[u8], digest: &[u8; 32]) -> Option<[u8; 32]> {
    let answer: &[u8; 32] = answer.try_into().ok()?;
    let mask = Sha256::new()
        .chain_update(digest)
        .chain_update(first_20(nonce))
        .finalize();
    let mut stage1 = *answer;
    stage1.iter_mut().zip(mask).for_each(|(a, m)| *a ^= m);
    ct_eq(&Sha256::digest(stage1), digest).then_some(stage1)
}

/// MariaDB's ed25519: is `signature` (64 bytes) a valid signature of `nonce` by `public_key`?
pub fn verify_ed25519(signature: &[u8], nonce: &[u8], public_key: &[u8; 32]) -> bool {
    let (Ok(key), Ok(sig)) = (
        VerifyingKey::from_bytes(public_key),
        Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify(nonce, &sig).is_ok()
}

/// The first 20 bytes of a scramble (a trailing NUL some servers append is not part of it).
fn first_20(nonce: &[u8]) -> &[u8] {
    &nonce[..nonce.len().min(SCRAMBLE_LENGTH)]
}

/// caching_sha2's fast-path cache: per user, `SHA256(SHA256(pw))` of the password a full
/// authentication proved, kept with the `authentication_string` it was proved against so that a
/// changed password (a new string) misses. Filled by the caller after a successful full
/// authentication ([`Learned::Password`] for a [`Stored::Sha256Crypt`] credential).
#[derive(Default)]
pub struct Sha2Cache {
    /// By user: the credential, the fast-path digest and the password (a pooling proxy logs
    /// in to its backends with it).
    entries: HashMap<String, (String, [u8; 32], Vec<u8>)>,
}

impl Sha2Cache {
    pub fn new() -> Sha2Cache {
        Sha2Cache::default()
    }

    /// Remember that `password` is `user`'s password under credential `stored` (only
    /// [`Stored::Sha256Crypt`] credentials are cached: the others need no cache).
    pub fn remember(&mut self, user: &str, stored: &Stored, password: &[u8]) {
        if let Stored::Sha256Crypt(s) = stored {
            let entry = (s.clone(), sha2_fast_digest(password), password.to_vec());
            self.entries.insert(user.to_owned(), entry);
        }
    }

    /// The digest to check `user`'s fast-path answers against, if a full authentication under
    /// this same credential filled it.
    pub fn lookup(&self, user: &str, stored: &Stored) -> Option<[u8; 32]> {
        let (s, digest, _) = self.entries.get(user)?;
        matches!(stored, Stored::Sha256Crypt(now) if now == s).then_some(*digest)
    }

    /// `user`'s password, if a full authentication under this same credential gave it.
    pub fn password(&self, user: &str, stored: &Stored) -> Option<&[u8]> {
        let (s, _, password) = self.entries.get(user)?;
        matches!(stored, Stored::Sha256Crypt(now) if now == s).then_some(password.as_slice())
    }

    /// Forget `user` (e.g. dropped, or its password changed).
    pub fn forget(&mut self, user: &str) {
        self.entries.remove(user);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The RSA key pair of caching_sha2's full authentication without TLS: clients encrypt their
/// password with its public key (sent on request as PEM), the proxy decrypts.
pub struct RsaKeys {
    key: rsa::PrivateKey,
    pem: String,
}

impl fmt::Debug for RsaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaKeys({} bits)", self.key.size() * 8)
    }
}

impl RsaKeys {
    /// The modulus size of [`RsaKeys::generate`], as MySQL's own generated keys.
    pub const BITS: usize = 2048;

    /// A new key pair from the operating system's randomness (tens of milliseconds: do it once,
    /// at start). `None` if the randomness or the generation failed.
    pub fn generate() -> Option<RsaKeys> {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, Self::BITS).ok()?;
        Self::from_key(key)
    }

    /// The key pair of a private key in PEM: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN
    /// RSA PRIVATE KEY`, MySQL's `private_key.pem`).
    pub fn from_private_pem(pem: &str) -> Option<RsaKeys> {
        let key = rsa::PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_pem(pem))
            .ok()?;
        Self::from_key(key)
    }

    fn from_key(key: rsa::PrivateKey) -> Option<RsaKeys> {
        let pem = key.to_public_key().to_public_key_pem(LineEnding::LF).ok()?;
        Some(RsaKeys { key, pem })
    }

    /// The public key as clients expect it: SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub fn public_pem(&self) -> &str {
        &self.pem
    }

    /// The length of a ciphertext (the modulus in bytes: 256 for 2048 bits).
    pub fn cipher_len(&self) -> usize {
        self.key.size()
    }

    /// The password in a client's caching_sha2 (or sha256_password) ciphertext: RSA-decrypt
    /// (OAEP with SHA-1 and MGF1-SHA-1, as libmysqlclient, Connector/J and PyMySQL send it to
    /// servers ≥ 8.0.5; else PKCS#1 v1.5, which Connector/J and libmysqlclient use for older
    /// server versions, decoded with implicit rejection), XOR with the nonce's first 20 bytes
    /// repeated, cut at the NUL the client appended. `None` if it does not decrypt or has no NUL.
    pub fn decrypt_password(&self, cipher: &[u8], nonce: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() != self.cipher_len() {
            return None;
        }
        let plain = (self.key.oaep_decrypt::<sha1_v011::Sha1>(cipher))
            .or_else(|_| self.key.pkcs1v15_decrypt(cipher))
            .ok()?;
        unmask_password(plain, nonce)
    }
}

/// XOR with the nonce repeated, then the bytes before the first NUL.
fn unmask_password(mut plain: Vec<u8>, nonce: &[u8]) -> Option<Vec<u8>> {
    let nonce = first_20(nonce);
    if nonce.is_empty() {
        return None;
    }
    plain
        .iter_mut()
        .zip(nonce.iter().cycle())
        .for_each(|(b, n)| *b ^= n);
    let end = plain.iter().position(|&b| b == 0)?;
    plain.truncate(end);
    Some(plain)
}

/// What to send the client next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Authenticated: send OK.
    Ok,
    /// Send this AuthMoreData payload, then OK (caching_sha2's fast-path success `01 03`).
    SendThenOk(Vec<u8>),
    /// Send this payload (an AuthSwitchRequest `fe …` or AuthMoreData `01 …`) and feed the
    /// client's answer to [`ServerAuth::client_packet`].
    Send(Vec<u8>),
    /// Refuse: send ERR 1045 ([`access_denied_message`]).
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the HandshakeResponse41.
    Response,
    /// An AuthSwitchRequest was sent: the next packet answers it.
    SwitchAnswer,
    /// caching_sha2 asked for full authentication: a key request, a password or a ciphertext.
    FullAuth,
    /// caching_sha2 sent its public key: a ciphertext.
    Cipher,
    /// Decided: anything more is refused.
    Done,
}

/// The server side of one client login, for a proxy that authenticates clients itself.
///
/// Created with the greeting's nonce and plugin; fed the HandshakeResponse41's answer
/// ([`ServerAuth::handshake_response`]) and then every further client auth packet
/// ([`ServerAuth::client_packet`]), each time it says what to send ([`Next`]). A client that
/// answered with the plugin the account needs is checked at once (whatever the greeting named,
/// as servers do); otherwise it is switched to that plugin with a fresh nonce. caching_sha2 takes
/// the fast path when the digest is known (a cleartext credential, or [`Sha2Cache`]), else full
/// authentication: over TLS ([`ServerAuth::secure_transport`]) the client sends its password,
/// without, the RSA exchange. The password (or stage1) learned is in [`ServerAuth::learned`].
#[derive(Debug)]
pub struct ServerAuth {
    nonce: Vec<u8>,
    greeting: Plugin,
    plugin: Plugin,
    stored: Option<Stored>,
    sha2_cached: Option<[u8; 32]>,
    state: State,
    learned: Option<Learned>,
    password_used: bool,
    secure: bool,
}

impl ServerAuth {
    /// A login whose greeting carried `nonce` (its 20-byte scramble; a trailing NUL is ignored)
    /// and named `greeting_plugin`.
    pub fn new(nonce: &[u8], greeting_plugin: Plugin) -> ServerAuth {
        ServerAuth {
            nonce: nonce.to_vec(),
            greeting: greeting_plugin,
            plugin: greeting_plugin,
            stored: None,
            sha2_cached: None,
            state: State::Response,
            learned: None,
            password_used: false,
            secure: false,
        }
    }

    /// Whether the connection is encrypted (TLS; servers count Unix sockets too): then
    /// caching_sha2's full authentication takes the client's cleartext password, else only an
    /// RSA-encrypted one. Off by default.
    pub fn secure_transport(mut self, secure: bool) -> ServerAuth {
        self.secure = secure;
        self
    }

    /// The HandshakeResponse41's answer: the account's credential (`None` for an unknown user:
    /// the exchange goes on as for a wrong password), caching_sha2's cached digest for it
    /// ([`Sha2Cache::lookup`]), the client's plugin name (empty: a client without
    /// CLIENT_PLUGIN_AUTH, which answers natively) and auth response. `fresh_nonce` (32 random
    /// bytes) makes the nonce of an AuthSwitchRequest if one is needed: all 32 for ed25519, the
    /// first 20 mapped to printable ASCII for the others.
    pub fn handshake_response(
        &mut self,
        stored: Option<Stored>,
        sha2_cached: Option<[u8; 32]>,
        client_plugin: &[u8],
        answer: &[u8],
        fresh_nonce: &[u8; 32],
    ) -> Next {
        if self.state != State::Response {
            return self.deny();
        }
        let client = match client_plugin {
            b"" => Some(Plugin::Native),
            name => Plugin::from_name(name),
        };
        self.plugin = needed_plugin(stored.as_ref(), client, self.greeting);
        self.stored = stored;
        self.sha2_cached = sha2_cached;
        if client == Some(self.plugin) {
            return self.check_answer(answer);
        }
        self.switch(fresh_nonce)
    }

    /// A further client auth packet's payload (an AuthSwitchResponse, a caching_sha2 key request,
    /// password or ciphertext). `keys`: the proxy's RSA key pair.
    pub fn client_packet(&mut self, payload: &[u8], keys: &RsaKeys) -> Next {
        match self.state {
            State::SwitchAnswer => self.check_answer(payload),
            State::FullAuth => self.full_auth(payload, keys),
            State::Cipher => self.rsa_password(payload, keys),
            State::Response | State::Done => self.deny(),
        }
    }

    /// What the login learned of the password (set when it succeeded, if anything).
    pub fn learned(&self) -> Option<&Learned> {
        self.learned.as_ref()
    }

    /// Takes what the login learned of the password.
    pub fn take_learned(&mut self) -> Option<Learned> {
        self.learned.take()
    }

    /// Whether the client used a password, for [`access_denied_message`].
    pub fn password_used(&self) -> bool {
        self.password_used
    }

    /// The plugin the login is (or was last) checked with.
    pub fn plugin(&self) -> Plugin {
        self.plugin
    }

    fn deny(&mut self) -> Next {
        self.state = State::Done;
        Next::Deny
    }

    /// Success (OK) if something was learned, else refusal.
    fn finish(&mut self, learned: Option<Learned>) -> Next {
        self.state = State::Done;
        match learned {
            Some(learned) => {
                self.learned = Some(learned);
                Next::Ok
            }
            None => Next::Deny,
        }
    }

    /// An AuthSwitchRequest to the needed plugin with a fresh nonce.
    fn switch(&mut self, fresh_nonce: &[u8; 32]) -> Next {
        self.state = State::SwitchAnswer;
        self.nonce = switch_nonce(self.plugin, fresh_nonce);
        let mut out = vec![AUTH_SWITCH_REQUEST];
        out.extend_from_slice(self.plugin.name());
        out.push(0);
        out.extend_from_slice(&self.nonce);
        if self.plugin != Plugin::Ed25519 {
            out.push(0); // as servers send a 20-byte scramble; MariaDB's ed25519 sends 32 bare
        }
        Next::Send(out)
    }

    /// The client's answer with `self.plugin` to `self.nonce`.
    fn check_answer(&mut self, answer: &[u8]) -> Next {
        match self.plugin {
            Plugin::Native => {
                self.password_used = !answer.is_empty();
                let stored = self.stored.as_ref();
                let learned = stored.and_then(|s| verify_native(answer, &self.nonce, s));
                self.finish(learned)
            }
            Plugin::CachingSha2 => self.sha2_fast(answer),
            Plugin::Ed25519 => {
                self.password_used = true; // MariaDB's plugin always says YES
                let ok = match &self.stored {
                    Some(Stored::Ed25519(key)) => verify_ed25519(answer, &self.nonce, key),
                    _ => false,
                };
                self.state = State::Done;
                if ok {
                    Next::Ok
                } else {
                    Next::Deny
                }
            }
        }
    }

    /// caching_sha2's first answer: empty password, fast path, or full authentication.
    fn sha2_fast(&mut self, answer: &[u8]) -> Next {
        if answer.is_empty() || answer == [0] {
            self.password_used = false;
            let empty = self.stored.as_ref().is_some_and(Stored::is_empty_password);
            return self.finish(empty.then(|| Learned::Password(Vec::new())));
        }
        self.password_used = true;
        if answer.len() != 32 {
            return self.deny();
        }
        let digest = match &self.stored {
            Some(Stored::Cleartext(pw)) => Some(sha2_fast_digest(pw)),
            Some(Stored::Sha256Crypt(_)) => self.sha2_cached,
            _ => None,
        };
        if let Some(stage1) = digest.and_then(|d| verify_sha2_fast(answer, &self.nonce, &d)) {
            self.state = State::Done;
            self.learned = Some(match &self.stored {
                Some(Stored::Cleartext(pw)) => Learned::Password(pw.clone()),
                _ => Learned::Sha2Stage1(stage1),
            });
            return Next::SendThenOk(vec![AUTH_MORE_DATA, FAST_AUTH_SUCCESS]);
        }
        if matches!(self.stored, Some(Stored::Cleartext(_))) {
            return self.deny(); // the digest was known: the password is wrong
        }
        self.state = State::FullAuth;
        Next::Send(vec![AUTH_MORE_DATA, PERFORM_FULL_AUTHENTICATION])
    }

    /// After `01 04`: a public key request, or the password (cleartext over TLS, else RSA).
    fn full_auth(&mut self, payload: &[u8], keys: &RsaKeys) -> Next {
        if payload == [REQUEST_PUBLIC_KEY] {
            self.state = State::Cipher;
            let mut out = vec![AUTH_MORE_DATA];
            out.extend_from_slice(keys.public_pem().as_bytes());
            return Next::Send(out);
        }
        if self.secure {
            let password = payload.strip_suffix(&[0]).unwrap_or(payload);
            return self.check_password(Some(password.to_vec()));
        }
        self.rsa_password(payload, keys)
    }

    fn rsa_password(&mut self, cipher: &[u8], keys: &RsaKeys) -> Next {
        self.check_password(keys.decrypt_password(cipher, &self.nonce))
    }

    /// The end of a full authentication. The credential is checked even when there is no
    /// password to check (a stand-in then), so that the time taken does not say which.
    fn check_password(&mut self, password: Option<Vec<u8>>) -> Next {
        let candidate = password.as_deref().unwrap_or(b"\xff not a password");
        let matches = match &self.stored {
            Some(stored) => stored.matches_password(candidate),
            None => unknown_user_check(candidate),
        };
        // An empty password goes the empty-answer way, never through full authentication.
        let learned = password.filter(|pw| matches && !pw.is_empty());
        self.finish(learned.map(Learned::Password))
    }
}

/// The work of a caching_sha2 password check for a user that does not exist, so that the time
/// taken does not tell existing users from others. Never matches.
fn unknown_user_check(password: &[u8]) -> bool {
    let salt = [b'x'; SHA2_SALT_LENGTH];
    let password = &password[..password.len().min(MAX_SHA2_PASSWORD_LENGTH)];
    std::hint::black_box(sha256_crypt(password, &salt, 5000));
    false
}

/// The plugin an account's credential needs; a cleartext credential (or an unknown user) takes
/// the client's plugin if it is native or caching_sha2, else the greeting's (native instead of
/// ed25519, which needs a stored key).
fn needed_plugin(stored: Option<&Stored>, client: Option<Plugin>, greeting: Plugin) -> Plugin {
    if let Some(plugin) = stored.and_then(Stored::plugin) {
        return plugin;
    }
    match (client, greeting) {
        (Some(p @ (Plugin::Native | Plugin::CachingSha2)), _) => p,
        (_, Plugin::Ed25519) => Plugin::Native,
        (_, greeting) => greeting,
    }
}

/// The nonce of an AuthSwitchRequest to `plugin`: ed25519 signs 32 raw bytes; the others take
/// 20 printable ASCII bytes (no NUL, as servers make them).
fn switch_nonce(plugin: Plugin, fresh: &[u8; 32]) -> Vec<u8> {
    match plugin {
        Plugin::Ed25519 => fresh.to_vec(),
        Plugin::Native | Plugin::CachingSha2 => (fresh.iter().take(SCRAMBLE_LENGTH))
            .map(|b| 0x21 + b % 94)
            .collect(),
    }
}

/// The plugin and `authentication_string` of MariaDB's `mysql.global_priv.Priv` JSON (10.4+):
/// `{"access":…,"plugin":"mysql_native_password","authentication_string":"*…",…}`. With
/// alternatives (`"auth_or":[{"plugin":"ed25519","authentication_string":"…"},{}]`, where `{}`
/// stands for the top-level pair) the first that [`Stored::from_mysql_user`] can verify, else the
/// first. A missing `plugin` is mysql_native_password, a missing string empty. `None` for JSON
/// that is not such an object, and for a locked account (`"account_locked":true`).
pub fn parse_global_priv(json: &[u8]) -> Option<(String, Vec<u8>)> {
    let value: Value = serde_json::from_slice(json).ok()?;
    let priv_ = value.as_object()?;
    if priv_.get("account_locked").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let top = plugin_and_string(priv_);
    let candidates: Vec<(String, Vec<u8>)> = match priv_.get("auth_or").and_then(Value::as_array) {
        Some(list) => (list.iter().filter_map(Value::as_object))
            .map(|alt| match alt.contains_key("plugin") {
                true => plugin_and_string(alt),
                false => top.clone(),
            })
            .collect(),
        None => vec![top],
    };
    let usable =
        |(plugin, string): &&(String, Vec<u8>)| Stored::from_mysql_user(plugin, string).is_some();
    (candidates.iter().find(usable))
        .or(candidates.first())
        .cloned()
}

fn plugin_and_string(obj: &Map<String, Value>) -> (String, Vec<u8>) {
    let get = |key| obj.get(key).and_then(Value::as_str);
    let plugin = get("plugin").unwrap_or("mysql_native_password");
    let string = get("authentication_string").unwrap_or("");
    (plugin.to_owned(), string.as_bytes().to_vec())
}

/// The text of ER_ACCESS_DENIED_ERROR (1045, SQLSTATE 28000) as MariaDB and MySQL send it:
/// `Access denied for user 'u'@'h' (using password: YES)`.
pub fn access_denied_message(user: &str, host: &str, password_used: bool) -> String {
    let used = if password_used { "YES" } else { "NO" };
    format!("Access denied for user '{user}'@'{host}' (using password: {used})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::auth::{
        caching_sha2_scramble, ed25519_signature, native_password_from_stage1,
        native_password_scramble,
    };
    use proptest::prelude::*;
    use rsa::pkcs1::EncodeRsaPrivateKey;

    /// A 2048-bit key made for these tests (openssl genpkey); the ciphertexts below were made
    /// with its public key by PyMySQL 1.2.4 (with cryptography 50).
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCweMcv+JB2wXBg
VTZ2D3s/S9XUSflQGBhlcWGfk+rBI4hjtt8Exddv1CkywkI6j3qKbb0NrM9/1q++
5iMG3LL8noiORUMBXoou+mZeZMtH3mGRPlSwvy86JUjS26yp6io5klcPoxqMPjPn
9yBdJRdNf++9dvr0FC0Ly3qv/PIJEaB2yWPenPzONeWRYRZEgIcaYkNnU3XmuFH3
fDpm17QrZAM4EYJRjcDgSvH080XsVu4ul2r+BkoexeT3JaFKlMg1/Pg+zrudlmyY
hd1Pk8cFXrvY8xYoo5xu1Gd9iIgw4/im9yIsnPOq0gPdWhmJsXlayPrbpgjYcLVI
6EKgnjj1AgMBAAECggEAHKO9T9+7Mkq6fifWKtrgWalpDobi20jNzMjV2xwaYTXv
EJ/BGfkxuYhpFz/Hl9FpRcYBhJKjKlAhPY4D6T0wHydragt7kGFTc8RXkMIy63r/
wp6nB/g/JeSfKPlV0E2chLNnRbZmvJPrwJ2utu8qFP3KXqlMmQgdN2jShHU8opPg
mLxwiVPF1F8xcKD2I8kks0/xm45f+3eofZ/q+nscC3fKZs44TmZ4uIy2C4l7jNjs
AxBOabgtnmWiDxpaiV0SmF83DUNYn6Sdlep41vQQxvRXB4Nq9JGL1OwnAxKr9Fm1
fZh/DRv2qEJkOjPvGRyWgtRyNH6z1QZHYyrZtXmWEQKBgQDkOS4x0sfflK9pfUcU
/0Oehp4+toUMoQcH4c2foUt2p5azfa+qOoXEF2xwglp3HVuEoP7tROudoQQFrsQs
DeBbb3CXu4bJ5UR1Umf+PxzhflRTYZNtvGL+JMGig3MSKReuwhAk0EC9WydpyHM+
HxAqjH/jEciRT5BCWuFdPEKCbwKBgQDF8yjJvGWMtbKh0sSjGAFNLO0z4NlNNhq2
p29utyb+GkleAsRz8nm2JBrnsAhqJKg1XxYYxraP1cW2WO4s2AI3sTpESs4b0Tnd
/QqMtp3MhOVLM6HWQD3ptf//PjUQMXIhFusdMJP2SCGvP4xr/8U6aL0U4KkuRkx2
KxvdAhOc2wKBgA58krIW7xkCFyBbE2gBzAkEAod4jnl+vzOA4cyAMIoXmTlLgRsN
G/CWjAuYOqXU9zoz/fqRpWMcFWVG8qzZNKSZLkxzWtr18qJ/2JoK54pounGQgAs3
KhF3w9LNBUDh2t788oljrrhWUOomDyqiTiRlRrjjKBgRNNcBbcy9RnuBAoGBAIaP
Ytyv6sAaC5IhenX7rXbO4Xfwkwb/jm03qHI0opb9O35ilzTSUZZVOMziRvYQcR/G
wXiaLCPeh4YLMezd8bP2D8u4ph8WvSWAC5nX0bDjbhMOyCaiiPPEOn9BxER7uD9y
GuU+znYOVoeQxV3tAh9Qb6gviBHiy7tQVqKH9NkdAoGAMs0d3uO+rhKyEtFb6hgP
0cH6yS9KVkTZDnWO6iEMVRc3R6E+CvVi3PkA/0SA1BSayDQr2cVuFc887qNlL1dm
4mbF/lsjAsNPlhWxSMClwoS65bDIk6Lmbn8fgujJkmwa8VUmGlqB34lNI/5/6Xk9
/yhgM92H/+iF6bc+fo1+WWQ=
-----END PRIVATE KEY-----
";

    /// The nonce of the PyMySQL vectors.
    const NONCE: &[u8; 20] = b"N0nce-For-Tests-1234";
    /// `pymysql._auth.sha2_rsa_encrypt(b"sha2pw", NONCE, TEST_KEY's public PEM)` (OAEP, SHA-1).
    const PYMYSQL_OAEP: &str = "965f5205fe0de30515ffbf27b58b150265143fc23c564ff0d74f55cbcee598edc789c1753010b91c9d4d4b9b834f6bdcd5582e026226f27eebf464799fdcadd9ec4b405c1484a7125b91ea3c96f8c6f927e4c59ad9c34fc339873234441e7fd6b4d09bc7f2752be507effb7e17db80fec4932118f66b853245a11d592dd08b7040419338e3e50c47f860737af2a88977fa9532cf0a9f6819d491519849f433691e7878afd3b40fac344e8e05bdc1dc5d2e2352b884ded958802377271523cb1f2074433d62070caadba94a18a8ec7d7f58e7ca0cd5e23bf92ae8e5bc610f4d908d54079b731c54d5293ecbccdc14bbdb140417df8475248052d88a67a679d77f";
    /// The same message (`pymysql._auth._xor_password(b"sha2pw\0", NONCE)`) encrypted with
    /// PKCS#1 v1.5 padding by cryptography, as Connector/J does for servers before 8.0.5.
    const PKCS1V15: &str = "54c8306c24e8fbda9857831a57aabf9011c9a793af006e8c7e53eb4440197c21cdb4eaead61b5c5e5da261a8a0bfbf0013e4f66a36a0d8b68ad518e6eac0584682c83ecd47a7d5acb2043e0cf77e30ef420db4a6b2950e6500de1b963053cb07544c083f40243916e9fe35b87b393733482788c8820a2d398a96d6bb4c3ea01bba5b4d1eaf6514058c5e1c98cda840a139ce5ac1766e6c3b1283d9c6ec1179b721b19bb2d120d78d9094ff8283a6411129b65a25ac9c1a781b354710095109c24f068b60ceb014c239cd363f2f77e736cb9c01a3196bd84d89cf4fc98d656bbd8075afbc89b51713442c34302e86911009b423ec7a5831240708ab514db25470";
    /// A MySQL 8 caching_sha2 `authentication_string` of the password `foobar` (the vector of
    /// TiDB's pkg/parser/auth/caching_sha2_test.go), in hex: its salt has control bytes.
    const FOOBAR_SHA2: &str = "24412430303524031A69251C34295C4B35167C7F1E5A7B63091349503974624D34504B5A424679354856336868686F52485A736E4A733368786E427575516C73446469496537";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn keys() -> &'static RsaKeys {
        static KEYS: std::sync::OnceLock<RsaKeys> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| RsaKeys::from_private_pem(TEST_KEY).unwrap())
    }

    /// What a client sends in caching_sha2's full authentication without TLS.
    fn rsa_cipher(password: &[u8], nonce: &[u8]) -> Vec<u8> {
        let mut msg = password.to_vec();
        msg.push(0);
        msg.iter_mut()
            .zip(nonce.iter().cycle())
            .for_each(|(b, n)| *b ^= n);
        let public = keys().key.to_public_key();
        public.oaep_encrypt::<sha1_v011::Sha1>(&msg).unwrap()
    }

    /// A caching_sha2 credential in MySQL's format, salt as generate_user_salt makes them
    /// (7-bit, no NUL, no '$').
    fn sha2_stored(password: &[u8]) -> Stored {
        let salt = b"\x01abc\x7fdefghij#klmnopq";
        let mut s = b"$A$005$".to_vec();
        s.extend_from_slice(salt);
        s.extend_from_slice(&sha256_crypt(password, salt, 5000));
        Stored::from_mysql_user("caching_sha2_password", &s).unwrap()
    }

    #[test]
    fn sha256_crypt_matches_drepper_and_glibc_vectors() {
        // The specification's vectors (salts already cut to 16 bytes, rounds as given), and
        // more from glibc's crypt(3) ($5$rounds=R$salt) for empty, UTF-8 and long passwords.
        let (a32, b64, c100) = ("a".repeat(32), "b".repeat(64), "c".repeat(100));
        let cases: [(&str, &str, u32, &str); 11] = [
            ("saltstring", "Hello world!", 5000, "5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
            ("saltstringsaltst", "Hello world!", 10000, "3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
            ("toolongsaltstrin", "This is just a test", 5000, "Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
            (
                "anotherlongsalts",
                "a very much longer text to encrypt.  This one even stretches over morethan one line.",
                1400,
                "Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1",
            ),
            (
                "short",
                "we have a short salt string but not a short password",
                77777,
                "JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/",
            ),
            ("asaltof16chars..", "a short string", 123456, "gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"),
            ("abcdefghijklmnop", "", 5000, "p99E2fxZB/BTl9j.a2VRY5z71zEP761isnVBuiGlzV3"),
            ("x1y2", "pässwörd€", 1000, ".58eBS4NJ22oZ0ztFhHR7gv1HxbZOYnibTHp.5hMGx7"),
            ("s", &a32, 1000, "vC6d7elm6XRCjze7Dgtl3hefduERsHdIYFQ9GeoKcd0"),
            ("s", &b64, 1000, "DY05J8YHEohstE0hQ8Besy8mMFPxkewShS8fdjee8FD"),
            ("s", &c100, 1000, "ZfImVjnJ.ozGzd08Qe4REdXzRK8qQPbsoD27kG9dqIC"),
        ];
        for (salt, password, rounds, digest) in cases {
            let got = sha256_crypt(password.as_bytes(), salt.as_bytes(), rounds);
            assert_eq!(std::str::from_utf8(&got).unwrap(), digest, "{password:?}");
        }
    }

    #[test]
    fn mysql_caching_sha2_strings_parse_and_verify() {
        let s = unhex(FOOBAR_SHA2);
        let stored = Stored::from_mysql_user("caching_sha2_password", &s).unwrap();
        assert!(matches!(&stored, Stored::Sha256Crypt(x) if x.as_bytes() == &s[..]));
        assert!(stored.matches_password(b"foobar"));
        assert!(!stored.matches_password(b"not_foobar"));
        assert!(!stored.matches_password(b""));
        // Another digest type, a count that is not hex, or zero, a short string: refused.
        let changed = |at: usize, to: u8| {
            let mut x = s.clone();
            x[at] = to;
            Stored::from_mysql_user("caching_sha2_password", &x)
        };
        assert_eq!(
            (changed(1, b'B'), changed(5, b'G'), changed(5, b'0')),
            (None, None, None)
        );
        assert_eq!(
            Stored::from_mysql_user("caching_sha2_password", &s[..69]),
            None
        );
        assert_eq!(
            Stored::from_mysql_user("caching_sha2_password", b"aaaa"),
            None
        );
        // The count is hex thousands: 00A is 10000 rounds.
        let salt = b"01234567890123456789";
        let with = |count: &[u8], password: &[u8], rounds: u32| {
            let mut x = b"$A$".to_vec();
            x.extend_from_slice(count);
            x.push(b'$');
            x.extend_from_slice(salt);
            x.extend_from_slice(&sha256_crypt(password, salt, rounds));
            Stored::from_mysql_user("caching_sha2_password", &x).unwrap()
        };
        let ten = with(b"00A", b"pw", 10_000);
        assert!(ten.matches_password(b"pw") && !ten.matches_password(b"pW"));
        // Passwords longer than MySQL takes never match.
        let long = vec![b'x'; 257];
        assert!(!with(b"001", &long, 1000).matches_password(&long));
        assert!(with(b"001", &long[1..], 1000).matches_password(&long[1..]));
    }

    #[test]
    fn mariadb_native_hashes_parse_and_verify() {
        // MariaDB 10.11: SELECT PASSWORD('x').
        let hash = b"*B69027D44F6E5EDC07F1AEAD1477967B16F28227";
        let stored = Stored::from_mysql_user("mysql_native_password", hash).unwrap();
        let stage2: [u8; 20] = Sha1::digest(Sha1::digest(b"x")).into();
        assert_eq!(stored, Stored::NativeHash(stage2));
        assert!(stored.matches_password(b"x") && !stored.matches_password(b"X"));
        let lower = hash.to_ascii_lowercase();
        assert_eq!(
            Stored::from_mysql_user("mysql_native_password", &lower),
            Some(stored)
        );
        // No password; MariaDB's "invalid" (root through unix_socket); malformed.
        let empty = Stored::from_mysql_user("mysql_native_password", b"");
        assert_eq!(empty, Some(Stored::Cleartext(Vec::new())));
        for bad in [
            &b"invalid"[..],
            &hash[..40],
            &hash[1..],
            b"*B69027D44F6E5EDC07F1AEAD1477967B16F2822G",
        ] {
            assert_eq!(Stored::from_mysql_user("mysql_native_password", bad), None);
        }
        for plugin in ["unix_socket", "pam", "gssapi", "sha256_password", "dialog"] {
            assert_eq!(Stored::from_mysql_user(plugin, b""), None);
            assert_eq!(Stored::from_mysql_user(plugin, hash), None);
        }
    }

    #[test]
    fn mariadb_ed25519_keys_parse_and_verify() {
        // MariaDB 10.11: CREATE USER … IDENTIFIED VIA ed25519 USING PASSWORD('x') / ('secret').
        let x = b"Gv2JI8Env2fd5YGonZ082tX3UAW+yJYldOlj4R1bfK4";
        let stored = Stored::from_mysql_user("ed25519", x);
        assert_eq!(stored, Some(Stored::Ed25519(ed25519_public_key(b"x"))));
        let secret = b"ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY";
        let secret = Stored::from_mysql_user("ed25519", secret).unwrap();
        assert!(secret.matches_password(b"secret") && !secret.matches_password(b"x"));
        // PyMySQL's client_ed25519 answer (PyNaCl) for "x" to the nonce 01 02 … 20.
        let sig = unhex("fe995298886962dea354ae1d789e25e05a5658ed38153e2cf985b417b1cf973c6a517967a7d0d571e63eaa888484d5e06a7a0b75339ac13eab35afa3e737ea04");
        let nonce: Vec<u8> = (1..=32).collect();
        let key = ed25519_public_key(b"x");
        assert!(verify_ed25519(&sig, &nonce, &key));
        assert!(!verify_ed25519(&sig, &nonce[1..], &key));
        assert!(!verify_ed25519(&sig[..63], &nonce, &key));
        assert!(!verify_ed25519(&sig, &nonce, &ed25519_public_key(b"y")));
        // An account without a key lets no one in (as MariaDB); bad length or alphabet.
        let mut padded = x.to_vec();
        padded.push(b'=');
        let mut url = x.to_vec();
        url[26] = b'-';
        for bad in [&b""[..], &x[..42], &padded, &url] {
            assert_eq!(Stored::from_mysql_user("ed25519", bad), None);
        }
    }

    /// The (plugin, authentication_string) of a global_priv row, and its credential.
    fn priv_of(json: &[u8]) -> (String, Option<Stored>) {
        let (plugin, string) = parse_global_priv(json).unwrap();
        let stored = Stored::from_mysql_user(&plugin, &string);
        (plugin, stored)
    }

    #[test]
    fn global_priv_rows_of_mariadb() {
        // Rows of mysql.global_priv from MariaDB 10.11.
        let nat = br#"{"access":549755812863,"version_id":101119,"plugin":"mysql_native_password","authentication_string":"*1374EDB489482E02B373F1E4764607ADEACA73BB","password_last_changed":1796141551}"#;
        let (plugin, stored) = priv_of(nat);
        assert_eq!(plugin, "mysql_native_password");
        assert!(stored.unwrap().matches_password(b"natpw"));
        let edu = br#"{"access":549755812863,"version_id":101119,"plugin":"ed25519","authentication_string":"LIEvGDGjHTmKyz3peLRjPqahOct5n6/BQCNm1bOvot4","password_last_changed":1796141551}"#;
        assert_eq!(
            priv_of(edu).1,
            Some(Stored::Ed25519(ed25519_public_key(b"edpw")))
        );
        // IDENTIFIED VIA ed25519 USING PASSWORD('multipw') OR mysql_native_password USING
        // PASSWORD('multipw'): the first alternative the proxy can verify.
        let multi = br#"{"access":0,"version_id":101119,"plugin":"mysql_native_password","authentication_string":"*DEF4AA4A6C5CAF573572335A17F02A437B0FBD54","auth_or":[{"plugin":"ed25519","authentication_string":"RV9iHHL40AI95jwvWllJvQqm0c3PnlqTz3ADDa9Hs4Y"},{}],"password_last_changed":1796141553}"#;
        let (plugin, stored) = priv_of(multi);
        assert_eq!(plugin, "ed25519");
        assert!(stored.unwrap().matches_password(b"multipw"));
        // IDENTIFIED VIA unix_socket OR mysql_native_password …: `{}` is the top-level pair.
        let sock = br#"{"access":0,"version_id":101119,"plugin":"mysql_native_password","authentication_string":"*960A83147C9BBB7B2329CBDEFC3BA48F126D23EE","auth_or":[{"plugin":"unix_socket"},{}],"password_last_changed":1796141553}"#;
        let (plugin, stored) = priv_of(sock);
        assert_eq!(plugin, "mysql_native_password");
        assert!(stored.unwrap().matches_password(b"sockpw"));
        // root@localhost: nothing verifiable; the first alternative comes back, refused.
        let root = br#"{"access":18446744073709551615,"plugin":"mysql_native_password","authentication_string":"invalid","auth_or":[{},{"plugin":"unix_socket"}]}"#;
        let pair = parse_global_priv(root).unwrap();
        assert_eq!(
            pair,
            ("mysql_native_password".to_owned(), b"invalid".to_vec())
        );
        assert_eq!(priv_of(root).1, None);
        // An account without a password; a locked one; not objects; defaults.
        let empty = br#"{"access":0,"version_id":101119,"plugin":"mysql_native_password","authentication_string":"","password_last_changed":1796141553}"#;
        assert_eq!(priv_of(empty).1, Some(Stored::Cleartext(Vec::new())));
        let locked = br#"{"access":0,"plugin":"mysql_native_password","authentication_string":"","account_locked":true,"password_last_changed":0}"#;
        assert_eq!(parse_global_priv(locked), None);
        for bad in [&b""[..], b"[]", b"{", b"\"x\"", b"{\"plugin\":1}}"] {
            assert_eq!(parse_global_priv(bad), None, "{bad:?}");
        }
        let defaults = ("mysql_native_password".to_owned(), Vec::new());
        assert_eq!(parse_global_priv(b"{}"), Some(defaults));
    }

    #[test]
    fn native_check_recovers_stage1() {
        // pymysql._auth.scramble_native_password(b"x", NONCE).
        let answer = unhex("c433b1645c86ada8156d6412acfe86f24ad5bb2c");
        assert_eq!(native_password_scramble(b"x", NONCE), answer);
        let stage1: [u8; 20] = Sha1::digest(b"x").into();
        let hash = Stored::NativeHash(Sha1::digest(stage1).into());
        let learned = verify_native(&answer, NONCE, &hash);
        assert_eq!(learned, Some(Learned::NativeStage1(stage1)));
        // The stage1 answers later challenges as the password would.
        let other = b"abcdefghij0123456789";
        assert_eq!(
            native_password_from_stage1(&stage1, other),
            native_password_scramble(b"x", other)
        );
        let clear = Stored::Cleartext(b"x".to_vec());
        assert_eq!(
            verify_native(&answer, NONCE, &clear),
            Some(Learned::Password(b"x".to_vec()))
        );
        assert_eq!(verify_native(&answer, b"N0nce-For-Tests-1235", &hash), None);
        assert_eq!(verify_native(&answer[..19], NONCE, &hash), None);
        // A NUL after the 20-byte nonce is not part of it.
        assert!(verify_native(&answer, b"N0nce-For-Tests-1234\0", &hash).is_some());
        // Empty answer ⇔ empty password.
        let none = Stored::Cleartext(Vec::new());
        assert_eq!(
            verify_native(b"", NONCE, &none),
            Some(Learned::Password(Vec::new()))
        );
        assert_eq!(verify_native(b"", NONCE, &hash), None);
        assert_eq!(verify_native(&answer, NONCE, &none), None);
        assert_eq!(verify_native(&answer, NONCE, &sha2_stored(b"x")), None);
    }

    #[test]
    fn sha2_fast_path_check_accepts_pymysql_answers() {
        // pymysql._auth.scramble_caching_sha2(b"sha2pw", NONCE).
        let answer = unhex("4280eba29dee82fcd526c159c26642742a5b39229480be5b4ede33e2f56c9b84");
        assert_eq!(caching_sha2_scramble(b"sha2pw", NONCE), answer);
        let digest = sha2_fast_digest(b"sha2pw");
        let stage1: [u8; 32] = Sha256::digest(b"sha2pw").into();
        assert_eq!(verify_sha2_fast(&answer, NONCE, &digest), Some(stage1));
        assert_eq!(
            verify_sha2_fast(&answer, NONCE, &sha2_fast_digest(b"sha2pW")),
            None
        );
        assert_eq!(verify_sha2_fast(&answer[1..], NONCE, &digest), None);
    }

    #[test]
    fn rsa_decrypts_pymysql_and_pkcs1v15_ciphertexts() {
        let keys = keys();
        assert!(keys
            .public_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(keys.public_pem().ends_with("\n-----END PUBLIC KEY-----\n"));
        assert_eq!(keys.cipher_len(), 256);
        let oaep = unhex(PYMYSQL_OAEP);
        assert_eq!(
            keys.decrypt_password(&oaep, NONCE),
            Some(b"sha2pw".to_vec())
        );
        let pkcs1v15 = unhex(PKCS1V15);
        assert_eq!(
            keys.decrypt_password(&pkcs1v15, NONCE),
            Some(b"sha2pw".to_vec())
        );
        // Another nonce: other bytes. Wrong length, no nonce: nothing. Garbage: no panic.
        let other = keys.decrypt_password(&oaep, b"n0nce-For-Tests-1234");
        assert_ne!(other, Some(b"sha2pw".to_vec()));
        assert_eq!(keys.decrypt_password(&oaep[1..], NONCE), None);
        assert_eq!(keys.decrypt_password(&oaep, b""), None);
        let _ = keys.decrypt_password(&[0xff; 256], NONCE);
        let _ = keys.decrypt_password(&[0; 256], NONCE);
        // PKCS#1 (MySQL's private_key.pem) loads too, to the same public key.
        let pkcs1 = keys.key.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let again = RsaKeys::from_private_pem(&pkcs1).unwrap();
        assert_eq!(again.public_pem(), keys.public_pem());
        let bad = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(RsaKeys::from_private_pem(bad).is_none());
    }

    #[test]
    fn generated_keys_round_trip() {
        let keys = RsaKeys::generate().unwrap();
        assert_eq!(keys.cipher_len(), RsaKeys::BITS / 8);
        let msg: Vec<u8> = b"pw\0".iter().zip(NONCE).map(|(a, b)| a ^ b).collect();
        let public = keys.key.to_public_key();
        let cipher = public.oaep_encrypt::<sha1_v011::Sha1>(&msg).unwrap();
        assert_eq!(keys.decrypt_password(&cipher, NONCE), Some(b"pw".to_vec()));
        assert_eq!(format!("{keys:?}"), "RsaKeys(2048 bits)");
    }

    #[test]
    fn sha2_cache_is_tied_to_the_credential() {
        let mut cache = Sha2Cache::new();
        let stored = sha2_stored(b"pw");
        assert_eq!(cache.lookup("u", &stored), None);
        cache.remember("u", &stored, b"pw");
        assert_eq!(cache.lookup("u", &stored), Some(sha2_fast_digest(b"pw")));
        assert_eq!(cache.lookup("v", &stored), None);
        // A changed password is a new authentication_string: a miss.
        assert_eq!(cache.lookup("u", &sha2_stored(b"new")), None);
        cache.remember("w", &Stored::Cleartext(b"pw".to_vec()), b"pw");
        assert_eq!(cache.len(), 1);
        cache.forget("u");
        assert!(cache.is_empty());
    }

    #[test]
    fn access_denied_wording_is_the_servers() {
        // As MariaDB 10.11 refused a wrong password.
        assert_eq!(
            access_denied_message("edempty", "127.0.0.1", true),
            "Access denied for user 'edempty'@'127.0.0.1' (using password: YES)"
        );
        assert_eq!(
            access_denied_message("u", "h", false),
            "Access denied for user 'u'@'h' (using password: NO)"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let stored = Stored::Cleartext(b"hunter2".to_vec());
        let shown = format!("{stored:?} {:?}", Learned::Password(b"hunter2".to_vec()));
        assert_eq!(shown, "Cleartext(..) Password(..)");
    }

    // The login state machine, packet by packet.

    const GREETING_NONCE: &[u8; 20] = b"abcdefghij0123456789";
    const FRESH: [u8; 32] = [7; 32];

    fn native_login() -> ServerAuth {
        ServerAuth::new(GREETING_NONCE, Plugin::Native)
    }

    fn sha2_login() -> ServerAuth {
        ServerAuth::new(GREETING_NONCE, Plugin::CachingSha2)
    }

    /// The nonce of an AuthSwitchRequest payload to a 20-byte-scramble plugin.
    fn switched_nonce(next: Next, plugin: &[u8]) -> Vec<u8> {
        let Next::Send(payload) = next else {
            panic!("no switch: {next:?}");
        };
        let mut head = vec![0xfe];
        head.extend_from_slice(plugin);
        head.push(0);
        let rest = payload.strip_prefix(&head[..]).unwrap();
        assert_eq!((rest.len(), rest[20]), (21, 0));
        assert!(rest[..20].iter().all(|b| (0x21..0x7f).contains(b)));
        rest[..20].to_vec()
    }

    fn native_hash(password: &[u8]) -> Option<Stored> {
        Some(Stored::NativeHash(
            Sha1::digest(Sha1::digest(password)).into(),
        ))
    }

    #[test]
    fn native_answer_to_the_greeting() {
        let answer = native_password_scramble(b"x", GREETING_NONCE);
        let mut auth = native_login();
        let native = b"mysql_native_password";
        let next = auth.handshake_response(native_hash(b"x"), None, native, &answer, &FRESH);
        assert_eq!(next, Next::Ok);
        let stage1 = Sha1::digest(b"x").into();
        assert_eq!(auth.learned(), Some(&Learned::NativeStage1(stage1)));
        assert!(auth.password_used());
        // Anything more is refused.
        assert_eq!(auth.client_packet(&answer, keys()), Next::Deny);
        // A wrong password.
        let mut auth = native_login();
        let wrong = native_password_scramble(b"y", GREETING_NONCE);
        let next = auth.handshake_response(native_hash(b"x"), None, native, &wrong, &FRESH);
        assert_eq!((next, auth.learned()), (Next::Deny, None));
        // A client without CLIENT_PLUGIN_AUTH (no plugin name) answers natively.
        let mut auth = native_login();
        let next = auth.handshake_response(native_hash(b"x"), None, b"", &answer, &FRESH);
        assert_eq!(next, Next::Ok);
    }

    #[test]
    fn empty_passwords() {
        let none = || Some(Stored::Cleartext(Vec::new()));
        let mut auth = native_login();
        let next = auth.handshake_response(none(), None, b"mysql_native_password", b"", &FRESH);
        assert_eq!((next, auth.password_used()), (Next::Ok, false));
        assert_eq!(auth.take_learned(), Some(Learned::Password(Vec::new())));
        // caching_sha2 clients send nothing or one NUL (Connector/J, libmysqlclient).
        for answer in [&b""[..], b"\0"] {
            let mut auth = sha2_login();
            let next =
                auth.handshake_response(none(), None, b"caching_sha2_password", answer, &FRESH);
            assert_eq!((next, auth.password_used()), (Next::Ok, false));
        }
        // No password given for an account that has one.
        let mut auth = sha2_login();
        let stored = Some(sha2_stored(b"pw"));
        let next = auth.handshake_response(stored, None, b"caching_sha2_password", b"", &FRESH);
        assert_eq!((next, auth.password_used()), (Next::Deny, false));
        // A password given for an account without one.
        let mut auth = native_login();
        let answer = native_password_scramble(b"pw", GREETING_NONCE);
        let next = auth.handshake_response(none(), None, b"mysql_native_password", &answer, &FRESH);
        assert_eq!((next, auth.password_used()), (Next::Deny, true));
    }

    #[test]
    fn a_client_of_another_plugin_is_switched_to_the_accounts() {
        // A MySQL 8 client answers caching_sha2 to a native greeting; the account is native.
        let sha2_answer = caching_sha2_scramble(b"pw", GREETING_NONCE);
        let start = || {
            let mut auth = native_login();
            let sha2 = b"caching_sha2_password";
            let next =
                auth.handshake_response(native_hash(b"pw"), None, sha2, &sha2_answer, &FRESH);
            (auth, switched_nonce(next, b"mysql_native_password"))
        };
        let (mut auth, nonce) = start();
        assert_eq!(nonce, vec![0x21 + 7; 20]);
        assert_eq!(auth.plugin(), Plugin::Native);
        let answer = native_password_scramble(b"pw", &nonce);
        assert_eq!(auth.client_packet(&answer, keys()), Next::Ok);
        // An answer to the greeting's nonce is refused.
        let (mut auth, _) = start();
        let stale = native_password_scramble(b"pw", GREETING_NONCE);
        assert_eq!(auth.client_packet(&stale, keys()), Next::Deny);
        // A native client, a MySQL 8 account: switched to caching_sha2.
        let mut auth = native_login();
        let answer = native_password_scramble(b"pw", GREETING_NONCE);
        let native = b"mysql_native_password";
        let next = auth.handshake_response(Some(sha2_stored(b"pw")), None, native, &answer, &FRESH);
        let nonce = switched_nonce(next, b"caching_sha2_password");
        let answer = caching_sha2_scramble(b"pw", &nonce);
        assert_eq!(
            auth.client_packet(&answer, keys()),
            Next::Send(vec![0x01, 0x04])
        );
        let cipher = rsa_cipher(b"pw", &nonce);
        assert_eq!(auth.client_packet(&cipher, keys()), Next::Ok);
    }

    #[test]
    fn an_ed25519_account_is_switched_to_client_ed25519() {
        let stored = || Some(Stored::Ed25519(ed25519_public_key(b"edpw")));
        let fresh: [u8; 32] = std::array::from_fn(|i| i as u8 * 8); // raw bytes, a 0 first
        let answer = native_password_scramble(b"edpw", GREETING_NONCE);
        let start = || {
            let mut auth = native_login();
            let native = b"mysql_native_password";
            let next = auth.handshake_response(stored(), None, native, &answer, &fresh);
            (auth, next)
        };
        let (mut auth, next) = start();
        // As MariaDB: fe, "client_ed25519", NUL, the 32-byte nonce, no NUL after it.
        let mut expected = b"\xfeclient_ed25519\0".to_vec();
        expected.extend_from_slice(&fresh);
        assert_eq!(next, Next::Send(expected));
        let signature = ed25519_signature(b"edpw", &fresh);
        assert_eq!(auth.client_packet(&signature, keys()), Next::Ok);
        assert_eq!((auth.learned(), auth.password_used()), (None, true));
        let (mut auth, _) = start();
        let wrong = ed25519_signature(b"edpW", &fresh);
        assert_eq!(auth.client_packet(&wrong, keys()), Next::Deny);
    }

    #[test]
    fn sha2_fast_path() {
        // A configured cleartext password: the digest is known, the fast path decides.
        let clear = || Some(Stored::Cleartext(b"pw".to_vec()));
        let sha2 = b"caching_sha2_password";
        let answer = caching_sha2_scramble(b"pw", GREETING_NONCE);
        let mut auth = sha2_login();
        let next = auth.handshake_response(clear(), None, sha2, &answer, &FRESH);
        assert_eq!(next, Next::SendThenOk(vec![0x01, 0x03]));
        assert_eq!(auth.learned(), Some(&Learned::Password(b"pw".to_vec())));
        let mut auth = sha2_login();
        let wrong = caching_sha2_scramble(b"pW", GREETING_NONCE);
        assert_eq!(
            auth.handshake_response(clear(), None, sha2, &wrong, &FRESH),
            Next::Deny
        );
        let mut auth = sha2_login();
        assert_eq!(
            auth.handshake_response(clear(), None, sha2, &answer[1..], &FRESH),
            Next::Deny
        );
        // A cached MySQL 8 account: the fast path too, even after a native greeting.
        let stored = sha2_stored(b"pw");
        let mut cache = Sha2Cache::new();
        cache.remember("u", &stored, b"pw");
        let cached = cache.lookup("u", &stored);
        let mut auth = native_login();
        let next = auth.handshake_response(Some(stored), cached, sha2, &answer, &FRESH);
        assert_eq!(next, Next::SendThenOk(vec![0x01, 0x03]));
        let stage1 = Sha256::digest(b"pw").into();
        assert_eq!(auth.learned(), Some(&Learned::Sha2Stage1(stage1)));
        // A cached digest that no longer matches: full authentication, as MySQL.
        let mut auth = sha2_login();
        let stale = Some(sha2_fast_digest(b"old"));
        let next = auth.handshake_response(Some(sha2_stored(b"pw")), stale, sha2, &answer, &FRESH);
        assert_eq!(next, Next::Send(vec![0x01, 0x04]));
    }

    /// A caching_sha2 login that was asked for full authentication.
    fn full_auth_login(stored: Option<Stored>, secure: bool) -> ServerAuth {
        let mut auth = sha2_login().secure_transport(secure);
        let answer = caching_sha2_scramble(b"pw", GREETING_NONCE);
        let sha2 = b"caching_sha2_password";
        let next = auth.handshake_response(stored, None, sha2, &answer, &FRESH);
        assert_eq!(next, Next::Send(vec![0x01, 0x04]));
        auth
    }

    #[test]
    fn sha2_full_authentication_over_rsa() {
        let stored = || Some(sha2_stored(b"pw"));
        // The client asks for the key, then sends the ciphertext.
        let mut auth = full_auth_login(stored(), false);
        let mut pem = vec![0x01];
        pem.extend_from_slice(keys().public_pem().as_bytes());
        assert_eq!(auth.client_packet(&[0x02], keys()), Next::Send(pem));
        let cipher = rsa_cipher(b"pw", GREETING_NONCE);
        assert_eq!(auth.client_packet(&cipher, keys()), Next::Ok);
        assert_eq!(auth.learned(), Some(&Learned::Password(b"pw".to_vec())));
        // A client that has the key sends the ciphertext at once.
        let mut auth = full_auth_login(stored(), false);
        assert_eq!(auth.client_packet(&cipher, keys()), Next::Ok);
        // Wrong password; another nonce; cleartext without TLS; garbage; an empty password.
        let refused = [
            rsa_cipher(b"pW", GREETING_NONCE),
            rsa_cipher(b"pw", NONCE),
            b"pw\0".to_vec(),
            vec![0; 256],
            rsa_cipher(b"", GREETING_NONCE),
        ];
        for packet in refused {
            let mut auth = full_auth_login(stored(), false);
            assert_eq!(auth.client_packet(&packet, keys()), Next::Deny);
            assert_eq!((auth.learned(), auth.password_used()), (None, true));
        }
        // Over TLS the client sends the password itself.
        let mut auth = full_auth_login(stored(), true);
        assert_eq!(auth.client_packet(b"pw\0", keys()), Next::Ok);
        assert_eq!(auth.take_learned(), Some(Learned::Password(b"pw".to_vec())));
        let mut auth = full_auth_login(stored(), true);
        assert_eq!(auth.client_packet(b"pW\0", keys()), Next::Deny);
    }

    #[test]
    fn unknown_users_go_the_same_way_and_are_refused() {
        let mut auth = full_auth_login(None, false);
        assert!(matches!(auth.client_packet(&[0x02], keys()), Next::Send(_)));
        let cipher = rsa_cipher(b"pw", GREETING_NONCE);
        assert_eq!(auth.client_packet(&cipher, keys()), Next::Deny);
        let mut auth = native_login();
        let answer = native_password_scramble(b"pw", GREETING_NONCE);
        let native = b"mysql_native_password";
        assert_eq!(
            auth.handshake_response(None, None, native, &answer, &FRESH),
            Next::Deny
        );
        // An unsupported client plugin is switched to the greeting's.
        let mut auth = native_login();
        let next = auth.handshake_response(None, None, b"mysql_clear_password", b"pw\0", &FRESH);
        switched_nonce(next, b"mysql_native_password");
        // Packets before the handshake response, or a second response: refused.
        let mut auth = native_login();
        assert_eq!(auth.client_packet(b"x", keys()), Next::Deny);
        let mut auth = native_login();
        let _ = auth.handshake_response(None, None, b"", b"", &FRESH);
        assert_eq!(
            auth.handshake_response(None, None, b"", b"", &FRESH),
            Next::Deny
        );
    }

    fn any_stored() -> impl Strategy<Value = Option<Stored>> {
        prop_oneof![
            Just(None),
            Just(Some(Stored::Cleartext(b"pw".to_vec()))),
            Just(Some(Stored::Cleartext(Vec::new()))),
            Just(Some(sha2_stored(b"pw"))),
            Just(Some(Stored::Ed25519(ed25519_public_key(b"pw")))),
            Just(native_hash(b"pw")),
        ]
    }

    fn any_plugin() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![
            Just(&b""[..]),
            Just(&b"mysql_native_password"[..]),
            Just(&b"caching_sha2_password"[..]),
            Just(&b"client_ed25519"[..]),
            Just(&b"dialog"[..]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn parsers_take_any_bytes(
            plugin in "[a-z_0-9]{0,24}",
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let _ = Stored::from_mysql_user(&plugin, &bytes);
            let _ = parse_global_priv(&bytes);
            for plugin in ["mysql_native_password", "caching_sha2_password", "ed25519"] {
                if let Some(stored) = Stored::from_mysql_user(plugin, &bytes) {
                    let _ = stored.matches_password(&bytes);
                }
            }
        }

        #[test]
        fn logins_take_any_packets(
            stored in any_stored(),
            plugin in any_plugin(),
            packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
            secure in any::<bool>(),
        ) {
            let empty = stored.as_ref().is_some_and(Stored::is_empty_password);
            let mut auth = native_login().secure_transport(secure);
            let mut next = auth.handshake_response(stored, None, plugin, &packets[0], &FRESH);
            for packet in &packets[1..] {
                next = auth.client_packet(packet, keys());
            }
            // Random bytes only get in where there is no password.
            prop_assert!(!matches!(next, Next::Ok | Next::SendThenOk(_)) || empty);
        }
    }
}
