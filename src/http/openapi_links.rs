//! What the OpenAPI document says beyond the handlers' annotations: an operation id for
//! every route (made from its method and path, so ids never collide), which request bodies
//! may be left out, and links from the responses that create things to the routes that use
//! them, so a client generator or a stateful tester (schemathesis) can follow real ids.

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType};
use utoipa::openapi::{RefOr, Required};
use utoipa::Modify;

pub struct Links;

/// What utoipa cannot say: an optional body may also be sent as JSON `null` (the same as
/// none), and links spelled as OpenAPI tools read them.
pub fn finish(doc: &mut serde_json::Value) {
    for (method, path) in OPTIONAL_BODIES {
        let content = doc.pointer_mut(&format!("/paths/{}/{method}/requestBody/content", path.replace('/', "~1")));
        for media in content.and_then(|c| c.as_object_mut()).into_iter().flat_map(|c| c.values_mut()) {
            if let Some(schema) = media.get_mut("schema") {
                *schema = serde_json::json!({"anyOf": [schema.take(), {"type": "null"}]});
            }
        }
    }
    spell_link_fields(doc);
}

/// utoipa 5 writes a link's `operationId` as `operation_id`, which OpenAPI tools do not read.
fn spell_link_fields(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        if let Some(id) = link.remove("operation_id") {
            link.insert("operationId".into(), id);
        }
    }
}

/// Routes whose JSON body is optional (an empty body means `{}`).
const OPTIONAL_BODIES: &[(&str, &str)] = &[
    ("post", "/api/keys"),
    ("post", "/api/webhooks/{webhook_id}/messages/dequeue"),
    ("post", "/api/webhooks/{webhook_id}/messages/{message_id}/commit"),
    ("post", "/api/webhooks/{webhook_id}/messages/{message_id}/error"),
    ("post", "/api/webhooks/{webhook_id}/errors/retry"),
    ("post", "/api/webhooks/{webhook_id}/errors/discard"),
];

/// A response that creates something, and the ids it yields: (path parameter, runtime
/// expression).
struct Source {
    method: &'static str,
    path: &'static str,
    status: &'static str,
    yields: &'static [(&'static str, &'static str)],
}

const SOURCES: &[Source] = &[
    Source { method: "post", path: "/api/webhooks", status: "201", yields: &[("webhook_id", "$response.body#/id")] },
    Source {
        method: "post",
        path: "/api/webhooks/{webhook_id}/messages",
        status: "201",
        yields: &[("webhook_id", "$request.path.webhook_id"), ("message_id", "$response.body#/id")],
    },
    Source {
        method: "post",
        path: "/api/webhooks/{webhook_id}/messages/dequeue",
        status: "200",
        yields: &[("webhook_id", "$request.path.webhook_id"), ("message_id", "$response.body#/id")],
    },
    Source { method: "post", path: "/api/keys", status: "201", yields: &[("prefix", "$response.body#/prefix")] },
];

fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("put", item.put.as_mut()),
        ("patch", item.patch.as_mut()),
        ("delete", item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op?)))
}

/// `post /api/webhooks/{webhook_id}` -> `post_api_webhooks_webhook_id`.
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> =
        path.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').filter(|w| !w.is_empty()).collect();
    format!("{method}_{}", words.join("_"))
}

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // Every operation and the path parameters it takes.
        let mut targets: Vec<(String, Vec<String>)> = Vec::new();
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                let id = operation_id(method, path);
                op.operation_id = Some(id.clone());
                if OPTIONAL_BODIES.contains(&(method, path.as_str())) {
                    if let Some(body) = op.request_body.as_mut() {
                        body.required = Some(Required::False);
                    }
                }
                let params = path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).map(String::from);
                targets.push((id, params.collect()));
            }
        }
        // The ingest body is whatever the sender sends: any bytes, any content type.
        let ingest = openapi.paths.paths.get_mut("/ingest/{webhook_id}").and_then(|item| item.post.as_mut());
        if let Some(body) = ingest.and_then(|op| op.request_body.as_mut()) {
            for content in body.content.values_mut() {
                content.schema =
                    Some(RefOr::T(Schema::Object(ObjectBuilder::new().schema_type(SchemaType::AnyValue).build())));
            }
        }
        for Source { method, path, status, yields } in SOURCES {
            let Some(item) = openapi.paths.paths.get_mut(*path) else { continue };
            let Some((_, op)) = operations(item).find(|(m, _)| m == method) else { continue };
            let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) else { continue };
            // Every operation whose path parameters this response (with its request) supplies
            // wholly, and that needs at least the new id.
            let new_id = yields.iter().find(|(_, e)| e.starts_with("$response")).map(|(p, _)| *p);
            for (target, params) in &targets {
                let supplied = params.iter().all(|p| yields.iter().any(|(y, _)| y == p));
                if params.is_empty() || !supplied || !params.iter().any(|p| Some(p.as_str()) == new_id) {
                    continue;
                }
                let mut link = LinkBuilder::new().operation_id(target.clone());
                for (param, expression) in yields.iter().filter(|(y, _)| params.iter().any(|p| p == y)) {
                    link = link.parameter(*param, *expression);
                }
                response.links.insert(target.clone(), RefOr::T(link.build()));
            }
        }
    }
}
