//! Encryption at rest: AES-256-GCM with a random 96-bit nonce per message, a key id so keys
//! can rotate (old keys only decrypt), and associated data binding each ciphertext to its
//! webhook and message, so a row copied onto another message fails to open.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload as AeadPayload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blake2::{Blake2s256, Digest};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{MessageId, WebhookId};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("{0}")]
    InvalidKey(String),
    #[error("no key with id {0} in the key ring")]
    UnknownKey(i32),
    #[error("ciphertext failed authentication (tampered with, or sealed for another message)")]
    Tampered,
}

/// Identifies a key without revealing it: the first 4 bytes of its BLAKE2s hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub i32);

struct Key {
    id: KeyId,
    cipher: Aes256Gcm,
}

/// The current key (seals and opens) and older ones (open only).
pub struct KeyRing {
    keys: Vec<Key>,
}

/// A sealed value as stored: which key, which nonce, and the ciphertext with its tag.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub key_id: KeyId,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl KeyRing {
    /// `current` and each of `old` are base64 of 32 bytes.
    pub fn from_base64(current: &str, old: &[SecretString]) -> Result<Self, CryptoError> {
        let mut keys = vec![parse_key(current, "HOOKLINE_ENCRYPTION_KEY")?];
        for k in old {
            keys.push(parse_key(k.expose_secret(), "HOOKLINE_ENCRYPTION_OLD_KEYS")?);
        }
        Ok(Self { keys })
    }

    /// A fresh random key, base64-encoded, for the embedded default.
    pub fn generate_base64() -> String {
        BASE64.encode(Aes256Gcm::generate_key(OsRng))
    }

    pub fn current_key_id(&self) -> KeyId {
        self.keys[0].id
    }

    pub fn seal(&self, webhook: &WebhookId, message: &MessageId, plaintext: &[u8]) -> Sealed {
        let key = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let aad = associated_data(webhook, message, key.id);
        let ciphertext = key
            .cipher
            .encrypt(&nonce, AeadPayload { msg: plaintext, aad: &aad })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        Sealed { key_id: key.id, nonce: nonce.to_vec(), ciphertext }
    }

    /// Seals a webhook's signing secret: bound to the webhook, and to the nil message id,
    /// which no message has (theirs are random), so it cannot pass for a payload.
    pub fn seal_secret(&self, webhook: &WebhookId, secret: &[u8]) -> Sealed {
        self.seal(webhook, &MessageId::from_uuid(uuid::Uuid::nil()), secret)
    }

    pub fn open_secret(&self, webhook: &WebhookId, sealed: &Sealed) -> Result<Vec<u8>, CryptoError> {
        self.open(webhook, &MessageId::from_uuid(uuid::Uuid::nil()), sealed)
    }

    pub fn open(&self, webhook: &WebhookId, message: &MessageId, sealed: &Sealed) -> Result<Vec<u8>, CryptoError> {
        let key = self.keys.iter().find(|k| k.id == sealed.key_id).ok_or(CryptoError::UnknownKey(sealed.key_id.0))?;
        if sealed.nonce.len() != 12 {
            return Err(CryptoError::Tampered);
        }
        let aad = associated_data(webhook, message, key.id);
        key.cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), AeadPayload { msg: &sealed.ciphertext, aad: &aad })
            .map_err(|_| CryptoError::Tampered)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|k| k.id.0).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

fn parse_key(b64: &str, var: &str) -> Result<Key, CryptoError> {
    let bytes = BASE64.decode(b64.trim()).map_err(|_| CryptoError::InvalidKey(format!("{var} is not valid base64")))?;
    if bytes.len() != 32 {
        return Err(CryptoError::InvalidKey(format!("{var} must be base64 of 32 bytes, got {} bytes", bytes.len())));
    }
    let digest = Blake2s256::digest(&bytes);
    let id = KeyId(i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]));
    let cipher = Aes256Gcm::new_from_slice(&bytes).expect("length checked above");
    Ok(Key { id, cipher })
}

fn associated_data(webhook: &WebhookId, message: &MessageId, key: KeyId) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..4].copy_from_slice(b"hl1:");
    aad[4..20].copy_from_slice(webhook.as_uuid().as_bytes());
    aad[20..36].copy_from_slice(message.as_uuid().as_bytes());
    aad[36..].copy_from_slice(&key.0.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(current: &str, old: &[&str]) -> KeyRing {
        KeyRing::from_base64(current, &old.iter().map(|s| SecretString::from(*s)).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn seals_and_opens_and_binds_to_the_message() {
        let k = KeyRing::generate_base64();
        let r = ring(&k, &[]);
        let (w, m) = (WebhookId::new_random(), MessageId::new_random());
        let sealed = r.seal(&w, &m, b"hello");
        assert_ne!(sealed.ciphertext, b"hello");
        assert_eq!(r.open(&w, &m, &sealed).unwrap(), b"hello");
        assert!(matches!(r.open(&w, &MessageId::new_random(), &sealed), Err(CryptoError::Tampered)));
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(matches!(r.open(&w, &m, &flipped), Err(CryptoError::Tampered)));
    }

    #[test]
    fn old_keys_still_open_and_unknown_keys_are_named() {
        let (old, new) = (KeyRing::generate_base64(), KeyRing::generate_base64());
        let (w, m) = (WebhookId::new_random(), MessageId::new_random());
        let sealed = ring(&old, &[]).seal(&w, &m, b"x");
        assert_eq!(ring(&new, &[&old]).open(&w, &m, &sealed).unwrap(), b"x");
        assert!(matches!(ring(&new, &[]).open(&w, &m, &sealed), Err(CryptoError::UnknownKey(_))));
    }

    #[test]
    fn rejects_short_keys() {
        assert!(KeyRing::from_base64("AAAA", &[]).is_err());
        assert!(KeyRing::from_base64("not base64!", &[]).is_err());
    }
}
