//! HTTP: one module per resource. Handlers parse and authenticate, call the store, and map
//! errors once (error.rs); they never write SQL.

mod dead_letters;
pub mod error;
mod extract;
mod head;
mod health;
mod ingest;
mod keys;
mod messages;
pub mod openapi;
mod openapi_links;
mod publish;
mod queue;
mod replay;
mod responses;
mod session;
mod webhooks;
mod whole;

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use sqlx::PgPool;

use crate::auth::KeyVerifier;
use crate::crypto::KeyRing;
use crate::limits::{LoginLimits, RateLimits};
use crate::settings_cache::SettingsCache;
use crate::store::consumer_batch::ConsumerBatcher;
use crate::store::group_commit::GroupCommitter;
use crate::store::wakeups::Wakeups;
use error::ApiError;
pub use extract::Authenticated;

/// What every handler can reach.
pub struct ApiState {
    pub pool: PgPool,
    pub keys: Arc<KeyRing>,
    pub verifier: Arc<KeyVerifier>,
    /// Writes ingested messages in batches (group commit).
    pub ingest: GroupCommitter,
    /// Writes consumers' commits in batches (group commit).
    pub consumers: ConsumerBatcher,
    pub limits: RateLimits,
    pub settings: SettingsCache,
    pub logins: LoginLimits,
    /// Peers whose `X-Forwarded-For` is believed (HOOKLINE_TRUSTED_PROXIES).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Long-poll dequeues wait here for their webhook's wake-up.
    pub wakeups: Arc<Wakeups>,
    pub max_body_bytes: usize,
    /// Longest hold a consumer's error may ask for.
    pub max_hold: crate::domain::HoldSeconds,
    /// Base of `ingestUrl`, without a trailing slash.
    pub public_url: String,
}

pub use session::normalize as normalize_email;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default().error_handler(|e, _| ApiError::BadRequest(format!("invalid JSON body: {e}")).into()),
    )
    .app_data(
        web::QueryConfig::default().error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into()),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(format!("invalid path: {e}")).into()),
    )
    // Hot routes first: actix-router tries each pattern in this order (dynamic ones as regexes).
    .configure(ingest::routes)
    .service(
        web::scope("/api")
            .configure(messages::routes)
            .configure(dead_letters::routes)
            .configure(queue::routes)
            .configure(head::routes)
            .configure(replay::routes)
            .configure(webhooks::routes)
            .configure(keys::routes)
            .configure(session::routes),
    )
    .configure(health::routes)
    .route("/openapi.json", web::get().to(openapi::serve));
}

/// Answers every unmatched request with the JSON error shape: 405 (with `Allow`) for a
/// documented path asked with another method, else 404.
pub async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    match openapi::allowed_methods(req.path()) {
        Some(_) => Err(ApiError::MethodNotAllowed),
        None => Err(ApiError::NotFound("route")),
    }
}

/// Cursor pagination parameters shared by list routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^wh_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n @ 1..=100) => Ok(n),
            Some(_) => Err(ApiError::Validation("limit must be between 1 and 100".into())),
        }
    }
}
