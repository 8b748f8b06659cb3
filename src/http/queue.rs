//! A webhook's queue as a whole: its stats, and purging every live message.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{id, ApiState, Authenticated};
use crate::domain::{Scope, WebhookId};
use crate::store::messages as message_store;
use crate::store::stats::{self as store, QueueStats};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/{webhook_id}/stats", web::get().to(stats))
        .route("/webhooks/{webhook_id}/purge", web::post().to(purge));
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"queued": 1200, "locked": 16, "delayed": 3, "dead": 2, "committed": 98000,
    "oldestQueuedAgeSeconds": 4.2, "ingestedLastMinute": 5100, "ingestedLastHour": 301000,
    "deliveredLastMinute": 5050, "deliveredLastHour": 299500}))]
pub struct StatsResponse {
    /// Waiting and deliverable now (not locked, not delayed).
    pub queued: i64,
    /// In flight: handed to a consumer, not yet committed or errored.
    pub locked: i64,
    /// Waiting for their delay to run out.
    pub delayed: i64,
    /// In the dead-letter queue.
    pub dead: i64,
    /// Committed and still retained (until their TTL).
    pub committed: i64,
    /// Age of the oldest queued message (waiting, deliverable now); null when there is none.
    pub oldest_queued_age_seconds: Option<f64>,
    /// Messages stored (ingested or published) in the last minute / hour.
    pub ingested_last_minute: i64,
    pub ingested_last_hour: i64,
    /// Messages committed by consumers in the last minute / hour (per-minute resolution
    /// beyond the last two minutes).
    pub delivered_last_minute: i64,
    pub delivered_last_hour: i64,
}

impl From<QueueStats> for StatsResponse {
    fn from(s: QueueStats) -> Self {
        Self {
            queued: s.queued,
            locked: s.locked,
            delayed: s.delayed,
            dead: s.dead,
            committed: s.committed,
            oldest_queued_age_seconds: s.oldest_queued_age_seconds,
            ingested_last_minute: s.ingested_last_minute,
            ingested_last_hour: s.ingested_last_hour,
            delivered_last_minute: s.delivered_last_minute,
            delivered_last_hour: s.delivered_last_hour,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    /// How many live messages were deleted.
    pub purged: u64,
}

/// Queue depth by state, the oldest message's age, and recent throughput; read from
/// counters and partial indexes, so as fast on millions of messages as on ten.
#[utoipa::path(get, path = "/api/webhooks/{webhook_id}/stats", tag = "webhooks",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = StatsResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn stats(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let webhook: WebhookId = id(&path, "webhook")?;
    auth.require(Scope::Consume, Some(&webhook))?;
    let stats = store::get(&state.pool, auth.project(), &webhook).await?;
    Ok(HttpResponse::Ok().json(StatsResponse::from(stats)))
}

/// Delete every live message (queued, delayed or locked; dead letters and committed
/// messages stay). Consumers holding a lock then get 404 on commit.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/purge", tag = "webhooks",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Purged), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn purge(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let webhook: WebhookId = id(&path, "webhook")?;
    auth.require(Scope::Manage, Some(&webhook))?;
    let mut conn = state.pool.acquire().await?;
    let purged = message_store::purge(&mut conn, auth.project(), &webhook).await?;
    Ok(HttpResponse::Ok().json(Purged { purged }))
}
