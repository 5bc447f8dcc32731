//! Identifiers: the one grammar every id of the contract shares (`deposit_id`, `user_id`, …).

use serde_json::Value;

pub const MAX_ID_LEN: usize = 128;

/// True for a string of 1 to 128 characters from `A-Z a-z 0-9 _ . : -`.
pub fn is_valid(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The id held by `value`, when it is a JSON string that is a valid id.
pub fn from_value(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|s| is_valid(s))
}

/// True for a provider name: `[a-z0-9-]{1,32}`.
pub fn is_valid_provider(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_grammar() {
        for ok in ["a", "d-42", "u_7", "x.y:z-1", &"a".repeat(128)] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            " ",
            "a b",
            "a/b",
            "ä",
            "a*",
            "a>",
            "a\n",
            &"a".repeat(129),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn provider_names() {
        assert!(is_valid_provider("alpha"));
        assert!(is_valid_provider("game-2"));
        assert!(!is_valid_provider("Alpha"));
        assert!(!is_valid_provider(""));
        assert!(!is_valid_provider(&"a".repeat(33)));
    }
}
