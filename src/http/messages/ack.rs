//! Acting on a held lock: commit (ACK, alone, with the next message, or many at once),
//! error (NACK) and extend. The extractors have authorized the request and read the lock
//! token; the store decides, under the delivery lock, whether the message holds it.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{deliver, deliver_batch};
use crate::domain::{storable, HoldSeconds, LockTimeout, LockToken, MaxMessages, MessageId, MessageState};
use crate::http::error::{parse_json, ApiError, ErrorBody, ErrorDetail};
use crate::http::extract::{LockClaim, LockedRequest, Read, WebhookRequest};
use crate::http::responses::{BodyErrors, WebhookErrors};
use crate::http::ApiState;
use crate::limits::Operation;
use crate::store::messages::{self as store, ConsumerCall, Failure};
use crate::store::StoreError;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitRequest {
    #[schema(value_type = Option<String>, pattern = "^lt_[0-9a-f]{32}$")]
    pub lock_token: Option<LockToken>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorRequest {
    /// Why processing failed; kept as the message's last error (cut to 2,000 characters).
    #[schema(pattern = r"^[^\u0000]*$")]
    pub reason: Option<String>,
    /// false: do not retry; the message goes straight to the dead-letter queue (default true).
    pub requeue: Option<bool>,
    /// The downstream is down, not the message: hold the webhook (deliver nothing) this many
    /// seconds, 1 up to the broker's HOOKLINE_MAX_HOLD_SECONDS (3600 unless configured, at
    /// most 86400). The message returns to its position and the attempt is not counted. Not
    /// with requeue=false.
    #[schema(minimum = 1, maximum = 3600)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub hold_seconds: Option<i64>,
    #[schema(value_type = Option<String>, pattern = "^lt_[0-9a-f]{32}$")]
    pub lock_token: Option<LockToken>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtendRequest {
    /// The lock now expires this many seconds from now (1 to 43200).
    #[schema(minimum = 1, maximum = 43200)]
    #[serde(deserialize_with = "crate::http::whole::required")]
    pub seconds: i64,
    #[schema(value_type = Option<String>, pattern = "^lt_[0-9a-f]{32}$")]
    pub lock_token: Option<LockToken>,
}

impl LockClaim for CommitRequest {
    const EMPTY_OK: bool = true;
    fn lock_token(&self) -> Option<&LockToken> {
        self.lock_token.as_ref()
    }
}

impl LockClaim for ErrorRequest {
    const EMPTY_OK: bool = true;
    fn lock_token(&self) -> Option<&LockToken> {
        self.lock_token.as_ref()
    }
}

impl LockClaim for ExtendRequest {
    const EMPTY_OK: bool = false;
    fn lock_token(&self) -> Option<&LockToken> {
        self.lock_token.as_ref()
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    #[schema(value_type = String)]
    pub id: MessageId,
    pub status: MessageState,
}

/// What a commit answers (documentation): the commit, or with next=true the message leased
/// next, or with next=true&maxMessages a DeliveredBatch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum CommitAnswer {
    Committed(Committed),
    Next(super::DeliveredMessage),
    Window(super::DeliveredBatch),
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Errored {
    #[schema(value_type = String)]
    pub id: MessageId,
    /// `queued` (it will be retried at its position) or `dead`.
    pub status: MessageState,
    pub retry_count: i32,
    pub max_retries: i32,
    /// With holdSeconds: until when the webhook delivers nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Extended {
    #[schema(value_type = String)]
    pub id: MessageId,
    pub status: MessageState,
    pub lock_expires_at: DateTime<Utc>,
}

const MAX_REASON_CHARS: usize = 2000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CommitQuery {
    /// Also lock the next message in the same transaction and answer it (200 with a
    /// DeliveredMessage), or 204 when nothing can be delivered next. In a FIFO window,
    /// nothing is leased until the window's last message is committed.
    pub next: Option<bool>,
    /// With next=true: lease up to this many (1 to 100; a FIFO webhook at most its
    /// fifoWindow) and answer a DeliveredBatch.
    #[param(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub max_messages: Option<i64>,
}

/// Acknowledge a locked message: it is done. With `?next=true`, also lock and answer the
/// next message in the same transaction (with `maxMessages`, up to that many). The messages
/// of a FIFO window are committed in the order they were leased (otherwise 409
/// `out_of_order`).
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/{message_id}/commit", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path), CommitQuery),
    request_body(content = Option<CommitRequest>),
    security(("api_key" = [])),
    responses((status = 200, body = CommitAnswer, description = "Committed; with next=true, the next message (DeliveredMessage), with maxMessages a DeliveredBatch"),
              (status = 204, description = "next=true: committed, nothing to deliver next"),
              BodyErrors, WebhookErrors,
              (status = 409, body = ErrorBody, description = "conflict: not locked, or locked under another token. out_of_order: a message of a FIFO window leased ahead of it is not committed yet. lock_superseded: an operator skipped the message this lock held"),
              (status = 422, body = ErrorBody, description = "The webhook requires the lock token (requireLockToken)")))]
#[tracing::instrument(skip_all, fields(webhook_id = %req.webhook(), message_id = %req.id()))]
pub async fn commit(
    req: LockedRequest<CommitRequest>,
    query: web::Query<CommitQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let next = match (query.next == Some(true), query.max_messages) {
        (false, Some(_)) => return Err(ApiError::Validation("maxMessages applies only with next=true".into())),
        (false, None) => None,
        (true, max) => Some(max.map(MaxMessages::parse).transpose()?.unwrap_or_default()),
    };
    let leased = state.consumers.commit(ConsumerCall::commit(&req.target(), next)).await?;
    let delivered = match (next, query.max_messages) {
        (None, _) => return Ok(HttpResponse::Ok().json(Committed { id: req.id(), status: MessageState::Committed })),
        (Some(_), Some(_)) => deliver_batch(&state, req.webhook(), leased).await,
        (Some(_), None) => match leased.into_iter().next() {
            None => return Ok(HttpResponse::NoContent().finish()),
            Some(next) => deliver(&state, req.webhook(), next).await.map(|m| HttpResponse::Ok().json(m)),
        },
    };
    match delivered {
        // The commit stands: an unreadable next message is dead-lettered (see `deliver`),
        // not reported as a failed commit.
        Err(ApiError::UnreadablePayload(_) | ApiError::KeyUnavailable { .. }) => Ok(HttpResponse::NoContent().finish()),
        other => other,
    }
}

/// Report a failed attempt: the message returns to its position, or goes to the
/// dead-letter queue when its retries are used up. In a FIFO window, every later message of
/// the window returns to the queue with it (no attempt counted for them). With
/// `holdSeconds`, the downstream is down, not the message: the webhook delivers nothing for
/// that long and the attempt is not counted (the reason is kept as its last error).
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/{message_id}/error", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), request_body(content = Option<ErrorRequest>),
    security(("api_key" = [])),
    responses((status = 200, body = Errored), BodyErrors, WebhookErrors,
              (status = 409, body = ErrorBody, description = "conflict: not locked, or locked under another token. lock_superseded: an operator skipped the message this lock held"),
              (status = 422, body = ErrorBody, description = "The webhook requires the lock token (requireLockToken), or holdSeconds is out of range or given with requeue=false")))]
#[tracing::instrument(skip_all, fields(webhook_id = %req.webhook(), message_id = %req.id()))]
pub async fn error(req: LockedRequest<ErrorRequest>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let reason = req.body.reason.as_deref().map(|r| storable("reason", r)).transpose()?;
    let reason: Option<String> = reason.map(|r| r.chars().take(MAX_REASON_CHARS).collect());
    let requeue = req.body.requeue.unwrap_or(true);
    let hold = req.body.hold_seconds.map(|s| HoldSeconds::parse(s, state.max_hold)).transpose()?;
    if hold.is_some() && !requeue {
        return Err(ApiError::Validation(
            "holdSeconds keeps the message queued: it cannot go with requeue=false".into(),
        ));
    }
    let failure = Failure { reason, requeue, hold };
    let outcome = state.consumers.error(ConsumerCall::error(&req.target(), failure)).await?;
    Ok(HttpResponse::Ok().json(Errored {
        id: req.id(),
        status: outcome.state,
        retry_count: outcome.retry_count,
        max_retries: outcome.max_retries,
        held_until: outcome.held_until,
    }))
}

/// Renew the lock on a message being processed, so it does not expire at the old time (in a
/// FIFO window, the whole window's lock).
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/{message_id}/extend", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), request_body = ExtendRequest,
    security(("api_key" = [])),
    responses((status = 200, body = Extended), BodyErrors, WebhookErrors,
              (status = 409, body = ErrorBody, description = "conflict: not locked, or locked under another token. lock_superseded: an operator skipped the message this lock held"),
              (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook_id = %req.webhook(), message_id = %req.id()))]
pub async fn extend(req: LockedRequest<ExtendRequest>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let seconds = LockTimeout::parse(req.body.seconds)
        .map_err(|_| ApiError::Validation(format!("seconds must be between 1 and {}", LockTimeout::MAX)))?;
    let lock_expires_at = store::extend(&state.pool, &req.target(), seconds.get()).await?;
    Ok(HttpResponse::Ok().json(Extended { id: req.id(), status: MessageState::Locked, lock_expires_at }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitBatch {
    /// 1 to 100 locked messages, each with the token its dequeue answered.
    #[schema(min_items = 1, max_items = 100)]
    pub messages: Vec<CommitEntry>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitEntry {
    #[schema(value_type = String, pattern = "^msg_[0-9a-f]{32}$")]
    pub id: MessageId,
    #[schema(value_type = Option<String>, pattern = "^lt_[0-9a-f]{32}$")]
    pub lock_token: Option<LockToken>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommittedBatch {
    /// The ids committed, in input order.
    #[schema(value_type = Vec<String>)]
    pub committed: Vec<MessageId>,
    /// The entries not committed and why (`not_found`; `conflict`: not locked, or locked
    /// under another token; `out_of_order`: a message of a FIFO window leased ahead of it is
    /// not committed; `lock_superseded`: an operator skipped the message this lock held;
    /// `validation_failed`: the webhook requires the lock token), in input order.
    pub failed: Vec<CommitFailure>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommitFailure {
    #[schema(value_type = String)]
    pub id: MessageId,
    pub error: ErrorDetail,
}

/// Most messages one batch commit may name.
const MAX_COMMIT_BATCH: usize = 100;

/// Acknowledge up to 100 locked messages in one request, in one transaction (one statement
/// in standard mode; in FIFO mode each in turn, so a window is committed in entry order).
/// Each entry succeeds or fails on its own: 200 lists which were committed and why the
/// others were not.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/commit", tag = "messages",
    params(("webhook_id" = String, Path)), request_body = CommitBatch, security(("api_key" = [])),
    responses((status = 200, body = CommittedBatch), BodyErrors, WebhookErrors, (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook_id = %req.webhook))]
pub async fn commit_batch(
    req: WebhookRequest<Read>,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let batch: CommitBatch = parse_json(&body, false)?;
    if batch.messages.is_empty() || batch.messages.len() > MAX_COMMIT_BATCH {
        return Err(ApiError::Validation(format!("messages must hold 1 to {MAX_COMMIT_BATCH} entries")));
    }
    req.auth.rate_limit_n(&state, req.webhook, Operation::Ack, batch.messages.len())?;
    let entries: Vec<(MessageId, Option<LockToken>)> = batch.messages.iter().map(|e| (e.id, e.lock_token)).collect();
    // One transaction: a FIFO window's commits, each its own statement, share one flush.
    let mut tx = crate::store::begin(&state.pool).await?;
    let outcomes = store::commit_many(&mut tx, req.project(), &req.webhook, &entries).await?;
    crate::store::commit(tx).await?;
    let mut answer = CommittedBatch { committed: Vec::new(), failed: Vec::new() };
    for ((id, _), outcome) in entries.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => answer.committed.push(id),
            // The database failing is the request failing, not one entry.
            Err(e @ StoreError::Database(_)) => return Err(e.into()),
            Err(e) => answer.failed.push(CommitFailure { id, error: ApiError::from(e).detail() }),
        }
    }
    Ok(HttpResponse::Ok().json(answer))
}
