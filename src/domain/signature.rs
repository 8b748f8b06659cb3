//! The signing schemes a webhook may require of its senders (verification lives beside
//! ingestion, in `http/ingest/signature.rs`).

use serde::{Deserialize, Serialize};

/// How senders sign: the header names and the signed content differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` over
    /// `id.timestamp.body`; the secret is `whsec_<base64>`.
    StandardWebhooks,
    /// `Stripe-Signature: t=<ts>,v1=<hex>` over `ts.body`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>` over the body (GitHub sends no timestamp).
    Github,
}

impl SignatureScheme {
    pub fn name(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard-webhooks",
            Self::Stripe => "stripe",
            Self::Github => "github",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::StandardWebhooks, Self::Stripe, Self::Github].into_iter().find(|x| x.name() == s)
    }
}
