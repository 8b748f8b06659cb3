//! A webhook's queue at a glance. Totals come from the append-only `webhook_counts` rows
//! (see section 8 of the baseline migration), the rest from partial indexes that hold only queued, in
//! flight or delayed rows: none of it scans a queue of millions.

use sqlx::PgExecutor;

use super::{Context, StoreError, StoreResult};
use crate::domain::{ProjectId, WebhookId};

#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// Waiting and deliverable now: not locked, not delayed, not past its TTL.
    pub queued: i64,
    pub locked: i64,
    pub delayed: i64,
    pub dead: i64,
    pub committed: i64,
    pub oldest_queued_age_seconds: Option<f64>,
    pub ingested_last_minute: i64,
    pub ingested_last_hour: i64,
    /// Committed by a consumer.
    pub delivered_last_minute: i64,
    pub delivered_last_hour: i64,
}

pub async fn get(db: impl PgExecutor<'_>, project: ProjectId, webhook: &WebhookId) -> StoreResult<QueueStats> {
    let row = sqlx::query_as!(
        QueueStats,
        r#"WITH hook AS (
             -- A FIFO lock's messages: its window's head and the rest.
             SELECT id, array_remove(locked_seq || coalesce(window_rest, '{}'), NULL) AS leased
             FROM webhooks WHERE id = $1 AND project_id = $2
         ), totals AS (
             SELECT coalesce(sum(live), 0)::int8 AS live, coalesce(sum(dead), 0)::int8 AS dead,
                    coalesce(sum(committed), 0)::int8 AS committed,
                    coalesce(sum(ingested) FILTER (WHERE at > now() - interval '1 minute'), 0)::int8 AS ingested_minute,
                    coalesce(sum(ingested) FILTER (WHERE at > now() - interval '1 hour'), 0)::int8 AS ingested_hour,
                    coalesce(sum(delivered) FILTER (WHERE at > now() - interval '1 minute'), 0)::int8 AS delivered_minute,
                    coalesce(sum(delivered) FILTER (WHERE at > now() - interval '1 hour'), 0)::int8 AS delivered_hour
             FROM webhook_counts WHERE webhook_id = $1
         ), gauges AS (
             SELECT cardinality(hook.leased)::int8
                    + (SELECT count(*) FROM messages WHERE webhook_id = $1 AND lock_token IS NOT NULL) AS locked,
                    (SELECT count(*) FROM messages
                     WHERE webhook_id = $1 AND state = 'queued' AND deliver_at > now()) AS delayed,
                    -- Past their TTL but not purged yet: never delivered, so not waiting.
                    (SELECT count(*) FROM messages
                     WHERE expires_at <= now() AND webhook_id = $1 AND state = 'queued' AND lock_token IS NULL
                       AND (deliver_at IS NULL OR deliver_at <= now()) AND seq <> ALL (hook.leased)) AS expired,
                    -- Each priority's first ready seq is its oldest: 11 probes of the ready index.
                    -- (A range, not priority = p: with an equality the planner may walk the
                    -- primary key in seq order instead, reading the whole queue for a priority
                    -- that has nothing; the bench's isolation scenario measured 3 s at 1M.)
                    (SELECT extract(epoch FROM now() - min(head.received_at))::float8
                     FROM generate_series(0, 10) AS p(priority)
                     CROSS JOIN LATERAL (SELECT received_at FROM messages
                                         WHERE webhook_id = $1 AND state = 'queued'
                                           AND priority BETWEEN p.priority AND p.priority
                                           AND deliver_at IS NULL AND lock_token IS NULL
                                           AND seq <> ALL (hook.leased) AND expires_at > now()
                                         ORDER BY priority DESC, seq LIMIT 1) head) AS oldest
             FROM hook
         )
         SELECT greatest(totals.live - gauges.locked - gauges.delayed - gauges.expired, 0) AS "queued!", gauges.locked AS "locked!",
                gauges.delayed AS "delayed!", totals.dead AS "dead!", totals.committed AS "committed!",
                gauges.oldest AS oldest_queued_age_seconds,
                totals.ingested_minute AS "ingested_last_minute!", totals.ingested_hour AS "ingested_last_hour!",
                totals.delivered_minute AS "delivered_last_minute!", totals.delivered_hour AS "delivered_last_hour!"
         FROM gauges, totals"#,
        webhook.as_uuid(),
        project.0
    )
    .fetch_optional(db)
    .await
    .context_for("reading stats", webhook)?;
    row.ok_or(StoreError::NotFound("webhook"))
}

/// Folds up to `limit` candidate rows of each kind (rows newer than their webhook's last
/// fold and older than two minutes, and minute buckets past the hour), oldest first, with
/// the folded rows (at most an hour of minute buckets and the base) of their webhooks:
/// into minute buckets for the last hour and one base row before that. Sums are unchanged,
/// so running it twice, or concurrently with writers, is harmless; idle webhooks cost
/// nothing. Returns how many candidate rows it found (`limit` or more: there may be more).
pub async fn fold_counts(db: impl PgExecutor<'_>, limit: i32) -> StoreResult<u64> {
    let found = sqlx::query_scalar!(
        r#"WITH candidates AS (
             (SELECT ctid AS row_id, webhook_id FROM webhook_counts
              WHERE NOT folded AND at > '-infinity' AND at < now() - interval '2 minutes'
              ORDER BY folded, at LIMIT $1)
             UNION ALL
             (SELECT ctid, webhook_id FROM webhook_counts
              WHERE folded AND at > '-infinity' AND at < now() - interval '1 hour'
              ORDER BY folded, at LIMIT $1)
         ), old AS (
             -- A base row written by the previous release reads as not folded: taken too.
             DELETE FROM webhook_counts
             WHERE ctid = ANY (ARRAY(SELECT row_id FROM candidates))
                OR (webhook_id IN (SELECT webhook_id FROM candidates) AND (folded OR at = '-infinity')
                    AND at < now() - interval '2 minutes')
             RETURNING *
         ), merged AS (
             INSERT INTO webhook_counts (webhook_id, at, live, dead, committed, ingested, delivered, folded)
             SELECT webhook_id, bucket, sum(live), sum(dead), sum(committed),
                    CASE WHEN bucket = '-infinity' THEN 0 ELSE sum(ingested) END,
                    CASE WHEN bucket = '-infinity' THEN 0 ELSE sum(delivered) END, true
             FROM (SELECT *, CASE WHEN at < now() - interval '1 hour' THEN '-infinity'::timestamptz
                                  ELSE date_trunc('minute', at) END AS bucket
                   FROM old) o
             WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = o.webhook_id)
             GROUP BY webhook_id, bucket
             RETURNING 1
         )
         SELECT count(*) AS "n!" FROM candidates"#,
        i64::from(limit)
    )
    .fetch_one(db)
    .await
    .context("folding counters")?;
    Ok(found as u64)
}
