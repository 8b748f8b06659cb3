//! The OpenAPI 3 document, generated from the handlers' annotations. The committed
//! `openapi.json` must equal it (a test checks), so API changes show up in review.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::openapi_links::Links;
use super::{dead_letters, error, head, health, ingest, keys, messages, publish, queue, replay, session, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "hookline", description = "Webhook ingestion broker: per-webhook strict FIFO or standard queues on PostgreSQL."),
    paths(
        health::healthz, health::readyz,
        ingest::ingest,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete,
        queue::stats, queue::purge,
        head::view, head::skip, head::pause, head::resume, replay::replay,
        publish::publish, publish::publish_batch,
        messages::dequeue::dequeue, messages::ack::commit, messages::ack::commit_batch, messages::ack::error,
        messages::ack::extend, messages::get,
        dead_letters::list, dead_letters::retry_all, dead_letters::discard_all, dead_letters::retry, dead_letters::discard,
        keys::create, keys::list, keys::revoke,
        session::login, session::current, session::logout,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, messages::DeliveredBatch)),
    modifiers(&ApiKeyAuth, &Links),
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
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    super::openapi_links::finish(&mut doc);
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document())
}

/// The methods the API serves at a request path (`GET, POST`), from this document: what a
/// 405 lists in its `Allow` header. None when no documented route has the path. Where a
/// literal segment and a parameter both match (`/messages/batch`, `/messages/{message_id}`),
/// the route with more literal segments is the one meant.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    static ROUTES: std::sync::OnceLock<Vec<(Vec<String>, String)>> = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        ApiDoc::openapi()
            .paths
            .paths
            .into_iter()
            .map(|(template, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                ];
                let allowed: Vec<&str> = methods.iter().filter(|(_, served)| *served).map(|(m, _)| *m).collect();
                (template.split('/').map(str::to_owned).collect(), allowed.join(", "))
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    routes
        .iter()
        .filter_map(|(template, methods)| {
            let matches = template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()));
            let literals = template.iter().filter(|t| !t.starts_with('{')).count();
            matches.then_some((literals, methods.as_str()))
        })
        .max_by_key(|(literals, _)| *literals)
        .map(|(_, methods)| methods)
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
