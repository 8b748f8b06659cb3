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
use crate::store::messages::replay::{self as store, Committed, Replayed};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/{webhook_id}/replay", web::post().to(replay));
}

/// Most messages one replay covers (toSeq - fromSeq + 1).
const MAX_RANGE: i64 = 1000;

/// Seqs read (and payloads held) at a time.
const CHUNK: i64 = 100;

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
              (status = 422, body = ErrorBody, description = "fromSeq or toSeq missing or below 1, toSeq before fromSeq, a range over 1,000 seqs, or an unknown position")))]
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
    // One transaction, read and written a chunk at a time so at most a chunk of payloads is
    // in memory; every message queued again spends the webhook's ingestion budget.
    let mut tx = crate::store::begin(&state.pool).await?;
    let (mut replayed, mut skipped): (Vec<Replayed>, usize) = (Vec::new(), 0);
    for first in (from..=to).step_by(CHUNK as usize) {
        let last = (first + CHUNK - 1).min(to);
        let originals = store::committed_range(&mut tx, req.project(), &req.webhook, Seq(first), Seq(last)).await?;
        if originals.is_empty() {
            continue;
        }
        req.auth.rate_limit_n(&state, req.webhook, Operation::Ingest, originals.len())?;
        if at_head {
            let seqs: Vec<Seq> = originals.iter().map(|o| o.seq).collect();
            replayed.extend(store::requeue_in_place(&mut tx, &req.webhook, &seqs).await?);
            continue;
        }
        let (keys, webhook) = (state.keys.clone(), req.webhook);
        let (copies, unreadable) = web::block(move || reseal(&keys, &webhook, originals))
            .await
            .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("resealing replayed payloads: {e}")))?;
        skipped += unreadable;
        replayed.extend(store::append_copies(&mut tx, &req.webhook, copies).await?);
    }
    crate::store::commit(tx).await?;
    tracing::info!(from, to, at_head, replayed = replayed.len(), skipped, "replayed");
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
