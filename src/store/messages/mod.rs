//! Messages, one module per operation: ingestion (a batch per statement), dequeue, the
//! transitions of a locked message (commit, error, extend, bury), reading one, and purging.
//! The rules themselves are the baseline migration's functions; these call them.

mod consumer_set;
mod dequeue;
mod find;
mod ingest;
mod purge;
pub mod replay;
mod transitions;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::crypto::{KeyId, Sealed};
use crate::domain::{
    DedupWindow, DelaySeconds, IdempotencyKey, LockToken, MessageId, Priority, ProjectId, Seq, TtlSeconds, WebhookId,
};

pub use consumer_set::{consumer_set, ConsumerAction, ConsumerCall, ConsumerOutcome, HeldLock};
use dequeue::in_delivery_order;
pub use dequeue::{dequeue, idle, Idle, Withheld};
pub use find::{find, MessageInfo};
pub use ingest::{insert_many, seen_signature, stored};
pub use purge::{purge, purge_expired, purge_idempotency_keys, purge_seen_signatures, ExpiredBatch, PurgeCursor};
pub use transitions::{bury, commit, commit_many, commit_next, error, extend, release, ErrorOutcome, Failure};

/// A message ready to insert: its id chosen and its payload sealed by the caller.
pub struct NewMessage {
    pub id: MessageId,
    pub sealed: Sealed,
    pub options: DeliveryOptions,
    /// A signed request's signature, claimed against replays in the same transaction.
    pub replay: Option<ReplayClaim>,
}

/// A signature that passed, to be seen once: a second message bringing it within its
/// window is a replay and is not stored.
#[derive(Debug, Clone, Copy)]
pub struct ReplayClaim {
    /// SHA-256 of the signature that passed.
    pub signature: [u8; 32],
    /// How long it is remembered: longer than it could pass the timestamp check.
    pub window_seconds: i32,
}

/// What a producer may ask of one message's delivery.
#[derive(Debug, Default, Clone)]
pub struct DeliveryOptions {
    pub priority: Priority,
    pub delay: Option<DelaySeconds>,
    /// Capped by the webhook's ttlDays.
    pub ttl: Option<TtlSeconds>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// How long the key answers the original message (24 hours unless the webhook's
    /// dedupWindowSeconds says less).
    pub dedup_window: DedupWindow,
    /// On a keyed webhook, the message's ordering key (None: the fallback key).
    pub ordering_key: Option<String>,
}

/// Where an accepted message stands: newly stored, or (`duplicate`) the message an earlier
/// request with the same idempotency key stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: MessageId,
    pub seq: Seq,
    pub duplicate: bool,
}

/// A message handed out by dequeue, still sealed.
pub struct LockedMessage {
    pub id: MessageId,
    pub seq: Seq,
    pub retry_count: i32,
    pub max_retries: i32,
    pub lock_token: LockToken,
    pub lock_expires_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub priority: Priority,
    pub sealed: Sealed,
}

/// Which message a transition is for, and the lock the caller claims to hold (if it says).
pub struct LockedRef<'a> {
    pub project: ProjectId,
    pub webhook: &'a WebhookId,
    pub message: &'a MessageId,
    pub token: Option<&'a LockToken>,
}

impl LockedRef<'_> {
    fn token_uuid(&self) -> Option<Uuid> {
        self.token.map(|t| *t.as_uuid())
    }
}

/// A `locked_message` row of the baseline's functions.
struct LockedRow {
    id: Uuid,
    seq: i64,
    retry_count: i32,
    max_retries: i32,
    lock_token: Uuid,
    lock_expires_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    key_id: i32,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    priority: i16,
}

impl From<LockedRow> for LockedMessage {
    fn from(r: LockedRow) -> Self {
        Self {
            id: MessageId::from_uuid(r.id),
            seq: Seq(r.seq),
            retry_count: r.retry_count,
            max_retries: r.max_retries,
            lock_token: LockToken::from_uuid(r.lock_token),
            lock_expires_at: r.lock_expires_at,
            received_at: r.received_at,
            priority: Priority::parse(r.priority.into()).unwrap_or_default(),
            sealed: Sealed { key_id: KeyId(r.key_id), nonce: r.nonce, ciphertext: r.ciphertext },
        }
    }
}
