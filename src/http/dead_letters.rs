//! /api/webhooks/{id}/errors: the dead-letter queue, to inspect, retry or discard.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError, ErrorBody};
use super::extract::{MessageRequest, Read, WebhookRequest};
use super::responses::{BodyErrors, WebhookErrors};
use super::{ApiState, PageQuery};
use crate::domain::{storable, MessageId, MessageState, Seq};
use crate::store::dead_letters::{self as store, DeadLetterFilter, Redrive};

pub fn routes(cfg: &mut web::ServiceConfig) {
    // The bulk routes before `{message_id}`: "retry" and "discard" are not message ids.
    cfg.route("/webhooks/{webhook_id}/errors", web::get().to(list))
        .route("/webhooks/{webhook_id}/errors/retry", web::post().to(retry_all))
        .route("/webhooks/{webhook_id}/errors/discard", web::post().to(discard_all))
        .route("/webhooks/{webhook_id}/errors/{message_id}/retry", web::post().to(retry))
        .route("/webhooks/{webhook_id}/errors/{message_id}", web::delete().to(discard));
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterResponse {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Skipped here by an operator (POST .../head/skip) with this API key, `api-key:<id>`;
    /// null when its retries ran out.
    pub skipped_by: Option<String>,
    pub retry_count: i32,
    pub received_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    pub data: Vec<DeadLetterResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redriven {
    #[schema(value_type = String)]
    pub id: MessageId,
    /// Always `queued`: back at its original position with its retry counter reset.
    pub status: MessageState,
}

/// Which dead letters: all, or those that died in a time range or whose last error
/// contains a text.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"since": "2026-11-29T00:00:00Z", "errorContains": "timeout", "dryRun": true}))]
pub struct DeadLetterSelection {
    /// Died at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Died before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive text the last error contains.
    #[schema(pattern = r"^[^\u0000]*$")]
    pub error_contains: Option<String>,
    /// The same as errorContains (its first name); give one of them.
    #[schema(pattern = r"^[^\u0000]*$")]
    pub error: Option<String>,
    /// Only count what the selection covers; retry or discard nothing (default false).
    pub dry_run: Option<bool>,
}

impl DeadLetterSelection {
    /// The filter, refusing a text given under both names.
    fn filter(&self) -> Result<DeadLetterFilter, ApiError> {
        let error = match (&self.error_contains, &self.error) {
            (Some(_), Some(_)) => return Err(ApiError::Validation("give errorContains or error, not both".into())),
            (contains, error) => contains.as_ref().or(error.as_ref()),
        };
        error.map(|e| storable("errorContains", e)).transpose()?;
        Ok(DeadLetterFilter { since: self.since, until: self.until, error: error.filter(|e| !e.is_empty()).cloned() })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// Died at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Died before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive text the last error contains.
    #[param(pattern = r"^[^\u0000]*$")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetriedAll {
    /// How many dead letters went back to the queue (0 with dryRun).
    pub retried: u64,
    /// How many the selection covered.
    pub matched: u64,
    pub dry_run: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscardedAll {
    /// How many dead letters were deleted (0 with dryRun).
    pub discarded: u64,
    /// How many the selection covered.
    pub matched: u64,
    pub dry_run: bool,
}

/// Dead letters in queue order, optionally filtered by when they died and their error.
#[utoipa::path(get, path = "/api/webhooks/{webhook_id}/errors", tag = "dead letters",
    params(("webhook_id" = String, Path), DeadLetterQuery), security(("api_key" = [])),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ErrorBody), WebhookErrors,
              (status = 422, body = ErrorBody)))]
pub async fn list(
    req: WebhookRequest<Read>,
    query: web::Query<DeadLetterQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = PageQuery { limit: query.limit, cursor: query.cursor };
    let filter =
        DeadLetterFilter { since: query.since, until: query.until, error: query.error.filter(|e| !e.is_empty()) };
    filter.error.as_deref().map(|e| storable("error", e)).transpose()?;
    let limit = page.limit()?;
    let after = match &page.cursor {
        None => None,
        Some(c) => {
            Some(Seq(c.parse().map_err(|_| ApiError::BadRequest("cursor is not a dead-letter cursor".into()))?))
        }
    };
    let mut conn = crate::store::connection(&state.pool).await?;
    let rows = store::list(&mut conn, req.project(), &req.webhook, &filter, after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let data: Vec<_> = rows
        .into_iter()
        .take(limit as usize)
        .map(|d| DeadLetterResponse {
            id: d.id,
            seq: d.seq,
            last_error: d.last_error,
            last_error_at: d.last_error_at,
            skipped_by: d.skipped_by,
            retry_count: d.retry_count,
            received_at: d.received_at,
            dead_at: d.dead_at,
        })
        .collect();
    let next_cursor = if more { data.last().map(|d| d.seq.0.to_string()) } else { None };
    Ok(HttpResponse::Ok().json(DeadLetterPage { data, next_cursor }))
}

/// Put a dead letter back in the queue at its original position, retry counter reset.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/errors/{message_id}/retry", tag = "dead letters",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Redriven), WebhookErrors,
              (status = 409, body = ErrorBody, description = "The message is not dead")))]
pub async fn retry(req: MessageRequest<Read>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    store::act(&state.pool, req.webhook.project(), &req.webhook.webhook, &req.message, Redrive::Retry).await?;
    Ok(HttpResponse::Ok().json(Redriven { id: req.message, status: MessageState::Queued }))
}

/// Delete a dead letter for good.
#[utoipa::path(delete, path = "/api/webhooks/{webhook_id}/errors/{message_id}", tag = "dead letters",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), security(("api_key" = [])),
    responses((status = 204, description = "Discarded"), WebhookErrors,
              (status = 409, body = ErrorBody, description = "The message is not dead")))]
pub async fn discard(req: MessageRequest<Read>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    store::act(&state.pool, req.webhook.project(), &req.webhook.webhook, &req.message, Redrive::Discard).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Put every selected dead letter back in the queue at its original position, retry
/// counters reset. Reports how many; with dryRun, only how many it would.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/errors/retry", tag = "dead letters",
    params(("webhook_id" = String, Path)), request_body(content = Option<DeadLetterSelection>), security(("api_key" = [])),
    responses((status = 200, body = RetriedAll), BodyErrors, WebhookErrors,
              (status = 422, body = ErrorBody, description = "errorContains and error both given, or a NUL in the text")))]
pub async fn retry_all(
    req: WebhookRequest<Read>,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (matched, dry_run) = act_on_selection(&req, &state, &body, Redrive::Retry).await?;
    let retried = if dry_run { 0 } else { matched };
    Ok(HttpResponse::Ok().json(RetriedAll { retried, matched, dry_run }))
}

/// Delete every selected dead letter for good. Reports how many; with dryRun, only how many
/// it would.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/errors/discard", tag = "dead letters",
    params(("webhook_id" = String, Path)), request_body(content = Option<DeadLetterSelection>), security(("api_key" = [])),
    responses((status = 200, body = DiscardedAll), BodyErrors, WebhookErrors,
              (status = 422, body = ErrorBody, description = "errorContains and error both given, or a NUL in the text")))]
pub async fn discard_all(
    req: WebhookRequest<Read>,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (matched, dry_run) = act_on_selection(&req, &state, &body, Redrive::Discard).await?;
    let discarded = if dry_run { 0 } else { matched };
    Ok(HttpResponse::Ok().json(DiscardedAll { discarded, matched, dry_run }))
}

/// Retries or discards the dead letters a body's selection covers, or with dryRun only
/// counts them; returns how many it covered and whether it was a dry run.
async fn act_on_selection(
    req: &WebhookRequest<Read>,
    state: &ApiState,
    body: &[u8],
    action: Redrive,
) -> Result<(u64, bool), ApiError> {
    let selection: DeadLetterSelection = parse_json(body, true)?;
    let filter = selection.filter()?;
    let mut conn = crate::store::connection(&state.pool).await?;
    if selection.dry_run == Some(true) {
        return Ok((store::count_matching(&mut conn, req.project(), &req.webhook, &filter).await?, true));
    }
    Ok((store::act_on_all(&mut conn, req.project(), &req.webhook, &filter, action).await?, false))
}
