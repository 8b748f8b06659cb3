//! Keys a webhook takes from what its sender sends (a header, or a JSON pointer into the
//! body): the deduplication key (`dedupKey`, with how long a repeat answers the original)
//! and the ordering key (`orderingKey`).

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::{IdempotencyKey, SettingError};

/// Where a webhook finds a key in a request: `header:<name>` (for example
/// `header:webhook-id`, `header:X-GitHub-Delivery`, `header:Idempotency-Key`) or a JSON
/// pointer into the body (RFC 6901, for example Stripe's `/id` or `/data/object/customer`).
#[derive(Clone, PartialEq, Eq)]
pub enum RequestKey {
    /// A header name, lowercased.
    Header(String),
    /// A JSON pointer, `/` first.
    Pointer(String),
}

/// `header:` and a header name (RFC 9110 token characters), or a JSON pointer.
pub const REQUEST_KEY_PATTERN: &str = r"^(header:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}|/[^\u0000]{0,199})$";

impl RequestKey {
    /// The header Standard Webhooks senders put a unique event id in.
    pub fn webhook_id() -> Self {
        Self::Header("webhook-id".into())
    }

    pub fn parse(field: &'static str, value: &str) -> Result<Self, SettingError> {
        let refused = || SettingError {
            field,
            rule: "header:<name> (a header name) or a JSON pointer such as /id (at most 200 characters)".into(),
        };
        if let Some(name) = value.strip_prefix("header:") {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b);
            if name.is_empty() || name.len() > 100 || !name.bytes().all(token) {
                return Err(refused());
            }
            return Ok(Self::Header(name.to_ascii_lowercase()));
        }
        // A pointer's `~` escapes only `~0` and `~1`.
        let escapes_ok = value.split('~').skip(1).all(|rest| rest.starts_with('0') || rest.starts_with('1'));
        if !value.starts_with('/') || value.chars().count() > 200 || value.contains('\0') || !escapes_ok {
            return Err(refused());
        }
        Ok(Self::Pointer(value.to_owned()))
    }

    /// The key of one request, if it carries one: the header's value, or the body's value at
    /// the pointer (a string as it is, anything else as its JSON text). A value that is not
    /// a storable key (over 255 visible ASCII characters) is kept as its SHA-256, so a sender
    /// is never refused for the shape of its ids.
    pub fn of_request<'a>(&self, header: impl Fn(&str) -> Option<&'a [u8]>, body: &[u8]) -> Option<IdempotencyKey> {
        let raw: Vec<u8> = match self {
            Self::Header(name) => header(name)?.to_vec(),
            Self::Pointer(pointer) => {
                let json: serde_json::Value = serde_json::from_slice(body).ok()?;
                match json.pointer(pointer)? {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(s) => s.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                }
            }
        };
        let text = std::str::from_utf8(&raw).ok();
        match text.and_then(|t| IdempotencyKey::parse("dedupKey", t).ok()) {
            Some(key) => Some(key),
            None => {
                let digest = Sha256::digest(&raw);
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                IdempotencyKey::parse("dedupKey", &format!("sha256:{hex}")).ok()
            }
        }
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Pointer(pointer) => f.write_str(pointer),
        }
    }
}

impl fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

bounded_setting!(
    /// How long a repeated key answers the original message: 1 second to 24 hours.
    DedupWindow, "dedupWindowSeconds", 1, 86_400, 86_400
);

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(setting: &str, headers: &[(&str, &str)], body: &str) -> Option<String> {
        let key = RequestKey::parse("dedupKey", setting).unwrap();
        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes());
        key.of_request(header, body.as_bytes()).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn settings_are_a_header_name_or_a_pointer() {
        assert_eq!(
            RequestKey::parse("dedupKey", "header:X-GitHub-Delivery").unwrap().to_string(),
            "header:x-github-delivery"
        );
        assert_eq!(RequestKey::parse("dedupKey", "/data/object/id").unwrap().to_string(), "/data/object/id");
        for bad in [
            "",
            "id",
            "header:",
            "header:bad name",
            "header:a\u{e9}",
            "/a~2",
            "/\u{0}",
            &format!("/{}", "x".repeat(200)),
        ] {
            assert!(RequestKey::parse("dedupKey", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_key_comes_from_the_header_or_the_body() {
        assert_eq!(key_of("header:webhook-id", &[("webhook-id", "evt_1")], "{}").as_deref(), Some("evt_1"));
        assert_eq!(key_of("header:webhook-id", &[], "{}"), None);
        assert_eq!(key_of("/id", &[], r#"{"id": "evt_9"}"#).as_deref(), Some("evt_9"));
        assert_eq!(key_of("/data/n", &[], r#"{"data": {"n": 42}}"#).as_deref(), Some("42"));
        assert_eq!(key_of("/id", &[], r#"{"id": null}"#), None);
        assert_eq!(key_of("/id", &[], "not json"), None);
        assert_eq!(key_of("/a~1b", &[], r#"{"a/b": "x"}"#).as_deref(), Some("x"));
        let long = key_of("/id", &[], &format!(r#"{{"id": "{}"}}"#, "é".repeat(300))).unwrap();
        assert!(long.starts_with("sha256:") && long.len() == 7 + 64, "{long}");
    }
}
