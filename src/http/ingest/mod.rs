//! POST /ingest/{webhookId}: the public door for third-party senders. No API key: the
//! webhook id in the path is the secret. Answers 202 only once the message is committed.
//! Signature verification lives beside it, in `signature.rs`.

pub mod signature;

use std::time::{Duration, SystemTime};

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{parse_id, ApiError, ErrorBody};
use super::ApiState;
use crate::domain::SignatureScheme;
use crate::domain::{MessageId, Payload, Priority, Seq, WebhookId};
use crate::limits::Operation;
use crate::store::messages::{self as store, DeliveryOptions, NewMessage, ReplayClaim, Stored};
use crate::store::projects::IngestTarget;
use crate::store::webhooks::StoredSignature;
use crate::store::{Refusal, StoreError};
use sha2::{Digest as _, Sha256};
use signature::{SignatureError, SigningKey};

pub fn routes(cfg: &mut web::ServiceConfig) {
    // A static prefix and the id read from the path by hand: the hottest route then costs
    // a string comparison instead of a regex match (actix-router's dynamic segments).
    cfg.service(web::scope("/ingest").default_service(web::to(ingest)));
}

/// Not stored: they describe one connection, not the webhook.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    #[schema(value_type = String, example = "msg_7d1e0c5a2b3f4e6d8c9b0a1f2e3d4c5b")]
    pub id: MessageId,
    /// Position in the webhook's queue.
    #[schema(value_type = i64)]
    pub seq: Seq,
    /// true: the webhook deduplicates (dedupKey) and this key was seen within its window;
    /// this is the original message and nothing new was stored.
    pub duplicate: bool,
}

impl From<Stored> for Accepted {
    fn from(s: Stored) -> Self {
        Self { id: s.id, seq: s.seq, duplicate: s.duplicate }
    }
}

/// Sets a message's priority at ingestion, on webhooks with priorities enabled.
pub const PRIORITY_HEADER: &str = "x-hookline-priority";

/// The delivery options a sender sets in headers: a priority.
fn options_from_headers(req: &HttpRequest, target: &IngestTarget) -> Result<DeliveryOptions, ApiError> {
    // A value that is not visible ASCII reads as empty, which every rule below refuses.
    let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap_or_default());
    let priority = match header(PRIORITY_HEADER) {
        None => Priority::default(),
        Some(_) if !target.priorities => {
            return Err(ApiError::Validation(
                "X-Hookline-Priority: priorities are not enabled on this webhook (set priorities: true)".into(),
            ))
        }
        Some(value) => Priority::from_header(value)?,
    };
    Ok(DeliveryOptions { priority, ..DeliveryOptions::default() })
}

/// The keys the webhook takes from the request: its deduplication key (none: a new message)
/// and its ordering key (none: the fallback key).
fn keys_from_request(req: &HttpRequest, target: &IngestTarget, body: &[u8], options: &mut DeliveryOptions) {
    let header = |name: &str| req.headers().get(name).map(|v| v.as_bytes());
    if let Some((key, window)) = &target.dedup {
        options.idempotency_key = key.of_request(header, body);
        options.dedup_window = *window;
    }
    if let Some(key) = &target.ordering_key {
        options.ordering_key = key.of_request(header, body).map(|k| k.as_str().to_owned());
    }
}

/// Ingest a webhook delivery: any content type, stored encrypted with its headers.
#[utoipa::path(post, path = "/ingest/{webhook_id}", tag = "ingest",
    params(("webhook_id" = String, Path, description = "The webhook's id, the secret part of its ingestUrl"),
           ("X-Hookline-Priority" = Option<u8>, Header, description = "0 to 10, on webhooks with priorities enabled"),
           ("Idempotency-Key" = Option<String>, Header,
            description = "Only on a webhook whose dedupKey names it (header:Idempotency-Key): a repeat within dedupWindowSeconds answers the original (200) and stores nothing. Every request is a new message on a webhook without dedupKey")),
    request_body(content = Vec<u8>, content_type = "*/*", description = "Any body up to HOOKLINE_MAX_BODY_BYTES"),
    responses((status = 202, body = Accepted), (status = 200, body = Accepted, description = "A duplicate: the original message"),
              (status = 401, body = ErrorBody, description = "invalid_signature: the webhook requires a valid signature"),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "A bad X-Hookline-Priority; nothing stored"),
              (status = 429, body = ErrorBody, description = "The webhook's ingestion rate limit, or on a signed webhook its budget of rejected signatures; nothing stored"),
              (status = 503, body = ErrorBody, description = "busy: another operation holds the webhook's rows past the lock timeout; nothing stored, see Retry-After")))]
#[tracing::instrument(skip_all, fields(path = req.path()))]
pub async fn ingest(
    req: HttpRequest,
    state: web::Data<ApiState>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let raw_id = req.path().strip_prefix("/ingest/").ok_or(ApiError::NotFound("route"))?;
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let webhook: WebhookId = parse_id(raw_id, "webhook")?;
    let target = state.settings.ingest_target(webhook).await?.ok_or(ApiError::NotFound("webhook"))?;
    let limits = &target.limits;
    let spend = |operation| state.limits.webhook(target.project, webhook, operation, limits);
    // A signed webhook spends its ingestion budget only on requests whose signature passed.
    if target.signature.is_none() {
        spend(Operation::Ingest).map_err(ApiError::RateLimited)?;
    }
    let max_body = limits.max_body_bytes.map_or(state.max_body_bytes, |plan| plan.min(state.max_body_bytes));
    let mut options = options_from_headers(&req, &target)?;
    let body = read_limited(&req, body, max_body).await?;
    keys_from_request(&req, &target, &body, &mut options);
    let replay = match &target.signature {
        Some(signature) => {
            // Junk (a wrong signature or a replay) has a budget of its own; past it, the
            // sender is told to slow down. Only a request that passed spends the webhook's.
            let rejected =
                |refused| spend(Operation::RejectedSignature).map_or_else(ApiError::RateLimited, |()| refused);
            let passed = check_signature(&state, &webhook, signature, &req, &body).map_err(rejected)?;
            let claim = replay_claim(signature, &passed);
            if let Some(claim) = &claim {
                if store::seen_signature(&state.pool, &webhook, &claim.signature).await? {
                    return Err(rejected(replayed()));
                }
            }
            spend(Operation::Ingest).map_err(ApiError::RateLimited)?;
            claim
        }
        None => None,
    };
    let headers = req
        .headers()
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let message = MessageId::new_random();
    let sealed = state.keys.seal(&webhook, &message, &Payload { headers, body }.encode());
    let stored = match state.ingest.submit(webhook, NewMessage { id: message, sealed, options, replay }).await {
        Ok(stored) => stored,
        // The claim in the store decides: two replicas may both have passed the check above.
        Err(StoreError::Refused(Refusal::Replayed)) => {
            return Err(spend(Operation::RejectedSignature).map_or_else(ApiError::RateLimited, |()| replayed()))
        }
        Err(e) => return Err(e.into()),
    };
    let mut reply = if stored.duplicate { HttpResponse::Ok() } else { HttpResponse::Accepted() };
    Ok(reply.json(Accepted::from(stored)))
}

/// Verifies the sender's signature (401, nothing stored, when it fails); returns the MAC
/// of the signed content that it matched.
fn check_signature(
    state: &ApiState,
    webhook: &WebhookId,
    signature: &StoredSignature,
    req: &HttpRequest,
    body: &[u8],
) -> Result<[u8; 32], ApiError> {
    let secret = state
        .keys
        .open_secret(webhook, &signature.sealed)
        .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("opening a webhook's signing secret")))?;
    let tolerance = Duration::from_secs(signature.tolerance_seconds as u64);
    let key = SigningKey::from_stored(signature.scheme, secret, tolerance);
    key.verify(req.headers(), body, SystemTime::now()).map_err(|e| ApiError::InvalidSignature(e.to_string()))
}

/// What a passed signature claims against replays: for schemes with a timestamp, (a hash
/// of) the MAC of the signed content, so no re-spelling of the header escapes it,
/// remembered for twice the tolerance (at least ten minutes). GitHub signs the body alone: a
/// redelivery is indistinguishable from a replay, so nothing is claimed.
fn replay_claim(signature: &StoredSignature, mac: &[u8; 32]) -> Option<ReplayClaim> {
    if signature.scheme == SignatureScheme::Github {
        return None;
    }
    let window_seconds = signature.tolerance_seconds.max(300).saturating_mul(2);
    Some(ReplayClaim { signature: Sha256::digest(mac).into(), window_seconds })
}

fn replayed() -> ApiError {
    ApiError::InvalidSignature(SignatureError::Replayed.to_string())
}

/// Reads the body, refusing (413) as soon as it passes `limit`.
pub(super) async fn read_limited(req: &HttpRequest, mut body: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
