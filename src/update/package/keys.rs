//! Trusted signing keys: ed25519 public keys in text files (`lwm2md-ed25519 <base64> [comment]`),
//! identified by a key id (the first 8 bytes of SHA-256 of the key, in hex), several at once for
//! rotation, and revocable. Parsing only: the runtime reads the files.

use std::collections::BTreeMap;

/// A key id: 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

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
    pub fn add_key_file(&mut self, _text: &str) -> Result<KeyId, String> {
        todo!("TrustedKeys::add_key_file")
    }

    /// Marks `id` revoked: packages signed with it are refused even if the key is present.
    pub fn revoke(&mut self, id: KeyId) {
        self.revoked.push(id);
    }

    /// The key for `id` unless revoked.
    pub fn get(&self, _id: &KeyId) -> Result<&ed25519_dalek::VerifyingKey, super::PackageError> {
        todo!("TrustedKeys::get")
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
pub fn key_id(_key: &ed25519_dalek::VerifyingKey) -> KeyId {
    todo!("key_id")
}
