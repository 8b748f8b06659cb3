//! API keys: minted as `hl_<prefix>_<secret>`, stored as the prefix plus an argon2id hash
//! of the whole key, verified off the async threads, and cached once verified so a
//! request does not pay argon2.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use blake2::{Blake2s256, Digest};
use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sqlx::PgPool;

use crate::domain::{ApiKeyId, ProjectId};
use crate::store::{self, StoreError};

const PREFIX_LEN: usize = 10;
const SECRET_LEN: usize = 32;
const CACHE_CAPACITY: usize = 10_000;

/// A full API key as the client holds it. Redacted in Debug.
pub struct ApiKey(String);

impl ApiKey {
    fn generate() -> Self {
        let prefix = Alphanumeric.sample_string(&mut OsRng, PREFIX_LEN);
        let secret = Alphanumeric.sample_string(&mut OsRng, SECRET_LEN);
        Self(format!("hl_{prefix}_{secret}"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The public lookup part, if the key has the right shape.
    fn prefix(presented: &str) -> Option<&str> {
        let rest = presented.strip_prefix("hl_")?;
        let (prefix, secret) = rest.split_once('_')?;
        (prefix.len() == PREFIX_LEN && secret.len() == SECRET_LEN).then_some(prefix)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Who a verified key speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub project: ProjectId,
    pub key: ApiKeyId,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or invalid API key")]
    InvalidKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies keys against the database, remembering the ones that passed for `ttl`.
pub struct KeyVerifier {
    pool: PgPool,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl KeyVerifier {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, ttl, cache: Mutex::new(HashMap::new()) }
    }

    pub async fn verify(&self, presented: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Blake2s256::digest(presented.as_bytes()).into();
        if let Some(principal) = self.cached(&digest) {
            return Ok(principal);
        }
        let stored = match ApiKey::prefix(presented) {
            Some(prefix) => store::keys::find_live(&self.pool, prefix).await?,
            None => None,
        };
        // An unknown prefix still pays one argon2 verification, so timing does not tell.
        let hash = stored.as_ref().map_or_else(|| dummy_hash().to_owned(), |s| s.hash.clone());
        let presented = presented.to_owned();
        let matches = tokio::task::spawn_blocking(move || verify_hash(&presented, &hash)).await.unwrap_or(false);
        let stored = stored.filter(|_| matches).ok_or(AuthError::InvalidKey)?;
        let principal = Principal { project: stored.project_id, key: stored.id };
        store::keys::touch(&self.pool, stored.id).await?;
        self.remember(digest, principal);
        Ok(principal)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Principal> {
        let cache = self.cache.lock().expect("key cache poisoned");
        cache.get(digest).filter(|(_, at)| at.elapsed() < self.ttl).map(|(p, _)| *p)
    }

    fn remember(&self, digest: [u8; 32], principal: Principal) {
        let mut cache = self.cache.lock().expect("key cache poisoned");
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(digest, (principal, Instant::now()));
    }
}

/// Mints a key for the project (created if needed); the key is shown only now.
pub async fn create_key(pool: &PgPool, project_name: &str) -> Result<(ProjectId, ApiKey), StoreError> {
    let key = ApiKey::generate();
    let prefix = ApiKey::prefix(key.expose()).expect("generated keys are well formed").to_owned();
    let secret = key.expose().to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_secret(&secret)).await.expect("argon2 hashing does not panic");
    let mut tx = pool.begin().await?;
    let project = store::projects::ensure(&mut *tx, project_name).await?;
    store::keys::insert(&mut *tx, project, &prefix, &hash).await?;
    tx.commit().await?;
    Ok((project, key))
}

fn hash_secret(secret: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

fn verify_hash(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_secret("hookline-dummy-key-for-constant-timing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_a_prefix_and_verify_against_their_hash() {
        let key = ApiKey::generate();
        assert!(ApiKey::prefix(key.expose()).is_some());
        let hash = hash_secret(key.expose());
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_hash(key.expose(), &hash));
        assert!(!verify_hash("hl_wrong", &hash));
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        assert!(ApiKey::prefix("nope").is_none());
        assert!(ApiKey::prefix("hl_short_secret").is_none());
    }
}
