//! Response sets shared by the OpenAPI annotations, so no route's document omits a status
//! that its extractors can return. The variants exist only to be documented.
#![allow(dead_code)]

use utoipa::IntoResponses;

use super::error::ErrorBody;

/// What every route behind an API key can answer besides its own outcomes.
#[derive(IntoResponses)]
pub enum KeyErrors {
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    #[response(status = 403)]
    Forbidden(ErrorBody),
    #[response(status = 429, description = "Rate limited: see Retry-After and RateLimit-*")]
    RateLimited(ErrorBody),
    #[response(
        status = 503,
        description = "overloaded: too many API key verifications at once (all, or with this key's prefix); see Retry-After"
    )]
    Overloaded(ErrorBody),
}

/// What every route about one webhook (or one of its messages) can answer besides its own
/// outcomes: the API key's refusals, and 404 for an unknown id.
#[derive(IntoResponses)]
pub enum WebhookErrors {
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    #[response(status = 403)]
    Forbidden(ErrorBody),
    #[response(status = 404)]
    NotFound(ErrorBody),
    #[response(status = 429, description = "Rate limited: see Retry-After and RateLimit-*")]
    RateLimited(ErrorBody),
    #[response(
        status = 503,
        description = "overloaded: too many API key verifications at once (all, or with this key's prefix). busy (publishing): another operation holds the webhook's rows past the lock timeout, nothing was stored. See Retry-After"
    )]
    Overloaded(ErrorBody),
}

/// What a route that reads a request body can answer about it.
#[derive(IntoResponses)]
pub enum BodyErrors {
    #[response(status = 400)]
    BadRequest(ErrorBody),
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
}
