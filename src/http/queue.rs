//! A webhook's queue as a whole: its stats, and purging every live message.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{Manage, Read, WebhookRequest};
use super::responses::WebhookErrors;
use super::ApiState;
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
    responses((status = 200, body = StatsResponse), WebhookErrors))]
pub async fn stats(req: WebhookRequest<Read>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let stats = store::get(&state.pool, req.project(), &req.webhook).await?;
    Ok(HttpResponse::Ok().json(StatsResponse::from(stats)))
}

/// Delete every live message (queued, delayed or locked; dead letters and committed
/// messages stay). Consumers holding a lock then get 404 on commit.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/purge", tag = "webhooks",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = Purged), WebhookErrors))]
pub async fn purge(req: WebhookRequest<Manage>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut conn = crate::store::connection(&state.pool).await?;
    let purged = message_store::purge(&mut conn, req.project(), &req.webhook).await?;
    Ok(HttpResponse::Ok().json(Purged { purged }))
}
