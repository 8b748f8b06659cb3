//! Signed ingestion: a webhook may require its senders to sign each request with a shared
//! secret, in one of three schemes. The MAC is computed once per request and compared in
//! constant time (`subtle`) with at most a handful of candidates; timestamps must be within
//! the tolerance. `verify` answers the MAC of the signed content, which is what the replay
//! claim (in PostgreSQL, see `http/ingest/mod.rs`) is made of: every spelling of one
//! signature (hex case, base64 variants, added candidates) claims the same thing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::HeaderMap;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::SignatureScheme as Scheme;

type HmacSha256 = Hmac<Sha256>;

/// A webhook's verifier: scheme, secret (never logged) and timestamp tolerance.
#[derive(Clone)]
pub struct SigningKey {
    pub scheme: Scheme,
    secret: Vec<u8>,
    pub tolerance: Duration,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("scheme", &self.scheme).field("secret", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature header {0}")]
    Missing(&'static str),
    #[error("malformed signature header {0}")]
    Malformed(&'static str),
    #[error("timestamp outside the tolerance of {0} s")]
    Stale(u64),
    #[error("signature does not match")]
    Mismatch,
    #[error("this signed request was already received")]
    Replayed,
}

impl SigningKey {
    /// `secret` as configured: for Standard Webhooks `whsec_<base64>` (or bare base64),
    /// for the others the secret's bytes.
    pub fn new(scheme: Scheme, secret: &str, tolerance: Duration) -> Result<Self, String> {
        let secret = match scheme {
            Scheme::StandardWebhooks => BASE64
                .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
                .map_err(|_| "a Standard Webhooks secret is whsec_ followed by base64".to_owned())?,
            Scheme::Stripe | Scheme::Github => secret.as_bytes().to_vec(),
        };
        if secret.len() < 16 {
            return Err("the secret must be at least 16 bytes".into());
        }
        Ok(Self { scheme, secret, tolerance })
    }

    /// The raw secret bytes as stored (encrypted) by the caller.
    pub fn secret_bytes(&self) -> &[u8] {
        &self.secret
    }

    pub fn from_stored(scheme: Scheme, secret: Vec<u8>, tolerance: Duration) -> Self {
        Self { scheme, secret, tolerance }
    }

    /// Checks the request; returns the MAC of the signed content that a candidate matched
    /// (for replay detection).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<[u8; 32], SignatureError> {
        let header = |name: &'static str| -> Result<&str, SignatureError> {
            headers
                .get(name)
                .ok_or(SignatureError::Missing(name))?
                .to_str()
                .map_err(|_| SignatureError::Malformed(name))
        };
        match self.scheme {
            Scheme::StandardWebhooks => {
                let id = header("webhook-id")?;
                let ts = header("webhook-timestamp")?;
                let ts_secs: u64 = ts.parse().map_err(|_| SignatureError::Malformed("webhook-timestamp"))?;
                self.fresh(ts_secs, now)?;
                let expected = self.mac(&[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
                // Space-separated `v1,<base64>` entries: any one matching passes (key rotation).
                let candidates = header("webhook-signature")?.split(' ').filter(|e| e.starts_with("v1,"));
                for entry in candidates.take(MAX_CANDIDATES) {
                    let Ok(sig) = BASE64.decode(&entry[3..]) else { continue };
                    if matches(&expected, &sig) {
                        return Ok(expected);
                    }
                }
                Err(SignatureError::Mismatch)
            }
            Scheme::Stripe => {
                let value = header("stripe-signature")?;
                let mut ts = None;
                let mut candidates = Vec::new();
                for part in value.split(',') {
                    match part.split_once('=') {
                        Some(("t", t)) => ts = Some(t),
                        Some(("v1", sig)) => candidates.push(sig),
                        _ => {}
                    }
                }
                let ts = ts.ok_or(SignatureError::Malformed("stripe-signature"))?;
                let ts_secs: u64 = ts.parse().map_err(|_| SignatureError::Malformed("stripe-signature"))?;
                self.fresh(ts_secs, now)?;
                let expected = self.mac(&[ts.as_bytes(), b".", body]);
                for sig in candidates.into_iter().take(MAX_CANDIDATES) {
                    if decode_hex(sig).is_some_and(|bytes| matches(&expected, &bytes)) {
                        return Ok(expected);
                    }
                }
                Err(SignatureError::Mismatch)
            }
            Scheme::Github => {
                let value = header("x-hub-signature-256")?;
                let hex = value.strip_prefix("sha256=").ok_or(SignatureError::Malformed("x-hub-signature-256"))?;
                let bytes = decode_hex(hex).ok_or(SignatureError::Malformed("x-hub-signature-256"))?;
                let expected = self.mac(&[body]);
                if !matches(&expected, &bytes) {
                    return Err(SignatureError::Mismatch);
                }
                Ok(expected)
            }
        }
    }

    /// The MAC of the signed content (given in parts, so the body is not copied), computed
    /// once per request whatever the number of candidates.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn fresh(&self, ts_secs: u64, now: SystemTime) -> Result<(), SignatureError> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.abs_diff(ts_secs) > self.tolerance.as_secs() {
            return Err(SignatureError::Stale(self.tolerance.as_secs()));
        }
        Ok(())
    }
}

/// Signatures considered per request: a sender rotating its secret sends two or three, and
/// each costs a comparison, so a header of thousands of bogus ones is cut short.
const MAX_CANDIDATES: usize = 5;

/// Constant-time comparison of a candidate with the expected MAC.
fn matches(expected: &[u8; 32], candidate: &[u8]) -> bool {
    candidate.len() == expected.len() && bool::from(expected.as_slice().ct_eq(candidate))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // Digits only (`from_str_radix` would also take a sign).
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn hmac_hex(secret: &[u8], content: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(content);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn github_signatures_verify_and_wrong_ones_do_not() {
        let key = SigningKey::new(Scheme::Github, "a-github-secret-123", Duration::ZERO).unwrap();
        let good = headers(&[("x-hub-signature-256", format!("sha256={}", hmac_hex(b"a-github-secret-123", b"body")))]);
        assert!(key.verify(&good, b"body", SystemTime::now()).is_ok());
        assert_eq!(key.verify(&good, b"other", SystemTime::now()), Err(SignatureError::Mismatch));
        assert_eq!(
            key.verify(&HeaderMap::new(), b"body", SystemTime::now()),
            Err(SignatureError::Missing("x-hub-signature-256"))
        );
    }

    #[test]
    fn stripe_checks_the_timestamp() {
        let key = SigningKey::new(Scheme::Stripe, "whsec_stripe_secret_value", Duration::from_secs(300)).unwrap();
        let now = SystemTime::now();
        let ts = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let sig = hmac_hex(b"whsec_stripe_secret_value", format!("{ts}.body").as_bytes());
        let h = headers(&[("stripe-signature", format!("t={ts},v1={sig}"))]);
        assert!(key.verify(&h, b"body", now).is_ok());
        let later = now + Duration::from_secs(301);
        assert_eq!(key.verify(&h, b"body", later), Err(SignatureError::Stale(300)));
    }

    #[test]
    fn only_the_first_few_candidates_are_considered() {
        let secret = "whsec_c3RhbmRhcmQtd2ViaG9va3Mtc2VjcmV0";
        let key = SigningKey::new(Scheme::StandardWebhooks, secret, Duration::from_secs(300)).unwrap();
        let now = SystemTime::now();
        let ts = now.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
        let raw = BASE64.decode(&secret[6..]).unwrap();
        let mut mac = HmacSha256::new_from_slice(&raw).unwrap();
        mac.update(format!("msg_1.{ts}.body").as_bytes());
        let good = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        let bogus = |n: usize| vec!["v1,AAAA"; n].join(" ");
        let signed = |entries: String| {
            headers(&[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", ts.clone()),
                ("webhook-signature", entries),
            ])
        };
        assert!(key.verify(&signed(format!("{} {good}", bogus(MAX_CANDIDATES - 1))), b"body", now).is_ok());
        let buried = signed(format!("{} {good}", bogus(3000)));
        assert_eq!(key.verify(&buried, b"body", now), Err(SignatureError::Mismatch));
    }
}
