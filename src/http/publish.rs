//! POST /api/webhooks/{id}/messages and .../messages/batch: producers that are not
//! third-party webhook senders publish through the API, with delivery options in the body.

use std::collections::BTreeMap;

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{Publish, WebhookRequest};
use super::ingest::{read_limited, Accepted};
use super::responses::{BodyErrors, WebhookErrors};
use super::ApiState;
use crate::domain::{
    DedupWindow, DelaySeconds, IdempotencyKey, MessageId, Payload, Priority, SettingError, TtlSeconds, WebhookId,
};
use crate::limits::Operation;
use crate::store::messages::{self as store, DeliveryOptions, NewMessage};
use crate::store::projects::IngestTarget;

/// Most messages one batch may publish.
pub const MAX_BATCH: usize = 100;

/// Largest batch request body, whatever the per-message limit: what one request may make
/// the broker hold in memory.
pub const MAX_BATCH_REQUEST_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"payload": {"job": "resize", "image": 7}, "priority": 2, "delaySeconds": 0,
    "ttlSeconds": 3600, "idempotencyKey": "resize-7", "headers": {"x-tenant": "acme"}}))]
pub struct PublishRequest {
    /// Any JSON value, delivered as the JSON text sent (content type application/json).
    // Checked but never built into a tree, so a request's memory stays about its size.
    #[serde(default, deserialize_with = "any_json")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
    /// Raw bytes in base64 instead of `payload` (content type application/octet-stream
    /// unless `headers` says otherwise).
    pub payload_base64: Option<String>,
    /// 0 to 10, higher first; only on webhooks with priorities enabled.
    #[schema(minimum = 0, maximum = 10)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub priority: Option<i64>,
    /// Not deliverable before this many seconds (0 to 604800).
    #[schema(minimum = 0, maximum = 604800)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub delay_seconds: Option<i64>,
    /// Expires (never delivered, then purged) after this many seconds: 1 to the webhook's
    /// ttlDays in seconds (365 days at most on any plan).
    #[schema(minimum = 1, maximum = 31536000)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub ttl_seconds: Option<i64>,
    /// A repeat on this webhook within 24 hours answers the original message and stores
    /// nothing: 1 to 255 visible ASCII characters.
    #[schema(pattern = r"^[\x21-\x7e]{1,255}$")]
    pub idempotency_key: Option<String>,
    /// Delivered with the message, names lowercased.
    pub headers: Option<BTreeMap<String, String>>,
}

/// `payload: null` is a JSON payload too, not an absent one.
fn any_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"messages": [{"payload": "urgent", "priority": 9}, {"payloadBase64": "AAEC"},
    {"payload": {"later": true}, "delaySeconds": 3600}]}))]
pub struct PublishBatch {
    /// 1 to 100 messages, stored in this order in one transaction: all or none.
    #[schema(min_items = 1, max_items = 100)]
    pub messages: Vec<PublishRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedBatch {
    /// One entry per message, in input order.
    pub messages: Vec<Accepted>,
}

/// Publish one message. 201 when stored; 200 with `duplicate: true` for a repeated
/// idempotency key (the original message; nothing stored).
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages", tag = "publish",
    params(("webhook_id" = String, Path)), request_body = PublishRequest, security(("api_key" = [])),
    responses((status = 201, body = Accepted), (status = 200, body = Accepted, description = "A duplicate: the original message"),
              BodyErrors, WebhookErrors, (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook_id = %access.webhook))]
pub async fn publish(
    access: WebhookRequest<Publish>,
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let webhook = access.webhook;
    let target = target(&state, webhook).await?;
    access.auth.rate_limit_n(&state, webhook, Operation::Ingest, 1)?;
    let max_body = max_body(&state, &target);
    let raw = read_limited(&req, body, request_limit(max_body, 1)).await?;
    let request: PublishRequest = parse_body(&raw)?;
    let message = prepare(&state, &webhook, &target, max_body, request)?;
    let stored = state.ingest.submit(webhook, message).await?;
    let mut reply = if stored.duplicate { HttpResponse::Ok() } else { HttpResponse::Created() };
    Ok(reply.json(Accepted::from(stored)))
}

/// Publish up to 100 messages in one transaction: all stored or none. A bad message
/// rejects the batch with 422 naming its index (`messages[3]: ...`). 201 whenever the batch
/// is accepted; each entry's `duplicate` says whether it repeated an idempotency key. The
/// request body is at most 16 MiB.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/batch", tag = "publish",
    params(("webhook_id" = String, Path)), request_body = PublishBatch, security(("api_key" = [])),
    responses((status = 201, body = PublishedBatch), BodyErrors, WebhookErrors, (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook_id = %access.webhook))]
pub async fn publish_batch(
    access: WebhookRequest<Publish>,
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let webhook = access.webhook;
    let target = target(&state, webhook).await?;
    let max_body = max_body(&state, &target);
    let raw = read_limited(&req, body, request_limit(max_body, MAX_BATCH).min(MAX_BATCH_REQUEST_BYTES)).await?;
    let batch: PublishBatch = parse_body(&raw)?;
    // The payloads are copied out: the request's bytes are not needed any more.
    drop(raw);
    if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH {
        return Err(ApiError::Validation(format!("messages must hold 1 to {MAX_BATCH} messages")));
    }
    access.auth.rate_limit_n(&state, webhook, Operation::Ingest, batch.messages.len())?;
    let items = batch
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            prepare(&state, &webhook, &target, max_body, request).map(|m| (webhook, m)).map_err(|e| match e {
                ApiError::Validation(why) => ApiError::Validation(format!("messages[{i}]: {why}")),
                ApiError::PayloadTooLarge(limit) => {
                    ApiError::Validation(format!("messages[{i}]: the payload exceeds {limit} bytes"))
                }
                other => other,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    // One statement (or one transaction with idempotency keys): all or none.
    let stored = store::insert_many(&state.pool, &items).await?;
    let messages =
        stored.into_iter().map(|s| s.map(Accepted::from).map_err(ApiError::from)).collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Created().json(PublishedBatch { messages }))
}

/// The webhook's ingestion settings (the extractor has checked that it is the caller's).
async fn target(state: &ApiState, webhook: WebhookId) -> Result<IngestTarget, ApiError> {
    state.settings.ingest_target(webhook).await?.ok_or(ApiError::NotFound("webhook"))
}

fn max_body(state: &ApiState, target: &IngestTarget) -> usize {
    target.limits.max_body_bytes.map_or(state.max_body_bytes, |plan| plan.min(state.max_body_bytes))
}

/// A request carries payloads as JSON text or base64: room for that and the envelope.
fn request_limit(max_body: usize, messages: usize) -> usize {
    (max_body * 2 + 4096) * messages
}

fn parse_body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Checks one message and seals it for storage.
fn prepare(
    state: &ApiState,
    webhook: &WebhookId,
    target: &IngestTarget,
    max_body: usize,
    request: PublishRequest,
) -> Result<NewMessage, ApiError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in request.headers.unwrap_or_default() {
        let valid = HeaderName::from_bytes(name.as_bytes()).is_ok() && !value.contains(['\r', '\n']);
        if !valid {
            return Err(SettingError {
                field: "headers",
                rule: format!("valid HTTP header names and values ({name:?})"),
            }
            .into());
        }
        headers.push((name.to_ascii_lowercase(), value));
    }
    let (body, default_type) = match (request.payload, request.payload_base64) {
        (Some(json), None) => (json.get().as_bytes().to_vec(), "application/json"),
        (None, Some(encoded)) => {
            let bytes = BASE64
                .decode(encoded.as_bytes())
                .map_err(|e| ApiError::Validation(format!("payloadBase64 is not base64: {e}")))?;
            (bytes, "application/octet-stream")
        }
        _ => return Err(ApiError::Validation("exactly one of payload and payloadBase64 is required".into())),
    };
    if body.len() > max_body {
        return Err(ApiError::PayloadTooLarge(max_body));
    }
    if !headers.iter().any(|(name, _)| name == "content-type") {
        headers.push(("content-type".into(), default_type.into()));
    }
    let priority = match request.priority {
        None => Priority::default(),
        Some(_) if !target.priorities => {
            return Err(ApiError::Validation(
                "priority: priorities are not enabled on this webhook (set priorities: true)".into(),
            ))
        }
        Some(p) => Priority::parse(p)?,
    };
    let delay = request.delay_seconds.map(DelaySeconds::parse).transpose()?;
    let ttl = request.ttl_seconds.map(|ttl| ttl_within(ttl, target)).transpose()?;
    let lifetime = ttl.map_or(i64::from(target.ttl_days) * 86_400, |t| i64::from(t.get()));
    if delay.is_some_and(|d| i64::from(d.get()) >= lifetime) {
        return Err(ApiError::Validation(format!(
            "delaySeconds must be less than the message's lifetime ({lifetime} s), or it would expire undelivered"
        )));
    }
    // A keyed webhook takes the key from what is published, as from what a sender sends.
    let ordering_key = target.ordering_key.as_ref().and_then(|key| {
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_bytes());
        key.of_request(header, &body).map(|k| k.as_str().to_owned())
    });
    let options = DeliveryOptions {
        ordering_key,
        priority,
        delay,
        ttl,
        idempotency_key: request.idempotency_key.map(|k| IdempotencyKey::parse("idempotencyKey", &k)).transpose()?,
        // A producer's own key always holds for 24 hours, whatever the webhook's dedupKey.
        dedup_window: DedupWindow::default(),
    };
    let id = MessageId::new_random();
    let sealed = state.keys.seal(webhook, &id, &Payload { headers, body }.encode());
    Ok(NewMessage { id, sealed, options, replay: None })
}

/// A message may not outlive its webhook's TTL.
fn ttl_within(seconds: i64, target: &IngestTarget) -> Result<TtlSeconds, SettingError> {
    let max = i64::from(target.ttl_days) * 86_400;
    match TtlSeconds::parse(seconds) {
        Ok(ttl) if seconds <= max => Ok(ttl),
        _ => Err(SettingError { field: "ttlSeconds", rule: format!("between 1 and {max} (the webhook's ttlDays)") }),
    }
}
