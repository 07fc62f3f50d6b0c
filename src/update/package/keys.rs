//! Trusted signing keys: ed25519 public keys in text files (`lwm2md-ed25519 <base64> [comment]`),
//! identified by a key id (the first 8 bytes of SHA-256 of the key, in hex), several at once for
//! rotation, and revocable. Parsing only: the runtime reads the files.
//!
//! Private keys (`lwm2md-ed25519-secret <base64 seed>`) are parsed and formatted here too, for
//! the `lwm2md-package` tool; the daemon never holds one.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// First word of a public-key file's key line.
pub const PUBLIC_KEY_TAG: &str = "lwm2md-ed25519";
/// First word of a private-key file's key line.
pub const SECRET_KEY_TAG: &str = "lwm2md-ed25519-secret";

/// A key id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public keys packages may be signed with.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, ed25519_dalek::VerifyingKey>,
    revoked: Vec<KeyId>,
}

impl TrustedKeys {
    /// No keys: every package is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one public-key file's text and adds its key; returns its id.
    ///
    /// Adding a key that is already present is harmless (same id, same key).
    pub fn add_key_file(&mut self, text: &str) -> Result<KeyId, String> {
        let key = parse_public_key(text)?;
        let id = key_id(&key);
        self.keys.insert(id.clone(), key);
        Ok(id)
    }

    /// Adds a key directly (tests, or keys that come from somewhere other than a file).
    pub fn add_key(&mut self, key: VerifyingKey) -> KeyId {
        let id = key_id(&key);
        self.keys.insert(id.clone(), key);
        id
    }

    /// Marks `id` revoked: packages signed with it are refused even if the key is present.
    pub fn revoke(&mut self, id: KeyId) {
        if !self.revoked.contains(&id) {
            self.revoked.push(id);
        }
    }

    /// True when `id` was revoked.
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }

    /// The key for `id` unless revoked.
    pub fn get(&self, id: &KeyId) -> Result<&ed25519_dalek::VerifyingKey, super::PackageError> {
        // Revocation wins even when the key file is gone: a revoked id must never verify again.
        if self.is_revoked(id) {
            return Err(super::PackageError::RevokedKey(id.0.clone()));
        }
        self.keys
            .get(id)
            .ok_or_else(|| super::PackageError::UnknownKey(id.0.clone()))
    }

    /// Ids of the usable (non-revoked) keys.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys().filter(|k| !self.revoked.contains(k))
    }

    /// Number of usable (non-revoked) keys.
    pub fn len(&self) -> usize {
        self.keys
            .keys()
            .filter(|k| !self.revoked.contains(k))
            .count()
    }

    /// True when no usable key is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The id of a public key.
pub fn key_id(key: &ed25519_dalek::VerifyingKey) -> KeyId {
    let digest = Sha256::digest(key.as_bytes());
    KeyId(super::to_hex(digest.get(..8).unwrap_or_default()))
}

/// The single key line of a key file: blank lines and `#` comments are skipped, and exactly one
/// other line must be present. Returns the line's words after `tag`.
fn key_line<'a>(text: &'a str, tag: &str) -> Result<(&'a str, Option<&'a str>), String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or("no key line in the key file")?;
    if lines.next().is_some() {
        return Err("more than one key line (one key per file)".into());
    }
    let mut words = line.splitn(3, char::is_whitespace);
    let found = words.next().unwrap_or_default();
    if found != tag {
        return Err(format!("expected a {tag:?} key line, found {found:?}"));
    }
    let encoded = words.next().ok_or("the key line has no key")?;
    let comment = words.next().map(str::trim).filter(|c| !c.is_empty());
    Ok((encoded, comment))
}

fn decode_32(encoded: &str) -> Result<[u8; 32], String> {
    let bytes = BASE64
        .decode(encoded)
        .map_err(|e| format!("key is not valid base64: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("key is {} bytes, expected 32", bytes.len()))
}

/// Parses a public-key file: `lwm2md-ed25519 <base64 of the 32-byte key> [comment]`.
///
/// Weak (small-order) keys are refused: `verify_strict` would refuse every signature made with
/// them anyway, and a trusted weak key is a configuration mistake worth reporting early.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let (encoded, _comment) = key_line(text, PUBLIC_KEY_TAG)?;
    let key = VerifyingKey::from_bytes(&decode_32(encoded)?)
        .map_err(|_| "not a valid ed25519 public key".to_string())?;
    if key.is_weak() {
        return Err("weak (small-order) ed25519 public key".into());
    }
    Ok(key)
}

/// Formats a public-key file (one line, with an optional comment).
pub fn format_public_key(key: &VerifyingKey, comment: &str) -> String {
    let encoded = BASE64.encode(key.as_bytes());
    let comment = comment.trim();
    if comment.is_empty() {
        format!("{PUBLIC_KEY_TAG} {encoded}\n")
    } else {
        format!("{PUBLIC_KEY_TAG} {encoded} {comment}\n")
    }
}

/// Parses a private-key file: `lwm2md-ed25519-secret <base64 of the 32-byte seed>`.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    let (encoded, _comment) = key_line(text, SECRET_KEY_TAG)?;
    Ok(SigningKey::from_bytes(&decode_32(encoded)?))
}

/// Formats a private-key file.
pub fn format_secret_key(key: &SigningKey) -> String {
    format!(
        "# lwm2md package signing key {}: keep secret\n{SECRET_KEY_TAG} {}\n",
        key_id(&key.verifying_key()),
        BASE64.encode(key.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::package::PackageError;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn key_id_is_the_first_8_bytes_of_sha256_in_hex() {
        let k = key(1).verifying_key();
        let full = Sha256::digest(k.as_bytes());
        let id = key_id(&k);
        assert_eq!(id.0.len(), 16);
        assert_eq!(id.0, crate::update::package::to_hex(&full[..8]));
        assert!(
            id.0.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn public_key_file_round_trips_with_comments_and_blank_lines() {
        let k = key(2).verifying_key();
        let text = format!(
            "# fleet key 2026\n\n{}\n# end\n",
            format_public_key(&k, "release@example").trim_end()
        );
        let mut keys = TrustedKeys::new();
        let id = keys.add_key_file(&text).unwrap();
        assert_eq!(id, key_id(&k));
        assert_eq!(keys.get(&id).unwrap(), &k);
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn bad_public_key_files_are_refused() {
        let k = key(3).verifying_key();
        let good = format_public_key(&k, "");
        let encoded = BASE64.encode(k.as_bytes());
        for bad in [
            String::new(),
            "# only a comment\n".to_string(),
            format!("{good}{good}"),
            format!("ssh-ed25519 {encoded}"),
            PUBLIC_KEY_TAG.to_string(),
            format!("{PUBLIC_KEY_TAG} !!!notbase64"),
            format!("{PUBLIC_KEY_TAG} {}", BASE64.encode([1u8; 31])),
            format!("{PUBLIC_KEY_TAG} {}", BASE64.encode([1u8; 33])),
            // The identity point: small order, a weak key.
            format!(
                "{PUBLIC_KEY_TAG} {}",
                BASE64.encode({
                    let mut b = [0u8; 32];
                    b[0] = 1;
                    b
                })
            ),
            // A secret key where a public one is expected.
            format_secret_key(&key(3)),
        ] {
            assert!(TrustedKeys::new().add_key_file(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rotation_and_revocation() {
        let (old, new) = (key(4).verifying_key(), key(5).verifying_key());
        let mut keys = TrustedKeys::new();
        let old_id = keys.add_key_file(&format_public_key(&old, "old")).unwrap();
        let new_id = keys.add_key_file(&format_public_key(&new, "new")).unwrap();
        assert_eq!(keys.len(), 2);
        keys.revoke(old_id.clone());
        keys.revoke(old_id.clone());
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.ids().collect::<Vec<_>>(), vec![&new_id]);
        assert_eq!(
            keys.get(&old_id),
            Err(PackageError::RevokedKey(old_id.0.clone()))
        );
        assert!(keys.get(&new_id).is_ok());
        let stranger = key_id(&key(6).verifying_key());
        assert_eq!(
            keys.get(&stranger),
            Err(PackageError::UnknownKey(stranger.0.clone()))
        );
        // Revoking an id we never had still refuses it (revocation lists travel separately).
        keys.revoke(stranger.clone());
        assert_eq!(
            keys.get(&stranger),
            Err(PackageError::RevokedKey(stranger.0.clone()))
        );
        keys.revoke(new_id);
        assert!(keys.is_empty());
    }

    #[test]
    fn secret_key_file_round_trips() {
        let k = key(7);
        let text = format_secret_key(&k);
        assert!(text.contains(&key_id(&k.verifying_key()).0));
        let back = parse_secret_key(&text).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        assert!(parse_secret_key(&format_public_key(&k.verifying_key(), "")).is_err());
    }
}
