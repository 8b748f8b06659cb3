//! Cryptography: the envelope that seals payloads and secrets at rest, and the password
//! hashes of API keys and dashboard users.

mod envelope;
pub mod password;

pub use envelope::{CryptoError, KeyId, KeyRing, Sealed};
