//! Liveness (the process answers) and readiness (the database answers).

use actix_web::{web, HttpResponse};

use super::ApiState;
use crate::telemetry::Throttle;

/// Failed readiness checks logged a minute: probes keep coming while the database is down.
static READINESS_FAILURES: Throttle = Throttle::new(5);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz)).route("/readyz", web::get().to(readyz));
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Up")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// The database is reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, description = "Database unreachable")))]
pub async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    match crate::store::ping(&state.pool).await {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(e) => {
            if let Some(suppressed) = READINESS_FAILURES.permit() {
                tracing::warn!(error = %e, suppressed, "readiness check failed");
            }
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"error": {"code": "unavailable", "message": "database unreachable"}}))
        }
    }
}
