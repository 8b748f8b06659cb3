//! Integers in request bodies and queries as JSON Schema defines them: a number with no
//! fractional part, so `5` and `5.0` are the same value (serde's i64 refuses `5.0`, which
//! clients that compute numbers in floating point, and the schema itself, allow). Query
//! strings bring the digits as text.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize as _;

/// For `Option<i64>` fields: `#[serde(default, deserialize_with = "whole::opt")]` (null
/// is None).
pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Inner(#[serde(deserialize_with = "required")] i64);
    Ok(Option::<Inner>::deserialize(d)?.map(|Inner(n)| n))
}

/// For `i64` fields: `#[serde(deserialize_with = "whole::required")]`.
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(Whole)
}

struct Whole;

impl Visitor<'_> for Whole {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // Within ±2^53 every whole f64 is exact; past it, it is no count anyone meant.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if v.fract() == 0.0 && v.abs() <= EXACT {
            Ok(v as i64)
        } else {
            Err(E::invalid_type(de::Unexpected::Float(v), &self))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse().map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::opt")]
        n: Option<i64>,
    }

    fn parse(json: &str) -> Option<Option<i64>> {
        serde_json::from_str::<T>(json).ok().map(|t| t.n)
    }

    #[test]
    fn whole_numbers_in_any_spelling_are_integers_and_fractions_are_not() {
        assert_eq!(parse(r#"{"n": 5}"#), Some(Some(5)));
        assert_eq!(parse(r#"{"n": 5.0}"#), Some(Some(5)));
        assert_eq!(parse(r#"{"n": -3}"#), Some(Some(-3)));
        assert_eq!(parse(r#"{}"#), Some(None));
        assert_eq!(parse(r#"{"n": null}"#), Some(None));
        assert_eq!(parse(r#"{"n": 5.5}"#), None);
        assert_eq!(parse(r#"{"n": 1e300}"#), None);
        assert_eq!(parse(r#"{"n": "7"}"#), Some(Some(7)));
        // Parsed exactly (serde_json's float_roundtrip): the fast parse made this one
        // 2251799813685247.25, a fraction, and refused a whole number schemathesis sent.
        assert_eq!(parse(r#"{"n": 2251799813685247.0}"#), Some(Some(2_251_799_813_685_247)));
    }
}
