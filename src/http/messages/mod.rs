//! /api/webhooks/{id}/messages: the consumer's side. Dequeue locks what can be delivered
//! (`dequeue.rs`); commit (ACK), error (NACK) and extend act on a held lock (`ack.rs`); a
//! stale lock token gets 409.

pub mod ack;
pub mod dequeue;

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{MessageRequest, Read};
use super::responses::WebhookErrors;
use super::ApiState;
use crate::crypto::CryptoError;
use crate::domain::{LockToken, MessageId, MessageState, Payload, Priority, Seq, WebhookId};
use crate::store::messages::{self as store, LockedMessage};

pub fn routes(cfg: &mut web::ServiceConfig) {
    // One scope, static segment first: actix-router tries each dynamic pattern in turn as a
    // regex, so the hot consumer routes are kept few and early (see http::routes).
    cfg.service(
        web::scope("/webhooks/{webhook_id}/messages")
            .route("/dequeue", web::post().to(dequeue::dequeue))
            .route("", web::post().to(super::publish::publish))
            .route("/batch", web::post().to(super::publish::publish_batch))
            .route("/commit", web::post().to(ack::commit_batch))
            .route("/{message_id}/commit", web::post().to(ack::commit))
            .route("/{message_id}/error", web::post().to(ack::error))
            .route("/{message_id}/extend", web::post().to(ack::extend))
            .route("/{message_id}", web::get().to(get)),
    );
}

/// A locked message, decrypted for its consumer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredMessage {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    pub status: MessageState,
    /// Present it to commit or error, to prove the lock is still yours.
    #[schema(value_type = String)]
    pub lock_token: LockToken,
    pub lock_expires_at: DateTime<Utc>,
    pub retry_count: i32,
    pub max_retries: i32,
    pub received_at: DateTime<Utc>,
    /// 0 to 10, higher delivered first (0 unless the webhook has priorities enabled).
    #[schema(value_type = i32)]
    pub priority: Priority,
    /// The request headers as received (hop-by-hop ones removed); repeated names joined by ", ".
    pub headers: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    #[schema(value_type = String)]
    pub id: MessageId,
    #[schema(value_type = i64)]
    pub seq: Seq,
    pub status: MessageState,
    pub retry_count: i32,
    pub max_retries: i32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub lock_expires_at: Option<DateTime<Utc>>,
    pub committed_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
    #[schema(value_type = i32)]
    pub priority: Priority,
    /// When a delayed message joins its queue.
    pub deliver_at: Option<DateTime<Utc>>,
    /// The committed message this one delivers again (POST .../replay at the tail).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub replay_of: Option<MessageId>,
}

/// What a dequeue with `maxMessages` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveredBatch {
    /// In delivery order: priority, then seq.
    pub messages: Vec<DeliveredMessage>,
}

/// What a dequeue answers (documentation): one message, or with `maxMessages` a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Dequeued {
    One(DeliveredMessage),
    Batch(DeliveredBatch),
}

/// Opens each message; unreadable ones are dead-lettered and left out, and ones sealed with
/// a key this broker lacks are released and left out (503 when nothing else is left). In a
/// FIFO window (messages under one lock token) the store returned the messages after such a
/// one to the queue with it, so the answer ends there: what follows is not the consumer's.
pub(super) async fn deliver_batch(
    state: &ApiState,
    webhook: &WebhookId,
    locked: Vec<LockedMessage>,
) -> Result<HttpResponse, ApiError> {
    let window = locked.windows(2).all(|pair| pair[0].lock_token == pair[1].lock_token);
    let mut messages = Vec::with_capacity(locked.len());
    let mut unavailable = None;
    for m in locked {
        match deliver(state, webhook, m).await {
            Ok(delivered) => messages.push(delivered),
            Err(ApiError::UnreadablePayload(_)) if window => break,
            Err(ApiError::UnreadablePayload(_)) => {}
            Err(e @ ApiError::KeyUnavailable { .. }) => {
                unavailable = Some(e);
                if window {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    match unavailable {
        Some(e) if messages.is_empty() => Err(e),
        _ if messages.is_empty() => Ok(HttpResponse::NoContent().finish()),
        _ => Ok(HttpResponse::Ok().json(DeliveredBatch { messages })),
    }
}

/// Opens a locked message for its consumer. One sealed with a key this broker does not have
/// is released without counting an attempt (503 `key_unavailable`): during a key rotation
/// another replica can deliver it, in order. One that cannot be opened otherwise (tampered
/// with, or not a payload) goes to the dead-letter queue with the reason, so it neither
/// returns garbage nor blocks the queue.
pub(super) async fn deliver(
    state: &ApiState,
    webhook: &WebhookId,
    m: LockedMessage,
) -> Result<DeliveredMessage, ApiError> {
    let opened = match state.keys.open(webhook, &m.id, &m.sealed) {
        Err(CryptoError::UnknownKey(key_id)) => {
            tracing::warn!(message_id = %m.id, key_id, "message sealed with a key this broker lacks; released");
            store::release(&state.pool, webhook, &m.id, &m.lock_token).await?;
            return Err(ApiError::KeyUnavailable { message: m.id, key_id });
        }
        other => other,
    };
    let payload = match opened.map_err(|e| e.to_string()).and_then(|p| Payload::decode(&p).map_err(|e| e.to_string())) {
        Ok(payload) => payload,
        Err(reason) => {
            tracing::error!(message_id = %m.id, %reason, "stored payload cannot be opened");
            store::bury(&state.pool, webhook, &m.id, &m.lock_token, &format!("payload unreadable: {reason}")).await?;
            return Err(ApiError::UnreadablePayload(m.id));
        }
    };
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &payload.headers {
        headers.entry(name.clone()).and_modify(|v| *v = format!("{v}, {value}")).or_insert_with(|| value.clone());
    }
    let content_type = payload.header("content-type").map(str::to_owned);
    let (body, body_base64) = match String::from_utf8(payload.body) {
        Ok(text) => (Some(text), None),
        Err(raw) => (None, Some(BASE64.encode(raw.as_bytes()))),
    };
    Ok(DeliveredMessage {
        id: m.id,
        seq: m.seq,
        status: MessageState::Locked,
        lock_token: m.lock_token,
        lock_expires_at: m.lock_expires_at,
        retry_count: m.retry_count,
        max_retries: m.max_retries,
        received_at: m.received_at,
        priority: m.priority,
        headers,
        content_type,
        body,
        body_base64,
    })
}

/// A message's state, counters, timestamps and last error.
#[utoipa::path(get, path = "/api/webhooks/{webhook_id}/messages/{message_id}", tag = "messages",
    params(("webhook_id" = String, Path), ("message_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = MessageStatus), WebhookErrors))]
pub async fn get(req: MessageRequest<Read>, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let m = store::find(&state.pool, req.webhook.project(), &req.webhook.webhook, &req.message).await?;
    Ok(HttpResponse::Ok().json(MessageStatus {
        id: m.id,
        seq: m.seq,
        status: m.state,
        retry_count: m.retry_count,
        max_retries: m.max_retries,
        last_error: m.last_error,
        received_at: m.received_at,
        expires_at: m.expires_at,
        lock_expires_at: m.lock_expires_at,
        committed_at: m.committed_at,
        dead_at: m.dead_at,
        priority: m.priority,
        deliver_at: m.deliver_at,
        replay_of: m.replay_of,
    }))
}
