//! Free text from outside: a provider's `provider_ref` and `reason` on an ack.
//!
//! Such text is kept as its sender wrote it, with one exception: every control character (C0,
//! DEL, C1; NUL among them) becomes U+FFFD. PostgreSQL's `text` cannot hold NUL at all (the whole
//! transaction would fail, and with it a transfer's money would stay in transit), and no log line
//! or operator's terminal should be steered by an escape sequence a provider sent. An ack is
//! never refused for its text: what matters in it is the transfer and the status.

/// `s` with every control character replaced by U+FFFD; borrowed when it has none.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_replacement_characters() {
        assert_eq!(printable("ref-1 é ✓"), "ref-1 é ✓");
        assert!(matches!(printable("ok"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("a\0b"), "a\u{FFFD}b");
        assert_eq!(
            printable("\u{1b}[31mred\n\u{7f}\u{85}"),
            "\u{FFFD}[31mred\u{FFFD}\u{FFFD}\u{FFFD}"
        );
    }
}
