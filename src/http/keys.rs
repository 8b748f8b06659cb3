//! /api/keys: a project's API keys, minted with scopes and optional webhook limits, listed
//! by prefix (never the secret), revoked at once on every replica.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError, ErrorBody};
use super::responses::{BodyErrors, KeyErrors};
use super::{ApiState, Authenticated};
use crate::auth::{self, KeyGrant};
use crate::domain::{storable, Scope, Scopes, WebhookId};
use crate::store;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/keys").route(web::post().to(create)).route(web::get().to(list)))
        .route("/keys/{prefix}", web::delete().to(revoke));
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    #[schema(pattern = r"^[^\u0000]*$")]
    pub name: Option<String>,
    /// Any of manage, consume, publish (default: all three, or what the creating key has).
    #[schema(value_type = Option<Vec<ScopeName>>, min_items = 1)]
    pub scopes: Option<Vec<String>>,
    /// Limit the key to these webhooks (default: every webhook of the project).
    #[schema(value_type = Option<Vec<WebhookIdText>>)]
    pub webhook_ids: Option<Vec<String>>,
}

/// What a key may do (documentation of the field's values).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ScopeName {
    Manage,
    Consume,
    Publish,
}

/// A webhook id as the API shows it.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^wh_[0-9a-f]{32}$")]
#[allow(dead_code)]
pub struct WebhookIdText(String);

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyResponse {
    /// Public: lists and revokes the key.
    pub prefix: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub webhook_ids: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// The whole key. Shown only in this answer: only its hash is stored.
    pub key: String,
    #[serde(flatten)]
    pub info: KeyResponse,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyResponse>,
}

fn respond(k: store::keys::KeyInfo) -> KeyResponse {
    KeyResponse {
        prefix: k.prefix,
        name: k.name,
        scopes: k.scopes,
        webhook_ids: k.webhook_ids.map(|ids| ids.into_iter().map(|u| WebhookId::from_uuid(u).to_string()).collect()),
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
    }
}

/// Mint a key. A key cannot grant more than it has: scopes and webhooks must be within
/// the creating key's own.
#[utoipa::path(post, path = "/api/keys", tag = "keys", request_body = CreateKey, security(("api_key" = [])),
    responses((status = 201, body = CreatedKey), BodyErrors, KeyErrors, (status = 422, body = ErrorBody)))]
pub async fn create(
    auth: Authenticated,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // A key limited to webhooks may mint keys within its limit; listing and revoking
    // concern the whole project, so they need an unlimited key.
    auth.require_scope(Scope::Manage)?;
    let req: CreateKey = parse_json(&body, true)?;
    let scopes = match &req.scopes {
        None => auth.principal.scopes,
        Some(names) => Scopes::parse(names)?,
    };
    if !scopes.is_subset_of(auth.principal.scopes) {
        return Err(ApiError::Forbidden("a key cannot grant scopes it does not have".into()));
    }
    let webhooks: Option<Vec<WebhookId>> = match &req.webhook_ids {
        None => auth.principal.webhooks.as_ref().map(|w| w.to_vec()),
        Some(ids) => Some(
            ids.iter()
                .map(|id| {
                    id.parse().map_err(|_| ApiError::Validation(format!("webhookIds: {id:?} is not a webhook id")))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let mut tx = store::begin(&state.pool).await?;
    if let Some(max) = auth.limits.max_api_keys {
        store::keys::check_quota(&mut tx, auth.project(), max, auth.limits.plan).await?;
    }
    for webhook in webhooks.iter().flatten() {
        if !auth.principal.may_touch(webhook) {
            return Err(ApiError::Forbidden("a key cannot grant webhooks it is not allowed".into()));
        }
        if store::webhooks::get(&mut *tx, auth.project(), webhook).await.is_err() {
            return Err(ApiError::Validation(format!("webhookIds: {webhook} is not a webhook of this project")));
        }
    }
    let name = req.name.as_deref().map(|n| storable("name", n)).transpose()?;
    let grant = KeyGrant { name, scopes, webhooks: webhooks.as_deref() };
    let key = auth::mint_key(&mut tx, auth.project(), &grant).await?;
    store::commit(tx).await?;
    let prefix = auth::prefix_of(&key);
    let info = store::keys::list(&state.pool, auth.project())
        .await?
        .into_iter()
        .find(|k| k.prefix == prefix)
        .ok_or(ApiError::NotFound("API key"))?;
    Ok(HttpResponse::Created().json(CreatedKey { key: key.expose().to_owned(), info: respond(info) }))
}

/// The project's keys, revoked ones included.
#[utoipa::path(get, path = "/api/keys", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = KeyList), KeyErrors))]
pub async fn list(auth: Authenticated, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    auth.require(Scope::Manage, None)?;
    let data = store::keys::list(&state.pool, auth.project()).await?.into_iter().map(respond).collect();
    Ok(HttpResponse::Ok().json(KeyList { data }))
}

/// Revoke a key: it stops working at once, on every replica.
#[utoipa::path(delete, path = "/api/keys/{prefix}", tag = "keys", params(("prefix" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204, description = "Revoked"), KeyErrors, (status = 404, body = ErrorBody)))]
pub async fn revoke(
    auth: Authenticated,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    auth.require(Scope::Manage, None)?;
    if !auth::is_prefix(&path) {
        return Err(ApiError::NotFound("API key"));
    }
    let key = store::keys::revoke(&state.pool, Some(auth.project()), &path).await?;
    // This replica at once; the others on the notification.
    state.verifier.forget_key(key);
    Ok(HttpResponse::NoContent().finish())
}
