//! /api/webhooks: create, list, read, change and delete a project's webhooks.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{parse_json, ApiError, ErrorBody};
use super::extract::{Manage, WebhookRequest};
use super::ingest::signature::SigningKey;
use super::responses::{BodyErrors, KeyErrors, WebhookErrors};
use super::{ApiState, Authenticated, PageQuery};
use crate::domain::{
    storable, DedupWindow, DeliveryMode, FifoWindow, LockTimeout, MaxRetries, RequestKey, Scope, SignatureScheme,
    WebhookId, WebhookName,
};
use crate::store::webhooks::{self as store, NewWebhook, StoredSignature, Webhook, WebhookChanges, WebhookQuota};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/webhooks").route(web::post().to(create)).route(web::get().to(list))).service(
        web::resource("/webhooks/{webhook_id}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(delete)),
    );
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    pub name: String,
    /// 1 to 43200, default 300.
    #[schema(minimum = 1, maximum = 43200)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub lock_timeout_seconds: Option<i64>,
    /// 1 to 100, default 10.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub max_retries: Option<i64>,
    /// Bounded by the plan: free 7 (fixed), pro 1 to 30 (default 30), enterprise 1 to 90
    /// (default 90), unlimited 1 to 365 (default 7).
    #[schema(minimum = 1, maximum = 365)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub ttl_days: Option<i64>,
    /// Require senders to sign each request (401 and nothing stored otherwise).
    pub signature: Option<SignatureSettings>,
    /// `fifo` (default): strict order, one message in flight, head-of-line blocking.
    /// `standard`: many in flight at once for concurrent consumers. Fixed at creation.
    #[schema(value_type = Option<ModeName>)]
    pub mode: Option<String>,
    /// Let producers set a priority (0 to 10, higher first). Default false.
    pub priorities: Option<bool>,
    /// Deduplicate ingested requests by a key the sender sends: `header:<name>` (such as
    /// `header:webhook-id`, `header:X-GitHub-Delivery`, `header:Idempotency-Key`) or a JSON
    /// pointer into the body (such as Stripe's `/id`). A repeat within dedupWindowSeconds
    /// answers 200 with the original id and seq and stores nothing. Default: none, every
    /// request is a new message.
    #[schema(pattern = r"^(header:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}|/[^\u0000]{0,199})$", max_length = 200)]
    pub dedup_key: Option<String>,
    /// 1 to 86400, default 86400 (24 hours).
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub dedup_window_seconds: Option<i64>,
    /// The earlier name of dedupKey `header:webhook-id` (true sets it). Not with dedupKey.
    pub idempotency_from_webhook_id: Option<bool>,
    /// FIFO: order per key instead of per webhook. Where each message's key is found:
    /// `header:<name>` or a JSON pointer into the body (such as `/data/object/customer`).
    /// Messages with the same key are delivered strictly in order, one at a time; different
    /// keys in parallel; messages without the key share one fallback key. Fixed at creation;
    /// not with priorities or a fifoWindow above 1.
    #[schema(pattern = r"^(header:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}|/[^\u0000]{0,199})$", max_length = 200)]
    pub ordering_key: Option<String>,
    /// Commit, error and extend must name the lock token their dequeue answered (otherwise
    /// 422). Default false.
    pub require_lock_token: Option<bool>,
    /// FIFO: the ordered in-flight window, 1 to 100 (default 1). A dequeue (or a commit with
    /// next=true) with maxMessages leases up to this many messages from the head, in order,
    /// under one lock token; they are committed in that order. Standard webhooks ignore it.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub fifo_window: Option<i64>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWebhook {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    pub name: Option<String>,
    #[schema(minimum = 1, maximum = 43200)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub lock_timeout_seconds: Option<i64>,
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub max_retries: Option<i64>,
    #[schema(minimum = 1, maximum = 365)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub ttl_days: Option<i64>,
    /// A new signing requirement, or null to stop requiring signatures.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SignatureSettings>)]
    pub signature: Option<Option<SignatureSettings>>,
    /// Not changeable: refused with 422 (create a new webhook instead).
    #[schema(value_type = Option<ModeName>)]
    pub mode: Option<String>,
    pub priorities: Option<bool>,
    /// A new dedupKey (see CreateWebhook), or null to stop deduplicating ingests.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^(header:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}|/[^\u0000]{0,199})$", max_length = 200)]
    pub dedup_key: Option<Option<String>>,
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub dedup_window_seconds: Option<i64>,
    /// true sets dedupKey to `header:webhook-id`; false clears it when it is that. Not with
    /// dedupKey.
    pub idempotency_from_webhook_id: Option<bool>,
    /// Not changeable: refused with 422 (create a new webhook instead).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub ordering_key: Option<Option<serde_json::Value>>,
    pub require_lock_token: Option<bool>,
    /// FIFO: the ordered in-flight window, 1 to 100 (see CreateWebhook). Applies to leases
    /// from now on.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub fifo_window: Option<i64>,
}

/// Tells a field set to null (Some(None)) from one left out (None).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureSettings {
    #[schema(value_type = SchemeName)]
    pub scheme: String,
    /// The shared secret (Standard Webhooks: `whsec_` + base64). Stored encrypted; never
    /// shown again.
    #[schema(min_length = 16)]
    pub secret: String,
    /// How far a signed timestamp may be from now, 1 to 86400 s (default 300).
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub tolerance_seconds: Option<i64>,
}

/// A webhook's delivery mode (documentation of the field's values).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ModeName {
    Fifo,
    Standard,
}

/// A signing scheme (documentation of the field's values).
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum SchemeName {
    StandardWebhooks,
    Stripe,
    Github,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureInfo {
    pub scheme: String,
    pub tolerance_seconds: i32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookResponse {
    #[schema(value_type = String, example = "wh_0f8a3c2b9d4e4f6a8b1c2d3e4f5a6b7c")]
    pub id: WebhookId,
    pub name: String,
    /// Where third parties POST; the webhook id in it is the secret.
    pub ingest_url: String,
    pub lock_timeout_seconds: i32,
    pub max_retries: i32,
    pub ttl_days: i32,
    /// The signing requirement, if any (never the secret).
    pub signature: Option<SignatureInfo>,
    pub mode: DeliveryMode,
    pub priorities: bool,
    /// Where a repeated ingest's key is found; null: every request is a new message.
    pub dedup_key: Option<String>,
    pub dedup_window_seconds: i32,
    /// Whether dedupKey is `header:webhook-id` (its earlier name).
    pub idempotency_from_webhook_id: bool,
    /// Where each message's ordering key is found; null: one order for the whole webhook.
    pub ordering_key: Option<String>,
    pub require_lock_token: bool,
    /// FIFO: how many messages one dequeue with maxMessages may lease from the head, in order.
    pub fifo_window: i32,
    /// Delivery paused by an operator (POST .../pause): dequeue hands out nothing until
    /// resumed; ingestion goes on.
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    /// Delivery held by a consumer's error with holdSeconds, until this time.
    pub held_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPage {
    pub data: Vec<WebhookResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

pub(super) fn respond(state: &ApiState, w: Webhook) -> WebhookResponse {
    WebhookResponse {
        ingest_url: format!("{}/ingest/{}", state.public_url, w.id),
        id: w.id,
        name: w.name,
        lock_timeout_seconds: w.lock_timeout_seconds,
        max_retries: w.max_retries,
        ttl_days: w.ttl_days,
        signature: w
            .signature_scheme
            .map(|scheme| SignatureInfo { scheme, tolerance_seconds: w.signature_tolerance_seconds }),
        mode: w.mode,
        priorities: w.priorities,
        idempotency_from_webhook_id: w.dedup_key == Some(RequestKey::webhook_id()),
        dedup_key: w.dedup_key.as_ref().map(RequestKey::to_string),
        dedup_window_seconds: w.dedup_window.get(),
        ordering_key: w.ordering_key.as_ref().map(RequestKey::to_string),
        require_lock_token: w.require_lock_token,
        fifo_window: w.fifo_window,
        paused: w.paused_at.is_some(),
        paused_at: w.paused_at,
        held_until: w.held_until,
        created_at: w.created_at,
        updated_at: w.updated_at,
    }
}

/// Create a webhook and its queue.
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks", request_body = CreateWebhook,
    security(("api_key" = [])),
    responses((status = 201, body = WebhookResponse), BodyErrors, KeyErrors, (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(project = auth.project().0))]
pub async fn create(
    auth: Authenticated,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    auth.require(Scope::Manage, None)?;
    let req: CreateWebhook = parse_json(&body, false)?;
    // Read fresh, not from the plan cache: a plan change applies to settings at once.
    let limits = crate::store::projects::limits(&state.pool, auth.project()).await?;
    let new = NewWebhook {
        name: WebhookName::parse(storable("name", &req.name)?)?,
        lock_timeout: req.lock_timeout_seconds.map(LockTimeout::parse).transpose()?.unwrap_or(LockTimeout::DEFAULT),
        max_retries: req.max_retries.map(MaxRetries::parse).transpose()?.unwrap_or(MaxRetries::DEFAULT),
        ttl_days: limits.ttl_days(req.ttl_days)?,
        mode: req.mode.as_deref().map(DeliveryMode::parse).transpose()?.unwrap_or_default(),
        priorities: req.priorities.unwrap_or(false),
        dedup_key: dedup_setting(req.dedup_key.as_deref().map(Some), req.idempotency_from_webhook_id, None)?.flatten(),
        dedup_window: req.dedup_window_seconds.map(DedupWindow::parse).transpose()?.unwrap_or_default(),
        ordering_key: req.ordering_key.as_deref().map(|k| RequestKey::parse("orderingKey", k)).transpose()?,
        require_lock_token: req.require_lock_token.unwrap_or(false),
        fifo_window: req.fifo_window.map(FifoWindow::parse).transpose()?.unwrap_or_default(),
    };
    if new.ordering_key.is_some()
        && (new.mode != DeliveryMode::Fifo || new.priorities || new.fifo_window != FifoWindow::DEFAULT)
    {
        return Err(ApiError::Validation(
            "orderingKey orders a FIFO webhook per key: not with mode standard, priorities or a fifoWindow above 1"
                .into(),
        ));
    }
    let signing = req.signature.as_ref().map(parse_signature).transpose()?;
    let quota = limits.max_webhooks.map(|max| WebhookQuota { max, plan: limits.plan });
    let mut tx = crate::store::begin(&state.pool).await?;
    let mut webhook = store::create(&mut tx, auth.project(), &new, quota).await?;
    if let Some(key) = &signing {
        store::set_signature(&mut *tx, auth.project(), &webhook.id, Some(&seal(&state, &webhook.id, key))).await?;
        webhook = store::get(&mut *tx, auth.project(), &webhook.id).await?;
    }
    crate::store::commit(tx).await?;
    Ok(HttpResponse::Created().json(respond(&state, webhook)))
}

/// List the project's webhooks in creation order.
#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks", params(PageQuery),
    security(("api_key" = [])),
    responses((status = 200, body = WebhookPage), (status = 400, body = ErrorBody), KeyErrors,
              (status = 422, body = ErrorBody)))]
pub async fn list(
    auth: Authenticated,
    state: web::Data<ApiState>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    auth.require_scope(Scope::Manage)?;
    let limit = page.limit()?;
    let after: Option<WebhookId> = match &page.cursor {
        None => None,
        Some(c) => Some(c.parse().map_err(|_| ApiError::BadRequest("cursor is not a webhook id".into()))?),
    };
    let only = auth.principal.webhooks.as_deref();
    let rows = store::list(&state.pool, auth.project(), only, after.as_ref(), limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let data: Vec<_> = rows.into_iter().take(limit as usize).map(|w| respond(&state, w)).collect();
    let next_cursor = if more { data.last().map(|w| w.id.to_string()) } else { None };
    Ok(HttpResponse::Ok().json(WebhookPage { data, next_cursor }))
}

/// Read one webhook.
#[utoipa::path(get, path = "/api/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WebhookResponse), WebhookErrors))]
pub async fn get(req: WebhookRequest<Manage>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let webhook = store::get(&state.pool, req.project(), &req.webhook).await?;
    Ok(HttpResponse::Ok().json(respond(&state, webhook)))
}

/// Change a webhook's settings; fields left out stay as they are.
#[utoipa::path(patch, path = "/api/webhooks/{webhook_id}", tag = "webhooks", request_body = UpdateWebhook,
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WebhookResponse), BodyErrors, WebhookErrors, (status = 422, body = ErrorBody)))]
pub async fn update(
    access: WebhookRequest<Manage>,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (project, webhook_id) = (access.project(), access.webhook);
    let req: UpdateWebhook = parse_json(&body, false)?;
    if req.mode.is_some() || req.ordering_key.is_some() {
        // Switching modes under consumers would strand locks of the other kind.
        return Err(ApiError::Validation(
            "mode and orderingKey are fixed at creation; create a new webhook to change them".into(),
        ));
    }
    if req.priorities == Some(true) || req.fifo_window.is_some_and(|w| w > 1) {
        let current = store::get(&state.pool, project, &webhook_id).await?;
        if current.ordering_key.is_some() {
            return Err(ApiError::Validation(
                "a webhook with orderingKey orders each key by seq: no priorities, no fifoWindow above 1".into(),
            ));
        }
    }
    let changes = WebhookChanges {
        name: match req.name.as_deref() {
            None => None,
            Some(name) => Some(WebhookName::parse(storable("name", name)?)?),
        },
        lock_timeout: req.lock_timeout_seconds.map(LockTimeout::parse).transpose()?,
        max_retries: req.max_retries.map(MaxRetries::parse).transpose()?,
        ttl_days: match req.ttl_days {
            None => None,
            Some(days) => Some(crate::store::projects::limits(&state.pool, project).await?.ttl_days(Some(days))?),
        },
        priorities: req.priorities,
        dedup_key: match (&req.dedup_key, req.idempotency_from_webhook_id) {
            (None, Some(false)) => {
                let current = store::get(&state.pool, project, &webhook_id).await?.dedup_key;
                dedup_setting(None, Some(false), current.as_ref())?
            }
            (key, alias) => dedup_setting(key.as_ref().map(Option::as_deref), alias, None)?,
        },
        dedup_window: req.dedup_window_seconds.map(DedupWindow::parse).transpose()?,
        require_lock_token: req.require_lock_token,
        fifo_window: req.fifo_window.map(FifoWindow::parse).transpose()?,
    };
    let signing = match &req.signature {
        None => None,
        Some(None) => Some(None),
        Some(Some(settings)) => Some(Some(parse_signature(settings)?)),
    };
    let mut tx = crate::store::begin(&state.pool).await?;
    let mut webhook = store::update(&mut *tx, project, &webhook_id, &changes).await?;
    if let Some(signing) = &signing {
        let sealed = signing.as_ref().map(|key| seal(&state, &webhook_id, key));
        store::set_signature(&mut *tx, project, &webhook_id, sealed.as_ref()).await?;
        webhook = store::get(&mut *tx, project, &webhook_id).await?;
    }
    crate::store::commit(tx).await?;
    state.settings.forget_webhook(&webhook_id);
    Ok(HttpResponse::Ok().json(respond(&state, webhook)))
}

/// Delete a webhook and every message in its queue.
#[utoipa::path(delete, path = "/api/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 204, description = "Deleted"), WebhookErrors))]
pub async fn delete(req: WebhookRequest<Manage>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    store::delete(&state.pool, req.project(), &req.webhook).await?;
    state.settings.forget_webhook(&req.webhook);
    Ok(HttpResponse::NoContent().finish())
}

/// The dedupKey a request asks for, from `dedupKey` or its earlier name
/// `idempotencyFromWebhookId` (`current`: the webhook's key, which false clears when it is
/// `header:webhook-id`). None: unchanged; Some(None): none.
fn dedup_setting(
    key: Option<Option<&str>>,
    webhook_id: Option<bool>,
    current: Option<&RequestKey>,
) -> Result<Option<Option<RequestKey>>, ApiError> {
    match (key, webhook_id) {
        (Some(_), Some(_)) => Err(ApiError::Validation("give dedupKey or idempotencyFromWebhookId, not both".into())),
        (Some(key), None) => Ok(Some(key.map(|k| RequestKey::parse("dedupKey", k)).transpose()?)),
        (None, Some(true)) => Ok(Some(Some(RequestKey::webhook_id()))),
        (None, Some(false)) if current == Some(&RequestKey::webhook_id()) => Ok(Some(None)),
        (None, _) => Ok(None),
    }
}

/// Checks a signing requirement before anything is stored.
fn parse_signature(settings: &SignatureSettings) -> Result<SigningKey, ApiError> {
    let scheme = SignatureScheme::parse(&settings.scheme).ok_or_else(|| {
        ApiError::Validation("signature.scheme must be one of standard-webhooks, stripe, github".into())
    })?;
    let tolerance = match settings.tolerance_seconds {
        None => 300,
        Some(t @ 1..=86_400) => t as u64,
        Some(_) => return Err(ApiError::Validation("signature.toleranceSeconds must be between 1 and 86400".into())),
    };
    SigningKey::new(scheme, &settings.secret, Duration::from_secs(tolerance))
        .map_err(|why| ApiError::Validation(format!("signature.secret: {why}")))
}

fn seal(state: &ApiState, webhook: &WebhookId, key: &SigningKey) -> StoredSignature {
    StoredSignature {
        scheme: key.scheme,
        tolerance_seconds: key.tolerance.as_secs() as i32,
        sealed: state.keys.seal_secret(webhook, key.secret_bytes()),
    }
}
