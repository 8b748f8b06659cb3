//! Replay: committed messages of a seq range, still within their TTL, delivered again in
//! order. At the tail, as new messages (new ids and seqs, the payload sealed again under
//! the new id by the caller) that name their originals; at the head, the originals
//! themselves back in the queue at their own positions, ahead of everything that arrived
//! after them and is not yet leased (a lock already out is not taken back).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::ingest::insert_rows;
use super::{DeliveryOptions, NewMessage};
use crate::crypto::{KeyId, Sealed};
use crate::domain::{MessageId, Priority, ProjectId, Seq, TtlSeconds, WebhookId};
use crate::store::{Context, StoreResult};

/// A committed message to replay, still sealed.
pub struct Committed {
    pub id: MessageId,
    pub seq: Seq,
    pub priority: Priority,
    pub expires_at: DateTime<Utc>,
    pub sealed: Sealed,
    /// On a keyed webhook, its ordering key (a copy keeps it).
    pub ordering_key: Option<String>,
}

/// A message a replay queued: its id and seq, and (at the tail) the message it replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub id: MessageId,
    pub seq: Seq,
    pub replay_of: MessageId,
}

/// How many committed messages of a seq range (inclusive) are within their TTL, and their
/// stored payload bytes. The webhook must belong to the project.
pub struct RangeSize {
    pub messages: usize,
    pub bytes: i64,
}

pub async fn committed_size(
    pool: &PgPool,
    project: ProjectId,
    webhook: &WebhookId,
    from: Seq,
    to: Seq,
) -> StoreResult<RangeSize> {
    super::super::webhooks::get(pool, project, webhook).await?;
    let row = sqlx::query!(
        r#"SELECT count(*) AS "messages!", coalesce(sum(octet_length(ciphertext)), 0)::int8 AS "bytes!"
           FROM messages
           WHERE webhook_id = $1 AND seq BETWEEN $2 AND $3 AND state = 'committed' AND expires_at > now()"#,
        webhook.as_uuid(),
        from.0,
        to.0
    )
    .fetch_one(pool)
    .await
    .context_for("measuring committed messages to replay", webhook)?;
    Ok(RangeSize { messages: row.messages as usize, bytes: row.bytes })
}

/// The committed messages of a seq range (inclusive) still within their TTL, in seq order.
pub async fn committed_range(pool: &PgPool, webhook: &WebhookId, from: Seq, to: Seq) -> StoreResult<Vec<Committed>> {
    let rows = sqlx::query!(
        r#"SELECT id, seq, priority, expires_at, key_id, nonce, ciphertext, ordering_key FROM messages
           WHERE webhook_id = $1 AND seq BETWEEN $2 AND $3 AND state = 'committed' AND expires_at > now()
           ORDER BY seq"#,
        webhook.as_uuid(),
        from.0,
        to.0
    )
    .fetch_all(pool)
    .await
    .context_for("reading committed messages to replay", webhook)?;
    Ok(rows
        .into_iter()
        .map(|r| Committed {
            id: MessageId::from_uuid(r.id),
            seq: Seq(r.seq),
            priority: Priority::parse(r.priority.into()).unwrap_or_default(),
            expires_at: r.expires_at,
            sealed: Sealed { key_id: KeyId(r.key_id), nonce: r.nonce, ciphertext: r.ciphertext },
            ordering_key: r.ordering_key,
        })
        .collect())
}

/// Appends copies in the given order: `copies` pairs each original with its copy's id and
/// payload, sealed for that id. A copy lives no longer than its original would have.
pub async fn append_copies(
    tx: &mut PgConnection,
    webhook: &WebhookId,
    copies: Vec<(Committed, MessageId, Sealed)>,
) -> StoreResult<Vec<Replayed>> {
    let now = Utc::now();
    let items: Vec<(WebhookId, NewMessage)> = copies
        .iter()
        .map(|(original, id, sealed)| {
            let left = (original.expires_at - now).num_seconds().max(1);
            let options = DeliveryOptions {
                priority: original.priority,
                ttl: TtlSeconds::parse(left).ok(),
                ordering_key: original.ordering_key.clone(),
                ..DeliveryOptions::default()
            };
            (*webhook, NewMessage { id: *id, sealed: sealed.clone(), options, replay: None })
        })
        .collect();
    let seqs = insert_rows(&mut *tx, items.iter()).await?;
    let (copy_ids, original_ids): (Vec<Uuid>, Vec<Uuid>) =
        copies.iter().map(|(original, id, _)| (*id.as_uuid(), *original.id.as_uuid())).unzip();
    sqlx::query!(
        "UPDATE messages m SET replay_of = c.original
         FROM unnest($2::uuid[], $3::uuid[]) AS c(copy, original)
         WHERE m.webhook_id = $1 AND m.id = c.copy",
        webhook.as_uuid(),
        &copy_ids,
        &original_ids
    )
    .execute(&mut *tx)
    .await
    .context_for("linking replays to their originals", webhook)?;
    Ok(copies
        .iter()
        .filter_map(|(original, id, _)| {
            let seq = *seqs.get(id.as_uuid())?;
            Some(Replayed { id: *id, seq: Seq(seq), replay_of: original.id })
        })
        .collect())
}

/// Returns the committed messages of a seq range (inclusive, still within their TTL) to the
/// queue at their own positions, their attempts counted from zero again.
pub async fn requeue_in_place(
    tx: &mut PgConnection,
    webhook: &WebhookId,
    from: Seq,
    to: Seq,
) -> StoreResult<Vec<Replayed>> {
    let rows = sqlx::query!(
        r#"UPDATE messages
           SET state = 'queued', committed_at = NULL, retry_count = 0, error_attempts = 0, expiry_attempts = 0
           WHERE webhook_id = $1 AND seq BETWEEN $2 AND $3 AND state = 'committed' AND expires_at > now()
           RETURNING id, seq"#,
        webhook.as_uuid(),
        from.0,
        to.0
    )
    .fetch_all(&mut *tx)
    .await
    .context_for("replaying committed messages in place", webhook)?;
    // Committed -> queued wakes no trigger: long-polls are told here, at commit.
    sqlx::query!("SELECT hookline_wake($1)", webhook.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .context_for("waking a webhook's consumers", webhook)?;
    let mut replayed: Vec<Replayed> = rows
        .into_iter()
        .map(|r| {
            let id = MessageId::from_uuid(r.id);
            Replayed { id, seq: Seq(r.seq), replay_of: id }
        })
        .collect();
    replayed.sort_by_key(|r| r.seq);
    Ok(replayed)
}
