//! Ingestion: a batch of messages, possibly for many webhooks, in one statement
//! (`hookline_ingest`), each webhook's in input order.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::{NewMessage, Stored};
use crate::domain::{DelaySeconds, MessageId, Seq, TtlSeconds, WebhookId};
use crate::store::{Context, Refusal, StoreError, StoreResult};

/// Inserts messages atomically. Returns each item's outcome in input order: stored (or the
/// duplicate of an earlier message), NotFound where the webhook does not exist, Replayed
/// where its signature was already seen.
///
/// Without idempotency keys or replay claims this is one statement. With them, one
/// transaction that first claims the signatures (`hookline_claim_signatures`), then the
/// keys (`hookline_claim_idempotency_keys`), then inserts the messages whose claims won; a
/// repeated key answers the message that first claimed it.
pub async fn insert_many(pool: &PgPool, items: &[(WebhookId, NewMessage)]) -> StoreResult<Vec<StoreResult<Stored>>> {
    if items.iter().all(|(_, m)| m.options.idempotency_key.is_none() && m.replay.is_none()) {
        let seqs = insert_rows(pool, items.iter()).await?;
        return Ok(items.iter().map(|(_, m)| stored_new(&seqs, &m.id)).collect());
    }
    let mut tx = pool.begin().await.context("beginning an ingestion")?;
    let replayed = claim_signatures(&mut tx, items).await?;
    let unreplayed = || items.iter().filter(|(_, m)| !replayed.contains(m.id.as_uuid()));
    let (won, originals) = claim_keys(&mut tx, unreplayed()).await?;
    let fresh = unreplayed().filter(|(_, m)| m.options.idempotency_key.is_none() || won.contains(m.id.as_uuid()));
    let seqs = insert_rows(&mut *tx, fresh).await?;
    let originals = record_key_seqs(&mut tx, &won, &seqs, originals).await?;
    tx.commit().await.context("committing an ingestion")?;

    Ok(items
        .iter()
        .map(|(webhook, m)| match &m.options.idempotency_key {
            _ if replayed.contains(m.id.as_uuid()) => Err(StoreError::Refused(Refusal::Replayed)),
            None => stored_new(&seqs, &m.id),
            Some(key) => {
                let &(id, seq) = originals
                    .get(&(*webhook.as_uuid(), key.as_str().to_owned()))
                    .ok_or(StoreError::NotFound("webhook"))?;
                Ok(Stored { id: MessageId::from_uuid(id), seq: Seq(seq), duplicate: id != *m.id.as_uuid() })
            }
        })
        .collect())
}

/// Where a message of the webhook stands, if it is stored.
pub async fn stored(db: impl PgExecutor<'_>, webhook: &WebhookId, id: &MessageId) -> StoreResult<Option<Stored>> {
    let seq = sqlx::query_scalar!(
        "SELECT seq FROM messages WHERE id = $1 AND webhook_id = $2",
        id.as_uuid(),
        webhook.as_uuid()
    )
    .fetch_optional(db)
    .await
    .context_for("reading a stored message", webhook)?;
    Ok(seq.map(|seq| Stored { id: *id, seq: Seq(seq), duplicate: false }))
}

/// Whether a signature is claimed already (a replay), before any work is spent on it.
/// The claim in `insert_many` is what decides; this only refuses most replays early.
pub async fn seen_signature(db: impl PgExecutor<'_>, webhook: &WebhookId, signature: &[u8; 32]) -> StoreResult<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM seen_signatures
                          WHERE webhook_id = $1 AND signature = $2 AND expires_at > now()) AS "seen!""#,
        webhook.as_uuid(),
        signature.as_slice()
    )
    .fetch_one(db)
    .await
    .context_for("checking a signature against replays", webhook)
}

/// Claims the items' signatures; returns the ids of the messages whose claim lost (the
/// replays). Within the batch the first item with a signature claims it.
async fn claim_signatures(tx: &mut PgConnection, items: &[(WebhookId, NewMessage)]) -> StoreResult<HashSet<Uuid>> {
    let mut claims: BTreeMap<(Uuid, [u8; 32]), (Uuid, i32)> = BTreeMap::new();
    for (webhook, m) in items {
        if let Some(claim) = &m.replay {
            claims.entry((*webhook.as_uuid(), claim.signature)).or_insert((*m.id.as_uuid(), claim.window_seconds));
        }
    }
    if claims.is_empty() {
        return Ok(HashSet::new());
    }
    let webhooks: Vec<Uuid> = claims.keys().map(|(w, _)| *w).collect();
    let signatures: Vec<&[u8]> = claims.keys().map(|(_, s)| s.as_slice()).collect();
    let (ids, windows): (Vec<Uuid>, Vec<i32>) = claims.values().copied().unzip();
    let won: HashSet<Uuid> = sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM hookline_claim_signatures($1, $2, $3, $4) AS id"#,
        &webhooks,
        &signatures as _,
        &windows,
        &ids
    )
    .fetch_all(&mut *tx)
    .await
    .context("claiming signatures against replays")?
    .into_iter()
    .collect();
    Ok(items
        .iter()
        .filter(|(_, m)| m.replay.is_some() && !won.contains(m.id.as_uuid()))
        .map(|(_, m)| *m.id.as_uuid())
        .collect())
}

/// (webhook, key) -> (message id, seq) of the message that first claimed the key.
type Originals = HashMap<(Uuid, String), (Uuid, i64)>;

/// Claims the items' idempotency keys; returns the ids of the messages whose claim won and
/// which (webhook, key) pairs to read back. The first item of the batch to use a key claims
/// it; later ones are its duplicates.
async fn claim_keys<'a>(
    tx: &mut PgConnection,
    items: impl Iterator<Item = &'a (WebhookId, NewMessage)>,
) -> StoreResult<(HashSet<Uuid>, Vec<(Uuid, String)>)> {
    let mut claims: BTreeMap<(Uuid, &str), (Uuid, i32)> = BTreeMap::new();
    for (webhook, m) in items {
        if let Some(key) = &m.options.idempotency_key {
            let claim = (*m.id.as_uuid(), m.options.dedup_window.get());
            claims.entry((*webhook.as_uuid(), key.as_str())).or_insert(claim);
        }
    }
    if claims.is_empty() {
        return Ok((HashSet::new(), Vec::new()));
    }
    let (claim_webhooks, claim_keys): (Vec<Uuid>, Vec<&str>) = claims.keys().copied().unzip();
    let (claim_ids, windows): (Vec<Uuid>, Vec<i32>) = claims.values().copied().unzip();
    let won = sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM hookline_claim_idempotency_keys($1, $2, $3, $4) AS id"#,
        &claim_webhooks,
        &claim_keys as _,
        &claim_ids,
        &windows
    )
    .fetch_all(&mut *tx)
    .await
    .context("claiming idempotency keys")?
    .into_iter()
    .collect();
    Ok((won, claims.into_keys().map(|(w, k)| (w, k.to_owned())).collect()))
}

/// Records the seqs of the messages whose key claims won, then reads every claimed key's
/// original message. A won claim whose message was not stored (its webhook was deleted
/// between the claim and the insert) is taken back, so the key answers nothing.
async fn record_key_seqs(
    tx: &mut PgConnection,
    won: &HashSet<Uuid>,
    seqs: &HashMap<Uuid, i64>,
    claimed: Vec<(Uuid, String)>,
) -> StoreResult<Originals> {
    if claimed.is_empty() {
        return Ok(Originals::new());
    }
    let (won_ids, lost): (Vec<Uuid>, Vec<Uuid>) = won.iter().copied().partition(|id| seqs.contains_key(id));
    if !lost.is_empty() {
        let webhooks: Vec<Uuid> = claimed.iter().map(|(w, _)| *w).collect();
        sqlx::query!(
            "DELETE FROM idempotency_keys WHERE webhook_id = ANY ($1) AND message_id = ANY ($2)",
            &webhooks,
            &lost
        )
        .execute(&mut *tx)
        .await
        .context("taking back idempotency keys of messages not stored")?;
    }
    let won_seqs: Vec<i64> = won_ids.iter().map(|id| seqs[id]).collect();
    sqlx::query!(
        "UPDATE idempotency_keys k SET seq = w.seq
         FROM unnest($1::uuid[], $2::int8[]) AS w(message_id, seq), messages m
         WHERE m.id = w.message_id AND k.webhook_id = m.webhook_id AND k.message_id = w.message_id",
        &won_ids,
        &won_seqs
    )
    .execute(&mut *tx)
    .await
    .context("recording idempotency keys' seqs")?;
    let (claim_webhooks, claim_keys): (Vec<Uuid>, Vec<String>) = claimed.into_iter().unzip();
    let originals = sqlx::query!(
        r#"SELECT k.webhook_id, k.key, k.message_id, k.seq
           FROM idempotency_keys k JOIN unnest($1::uuid[], $2::text[]) AS c(webhook_id, key)
             ON k.webhook_id = c.webhook_id AND k.key = c.key"#,
        &claim_webhooks,
        &claim_keys
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading idempotency keys")?;
    Ok(originals.into_iter().map(|k| ((k.webhook_id, k.key), (k.message_id, k.seq.unwrap_or(0)))).collect())
}

fn stored_new(seqs: &HashMap<Uuid, i64>, id: &MessageId) -> StoreResult<Stored> {
    let &seq = seqs.get(id.as_uuid()).ok_or(StoreError::NotFound("webhook"))?;
    Ok(Stored { id: *id, seq: Seq(seq), duplicate: false })
}

/// The insert itself, one statement. Returns id -> seq.
pub(super) async fn insert_rows<'a>(
    db: impl PgExecutor<'_>,
    items: impl Iterator<Item = &'a (WebhookId, NewMessage)>,
) -> StoreResult<HashMap<Uuid, i64>> {
    let mut columns = InsertColumns::default();
    for (webhook, m) in items {
        columns.push(webhook, m);
    }
    if columns.ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query!(
        r#"SELECT message_id AS "id!", message_seq AS "seq!" FROM hookline_ingest($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        &columns.webhooks,
        &columns.ids,
        &columns.key_ids,
        &columns.nonces as _,
        &columns.ciphertexts as _,
        &columns.priorities,
        &columns.delays as _,
        &columns.ttls as _,
        &columns.ordering_keys as _
    )
    .fetch_all(db)
    .await
    .context("inserting messages")?;
    Ok(rows.into_iter().map(|r| (r.id, r.seq)).collect())
}

/// Messages as parallel arrays, one per column, for `unnest`.
#[derive(Default)]
struct InsertColumns<'a> {
    webhooks: Vec<Uuid>,
    ids: Vec<Uuid>,
    key_ids: Vec<i32>,
    nonces: Vec<&'a [u8]>,
    ciphertexts: Vec<&'a [u8]>,
    priorities: Vec<i16>,
    delays: Vec<Option<i32>>,
    ttls: Vec<Option<i32>>,
    ordering_keys: Vec<Option<&'a str>>,
}

impl<'a> InsertColumns<'a> {
    fn push(&mut self, webhook: &WebhookId, m: &'a NewMessage) {
        self.webhooks.push(*webhook.as_uuid());
        self.ids.push(*m.id.as_uuid());
        self.key_ids.push(m.sealed.key_id.0);
        self.nonces.push(&m.sealed.nonce);
        self.ciphertexts.push(&m.sealed.ciphertext);
        self.priorities.push(m.options.priority.get() as i16);
        self.delays.push(m.options.delay.map(DelaySeconds::get));
        self.ttls.push(m.options.ttl.map(TtlSeconds::get));
        self.ordering_keys.push(m.options.ordering_key.as_deref());
    }
}
