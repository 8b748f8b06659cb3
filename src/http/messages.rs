//! /api/webhooks/{id}/messages: the consumer's side. Dequeue locks the head of the queue;
//! commit (ACK) and error (NACK) end the lock; a stale lock token gets 409.

use std::collections::BTreeMap;

use std::time::Duration;

use actix_web::{web, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError, ErrorBody, ErrorDetail};
use super::{id, ApiState, Authenticated};
use crate::domain::{
    LockTimeout, LockToken, MaxMessages, MessageId, MessageState, Payload, Priority, Scope, Seq, SettingError,
    WebhookId,
};
use crate::limits::Operation;
use crate::store::messages::{self as store, LockedMessage, LockedRef};
use crate::store::StoreError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // One scope, static segment first: actix-router tries each dynamic pattern in turn as a
    // regex, so the hot consumer routes are kept few and early (see http::routes).
    cfg.service(
        web::scope("/webhooks/{webhook_id}/messages")
            .route("/dequeue", web::post().to(dequeue))
            .route("", web::post().to(super::publish::publish))
            .route("/batch", web::post().to(super::publish::publish_batch))
            .route("/commit", web::post().to(commit_batch))
            .route("/{message_id}/commit", web::post().to(commit))
            .route("/{message_id}/error", web::post().to(error))
            .route("/{message_id}/extend", web::post().to(extend))
            .route("/{message_id}", web::get().to(get)),
    );
}

/// A locked message, decrypted for its consumer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredMessage {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    pub status: MessageState,
    /// Present it to commit or error, to prove the lock is still yours.
    #[schema(value_type = String)]
    pub lock_token: LockToken,
    pub lock_expires_at: DateTime<Utc>,
    pub retry_count: i32,
    pub max_retries: i32,
    pub received_at: DateTime<Utc>,
    /// 0 to 10, higher delivered first (0 unless the webhook has priorities enabled).
    #[schema(value_type = i32)]
    pub priority: Priority,
    /// The request headers as received (hop-by-hop ones removed); repeated names joined by ", ".
    pub headers: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitRequest {
    #[schema(value_type = Option<String>)]
    pub lock_token: Option<LockToken>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorRequest {
    /// Why processing failed; kept as the message's last error (up to 2,000 characters).
    pub reason: Option<String>,
    /// false: do not retry; the message goes straight to the dead-letter queue (default true).
    pub requeue: Option<bool>,
    #[schema(value_type = Option<String>)]
    pub lock_token: Option<LockToken>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    #[schema(value_type = String)]
    pub id: MessageId,
    pub status: MessageState,
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
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    pub status: MessageState,
    pub retry_count: i32,
    pub max_retries: i32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub lock_expires_at: Option<DateTime<Utc>>,
    pub committed_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
    #[schema(value_type = i32)]
    pub priority: Priority,
    /// When a delayed message joins its queue.
    pub deliver_at: Option<DateTime<Utc>>,
}

const MAX_REASON_CHARS: usize = 2000;

/// Lock and receive what can be delivered: in a FIFO webhook the head of the queue (204
/// while it is locked by another consumer, or when the queue is empty), in a standard
/// webhook up to `maxMessages` at once. With `?wait=N`, long-poll.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/dequeue", tag = "messages",
    params(("webhook_id" = String, Path), DequeueQuery), security(("api_key" = [])),
    responses((status = 200, body = DeliveredMessage, description = "Without maxMessages: one message. With maxMessages: a DeliveredBatch"),
              (status = 204, description = "Nothing to deliver"),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody, description = "Rate limited: see Retry-After and RateLimit-*"), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody),
              (status = 500, body = ErrorBody, description = "payload_unreadable: the message was dead-lettered")))]
#[tracing::instrument(skip_all, fields(webhook_id = %path))]
pub async fn dequeue(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<DequeueQuery>,
) -> Result<HttpResponse, ApiError> {
    let webhook: WebhookId = id(&path, "webhook")?;
    auth.require(Scope::Consume, Some(&webhook))?;
    let wait = match query.wait {
        None => Duration::ZERO,
        Some(s @ 0..=MAX_WAIT_SECONDS) => Duration::from_secs(s),
        Some(_) => return Err(ApiError::Validation(format!("wait must be between 0 and {MAX_WAIT_SECONDS} seconds"))),
    };
    let max = query.max_messages.map(MaxMessages::parse).transpose()?;
    let visibility = query
        .visibility_timeout
        .map(|v| LockTimeout::parse(v).map_err(|e| SettingError { field: "visibilityTimeout", ..e }))
        .transpose()?;
    auth.rate_limit(&state, webhook, Operation::Dequeue)?;
    let deadline = tokio::time::Instant::now() + wait;
    let wakeup = state.wakeups.subscribe(webhook);
    loop {
        // Armed before the check: a wake-up that lands between the check and the wait counts.
        let woken = wakeup.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let locked = store::dequeue(&state.pool, auth.project(), &webhook, max.unwrap_or_default(), visibility).await?;
        if !locked.is_empty() {
            return match max {
                None => {
                    let first = locked.into_iter().next().expect("not empty");
                    Ok(HttpResponse::Ok().json(deliver(&state, &webhook, first).await?))
                }
                Some(_) => deliver_batch(&state, &webhook, locked).await,
            };
        }
        if wait.is_zero() {
            return Ok(HttpResponse::NoContent().finish());
        }
        // A delay running out or a lock expiring wakes nobody: wait no longer than that.
        let due = store::next_due(&state.pool, &webhook).await?.map(|at| {
            let from_now = (at - Utc::now()).to_std().unwrap_or_default().max(MIN_RECHECK);
            tokio::time::Instant::now() + from_now
        });
        let until = due.map_or(deadline, |due| due.min(deadline));
        if tokio::time::timeout_at(until, woken).await.is_err() && until == deadline {
            return Ok(HttpResponse::NoContent().finish());
        }
    }
}

/// Longest long-poll a dequeue may ask for.
const MAX_WAIT_SECONDS: u64 = 20;

/// Shortest pause before re-checking a queue whose next due time has (by our clock) passed.
const MIN_RECHECK: Duration = Duration::from_millis(20);

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DequeueQuery {
    /// Long-poll: hold the request up to this many seconds (at most 20) until a message can
    /// be delivered, then answer it, or 204 when the time runs out.
    pub wait: Option<u64>,
    /// Lock up to this many messages (1 to 100) and answer a DeliveredBatch. A FIFO webhook
    /// has at most one message in flight, so it answers at most one.
    pub max_messages: Option<i64>,
    /// Seconds these locks last (1 to 43200), instead of the webhook's lockTimeoutSeconds.
    pub visibility_timeout: Option<i64>,
}

/// What a dequeue with `maxMessages` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveredBatch {
    /// In delivery order: priority, then seq.
    pub messages: Vec<DeliveredMessage>,
}

/// Opens each message; unreadable ones are dead-lettered and left out.
async fn deliver_batch(
    state: &ApiState,
    webhook: &WebhookId,
    locked: Vec<LockedMessage>,
) -> Result<HttpResponse, ApiError> {
    let mut messages = Vec::with_capacity(locked.len());
    for m in locked {
        match deliver(state, webhook, m).await {
            Ok(delivered) => messages.push(delivered),
            Err(ApiError::UnreadablePayload(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if messages.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    Ok(HttpResponse::Ok().json(DeliveredBatch { messages }))
}

/// Opens a locked message for its consumer. One that cannot be opened goes to the
/// dead-letter queue with the reason, so it neither returns garbage nor blocks the queue.
async fn deliver(state: &ApiState, webhook: &WebhookId, m: LockedMessage) -> Result<DeliveredMessage, ApiError> {
    let opened = state.keys.open(webhook, &m.id, &m.sealed);
    let payload = match opened.map_err(|e| e.to_string()).and_then(|p| Payload::decode(&p).map_err(|e| e.to_string())) {
        Ok(payload) => payload,
        Err(reason) => {
            tracing::error!(message_id = %m.id, %reason, "stored payload cannot be opened");
            store::bury(&state.pool, webhook, &m.id, &m.lock_token, &format!("payload unreadable: {reason}")).await?;
            return Err(ApiError::UnreadablePayload(m.id));
        }
    };
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &payload.headers {
        headers.entry(name.clone()).and_modify(|v| *v = format!("{v}, {value}")).or_insert_with(|| value.clone());
    }
    let content_type = payload.header("content-type").map(str::to_owned);
    let (body, body_base64) = match String::from_utf8(payload.body) {
        Ok(text) => (Some(text), None),
        Err(raw) => (None, Some(BASE64.encode(raw.as_bytes()))),
    };
    Ok(DeliveredMessage {
        id: m.id,
        seq: m.seq,
        status: MessageState::Locked,
        lock_token: m.lock_token,
        lock_expires_at: m.lock_expires_at,
        retry_count: m.retry_count,
        max_retries: m.max_retries,
        received_at: m.received_at,
        priority: m.priority,
        headers,
        content_type,
        body,
        body_base64,
    })
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CommitQuery {
    /// Also lock the next message in the same transaction and answer it (200 with a
    /// DeliveredMessage), or 204 when nothing can be delivered next.
    pub next: Option<bool>,
}

/// Acknowledge a locked message: it is done. With `?next=true`, also lock and answer the
/// next message in the same transaction.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/{message_id}/commit", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path), CommitQuery),
    request_body(content = Option<CommitRequest>),
    security(("api_key" = [])),
    responses((status = 200, body = Committed, description = "Committed; with next=true, the next message (DeliveredMessage)"),
              (status = 204, description = "next=true: committed, nothing to deliver next"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody, description = "Rate limited: see Retry-After and RateLimit-*"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "Not locked, or locked under another token")))]
#[tracing::instrument(skip_all, fields(path = ?path))]
pub async fn commit(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    query: web::Query<CommitQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (webhook, message) = ids(&path)?;
    auth.require(Scope::Consume, Some(&webhook))?;
    auth.rate_limit(&state, webhook, Operation::Ack)?;
    let req: CommitRequest = parse_json(&body, true)?;
    let target =
        LockedRef { project: auth.project(), webhook: &webhook, message: &message, token: req.lock_token.as_ref() };
    let mut conn = state.pool.acquire().await?;
    if query.next != Some(true) {
        store::commit(&mut conn, &target).await?;
        return Ok(HttpResponse::Ok().json(Committed { id: message, status: MessageState::Committed }));
    }
    match store::commit_next(&mut conn, &target).await? {
        None => Ok(HttpResponse::NoContent().finish()),
        // The commit stands: an unreadable next message is dead-lettered (see `deliver`),
        // not reported as a failed commit.
        Some(next) => match deliver(&state, &webhook, next).await {
            Ok(delivered) => Ok(HttpResponse::Ok().json(delivered)),
            Err(ApiError::UnreadablePayload(_)) => Ok(HttpResponse::NoContent().finish()),
            Err(e) => Err(e),
        },
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitBatch {
    /// 1 to 100 locked messages, each with the token its dequeue answered.
    pub messages: Vec<CommitEntry>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitEntry {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = Option<String>)]
    pub lock_token: Option<LockToken>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommittedBatch {
    /// The ids committed, in input order.
    #[schema(value_type = Vec<String>)]
    pub committed: Vec<MessageId>,
    /// The entries not committed and why (`not_found`, or `conflict`: not locked, or
    /// locked under another token), in input order.
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

/// Acknowledge up to 100 locked messages in one request (one statement in standard mode).
/// Each entry succeeds or fails on its own: 200 lists which were committed and why the
/// others were not.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/commit", tag = "messages",
    params(("webhook_id" = String, Path)), request_body = CommitBatch, security(("api_key" = [])),
    responses((status = 200, body = CommittedBatch), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook_id = %path))]
pub async fn commit_batch(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let webhook: WebhookId = id(&path, "webhook")?;
    auth.require(Scope::Consume, Some(&webhook))?;
    let req: CommitBatch = parse_json(&body, false)?;
    if req.messages.is_empty() || req.messages.len() > MAX_COMMIT_BATCH {
        return Err(ApiError::Validation(format!("messages must hold 1 to {MAX_COMMIT_BATCH} entries")));
    }
    auth.rate_limit_n(&state, webhook, Operation::Ack, req.messages.len())?;
    let entries: Vec<(MessageId, Option<LockToken>)> = req.messages.iter().map(|e| (e.id, e.lock_token)).collect();
    let mut conn = state.pool.acquire().await?;
    let outcomes = store::commit_many(&mut conn, auth.project(), &webhook, &entries).await?;
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

/// Report a failed attempt: the message returns to its position, or goes to the
/// dead-letter queue when its retries are used up.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/{message_id}/error", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), request_body(content = Option<ErrorRequest>),
    security(("api_key" = [])),
    responses((status = 200, body = Errored), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody, description = "Rate limited: see Retry-After and RateLimit-*"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "Not locked, or locked under another token")))]
#[tracing::instrument(skip_all, fields(path = ?path))]
pub async fn error(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (webhook, message) = ids(&path)?;
    auth.require(Scope::Consume, Some(&webhook))?;
    auth.rate_limit(&state, webhook, Operation::Ack)?;
    let req: ErrorRequest = parse_json(&body, true)?;
    let reason: Option<String> = req.reason.map(|r| r.chars().take(MAX_REASON_CHARS).collect());
    let target =
        LockedRef { project: auth.project(), webhook: &webhook, message: &message, token: req.lock_token.as_ref() };
    let mut conn = state.pool.acquire().await?;
    let outcome = store::error(&mut conn, &target, reason.as_deref(), req.requeue.unwrap_or(true)).await?;
    Ok(HttpResponse::Ok().json(Errored {
        id: message,
        status: outcome.state,
        retry_count: outcome.retry_count,
        max_retries: outcome.max_retries,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtendRequest {
    /// The lock now expires this many seconds from now (1 to 43200).
    pub seconds: i64,
    #[schema(value_type = Option<String>)]
    pub lock_token: Option<LockToken>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Extended {
    #[schema(value_type = String)]
    pub id: MessageId,
    pub status: MessageState,
    pub lock_expires_at: DateTime<Utc>,
}

/// Renew the lock on a message being processed, so it does not expire at the old time.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/{message_id}/extend", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), request_body = ExtendRequest,
    security(("api_key" = [])),
    responses((status = 200, body = Extended), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "Not locked, or locked under another token"),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn extend(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (webhook, message) = ids(&path)?;
    auth.require(Scope::Consume, Some(&webhook))?;
    auth.rate_limit(&state, webhook, Operation::Ack)?;
    let req: ExtendRequest = parse_json(&body, false)?;
    let seconds = LockTimeout::parse(req.seconds)
        .map_err(|_| ApiError::Validation(format!("seconds must be between 1 and {}", LockTimeout::MAX)))?;
    let target =
        LockedRef { project: auth.project(), webhook: &webhook, message: &message, token: req.lock_token.as_ref() };
    let mut conn = state.pool.acquire().await?;
    let lock_expires_at = store::extend(&mut conn, &target, seconds.get()).await?;
    Ok(HttpResponse::Ok().json(Extended { id: message, status: MessageState::Locked, lock_expires_at }))
}

/// A message's state, counters, timestamps and last error.
#[utoipa::path(get, path = "/api/webhooks/{webhook_id}/messages/{message_id}", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = MessageStatus), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody, description = "Rate limited: see Retry-After and RateLimit-*"), (status = 404, body = ErrorBody)))]
pub async fn get(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (webhook, message) = ids(&path)?;
    auth.require(Scope::Consume, Some(&webhook))?;
    let m = store::find(&state.pool, auth.project(), &webhook, &message).await?;
    Ok(HttpResponse::Ok().json(MessageStatus {
        id: m.id,
        seq: m.seq,
        status: m.state,
        retry_count: m.retry_count,
        max_retries: m.max_retries,
        last_error: m.last_error,
        received_at: m.received_at,
        expires_at: m.expires_at,
        lock_expires_at: m.lock_expires_at,
        committed_at: m.committed_at,
        dead_at: m.dead_at,
        priority: m.priority,
        deliver_at: m.deliver_at,
    }))
}

pub(super) fn ids(path: &(String, String)) -> Result<(WebhookId, MessageId), ApiError> {
    Ok((id(&path.0, "webhook")?, id(&path.1, "message")?))
}
