//! Authentication plugins, client side: the answers to a server's challenge for
//! `mysql_native_password` (from the password or from its stage1 `SHA1(pw)`), the fast path of
//! `caching_sha2_password` and MariaDB's `client_ed25519`; and the server-side check of a native
//! answer against a stored hash (the rest of the server side is in [`super::auth_server`]). Pure
//! functions: no I/O, no state.

use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::VerifyingKey;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// The authentication plugins a client side (loadgen, the proxy logging in to backends) answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    Native,
    CachingSha2,
    /// MariaDB's ed25519 (server plugin `ed25519`, client plugin `client_ed25519`).
    Ed25519,
}

impl Plugin {
    /// The plugin for a name sent by the server; `None` for one that cannot be answered here.
    pub fn from_name(name: &[u8]) -> Option<Plugin> {
        match name {
            b"mysql_native_password" => Some(Plugin::Native),
            b"caching_sha2_password" => Some(Plugin::CachingSha2),
            b"client_ed25519" => Some(Plugin::Ed25519),
            _ => None,
        }
    }

    pub fn name(self) -> &'static [u8] {
        match self {
            Plugin::Native => b"mysql_native_password",
            Plugin::CachingSha2 => b"caching_sha2_password",
            Plugin::Ed25519 => b"client_ed25519",
        }
    }

    /// The auth response for `password` and the server's `nonce` (scramble).
    pub fn scramble(self, password: &[u8], nonce: &[u8]) -> Vec<u8> {
        match self {
            Plugin::Native => native_password_scramble(password, nonce),
            Plugin::CachingSha2 => caching_sha2_scramble(password, nonce),
            Plugin::Ed25519 => ed25519_signature(password, nonce),
        }
    }
}

/// mysql_native_password's answer: `SHA1(pw) XOR SHA1(nonce ++ SHA1(SHA1(pw)))`; empty for an
/// empty password. The nonce is the first 20 bytes of the server's scramble.
pub fn native_password_scramble(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    native_password_from_stage1(&Sha1::digest(password).into(), nonce)
}

/// mysql_native_password's answer from the password's stage1 `SHA1(pw)` alone (what a server-side
/// check recovers from a client's answer, see [`super::auth_server::native_stage1`]):
/// `stage1 XOR SHA1(nonce ++ SHA1(stage1))`.
pub fn native_password_from_stage1(stage1: &[u8; 20], nonce: &[u8]) -> Vec<u8> {
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(&nonce[..nonce.len().min(20)]);
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// The server side of mysql_native_password: does `answer` to `nonce` match the stored
/// `SHA1(SHA1(pw))` (the `mysql.user` hash without its `*` and hex)? An empty answer matches
/// an empty password only (`stored` empty). Constant-time.
pub fn native_password_matches(stored: &[u8], nonce: &[u8], answer: &[u8]) -> bool {
    if stored.is_empty() || answer.is_empty() {
        return stored.is_empty() && answer.is_empty();
    }
    match <&[u8; 20]>::try_from(stored) {
        Ok(stage2) => super::auth_server::native_stage1(answer, nonce, stage2).is_some(),
        Err(_) => false,
    }
}

/// MariaDB's client_ed25519 answer: the Ed25519 signature of the server's 32-byte nonce with
/// the key whose expanded secret is `SHA512(password)` (the standard derivation, with the
/// password as the seed; the server stores the matching public key).
pub fn ed25519_signature(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    let expanded: [u8; 64] = Sha512::digest(password).into();
    let secret = ExpandedSecretKey::from_bytes(&expanded);
    let public = VerifyingKey::from(&secret);
    raw_sign::<Sha512>(&secret, nonce, &public)
        .to_bytes()
        .to_vec()
}

/// The public key MariaDB stores for an ed25519 account (`PASSWORD()` of the ed25519 plugin is
/// its base64 without padding).
pub fn ed25519_public_key(password: &[u8]) -> [u8; 32] {
    let expanded: [u8; 64] = Sha512::digest(password).into();
    VerifyingKey::from(&ExpandedSecretKey::from_bytes(&expanded)).to_bytes()
}

/// A 20-byte challenge (scramble) for a greeting: printable ASCII without NUL, as MySQL makes
/// them, from the random words `next` gives.
pub fn new_scramble(mut next: impl FnMut() -> u64) -> [u8; 20] {
    let mut scramble = [0u8; 20];
    for chunk in scramble.chunks_mut(8) {
        for (b, r) in chunk.iter_mut().zip(next().to_le_bytes()) {
            *b = 0x21 + r % 94;
        }
    }
    scramble
}

/// caching_sha2_password's fast-path answer:
/// `SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) ++ nonce)`; empty for an empty password.
/// The nonce is the first 20 bytes of the server's scramble.
pub fn caching_sha2_scramble(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha256::digest(password);
    let stage2 = Sha256::digest(stage1);
    let mut h = Sha256::new();
    h.update(stage2);
    h.update(&nonce[..nonce.len().min(20)]);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a server holding SHA256(SHA256(pw)) does with the fast-path answer: unmask it with
    /// SHA256(stored ++ nonce) and check that SHA256 of the result is the stored hash.
    fn server_accepts(stored: &[u8], nonce: &[u8], answer: &[u8]) -> bool {
        let mut h = Sha256::new();
        h.update(stored);
        h.update(nonce);
        let mask = h.finalize();
        let stage1: Vec<u8> = answer.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        Sha256::digest(&stage1).as_slice() == stored
    }

    #[test]
    fn sha2_fast_path_answer_is_accepted_by_the_server_check() {
        let nonce = b"0123456789abcdefghij";
        let stored = Sha256::digest(Sha256::digest(b"secret"));
        let answer = caching_sha2_scramble(b"secret", nonce);
        assert_eq!(answer.len(), 32);
        assert!(server_accepts(&stored, nonce, &answer));
        let wrong = caching_sha2_scramble(b"Secret", nonce);
        assert!(!server_accepts(&stored, nonce, &wrong));
        // A trailing NUL some servers append to the nonce is ignored.
        let mut nul = nonce.to_vec();
        nul.push(0);
        assert_eq!(caching_sha2_scramble(b"secret", &nul), answer);
    }

    #[test]
    fn empty_password_gives_empty_answer() {
        assert!(caching_sha2_scramble(b"", b"0123456789abcdefghij").is_empty());
        assert!(Plugin::Native
            .scramble(b"", b"0123456789abcdefghij")
            .is_empty());
    }

    #[test]
    fn native_answer_matches_the_stored_hash_only_for_the_right_password() {
        let nonce = b"abcdefghij0123456789";
        let stored = Sha1::digest(Sha1::digest(b"pw"));
        let answer = native_password_scramble(b"pw", nonce);
        assert!(native_password_matches(&stored, nonce, &answer));
        assert!(!native_password_matches(
            &stored,
            nonce,
            &native_password_scramble(b"pW", nonce)
        ));
        assert!(!native_password_matches(
            &stored,
            b"abcdefghij012345678X",
            &answer
        ));
        assert!(native_password_matches(&[], nonce, &[]));
        assert!(!native_password_matches(&stored, nonce, &[]));
    }

    #[test]
    fn plugin_names_round_trip() {
        for p in [Plugin::Native, Plugin::CachingSha2, Plugin::Ed25519] {
            assert_eq!(Plugin::from_name(p.name()), Some(p));
        }
        assert_eq!(Plugin::from_name(b"dialog"), None);
    }

    #[test]
    fn ed25519_signature_verifies_with_the_stored_public_key() {
        use ed25519_dalek::{Signature, Verifier};
        let nonce = [7u8; 32];
        let sig = ed25519_signature(b"secret", &nonce);
        assert_eq!(sig.len(), 64);
        let key = VerifyingKey::from_bytes(&ed25519_public_key(b"secret")).unwrap();
        let sig = Signature::from_slice(&sig).unwrap();
        assert!(key.verify(&nonce, &sig).is_ok());
        let other = VerifyingKey::from_bytes(&ed25519_public_key(b"Secret")).unwrap();
        assert!(other.verify(&nonce, &sig).is_err());
    }
}
