//! API keys: minted as `hl_<prefix>_<secret>`, stored as the prefix plus an argon2id hash
//! of the whole key, verified off the async threads, and cached once verified so a
//! request does not pay argon2.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};

use blake2::{Blake2s256, Digest};
use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::crypto::password::{dummy_hash, hash_secret, verify_hash};
use crate::domain::{ApiKeyId, Plan, ProjectId, Scopes, WebhookId};
use crate::store::keys::NewKey;
use crate::store::listener::Subscriber;
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
        (is_prefix(prefix) && secret.len() == SECRET_LEN).then_some(prefix)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Who a verified key speaks for, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub project: ProjectId,
    pub key: ApiKeyId,
    pub scopes: Scopes,
    /// The webhooks the key is limited to; None: all of its project's.
    pub webhooks: Option<Arc<[WebhookId]>>,
}

impl Principal {
    pub fn may_touch(&self, webhook: &WebhookId) -> bool {
        self.webhooks.as_ref().is_none_or(|allowed| allowed.contains(webhook))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or invalid API key")]
    InvalidKey,
    /// The argon2 queue is full, or this key's prefix has used its argon2 budget.
    #[error("too many API key verifications at once")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies keys against the database. Only a well-formed key whose prefix exists reaches
/// argon2: a malformed key is refused at once, an unknown prefix after one indexed lookup
/// (and then from a bounded negative cache). A key that passed argon2 is remembered by its
/// BLAKE2s digest; after `ttl`, or once notifications may have been missed, a cheap lookup
/// confirms it is still live instead of paying argon2 again. Argon2 (19 MiB and tens of
/// milliseconds each) runs at most `ARGON2_PERMITS` at a time with at most `ARGON2_QUEUE`
/// waiting (then 503), once per key even when many requests bring it at once, and at
/// `ARGON2_PER_PREFIX` for one prefix, so wrong secrets sent with a real key's (public)
/// prefix spend that key's budget, not everyone's queue.
///
/// The caches are bounded (quick_cache's S3-FIFO: past capacity the entries least worth
/// keeping make room, never all at once).
pub struct KeyVerifier {
    pool: PgPool,
    ttl: Duration,
    cache: quick_cache::sync::Cache<[u8; 32], Verified>,
    /// Prefixes looked up and not found, and when.
    unknown: quick_cache::sync::Cache<String, Instant>,
    /// Verifications (lookup and argon2) per prefix.
    per_prefix: quick_cache::sync::Cache<String, Arc<DefaultDirectRateLimiter>>,
    /// Bumped when revocations may have been missed: older entries are re-checked by lookup.
    generation: AtomicU64,
    argon2: Semaphore,
    waiting: AtomicUsize,
    argon2_runs: AtomicU64,
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Clone)]
struct Verified {
    principal: Principal,
    checked_at: Instant,
    generation: u64,
}

const ARGON2_PERMITS: usize = 2;
/// Verifications that may wait for a permit; past them a request is told to retry (503).
const ARGON2_QUEUE: usize = 32;
/// Argon2 runs one prefix may cost: a burst of 5, then 2 a second. A real key pays one per
/// replica; after that it is cached.
const ARGON2_PER_PREFIX: Quota =
    Quota::per_second(NonZeroU32::new(2).unwrap()).allow_burst(NonZeroU32::new(5).unwrap());

impl KeyVerifier {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: quick_cache::sync::Cache::new(CACHE_CAPACITY),
            unknown: quick_cache::sync::Cache::new(CACHE_CAPACITY),
            per_prefix: quick_cache::sync::Cache::new(CACHE_CAPACITY),
            generation: AtomicU64::new(0),
            argon2: Semaphore::new(ARGON2_PERMITS),
            waiting: AtomicUsize::new(0),
            argon2_runs: AtomicU64::new(0),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// How many argon2 verifications of API keys this verifier has run.
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(Ordering::Relaxed)
    }

    pub async fn verify(&self, presented: &str) -> Result<Principal, AuthError> {
        // A key that cannot be one names nothing: no lookup, no argon2.
        let prefix = ApiKey::prefix(presented).ok_or(AuthError::InvalidKey)?;
        if self.known_unknown(prefix) {
            return Err(AuthError::InvalidKey);
        }
        let digest: [u8; 32] = Blake2s256::digest(presented.as_bytes()).into();
        if let Some(principal) = self.remembered(&digest).await? {
            return Ok(principal);
        }
        // One verification per key at a time: the rest wait for it, then hit the cache.
        let gate = self.in_flight.lock().expect("in-flight map poisoned").entry(digest).or_default().clone();
        let result = async {
            let _turn = gate.lock().await;
            if let Some(principal) = self.remembered(&digest).await? {
                return Ok(principal);
            }
            self.verify_with_argon2(presented, prefix, digest).await
        }
        .await;
        self.in_flight.lock().expect("in-flight map poisoned").remove(&digest);
        result
    }

    async fn verify_with_argon2(
        &self,
        presented: &str,
        prefix: &str,
        digest: [u8; 32],
    ) -> Result<Principal, AuthError> {
        // What the cache may trust afterwards: a revocation missed meanwhile bumps it.
        let generation = self.generation.load(Ordering::Acquire);
        // Prefixes are public (listed, shown in logs): telling an unknown one apart costs
        // nothing secret, and spares argon2 for keys that could be real.
        // Spent before the lookup too, so throttled guesses cost no query either.
        if self.prefix_budget(prefix).check().is_err() {
            return Err(AuthError::Busy);
        }
        let Some(stored) = store::keys::find_live(&self.pool, prefix).await? else {
            self.remember_unknown(prefix);
            return Err(AuthError::InvalidKey);
        };
        let (presented, hash) = (presented.to_owned(), stored.hash.clone());
        let permit = {
            // Counted while waiting, and uncounted however the wait ends (a request dropped
            // mid-wait too), so the queue's bound never leaks.
            let waiter = Waiter::enter(&self.waiting).ok_or(AuthError::Busy)?;
            let permit = self.argon2.acquire().await.expect("the semaphore is never closed");
            drop(waiter);
            permit
        };
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let matches = tokio::task::spawn_blocking(move || verify_hash(&presented, &hash)).await.unwrap_or(false);
        drop(permit);
        if !matches {
            return Err(AuthError::InvalidKey);
        }
        let principal = Principal {
            project: stored.project_id,
            key: stored.id,
            scopes: stored.scopes,
            webhooks: stored.webhooks.map(Arc::from),
        };
        store::keys::touch(&self.pool, stored.id).await?;
        self.remember(digest, principal.clone(), generation);
        Ok(principal)
    }

    /// The cached principal; past `ttl`, only after the database confirms the key is live.
    async fn remembered(&self, digest: &[u8; 32]) -> Result<Option<Principal>, AuthError> {
        let Some(entry) = self.cache.get(digest) else { return Ok(None) };
        let current = entry.generation == self.generation.load(Ordering::Acquire);
        if current && entry.checked_at.elapsed() < self.ttl {
            return Ok(Some(entry.principal));
        }
        let generation = self.generation.load(Ordering::Acquire);
        if store::keys::is_live(&self.pool, entry.principal.key).await? {
            self.remember(*digest, entry.principal.clone(), generation);
            Ok(Some(entry.principal))
        } else {
            self.cache.remove(digest);
            Err(AuthError::InvalidKey)
        }
    }

    /// Checks a dashboard password against its stored hash under the same argon2 limits;
    /// an unknown account (None) is checked against a dummy hash, so timing does not tell.
    pub async fn verify_password(&self, stored_hash: Option<&str>, password: &str) -> bool {
        let known = stored_hash.is_some();
        let hash = stored_hash.unwrap_or_else(|| dummy_hash()).to_owned();
        let password = password.to_owned();
        let _permit = self.argon2.acquire().await.expect("the semaphore is never closed");
        let matches = tokio::task::spawn_blocking(move || verify_hash(&password, &hash)).await.unwrap_or(false);
        known && matches
    }

    /// Forgets a revoked key at once.
    pub fn forget_key(&self, key: ApiKeyId) {
        self.cache.retain(|_, v| v.principal.key != key);
    }

    /// Revocations may have been missed: every cached key is re-checked by a lookup on its
    /// next use (never by argon2 again).
    pub fn recheck_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn known_unknown(&self, prefix: &str) -> bool {
        self.unknown.get(prefix).is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn remember_unknown(&self, prefix: &str) {
        self.unknown.insert(prefix.to_owned(), Instant::now());
    }

    fn prefix_budget(&self, prefix: &str) -> Arc<DefaultDirectRateLimiter> {
        let made = self.per_prefix.get_or_insert_with(prefix, || {
            Ok::<_, std::convert::Infallible>(Arc::new(DefaultDirectRateLimiter::direct(ARGON2_PER_PREFIX)))
        });
        made.unwrap_or_else(|never| match never {})
    }

    /// Caches a key checked against the database as of `generation`.
    fn remember(&self, digest: [u8; 32], principal: Principal, generation: u64) {
        self.cache.insert(digest, Verified { principal, checked_at: Instant::now(), generation });
    }
}

/// One verification waiting for argon2, counted against `ARGON2_QUEUE` while it lives.
struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    fn enter(waiting: &'a AtomicUsize) -> Option<Self> {
        let before = waiting.fetch_add(1, Ordering::AcqRel);
        let waiter = Self(waiting);
        (before < ARGON2_QUEUE).then_some(waiter)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a new key grants. `scopes` and `webhooks` default to everything of its project.
pub struct KeyGrant<'a> {
    pub name: Option<&'a str>,
    pub scopes: Scopes,
    pub webhooks: Option<&'a [WebhookId]>,
}

impl Default for KeyGrant<'_> {
    fn default() -> Self {
        Self { name: None, scopes: Scopes::ALL, webhooks: None }
    }
}

/// Mints a key for the project, created on `plan` if new; the key is shown only now.
/// `move_plan` also moves an existing project to `plan`.
pub async fn create_key(
    pool: &PgPool,
    project_name: &str,
    plan: Plan,
    move_plan: bool,
) -> Result<(ProjectId, ApiKey), StoreError> {
    let mut tx = store::begin(pool).await?;
    let project = store::projects::ensure(&mut *tx, project_name, plan, move_plan).await?;
    let key = mint_key(&mut tx, project, &KeyGrant::default()).await?;
    store::commit(tx).await?;
    Ok((project, key))
}

/// Mints a key of an existing project with the given grant.
pub async fn mint_key(
    db: &mut sqlx::PgConnection,
    project: ProjectId,
    grant: &KeyGrant<'_>,
) -> Result<ApiKey, StoreError> {
    let key = ApiKey::generate();
    let prefix = ApiKey::prefix(key.expose()).expect("generated keys are well formed").to_owned();
    let secret = key.expose().to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_secret(&secret)).await.expect("argon2 hashing does not panic");
    let new = NewKey {
        project,
        prefix: &prefix,
        hash: &hash,
        name: grant.name,
        scopes: grant.scopes,
        webhooks: grant.webhooks,
    };
    store::keys::insert(db, &new).await?;
    Ok(key)
}

/// Whether `text` has the shape of a key's public prefix (anything else names no key).
pub fn is_prefix(text: &str) -> bool {
    text.len() == PREFIX_LEN && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The public part of a key, by which it is listed and revoked.
pub fn prefix_of(key: &ApiKey) -> &str {
    ApiKey::prefix(key.expose()).expect("generated keys are well formed")
}

/// Keeps this replica's key cache in step with revocations made on any replica (the
/// store's listener hears `hookline_key_revoked`). When notifications may have been missed,
/// every cached key is re-checked by a lookup on its next use.
impl Subscriber for KeyVerifier {
    fn notified(&self, payload: &str) {
        match payload.parse::<i64>() {
            Ok(id) => self.forget_key(ApiKeyId(id)),
            Err(_) => self.recheck_all(),
        }
    }

    fn missed(&self) {
        self.recheck_all();
    }
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
