//! POST /ingest/{webhookId}: the public door for third-party senders. No API key: the
//! webhook id in the path is the secret. Answers 202 only once the message is committed.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{id, ApiState};
use crate::domain::{MessageId, Payload, Seq, WebhookId};
use crate::limits::Operation;
use crate::store::messages::NewMessage;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ingest/{webhook_id}", web::post().to(ingest));
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
}

/// Ingest a webhook delivery: any content type, stored encrypted with its headers.
#[utoipa::path(post, path = "/ingest/{webhook_id}", tag = "ingest",
    params(("webhook_id" = String, Path, description = "The webhook's id, the secret part of its ingestUrl")),
    request_body(content = Vec<u8>, content_type = "*/*", description = "Any body up to HOOKLINE_MAX_BODY_BYTES"),
    responses((status = 202, body = Accepted), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "The webhook's ingestion rate limit; nothing stored")))]
#[tracing::instrument(skip_all, fields(webhook_id = %path))]
pub async fn ingest(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let webhook: WebhookId = id(&path, "webhook")?;
    let (project, limits) = state.plans.webhook_owner(webhook).await?.ok_or(ApiError::NotFound("webhook"))?;
    state.limits.webhook(project, webhook, Operation::Ingest, &limits).map_err(ApiError::RateLimited)?;
    let max_body = limits.max_body_bytes.map_or(state.max_body_bytes, |plan| plan.min(state.max_body_bytes));
    let body = read_limited(&req, body, max_body).await?;
    let headers = req
        .headers()
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let message = MessageId::new_random();
    let sealed = state.keys.seal(&webhook, &message, &Payload { headers, body }.encode());
    let seq = state.ingest.submit(webhook, NewMessage { id: message, sealed }).await?;
    Ok(HttpResponse::Accepted().json(Accepted { id: message, seq }))
}

/// Reads the body, refusing (413) as soon as it passes `limit`.
async fn read_limited(req: &HttpRequest, mut body: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
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
