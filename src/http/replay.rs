//! POST /api/webhooks/{id}/replay: deliver committed messages again, in order.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError, ErrorBody};
use super::extract::{Manage, WebhookRequest};
use super::responses::{BodyErrors, WebhookErrors};
use super::ApiState;
use crate::crypto::{KeyRing, Sealed};
use crate::domain::{MessageId, Seq, WebhookId};
use crate::limits::Operation;
use crate::store::messages::replay::{self as store, Committed};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/{webhook_id}/replay", web::post().to(replay));
}

/// Most messages one replay covers (toSeq - fromSeq + 1).
const MAX_RANGE: i64 = 1000;

/// Seqs read and resealed at a time.
const CHUNK: i64 = 100;

/// Most payload bytes (as stored) one tail replay copies: they are held in memory.
const MAX_BYTES: i64 = 64 * 1024 * 1024;

/// Copies of the originals, each payload sealed again under its copy's new id (off the async
/// threads: up to a chunk of large payloads); with how many could not be opened.
fn reseal(
    keys: &KeyRing,
    webhook: &WebhookId,
    originals: Vec<Committed>,
) -> (Vec<(Committed, MessageId, Sealed)>, usize) {
    let mut copies = Vec::with_capacity(originals.len());
    let mut unreadable = 0;
    for original in originals {
        match keys.open(webhook, &original.id, &original.sealed) {
            Ok(payload) => {
                let id = MessageId::new_random();
                let sealed = keys.seal(webhook, &id, &payload);
                copies.push((original, id, sealed));
            }
            Err(e) => {
                tracing::warn!(message_id = %original.id, error = %e, "committed message cannot be opened; not replayed");
                unreadable += 1;
            }
        }
    }
    (copies, unreadable)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    /// First seq of the range (inclusive).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub from_seq: Option<i64>,
    /// Last seq of the range (inclusive); at most 1,000 seqs after fromSeq - 1.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub to_seq: Option<i64>,
    /// `tail` (default): copies appended behind everything waiting, each naming its
    /// original (`replayOf`). `head`: the originals themselves back at their own positions,
    /// ahead of everything that arrived after them.
    #[schema(value_type = Option<ReplayPosition>)]
    pub position: Option<String>,
}

/// Where replayed messages go (documentation of the field's values).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ReplayPosition {
    Head,
    Tail,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayResponse {
    /// How many were queued again.
    pub replayed: usize,
    pub position: String,
    /// Committed messages of the range that could not be opened (tampered with, or sealed
    /// with a key this broker lacks): not replayed.
    pub skipped: usize,
    /// In delivery order.
    pub messages: Vec<ReplayedMessage>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayedMessage {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    /// The committed message this delivers again (itself at the head).
    #[schema(value_type = String)]
    pub replay_of: MessageId,
}

/// Queue committed messages of a seq range again, in seq order, while they are within their
/// TTL (messages of the range in any other state are left alone). At the tail they are new
/// messages (new ids and seqs) naming their originals; at the head the originals return to
/// their own positions, their attempts counted from zero.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/replay", tag = "operate",
    params(("webhook_id" = String, Path)), request_body = ReplayRequest, security(("api_key" = [])),
    responses((status = 200, body = ReplayResponse), BodyErrors, WebhookErrors,
              (status = 422, body = ErrorBody, description = "fromSeq or toSeq missing or below 1, toSeq before fromSeq, a range over 1,000 seqs, an unknown position, or (at the tail) over 64 MiB of payloads")))]
#[tracing::instrument(skip_all, fields(webhook_id = %req.webhook))]
pub async fn replay(
    req: WebhookRequest<Manage>,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: ReplayRequest = parse_json(&body, false)?;
    let (Some(from), Some(to)) = (body.from_seq, body.to_seq) else {
        return Err(ApiError::Validation("fromSeq and toSeq are required".into()));
    };
    if from < 1 || to < from || to - from >= MAX_RANGE {
        return Err(ApiError::Validation(format!(
            "fromSeq and toSeq must be at least 1, toSeq not before fromSeq, at most {MAX_RANGE} seqs"
        )));
    }
    let at_head = match body.position.as_deref() {
        None | Some("tail") => false,
        Some("head") => true,
        Some(_) => return Err(ApiError::Validation("position must be head or tail".into())),
    };
    let (from, to) = (Seq(from), Seq(to));
    // What the range holds decides, before any work: every message queued again spends the
    // webhook's ingestion budget, and the payloads resealed are held in memory at once.
    let size = store::committed_size(&state.pool, req.project(), &req.webhook, from, to).await?;
    if !at_head && size.bytes > MAX_BYTES {
        return Err(ApiError::Validation(format!(
            "the range holds {} bytes of payloads, over the {MAX_BYTES} one replay may copy: replay a smaller range",
            size.bytes
        )));
    }
    if size.messages > 0 {
        req.auth.rate_limit_n(&state, req.webhook, Operation::Ingest, size.messages)?;
    }
    let (replayed, skipped) = if at_head {
        let mut tx = crate::store::begin(&state.pool).await?;
        let replayed = store::requeue_in_place(&mut tx, &req.webhook, from, to).await?;
        crate::store::commit(tx).await?;
        (replayed, 0)
    } else {
        // Read and resealed a chunk at a time, off the async threads; inserted at the end in
        // one short transaction (ingestion of the webhook waits on it only that long).
        let mut copies = Vec::new();
        let mut skipped = 0;
        for first in (from.0..=to.0).step_by(CHUNK as usize) {
            let last = Seq((first + CHUNK - 1).min(to.0));
            let originals = store::committed_range(&state.pool, &req.webhook, Seq(first), last).await?;
            let (keys, webhook) = (state.keys.clone(), req.webhook);
            let (resealed, unreadable) = web::block(move || reseal(&keys, &webhook, originals))
                .await
                .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("resealing replayed payloads: {e}")))?;
            copies.extend(resealed);
            skipped += unreadable;
        }
        let mut tx = crate::store::begin(&state.pool).await?;
        let replayed = store::append_copies(&mut tx, &req.webhook, copies).await?;
        crate::store::commit(tx).await?;
        (replayed, skipped)
    };
    tracing::info!(from = from.0, to = to.0, at_head, replayed = replayed.len(), skipped, "replayed");
    Ok(HttpResponse::Ok().json(ReplayResponse {
        replayed: replayed.len(),
        position: if at_head { "head" } else { "tail" }.into(),
        skipped,
        messages: replayed
            .into_iter()
            .map(|r| ReplayedMessage { id: r.id, seq: r.seq, replay_of: r.replay_of })
            .collect(),
    }))
}
