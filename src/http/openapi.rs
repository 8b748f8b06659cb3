//! The OpenAPI 3 document, generated from the handlers' annotations. The committed
//! `openapi.json` must equal it (a test checks), so API changes show up in review.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{dead_letters, error, health, ingest, keys, messages, publish, queue, session, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "hookline", description = "Webhook ingestion broker: per-webhook strict FIFO or standard queues on PostgreSQL."),
    paths(
        health::healthz, health::readyz,
        ingest::ingest,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete,
        queue::stats, queue::purge,
        publish::publish, publish::publish_batch,
        messages::dequeue::dequeue, messages::ack::commit, messages::ack::commit_batch, messages::ack::error,
        messages::ack::extend, messages::get,
        dead_letters::list, dead_letters::retry_all, dead_letters::discard_all, dead_letters::retry, dead_letters::discard,
        keys::create, keys::list, keys::revoke,
        session::login, session::current, session::logout,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, messages::DeliveredBatch)),
    modifiers(&ApiKeyAuth),
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "An API key from `hookline admin create-key`; `Authorization: Bearer <key>` also works.",
            ))),
        );
    }
}

pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes")
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document())
}

#[cfg(test)]
mod tests {
    /// The committed `openapi.json` is the API's reviewed surface: regenerate it with
    /// `cargo run -- openapi > openapi.json` when a change here is intended.
    #[test]
    fn committed_document_matches_the_served_one() {
        let committed: serde_json::Value = serde_json::from_str(include_str!("../../openapi.json")).unwrap();
        let served: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        assert!(committed == served, "openapi.json is stale: run `cargo run -- openapi > openapi.json`");
    }
}
