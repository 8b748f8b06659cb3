//! The one error type of the HTTP layer and its one mapping to status codes and the JSON
//! body `{"error": {"code", "message"}}`. A 500 tells the client nothing; the log keeps
//! the whole cause chain.

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{ALLOW, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthError;
use crate::domain::{MessageId, NulInText, SettingError};
use crate::limits::Limited;
use crate::store::{Refusal, StoreError};
use crate::telemetry::Throttle;

/// Failed requests logged a minute (the rest counted): in a database outage every request fails.
static REQUEST_FAILURES: Throttle = Throttle::new(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key: send it in x-api-key or Authorization: Bearer")]
    Unauthorized,
    #[error("request signature refused: {0}")]
    InvalidSignature(String),
    #[error("wrong email or password")]
    InvalidLogin,
    #[error("not signed in")]
    NoSession,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Refused(Refusal),
    #[error("{0}")]
    Validation(String),
    #[error("rate limit of {} per second exceeded; retry in {} ms", .0.per_second, .0.retry_after.as_millis())]
    RateLimited(Limited),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error(
        "message {0} could not be decrypted (tampered with in the database, or sealed with a key this broker \
         does not have); it was moved to the dead-letter queue"
    )]
    UnreadablePayload(MessageId),
    #[error(
        "message {message} is sealed with key {key_id}, which this broker does not have: it stays queued at its \
         position; retry (another replica may have the key), or add the key to HOOKLINE_ENCRYPTION_OLD_KEYS"
    )]
    KeyUnavailable { message: MessageId, key_id: i32 },
    #[error("too many API key verifications at once (all, or with this key's prefix); retry in a moment")]
    Overloaded,
    #[error("this webhook's rows are locked by another operation; nothing was stored, retry in a moment")]
    Busy,
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::InvalidLogin => "invalid_login",
            Self::NoSession => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Refused(Refusal::PlanLimit { .. } | Refusal::LockTokenRequired | Refusal::KeyMismatch) => {
                "validation_failed"
            }
            Self::Refused(Refusal::OutOfOrder) => "out_of_order",
            Self::Refused(Refusal::LockSuperseded) => "lock_superseded",
            Self::Refused(Refusal::HeadMoved { .. }) => "head_moved",
            Self::Refused(Refusal::NoHead) => "no_head",
            Self::Refused(Refusal::NotFifo) => "not_fifo",
            Self::Refused(_) => "conflict",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RateLimited(_) => "rate_limited",
            Self::Validation(_) => "validation_failed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnreadablePayload(_) => "payload_unreadable",
            Self::KeyUnavailable { .. } => "key_unavailable",
            Self::Overloaded => "overloaded",
            Self::Busy => "busy",
            Self::Unexpected(_) => "internal",
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: bad_request, unauthorized, invalid_signature, invalid_login, forbidden, not_found, method_not_allowed,
    /// conflict, out_of_order, lock_superseded, head_moved, no_head, not_fifo, validation_failed, payload_too_large, rate_limited, payload_unreadable, key_unavailable,
    /// overloaded, busy, internal.
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// The code and message a client sees (a 500 says only "internal error").
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail { code: self.code().into(), message: self.to_string() }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::InvalidSignature(_) | Self::InvalidLogin | Self::NoSession => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            // A plan's limit is a setting to change, not a state to wait out.
            Self::Refused(Refusal::PlanLimit { .. } | Refusal::LockTokenRequired | Refusal::KeyMismatch) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Refused(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnreadablePayload(_) | Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::KeyUnavailable { .. } | Self::Overloaded | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unexpected(cause) = self {
            if let Some(suppressed) = REQUEST_FAILURES.permit() {
                tracing::error!(error = ?cause, suppressed, "request failed");
            }
        }
        let body = ErrorBody { error: self.detail() };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            Self::KeyUnavailable { .. } => {
                response.insert_header(("Retry-After", KEY_UNAVAILABLE_RETRY_SECONDS.to_string()));
            }
            Self::Overloaded | Self::Busy => {
                response.insert_header(("Retry-After", "1"));
            }
            Self::RateLimited(limited) => {
                // Whole seconds, rounded up: a client waiting this long will pass.
                let wait = limited.retry_after.as_secs() + u64::from(limited.retry_after.subsec_nanos() > 0);
                let wait = wait.max(1).to_string();
                response.insert_header(("Retry-After", wait.clone()));
                response.insert_header(("RateLimit-Limit", limited.per_second.to_string()));
                response.insert_header(("RateLimit-Remaining", "0"));
                response.insert_header(("RateLimit-Reset", wait));
            }
            _ => {}
        }
        response.json(body)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Refused(refusal) => Self::Refused(refusal),
            StoreError::Busy => Self::Busy,
            StoreError::Database(db) => Self::Unexpected(anyhow::Error::new(db)),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidKey => Self::Unauthorized,
            AuthError::Busy => Self::Overloaded,
            AuthError::Store(s) => s.into(),
        }
    }
}

impl From<NulInText> for ApiError {
    fn from(e: NulInText) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<SettingError> for ApiError {
    fn from(e: SettingError) -> Self {
        Self::Validation(e.to_string())
    }
}

/// Parses a JSON request body; an empty body counts as `{}` where the caller allows it.
pub fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    // An optional body may be left out, or sent as JSON null.
    if body.iter().all(u8::is_ascii_whitespace) || (empty_ok && body.trim_ascii() == b"null") {
        return if empty_ok { Ok(T::default()) } else { Err(ApiError::BadRequest("request body must be JSON".into())) };
    }
    // serde would also read a struct from an array of its fields in order.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::BadRequest("request body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Path ids that do not parse name nothing that exists: 404, like an unknown id.
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &'static str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(what))
}

/// actix answers some client errors itself (405 on a known path, 413 past its 256 KiB
/// extractor limit) with a plain-text body; this middleware hook gives them the JSON shape.
pub fn json_client_errors<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let mut res = res;
    if res.status() == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110: a 405 lists what the path does serve.
        if let Some(methods) = super::openapi::allowed_methods(res.request().path()) {
            res.headers_mut().insert(ALLOW, actix_web::http::header::HeaderValue::from_static(methods));
        }
    }
    let is_json = res.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let error = match res.status() {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(API_BODY_LIMIT),
        StatusCode::NOT_FOUND => ApiError::NotFound("route"),
        other => ApiError::BadRequest(other.canonical_reason().unwrap_or("bad request").to_lowercase()),
    };
    let status = res.status();
    let allow = res.headers().get(ALLOW).cloned();
    let (req, _) = res.into_parts();
    let mut response = error.error_response();
    *response.status_mut() = status;
    if let Some(allow) = allow {
        response.headers_mut().insert(ALLOW, allow);
    }
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, response).map_into_right_body()))
}

/// How long a consumer told `key_unavailable` waits: a rolling restart's worth.
const KEY_UNAVAILABLE_RETRY_SECONDS: u64 = 5;

/// actix-web's default limit for buffered request bodies (the `/api` JSON bodies).
pub const API_BODY_LIMIT: usize = 256 * 1024;
