//! /api/session: dashboard login (email and password, a session cookie that is Secure,
//! HttpOnly and SameSite=Strict), who is signed in, and logout. Failed and successful
//! attempts alike count against per-account and per-address limits; a wrong password and
//! an unknown email give the same answer in comparable time.

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use std::net::IpAddr;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use blake2::{Blake2s256, Digest};
use rand::RngCore;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{parse_json, ApiError, ErrorBody};
use super::ApiState;
use crate::domain::storable;
use crate::store::accounts::{self, SessionUser};

pub const COOKIE: &str = "hookline_session";
const SESSION_HOURS: i64 = 12;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/session")
            .route(web::post().to(login))
            .route(web::get().to(current))
            .route(web::delete().to(logout)),
    );
}

/// The longest address SMTP allows, and a password bound well past any passphrase.
const MAX_EMAIL_CHARS: usize = 254;
const MAX_PASSWORD_CHARS: usize = 1024;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(min_length = 1, max_length = 254, pattern = r"^[^\u0000]*$")]
    pub email: String,
    #[schema(max_length = 1024)]
    pub password: String,
}

/// The address a login comes from: the peer, unless the peer is a trusted reverse proxy;
/// then the nearest address in `X-Forwarded-For` that is not one of the trusted proxies
/// (entries further left were written by whoever sent the request, and can be anything).
fn client_address(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    // IPv4 seen through an IPv6 socket (`::ffff:a.b.c.d`) is the same address.
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|t| t.to_canonical() == ip.to_canonical());
    let peer = req.peer_addr()?.ip().to_canonical();
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let forwarded = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return Some(ip),
            // Not an address: nothing further left can be believed either.
            Err(_) => break,
        }
    }
    Some(peer)
}

/// Sign in to the dashboard; sets the session cookie.
#[utoipa::path(post, path = "/api/session", tag = "session", request_body = Login,
    responses((status = 200, body = SessionUser), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody, description = "Wrong email or password (the same answer for both)"),
              (status = 429, body = ErrorBody, description = "Too many attempts for this account or address")))]
pub async fn login(req: HttpRequest, state: web::Data<ApiState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let login: Login = parse_json(&body, false)?;
    // Checked before anything is keyed by it (the limiter) or spent on it (argon2).
    if login.email.chars().count() > MAX_EMAIL_CHARS || login.password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::BadRequest(format!(
            "email must be at most {MAX_EMAIL_CHARS} characters and password at most {MAX_PASSWORD_CHARS}"
        )));
    }
    let email = normalize(storable("email", &login.email)?);
    let address = client_address(&req, &state.trusted_proxies);
    state.logins.check(&email, address).map_err(ApiError::RateLimited)?;
    let user = accounts::find_user(&state.pool, &email).await?;
    let valid = state.verifier.verify_password(user.as_ref().map(|u| u.password_hash.as_str()), &login.password).await;
    let Some(user) = user.filter(|_| valid) else {
        return Err(ApiError::InvalidLogin);
    };
    let mut token = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut token);
    let expires = chrono::Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    accounts::create_session(&state.pool, &token_hash(&token), user.id, expires).await?;
    let mut conn = crate::store::connection(&state.pool).await?;
    let who = accounts::session_user(&mut conn, &token_hash(&token)).await?;
    let cookie = Cookie::build(COOKIE, URL_SAFE_NO_PAD.encode(token))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(CookieDuration::hours(SESSION_HOURS))
        .finish();
    Ok(HttpResponse::Ok().cookie(cookie).json(who))
}

/// Who is signed in with this session cookie.
#[utoipa::path(get, path = "/api/session", tag = "session",
    responses((status = 200, body = SessionUser), (status = 401, body = ErrorBody)))]
pub async fn current(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let hash = session_hash(&req).ok_or(ApiError::NoSession)?;
    let mut conn = crate::store::connection(&state.pool).await?;
    let who = accounts::session_user(&mut conn, &hash).await.map_err(|_| ApiError::NoSession)?;
    Ok(HttpResponse::Ok().json(who))
}

/// Sign out: the session ends and the cookie is cleared.
#[utoipa::path(delete, path = "/api/session", tag = "session", responses((status = 204, description = "Signed out")))]
pub async fn logout(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    if let Some(hash) = session_hash(&req) {
        accounts::end_session(&state.pool, &hash).await?;
    }
    let mut gone =
        Cookie::build(COOKIE, "").path("/").http_only(true).secure(true).same_site(SameSite::Strict).finish();
    gone.make_removal();
    Ok(HttpResponse::NoContent().cookie(gone).finish())
}

/// Emails compare case-insensitively.
pub fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Only a hash of each session token is stored, so a database dump holds no live sessions.
fn token_hash(token: &[u8]) -> Vec<u8> {
    Blake2s256::digest(token).to_vec()
}

fn session_hash(req: &HttpRequest) -> Option<Vec<u8>> {
    let token = URL_SAFE_NO_PAD.decode(req.cookie(COOKIE)?.value()).ok()?;
    Some(token_hash(&token))
}
