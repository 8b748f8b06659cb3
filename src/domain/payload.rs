//! What an ingested webhook carries: its request headers and body bytes. Encoded as one
//! plaintext (headers as JSON, length-prefixed, then the raw body) before encryption.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Header names lowercased, in arrival order; repeated names appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("stored payload is malformed")]
pub struct PayloadError;

impl Payload {
    pub fn encode(&self) -> Vec<u8> {
        let headers = serde_json::to_vec(&self.headers).expect("string pairs always serialize");
        let mut out = Vec::with_capacity(4 + headers.len() + self.body.len());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        out.extend_from_slice(&headers);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or(PayloadError)?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(PayloadError);
        }
        let (headers, body) = rest.split_at(len);
        let headers = serde_json::from_slice(headers).map_err(|_| PayloadError)?;
        Ok(Self { headers, body: body.to_vec() })
    }

    /// The first value of a header, by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        let p =
            Payload { headers: vec![("content-type".into(), "application/json".into())], body: b"{\"a\":1}".to_vec() };
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        assert!(Payload::decode(&[0, 0, 0, 9, b'[']).is_err());
        assert!(Payload::decode(&[]).is_err());
    }
}
