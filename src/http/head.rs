//! Operating a webhook's queue: why its head does not move (`GET .../head`), skipping the head
//! to the dead-letter queue, and pausing and resuming delivery.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError, ErrorBody};
use super::extract::{Manage, Read, WebhookRequest};
use super::responses::{BodyErrors, WebhookErrors};
use super::webhooks::{respond, WebhookResponse};
use super::ApiState;
use crate::domain::{storable, DeliveryMode, MessageId, MessageState, Priority, QueueState, Seq};
use crate::store::head::{self as store, QueuedMessage};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/{webhook_id}/head", web::get().to(view))
        .route("/webhooks/{webhook_id}/head/skip", web::post().to(skip))
        .route("/webhooks/{webhook_id}/pause", web::post().to(pause))
        .route("/webhooks/{webhook_id}/resume", web::post().to(resume));
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadResponse {
    /// Why the head moves or not: `paused` and `held` first, then `locked` (FIFO: a consumer
    /// holds the head; standard: everything is in flight), `ready`, `delayed`, `empty`.
    pub state: QueueState,
    pub mode: DeliveryMode,
    pub paused_at: Option<DateTime<Utc>>,
    /// A consumer's hold (error with holdSeconds): nothing is delivered before then.
    pub held_until: Option<DateTime<Utc>>,
    /// FIFO: the locked message, else the first in line. Standard: the next to deliver.
    pub head: Option<HeadMessage>,
    /// FIFO: the lock on the head (and its window), also once expired and not yet taken over.
    pub lock: Option<LockInfo>,
    /// When the head may next be delivered: now when ready; null while paused or empty.
    pub next_eligible_at: Option<DateTime<Utc>>,
    pub waiting: Waiting,
    /// A webhook with orderingKey: the keys with a message in flight, whose later messages
    /// wait (oldest first, at most ten). Empty elsewhere.
    pub blocked_keys: Vec<BlockedKeyInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedKeyInfo {
    /// The ordering key (`""`: messages that carried none).
    pub key: String,
    /// The key's message in flight.
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    pub lock_expires_at: DateTime<Utc>,
    pub retry_count: i32,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeadMessage {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    #[schema(value_type = i32)]
    pub priority: Priority,
    pub retry_count: i32,
    pub max_retries: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub attempts: Attempts,
    pub received_at: DateTime<Utc>,
    pub age_seconds: f64,
    /// Bytes stored (sealed headers and body).
    pub size_bytes: i32,
    /// Its ordering key, on a webhook with orderingKey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Failed attempts by cause (counted apart from this release on; retryCount is their sum).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempts {
    /// Errors (NACKs) from consumers.
    pub errors: i32,
    /// Locks that expired without a commit or an error.
    pub lock_expiries: i32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockInfo {
    pub acquired_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    /// How often its consumer extended it.
    pub extensions: i32,
    /// Messages under it: the head and the rest of its window.
    pub messages: i32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// Deliverable messages behind the head.
    pub count: i64,
    /// Delayed messages, not yet in line.
    pub delayed: i64,
    /// Messages locked by consumers (FIFO: the head and its window).
    pub in_flight: i64,
    /// Age of the oldest deliverable message not locked, head included.
    pub oldest_age_seconds: Option<f64>,
    /// The next few behind the head, in delivery order.
    pub next: Vec<WaitingMessage>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitingMessage {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    #[schema(value_type = i32)]
    pub priority: Priority,
    pub size_bytes: i32,
    pub age_seconds: f64,
    pub retry_count: i32,
    /// Leased with the head, in its FIFO window.
    pub leased: bool,
    /// Its ordering key, on a webhook with orderingKey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn age(of: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    ((now - of).num_milliseconds().max(0) as f64) / 1000.0
}

/// Why is this webhook blocked: its state, the head message with its attempts by cause and
/// last error, the lock on it, when it may next be delivered, and what waits behind it.
/// Read from indexes and counters, never by scanning the queue.
#[utoipa::path(get, path = "/api/webhooks/{webhook_id}/head", tag = "operate",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = HeadResponse), WebhookErrors))]
pub async fn view(req: WebhookRequest<Read>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut tx = crate::store::begin(&state.pool).await?;
    let view = store::view(&mut tx, req.project(), &req.webhook).await?;
    crate::store::commit(tx).await?;
    let now = Utc::now();
    let head = view.head.as_ref().map(|h| HeadMessage {
        id: h.id,
        seq: h.seq,
        priority: h.priority,
        retry_count: h.retry_count,
        max_retries: view.max_retries,
        last_error: h.last_error.clone(),
        last_error_at: h.last_error_at,
        attempts: Attempts { errors: h.error_attempts, lock_expiries: h.expiry_attempts },
        received_at: h.received_at,
        age_seconds: age(h.received_at, now),
        size_bytes: h.size,
        key: h.key.clone(),
    });
    let waiting_message = |m: &QueuedMessage| WaitingMessage {
        id: m.id,
        seq: m.seq,
        priority: m.priority,
        size_bytes: m.size,
        age_seconds: age(m.received_at, now),
        retry_count: m.retry_count,
        leased: m.leased,
        key: m.key.clone(),
    };
    Ok(HttpResponse::Ok().json(HeadResponse {
        state: view.state(now),
        mode: view.mode,
        paused_at: view.paused_at,
        held_until: view.held_until.filter(|until| *until > now),
        head,
        lock: view.lock.as_ref().map(|l| LockInfo {
            acquired_at: l.acquired_at,
            expires_at: l.expires_at,
            extensions: l.extensions,
            messages: l.messages,
        }),
        next_eligible_at: view.next_eligible_at(now),
        waiting: Waiting {
            count: view.waiting(),
            delayed: view.stats.delayed,
            in_flight: view.stats.locked,
            oldest_age_seconds: view.stats.oldest_queued_age_seconds,
            next: view.behind.iter().map(waiting_message).collect(),
        },
        blocked_keys: view
            .blocked_keys
            .iter()
            .map(|b| BlockedKeyInfo {
                key: b.key.clone(),
                id: b.id,
                seq: b.seq,
                lock_expires_at: b.lock_expires_at,
                retry_count: b.retry_count,
                last_error: b.last_error.clone(),
            })
            .collect(),
    }))
}

const MAX_REASON_CHARS: usize = 2000;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkipRequest {
    /// Why: kept as the dead letter's last error, beside the API key that skipped it.
    #[schema(min_length = 1, max_length = 2000, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    pub reason: String,
    /// Skip only if this is still the head's seq (as the head view showed it); otherwise 409
    /// `head_moved`.
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub expect_seq: Option<i64>,
    /// On a webhook with orderingKey (and only there): the key whose head to skip (the head
    /// view's blockedKeys lists those in flight; `""` is the fallback key).
    #[schema(max_length = 255)]
    pub key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedResponse {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    /// Always `dead`: in the dead-letter queue, from where it can be retried.
    pub status: MessageState,
    /// The head was locked: its consumer's commit, error and extend now answer 409
    /// `lock_superseded`.
    pub lock_superseded: bool,
}

/// Move a FIFO webhook's head to the dead-letter queue, whether or not it is locked, so what
/// waits behind it moves. A lock on it is released (its window's other messages return to
/// the queue uncounted) and fenced: its consumer's later commit, error or extend answers 409
/// `lock_superseded`. Who skipped it and why are kept on the dead letter.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/head/skip", tag = "operate",
    params(("webhook_id" = String, Path)), request_body = SkipRequest, security(("api_key" = [])),
    responses((status = 200, body = SkippedResponse), BodyErrors, WebhookErrors,
              (status = 409, body = ErrorBody, description = "head_moved: the head is no longer expectSeq. no_head: nothing is in line. not_fifo: a standard webhook has no head that blocks"),
              (status = 422, body = ErrorBody, description = "reason blank, too long or holding a NUL; key given on a webhook without orderingKey, or missing on one with it")))]
#[tracing::instrument(skip_all, fields(webhook_id = %req.webhook))]
pub async fn skip(
    req: WebhookRequest<Manage>,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: SkipRequest = parse_json(&body, false)?;
    let reason = storable("reason", &body.reason)?.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::Validation(format!("reason must be 1 to {MAX_REASON_CHARS} characters, not blank")));
    }
    let actor = format!("api-key:{}", req.auth.principal.key.0);
    let mut tx = crate::store::begin(&state.pool).await?;
    let key = body.key.as_deref().map(|k| storable("key", k)).transpose()?;
    if key.is_some_and(|k| k.chars().count() > 255) {
        return Err(ApiError::Validation("key is an ordering key: at most 255 characters".into()));
    }
    let skipped =
        store::skip(&mut tx, req.project(), &req.webhook, body.expect_seq.map(Seq), key, reason, &actor).await?;
    crate::store::commit(tx).await?;
    tracing::info!(seq = skipped.seq.0, superseded = skipped.superseded, by = %actor, "head skipped");
    Ok(HttpResponse::Ok().json(SkippedResponse {
        id: skipped.id,
        seq: skipped.seq,
        status: MessageState::Dead,
        lock_superseded: skipped.superseded,
    }))
}

/// Pause delivery: ingestion goes on storing, dequeue answers 204 with `Hookline-Queue-State:
/// paused`, and a message already locked may still be committed or errored. Pausing a
/// paused webhook keeps its first pausedAt.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/pause", tag = "operate",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WebhookResponse), WebhookErrors))]
pub async fn pause(req: WebhookRequest<Manage>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    set_paused(req, state, true).await
}

/// Resume delivery, in order from the head; also ends a consumer's hold. Long-polling
/// consumers are woken at once.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/resume", tag = "operate",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WebhookResponse), WebhookErrors))]
pub async fn resume(req: WebhookRequest<Manage>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    set_paused(req, state, false).await
}

async fn set_paused(
    req: WebhookRequest<Manage>,
    state: web::Data<ApiState>,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    let mut tx = crate::store::begin(&state.pool).await?;
    let webhook = crate::store::webhooks::set_paused(&mut tx, req.project(), &req.webhook, paused).await?;
    crate::store::commit(tx).await?;
    tracing::info!(webhook_id = %req.webhook, paused, "delivery paused or resumed");
    Ok(HttpResponse::Ok().json(respond(&state, webhook)))
}
