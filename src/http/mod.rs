//! HTTP: one module per resource. Handlers parse and authenticate, call the store, and map
//! errors once (error.rs); they never write SQL.

mod dead_letters;
pub mod error;
mod health;
mod ingest;
mod keys;
mod messages;
pub mod openapi;
mod publish;
mod queue;
mod session;
mod webhooks;

use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use sqlx::PgPool;

use crate::auth::{KeyVerifier, Principal};
use crate::crypto::KeyRing;
use crate::domain::{Limits, ProjectId, Scope, WebhookId};
use crate::group_commit::GroupCommitter;
use crate::limits::{LoginLimits, Operation, PlanCache, RateLimits};
use crate::signature::ReplayGuard;
use crate::wakeups::Wakeups;
use error::ApiError;

/// What every handler can reach.
pub struct ApiState {
    pub pool: PgPool,
    pub keys: Arc<KeyRing>,
    pub verifier: Arc<KeyVerifier>,
    /// Writes ingested messages in batches (group commit).
    pub ingest: GroupCommitter,
    pub limits: RateLimits,
    pub plans: PlanCache,
    /// Signed requests seen recently, to refuse replays.
    pub replays: ReplayGuard,
    pub logins: LoginLimits,
    /// Long-poll dequeues wait here for their webhook's wake-up.
    pub wakeups: Arc<Wakeups>,
    pub max_body_bytes: usize,
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
            .configure(webhooks::routes)
            .configure(keys::routes)
            .configure(session::routes),
    )
    .configure(health::routes)
    .route("/openapi.json", web::get().to(openapi::serve));
}

/// Answers every unmatched route with the JSON error shape.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("route"))
}

/// An authenticated request: the API key in `x-api-key` or `Authorization: Bearer` was
/// valid and within its rate limit. Carries the project's current limits.
pub struct Authenticated {
    pub principal: Principal,
    pub limits: Limits,
}

impl Authenticated {
    pub fn project(&self) -> ProjectId {
        self.principal.project
    }

    /// Refuses (403) a key without `scope`, or limited to other webhooks than `webhook`
    /// (None: a project-wide action, which needs an unrestricted key).
    pub fn require(&self, scope: Scope, webhook: Option<&WebhookId>) -> Result<(), ApiError> {
        self.require_scope(scope)?;
        let allowed = match webhook {
            Some(w) => self.principal.may_touch(w),
            None => self.principal.webhooks.is_none(),
        };
        if !allowed {
            return Err(ApiError::Forbidden("this API key is limited to other webhooks".into()));
        }
        Ok(())
    }

    /// Refuses (403) a key without `scope`, whatever webhooks it is limited to.
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        if !self.principal.scopes.contains(scope) {
            return Err(ApiError::Forbidden(format!("this API key lacks the {scope} scope")));
        }
        Ok(())
    }

    /// Counts one `operation` on `webhook` against the project's plan.
    pub fn rate_limit(&self, state: &ApiState, webhook: WebhookId, operation: Operation) -> Result<(), ApiError> {
        self.rate_limit_n(state, webhook, operation, 1)
    }

    /// Counts `n` operations at once (a batch), all admitted or none.
    pub fn rate_limit_n(
        &self,
        state: &ApiState,
        webhook: WebhookId,
        operation: Operation,
        n: usize,
    ) -> Result<(), ApiError> {
        // A batch larger than a whole second's budget could never pass: say so, not 429.
        if let Some(rate) = operation.per_second(&self.limits).filter(|rate| n > rate.get() as usize) {
            return Err(ApiError::Validation(format!(
                "a batch of {n} exceeds the {} plan's {} limit of {rate} per second; send at most {rate} at once",
                self.limits.plan.name(),
                operation.name()
            )));
        }
        let n = std::num::NonZeroU32::new(n.clamp(1, u32::MAX as usize) as u32).unwrap_or(std::num::NonZeroU32::MIN);
        state.limits.webhook_n(self.project(), webhook, operation, &self.limits, n).map_err(ApiError::RateLimited)
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>().cloned();
        let presented = presented_key(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("ApiState missing")))?;
            let presented = presented.ok_or(ApiError::Unauthorized)?;
            let principal = state.verifier.verify(&presented).await?;
            let limits = state.plans.project(principal.project).await?;
            state.limits.key(principal.key, &limits).map_err(ApiError::RateLimited)?;
            Ok(Authenticated { principal, limits })
        })
    }
}

fn presented_key(req: &HttpRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Cursor pagination parameters shared by list routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (default 50).
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
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

/// A path segment that must parse as a typed id. Unparseable ids are unknown ids (404).
pub(crate) fn id<T: std::str::FromStr>(raw: &str, what: &'static str) -> Result<T, ApiError> {
    error::parse_id(raw, what)
}
