//! Rate limits, in memory per replica: per webhook and operation at the rate of the
//! project's plan (governor's GCRA: a burst passes up to the per-second quota and no
//! further, then requests pass as the quota refills), and per API key (a sliding window).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::time::Instant;

use crate::domain::{ApiKeyId, Limits, ProjectId, WebhookId};

/// What a rate limit guards, per webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Ingest,
    Dequeue,
    /// Commit and error.
    Ack,
    /// Ingestions refused for their signature: a budget of their own (at the ingestion
    /// rate), so junk does not spend a real sender's.
    RejectedSignature,
}

impl Operation {
    /// The plan's per-second, per-webhook limit for this operation (None: unlimited).
    pub fn per_second(self, limits: &Limits) -> Option<NonZeroU32> {
        match self {
            Operation::Ingest => limits.ingest_per_second,
            Operation::Dequeue => limits.dequeue_per_second,
            Operation::Ack => limits.ack_per_second,
            Operation::RejectedSignature => limits.ingest_per_second,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Ingest => "ingestion",
            Operation::Dequeue => "dequeue",
            Operation::Ack => "commit/error",
            Operation::RejectedSignature => "rejected signature",
        }
    }
}

/// Over a limit: how many it allows at once (per second for the API's limits), and when
/// the next request may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub per_second: u32,
    pub retry_after: Duration,
}

/// Limiters are created on first use and replaced when the quota they enforce changes
/// (a plan change or an operator override).
///
/// Bounded: past its capacity the limiters least worth keeping (quick_cache's S3-FIFO, which
/// keeps the ones in use) make room, never all at once, so a flood of new keys cannot reset
/// a busy sender's budget.
struct Limiters<K> {
    map: quick_cache::sync::Cache<K, Arc<(Quota, DefaultDirectRateLimiter)>>,
}

impl<K: Eq + Hash + Clone> Limiters<K> {
    fn new() -> Self {
        Self { map: quick_cache::sync::Cache::new(LIMITERS_CAPACITY) }
    }

    /// `limit` is what the 429 reports: the burst the quota allows.
    fn check(&self, key: K, quota: Quota) -> Result<(), Limited> {
        self.check_n(key, quota, NonZeroU32::MIN)
    }

    /// Counts `n` at once (a batch): all admitted or none.
    fn check_n(&self, key: K, quota: Quota, n: NonZeroU32) -> Result<(), Limited> {
        let limiter = || Arc::new((quota, DefaultDirectRateLimiter::direct(quota)));
        let found = self.map.get_or_insert_with(&key, || Ok::<_, std::convert::Infallible>(limiter()));
        let mut entry = found.unwrap_or_else(|never| match never {});
        if entry.0 != quota {
            // The plan or an override changed: a fresh budget at the new rate.
            entry = limiter();
            self.map.insert(key, entry.clone());
        }
        let per_second = quota.burst_size().get();
        match entry.1.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                Err(Limited { per_second, retry_after: not_until.wait_time_from(DefaultClock::default().now()) })
            }
            // More at once than a second's budget: never admissible as one batch.
            Err(_) => Err(Limited { per_second, retry_after: Duration::from_secs(1) }),
        }
    }
}

const LIMITERS_CAPACITY: usize = 200_000;

pub struct RateLimits {
    /// Keyed by project too, so a key of another project cannot spend a webhook's budget.
    webhooks: Limiters<(ProjectId, WebhookId, Operation)>,
    keys: Mutex<HashMap<ApiKeyId, SlidingWindow>>,
    per_key: Option<NonZeroU32>,
}

/// A sliding-window counter over one second: this window's count plus the previous
/// window's, weighted by how much of it still overlaps the last second. Unlike a token
/// bucket it never lets a key make twice its limit across a window boundary.
#[derive(Debug, Clone, Copy)]
struct SlidingWindow {
    started: Instant,
    current: u32,
    previous: u32,
}

const WINDOW: Duration = Duration::from_secs(1);

impl SlidingWindow {
    fn admit(&mut self, limit: u32, now: Instant) -> Result<(), Limited> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= WINDOW * 2 {
            *self = Self { started: now, current: 0, previous: 0 };
        } else if elapsed >= WINDOW {
            *self = Self { started: self.started + WINDOW, current: 0, previous: self.current };
        }
        let into = now.saturating_duration_since(self.started).as_secs_f64() / WINDOW.as_secs_f64();
        let estimate = self.previous as f64 * (1.0 - into) + self.current as f64;
        if estimate + 1.0 > limit as f64 {
            // When this window ends the previous one stops counting; sooner only if it decays.
            let retry_after = (self.started + WINDOW).saturating_duration_since(now).max(Duration::from_millis(1));
            return Err(Limited { per_second: limit, retry_after });
        }
        self.current += 1;
        Ok(())
    }
}

impl RateLimits {
    /// `per_key`: requests per second any one API key may make (None: no per-key limit).
    pub fn new(per_key: Option<NonZeroU32>) -> Self {
        Self { webhooks: Limiters::new(), keys: Mutex::new(HashMap::new()), per_key }
    }

    /// Counts one `operation` by `project` on `webhook` against the project's limits.
    pub fn webhook(
        &self,
        project: ProjectId,
        webhook: WebhookId,
        operation: Operation,
        limits: &Limits,
    ) -> Result<(), Limited> {
        self.webhook_n(project, webhook, operation, limits, NonZeroU32::MIN)
    }

    /// Counts `n` operations at once (a batch publish or dequeue).
    pub fn webhook_n(
        &self,
        project: ProjectId,
        webhook: WebhookId,
        operation: Operation,
        limits: &Limits,
        n: NonZeroU32,
    ) -> Result<(), Limited> {
        match operation.per_second(limits) {
            None => Ok(()),
            Some(rate) => self.webhooks.check_n((project, webhook, operation), Quota::per_second(rate), n),
        }
    }

    /// Counts one request by `key` in its sliding one-second window; the unlimited plan has
    /// no per-key limit either.
    pub fn key(&self, key: ApiKeyId, limits: &Limits) -> Result<(), Limited> {
        let Some(rate) = key_rate(self.per_key, limits) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut keys = self.keys.lock().expect("key windows poisoned");
        if keys.len() >= LIMITERS_CAPACITY {
            keys.retain(|_, w| now.saturating_duration_since(w.started) < WINDOW * 2);
        }
        keys.entry(key).or_insert(SlidingWindow { started: now, current: 0, previous: 0 }).admit(rate.get(), now)
    }
}

/// What one key may make a second: the configured per-key rate, raised to the plan's
/// dequeue plus commit rate (one webhook's whole consumer budget, which a worker's single
/// key must be able to use); none on the unlimited plan.
fn key_rate(per_key: Option<NonZeroU32>, limits: &Limits) -> Option<NonZeroU32> {
    if limits.plan == crate::domain::Plan::Unlimited {
        return None;
    }
    let consumer =
        limits.dequeue_per_second.map_or(0, NonZeroU32::get) + limits.ack_per_second.map_or(0, NonZeroU32::get);
    per_key.map(|rate| rate.max(NonZeroU32::new(consumer).unwrap_or(NonZeroU32::MIN)))
}

/// Login attempts, per account and per client address, so passwords cannot be guessed
/// quickly against one account or across many from one address.
pub struct LoginLimits {
    accounts: Limiters<String>,
    addresses: Limiters<IpAddr>,
}

const LOGINS_PER_ACCOUNT_PER_MINUTE: u32 = 5;
const LOGINS_PER_ADDRESS_PER_MINUTE: u32 = 20;

impl Default for LoginLimits {
    fn default() -> Self {
        Self { accounts: Limiters::new(), addresses: Limiters::new() }
    }
}

impl LoginLimits {
    pub fn check(&self, email: &str, address: Option<IpAddr>) -> Result<(), Limited> {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).expect("a positive constant"));
        if let Some(address) = address {
            self.addresses.check(address, per_minute(LOGINS_PER_ADDRESS_PER_MINUTE))?;
        }
        self.accounts.check(email.to_owned(), per_minute(LOGINS_PER_ACCOUNT_PER_MINUTE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::Plan;

    #[test]
    fn a_flood_of_new_keys_does_not_reset_a_busy_ones_budget() {
        let limiters = Limiters::new();
        let quota = Quota::per_minute(NonZeroU32::new(5).unwrap());
        while limiters.check("busy".to_owned(), quota).is_ok() {}
        // More new keys than the map holds, each seen once (an attacker's random emails).
        for i in 0..LIMITERS_CAPACITY + LIMITERS_CAPACITY / 4 {
            let _ = limiters.check(format!("flood-{i}"), quota);
            if i % 1000 == 0 {
                assert!(limiters.check("busy".to_owned(), quota).is_err(), "reset after {i} new keys");
            }
        }
        assert!(limiters.check("busy".to_owned(), quota).is_err());
    }

    #[test]
    fn a_keys_rate_covers_its_plans_whole_consumer_budget() {
        let rate = |per_key: u32, plan: Plan| key_rate(NonZeroU32::new(per_key), &plan.limits()).map(NonZeroU32::get);
        assert_eq!(rate(20, Plan::Free), Some(20), "free: 5 dequeues + 10 commits a second fit in 20");
        assert_eq!(rate(20, Plan::Pro), Some(150));
        assert_eq!(rate(20, Plan::Enterprise), Some(1500));
        assert_eq!(rate(2000, Plan::Enterprise), Some(2000), "a higher configured rate stands");
        assert_eq!(rate(20, Plan::Unlimited), None);
        assert_eq!(key_rate(None, &Plan::Pro.limits()), None, "no per-key limit configured");
    }

    #[test]
    fn a_burst_passes_up_to_the_quota_and_no_further() {
        let limits = RateLimits::new(NonZeroU32::new(3));
        let (p, w, free) = (ProjectId(1), WebhookId::new_random(), Plan::Free.limits());
        for _ in 0..10 {
            assert_eq!(limits.webhook(p, w, Operation::Ingest, &free), Ok(()));
        }
        let over = limits.webhook(p, w, Operation::Ingest, &free).unwrap_err();
        assert_eq!(over.per_second, 10);
        assert!(over.retry_after > Duration::ZERO && over.retry_after <= Duration::from_millis(100));
        // Other webhooks, operations and projects have their own budgets.
        assert_eq!(limits.webhook(p, w, Operation::Ack, &free), Ok(()));
        assert_eq!(limits.webhook(p, WebhookId::new_random(), Operation::Ingest, &free), Ok(()));
        assert_eq!(limits.webhook(ProjectId(2), w, Operation::Ingest, &free), Ok(()));
        assert_eq!(limits.webhook(p, w, Operation::Ingest, &Plan::Unlimited.limits()), Ok(()));
    }

    #[test]
    fn the_key_window_slides() {
        let t0 = Instant::now();
        let mut w = SlidingWindow { started: t0, current: 0, previous: 0 };
        for _ in 0..10 {
            assert!(w.admit(10, t0).is_ok());
        }
        assert!(w.admit(10, t0 + Duration::from_millis(900)).is_err());
        // Half a second into the next window, half of the previous one still counts: 5 more.
        let half = t0 + Duration::from_millis(1500);
        for _ in 0..5 {
            assert!(w.admit(10, half).is_ok());
        }
        assert!(w.admit(10, half).is_err());
        // Two windows later nothing counts.
        assert!(w.admit(10, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn keys_have_their_own_limit_except_on_the_unlimited_plan() {
        // Above the free plan's consumer budget (15 a second), so 20 is the key's limit.
        let limits = RateLimits::new(NonZeroU32::new(20));
        let free = Plan::Free.limits();
        for _ in 0..20 {
            assert!(limits.key(ApiKeyId(1), &free).is_ok());
        }
        assert!(limits.key(ApiKeyId(1), &free).is_err());
        assert!(limits.key(ApiKeyId(2), &free).is_ok());
        assert!(limits.key(ApiKeyId(1), &Plan::Unlimited.limits()).is_ok());
        assert!(RateLimits::new(None).key(ApiKeyId(1), &free).is_ok());
    }
}
