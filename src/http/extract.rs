//! Extractors that authorize, so handlers hold only their own logic:
//! - [`Authenticated`]: a valid API key (`x-api-key` or `Authorization: Bearer`) within its
//!   per-key rate limit, with its project's limits;
//! - [`WebhookRequest`]: the typed `{webhook_id}` of the path, checked against the key's
//!   scope and webhook limit and against the caller's project, with the route's rate-limit
//!   token spent;
//! - [`MessageRequest`]: the same plus the typed `{message_id}`; [`LockedRequest`] adds the
//!   JSON body that carries the caller's lock token.
//!
//! The checks run in one order everywhere: 401, 404 (an id that does not parse), 403, 404
//! (another project's webhook), 429 for routes whose extractor spends the token, then the
//! handler's own arguments (query and body: 400, 413, 422).

use std::future::Future;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;

use super::error::{parse_id, parse_json, ApiError, API_BODY_LIMIT};
use super::ApiState;
use crate::auth::Principal;
use crate::domain::{Limits, LockToken, MessageId, ProjectId, Scope, WebhookId};
use crate::limits::Operation;
use crate::store::messages::LockedRef;

type Extracted<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

fn state(req: &HttpRequest) -> Result<web::Data<ApiState>, ApiError> {
    req.app_data::<web::Data<ApiState>>()
        .cloned()
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("ApiState missing")))
}

/// An authenticated request: the API key was valid and within its rate limit. Carries the
/// project's current limits.
pub struct Authenticated {
    pub principal: Principal,
    pub limits: Limits,
}

impl Authenticated {
    pub fn project(&self) -> ProjectId {
        self.principal.project
    }

    /// Refuses (403) a key without `scope`, or limited to other webhooks than `webhook`
    /// (None: a project-wide action, which needs an unrestricted key).
    pub fn require(&self, scope: Scope, webhook: Option<&WebhookId>) -> Result<(), ApiError> {
        self.require_scope(scope)?;
        let allowed = match webhook {
            Some(w) => self.principal.may_touch(w),
            None => self.principal.webhooks.is_none(),
        };
        if !allowed {
            return Err(ApiError::Forbidden("this API key is limited to other webhooks".into()));
        }
        Ok(())
    }

    /// Refuses (403) a key without `scope`, whatever webhooks it is limited to.
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        if !self.principal.scopes.contains(scope) {
            return Err(ApiError::Forbidden(format!("this API key lacks the {scope} scope")));
        }
        Ok(())
    }

    /// Counts `n` operations on `webhook` at once (a batch), all admitted or none.
    pub fn rate_limit_n(
        &self,
        state: &ApiState,
        webhook: WebhookId,
        operation: Operation,
        n: usize,
    ) -> Result<(), ApiError> {
        // A batch larger than a whole second's budget could never pass: say so, not 429.
        if let Some(rate) = operation.per_second(&self.limits).filter(|rate| n > rate.get() as usize) {
            return Err(ApiError::Validation(format!(
                "a batch of {n} exceeds the {} plan's {} limit of {rate} per second; send at most {rate} at once",
                self.limits.plan.name(),
                operation.name()
            )));
        }
        let n = NonZeroU32::new(n.clamp(1, u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
        state.limits.webhook_n(self.project(), webhook, operation, &self.limits, n).map_err(ApiError::RateLimited)
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = state(req);
        let presented = presented_key(req);
        Box::pin(async move {
            let state = state?;
            let presented = presented.ok_or(ApiError::Unauthorized)?;
            let principal = state.verifier.verify(&presented).await?;
            let limits = state.settings.project(principal.project).await?;
            state.limits.key(principal.key, &limits).map_err(ApiError::RateLimited)?;
            Ok(Authenticated { principal, limits })
        })
    }
}

fn presented_key(req: &HttpRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// What a route does to a webhook: the scope it needs, and the operation whose rate-limit
/// token the extractor spends (None: a read, or a batch that spends its own count).
pub trait Access {
    const SCOPE: Scope;
    const SPENDS: Option<Operation>;
}

macro_rules! access {
    ($(#[$doc:meta])* $name:ident, $scope:expr, $spends:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl Access for $name {
            const SCOPE: Scope = $scope;
            const SPENDS: Option<Operation> = $spends;
        }
    };
}

access!(
    /// Reading a webhook's messages, stats and dead letters, and acting on dead letters.
    Read, Scope::Consume, None
);
access!(
    /// Dequeuing (the handler spends the dequeue token once the query is valid, so a
    /// refused request costs nothing).
    Dequeue, Scope::Consume, None
);
access!(
    /// Commit, error and extend of a locked message: spend an ack token.
    Ack, Scope::Consume, Some(Operation::Ack)
);
access!(
    /// Publishing (the handler spends one ingestion token per message).
    Publish, Scope::Publish, None
);
access!(
    /// Managing the webhook itself.
    Manage, Scope::Manage, None
);

/// A request about one webhook of the caller's project, authorized for `A`.
pub struct WebhookRequest<A> {
    pub auth: Authenticated,
    pub webhook: WebhookId,
    access: PhantomData<A>,
}

impl<A: Access> WebhookRequest<A> {
    pub fn project(&self) -> ProjectId {
        self.auth.project()
    }

    async fn authorize(state: &ApiState, auth: Authenticated, webhook: WebhookId) -> Result<Self, ApiError> {
        auth.require(A::SCOPE, Some(&webhook))?;
        // Another project's webhook does not exist, as far as this key can tell.
        if state.settings.owner(webhook).await? != Some(auth.project()) {
            return Err(ApiError::NotFound("webhook"));
        }
        if let Some(operation) = A::SPENDS {
            auth.rate_limit_n(state, webhook, operation, 1)?;
        }
        Ok(Self { auth, webhook, access: PhantomData })
    }
}

fn path_id<T: std::str::FromStr>(req: &HttpRequest, name: &str, what: &'static str) -> Result<T, ApiError> {
    parse_id(req.match_info().get(name).unwrap_or_default(), what)
}

impl<A: Access + 'static> FromRequest for WebhookRequest<A> {
    type Error = ApiError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let auth = Authenticated::from_request(req, payload);
        let (state, webhook) = (state(req), path_id(req, "webhook_id", "webhook"));
        Box::pin(async move {
            let auth = auth.await?;
            Self::authorize(&*state?, auth, webhook?).await
        })
    }
}

/// A request about one message of a webhook of the caller's project, authorized for `A`.
pub struct MessageRequest<A> {
    pub webhook: WebhookRequest<A>,
    pub message: MessageId,
}

impl<A: Access + 'static> FromRequest for MessageRequest<A> {
    type Error = ApiError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let auth = Authenticated::from_request(req, payload);
        let state = state(req);
        let ids = path_id(req, "webhook_id", "webhook").and_then(|w| Ok((w, path_id(req, "message_id", "message")?)));
        Box::pin(async move {
            let auth = auth.await?;
            let (webhook, message) = ids?;
            let webhook = WebhookRequest::authorize(&*state?, auth, webhook).await?;
            Ok(Self { webhook, message })
        })
    }
}

/// A request body that may claim a lock by its token.
pub trait LockClaim: DeserializeOwned + Default {
    /// Whether an empty body means "no claims" (`{}`).
    const EMPTY_OK: bool;
    fn lock_token(&self) -> Option<&LockToken>;
}

/// A commit, error or extend: the message, its webhook, and the body with the lock token.
pub struct LockedRequest<B> {
    pub message: MessageRequest<Ack>,
    pub body: B,
}

impl<B: LockClaim> LockedRequest<B> {
    pub fn id(&self) -> MessageId {
        self.message.message
    }

    pub fn webhook(&self) -> &WebhookId {
        &self.message.webhook.webhook
    }

    /// The message and the lock the caller claims, as the store takes them.
    pub fn target(&self) -> LockedRef<'_> {
        LockedRef {
            project: self.message.webhook.project(),
            webhook: &self.message.webhook.webhook,
            message: &self.message.message,
            token: self.body.lock_token(),
        }
    }
}

impl<B: LockClaim + 'static> FromRequest for LockedRequest<B> {
    type Error = ApiError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let message = MessageRequest::<Ack>::from_request(req, payload);
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let message = message.await?;
            let body = body.await.map_err(|e| match e.as_response_error().status_code() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(API_BODY_LIMIT),
                _ => ApiError::BadRequest(format!("could not read the request body: {e}")),
            })?;
            Ok(Self { message, body: parse_json(&body, B::EMPTY_OK)? })
        })
    }
}
