//! Text bound for PostgreSQL: its `text` type cannot hold a NUL character, so every string
//! a client sends that reaches the database is checked here first (400, naming the field).

/// A client's text had a NUL character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must not contain NUL characters")]
pub struct NulInText {
    pub field: &'static str,
}

/// `value`, if the database can store it.
pub fn storable<'a>(field: &'static str, value: &'a str) -> Result<&'a str, NulInText> {
    if value.contains('\0') {
        return Err(NulInText { field });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused_with_its_field() {
        assert_eq!(storable("name", "a\0b"), Err(NulInText { field: "name" }));
        assert_eq!(storable("name", "ok"), Ok("ok"));
        assert_eq!(NulInText { field: "reason" }.to_string(), "reason must not contain NUL characters");
    }
}
