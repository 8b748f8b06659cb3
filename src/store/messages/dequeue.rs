//! Dequeue: lock what can be delivered now (`hookline_dequeue`), and when something may
//! become deliverable without a write to wake anyone.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::{LockedMessage, LockedRow};
use crate::domain::{LockTimeout, MaxMessages, ProjectId, WebhookId};
use crate::store::{Context, StoreResult};

/// Locks and returns what can be delivered now, in delivery order: in a FIFO webhook the
/// head (none while it is locked), in a standard one up to `max` messages. `visibility`
/// replaces the webhook's lock timeout for these locks.
pub async fn dequeue(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    max: MaxMessages,
    visibility: Option<LockTimeout>,
) -> StoreResult<Vec<LockedMessage>> {
    let rows = sqlx::query_as!(
        LockedRow,
        r#"SELECT id AS "id!", seq AS "seq!", retry_count AS "retry_count!", max_retries AS "max_retries!",
                  lock_token AS "lock_token!", lock_expires_at AS "lock_expires_at!", received_at AS "received_at!",
                  key_id AS "key_id!", nonce AS "nonce!", ciphertext AS "ciphertext!", priority AS "priority!"
           FROM hookline_dequeue($1, $2, $3, $4)"#,
        webhook.as_uuid(),
        project.0,
        max.get(),
        visibility.map(LockTimeout::get)
    )
    .fetch_all(db)
    .await
    .context_for("dequeuing", webhook)?;
    Ok(in_delivery_order(rows.into_iter().map(LockedMessage::from)))
}

/// Highest priority first, then seq: the order a consumer is handed what one dequeue locked
/// (a standard dequeue's UPDATE returns its rows in no particular order).
pub(super) fn in_delivery_order(locked: impl Iterator<Item = LockedMessage>) -> Vec<LockedMessage> {
    let mut locked: Vec<LockedMessage> = locked.collect();
    locked.sort_by_key(|m| (std::cmp::Reverse(m.priority.get()), m.seq));
    locked
}

/// Why a webhook delivers nothing at all for now (see `hookline_withheld`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// An operator paused it.
    Paused,
    /// A consumer's error held it.
    Held,
}

impl Withheld {
    pub fn name(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Held => "held",
        }
    }
}

/// A dequeue that found nothing: whether the webhook withholds delivery, and when something
/// may become deliverable with no write to wake anyone (a delay running out, a lock
/// expiring, a hold ending; None: only a write can change anything).
pub struct Idle {
    pub withheld: Option<Withheld>,
    pub next_due: Option<DateTime<Utc>>,
}

pub async fn idle(db: impl PgExecutor<'_>, webhook: &WebhookId) -> StoreResult<Idle> {
    let row = sqlx::query!(
        r#"SELECT hookline_next_due(w.id) AS next_due, w.paused_at IS NOT NULL AS "paused!",
                  hookline_withheld(w) AS "withheld!"
           FROM webhooks w WHERE w.id = $1"#,
        webhook.as_uuid()
    )
    .fetch_optional(db)
    .await
    .context_for("reading why the queue is idle", webhook)?;
    Ok(match row {
        None => Idle { withheld: None, next_due: None },
        Some(r) => Idle {
            withheld: match (r.withheld, r.paused) {
                (false, _) => None,
                (true, true) => Some(Withheld::Paused),
                (true, false) => Some(Withheld::Held),
            },
            next_due: r.next_due,
        },
    })
}
