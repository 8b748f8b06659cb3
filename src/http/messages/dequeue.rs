//! POST /api/webhooks/{id}/messages/dequeue: lock what can be delivered now, or long-poll
//! until something can.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;

use super::{deliver, deliver_batch};
use crate::domain::{LockTimeout, MaxMessages, SettingError};
use crate::http::error::{parse_json, ApiError, ErrorBody};
use crate::http::extract::{Dequeue, WebhookRequest};
use crate::http::ApiState;
use crate::limits::Operation;
use crate::store::messages as store;

/// On a 204: `paused` (an operator paused the webhook) or `held` (a consumer's error held it).
pub const QUEUE_STATE_HEADER: &str = "Hookline-Queue-State";

/// Longest long-poll a dequeue may ask for.
const MAX_WAIT_SECONDS: i64 = 20;

/// Shortest pause before re-checking a queue whose next due time has (by our clock) passed.
const MIN_RECHECK: Duration = Duration::from_millis(20);

/// Dequeue's options, in the query string or (the same fields) in a JSON body.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DequeueQuery {
    /// Long-poll: hold the request up to this many seconds (at most 20) until a message can
    /// be delivered, then answer it, or 204 when the time runs out.
    #[param(minimum = 0, maximum = 20)]
    #[schema(minimum = 0, maximum = 20)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub wait: Option<i64>,
    /// Lock up to this many messages (1 to 100) and answer a DeliveredBatch. A FIFO webhook
    /// leases at most its fifoWindow (default 1) from the head, in order, under one lock
    /// token, and hands out nothing more until they are committed or released.
    #[param(minimum = 1, maximum = 100)]
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub max_messages: Option<i64>,
    /// Seconds these locks last (1 to 43200), instead of the webhook's lockTimeoutSeconds.
    #[param(minimum = 1, maximum = 43200)]
    #[schema(minimum = 1, maximum = 43200)]
    #[serde(default, deserialize_with = "crate::http::whole::opt")]
    pub visibility_timeout: Option<i64>,
}

impl DequeueQuery {
    /// The options of the query string and of the body, each given in one of them at most.
    fn merged(self, body: DequeueQuery) -> Result<Self, ApiError> {
        fn one<T>(field: &str, query: Option<T>, body: Option<T>) -> Result<Option<T>, ApiError> {
            match (query, body) {
                (Some(_), Some(_)) => {
                    Err(ApiError::Validation(format!("{field} is given in both the query and the body")))
                }
                (q, b) => Ok(q.or(b)),
            }
        }
        Ok(Self {
            wait: one("wait", self.wait, body.wait)?,
            max_messages: one("maxMessages", self.max_messages, body.max_messages)?,
            visibility_timeout: one("visibilityTimeout", self.visibility_timeout, body.visibility_timeout)?,
        })
    }
}

/// Lock and receive what can be delivered: in a FIFO webhook the head of the queue (204
/// while it is locked by another consumer, or when the queue is empty), in a standard
/// webhook up to `maxMessages` at once. With `?wait=N`, long-poll.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/messages/dequeue", tag = "messages",
    params(("webhook_id" = String, Path), DequeueQuery), request_body(content = Option<DequeueQuery>,
    description = "The query's options as JSON instead (an option may be given in one place only)"),
    security(("api_key" = [])),
    responses((status = 200, body = super::Dequeued, description = "Without maxMessages: one message. With maxMessages: a DeliveredBatch"),
              (status = 204, description = "Nothing to deliver. Hookline-Queue-State says why when the webhook withholds delivery: paused (by an operator) or held (by a consumer's error with holdSeconds)",
               headers(("Hookline-Queue-State" = String, description = "paused or held"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "Rate limited: see Retry-After and RateLimit-*"),
              (status = 500, body = ErrorBody, description = "payload_unreadable: the message was dead-lettered"),
              (status = 503, body = ErrorBody, description = "key_unavailable: the head is sealed with a key this broker lacks; it stays queued at its position. overloaded: too many API key verifications at once (all, or with this key's prefix). See Retry-After")))]
#[tracing::instrument(skip_all, fields(webhook_id = %req.webhook))]
pub async fn dequeue(
    req: WebhookRequest<Dequeue>,
    query: web::Query<DequeueQuery>,
    state: web::Data<ApiState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let webhook = req.webhook;
    let query = query.into_inner().merged(parse_json(&body, true)?)?;
    let wait = match query.wait {
        None => Duration::ZERO,
        Some(s @ 0..=MAX_WAIT_SECONDS) => Duration::from_secs(s as u64),
        Some(_) => return Err(ApiError::Validation(format!("wait must be between 0 and {MAX_WAIT_SECONDS} seconds"))),
    };
    let max = query.max_messages.map(MaxMessages::parse).transpose()?;
    let visibility = query
        .visibility_timeout
        .map(|v| LockTimeout::parse(v).map_err(|e| SettingError { field: "visibilityTimeout", ..e }))
        .transpose()?;
    req.auth.rate_limit_n(&state, webhook, Operation::Dequeue, 1)?;
    let deadline = tokio::time::Instant::now() + wait;
    let wakeup = state.wakeups.subscribe(webhook);
    loop {
        // Armed before the check: a wake-up that lands between the check and the wait counts.
        let woken = wakeup.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let locked = store::dequeue(&state.pool, req.project(), &webhook, max.unwrap_or_default(), visibility).await?;
        if !locked.is_empty() {
            return match max {
                None => {
                    let first = locked.into_iter().next().expect("not empty");
                    Ok(HttpResponse::Ok().json(deliver(&state, &webhook, first).await?))
                }
                Some(_) => deliver_batch(&state, &webhook, locked).await,
            };
        }
        let idle = store::idle(&state.pool, &webhook).await?;
        if wait.is_zero() {
            return Ok(nothing(idle.withheld));
        }
        // A delay running out, a lock expiring or a hold ending wakes nobody: wait no longer
        // than that.
        let due = idle.next_due.map(|at| {
            let from_now = (at - Utc::now()).to_std().unwrap_or_default().max(MIN_RECHECK);
            tokio::time::Instant::now() + from_now
        });
        let until = due.map_or(deadline, |due| due.min(deadline));
        let asleep = wakeup.asleep();
        let slept = tokio::time::timeout_at(until, woken).await;
        drop(asleep);
        if slept.is_err() && until == deadline {
            return Ok(nothing(idle.withheld));
        }
    }
}

/// 204, saying why when the webhook withholds delivery.
fn nothing(withheld: Option<store::Withheld>) -> HttpResponse {
    let mut answer = HttpResponse::NoContent();
    if let Some(why) = withheld {
        answer.insert_header((QUEUE_STATE_HEADER, why.name()));
    }
    answer.finish()
}
