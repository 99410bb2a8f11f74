//! Small helpers shared across layers.

/// Characters of a caller-supplied string kept in messages and logs.
pub const ECHO_CHARS: usize = 64;

/// At most [`ECHO_CHARS`] characters of an untrusted string (an id or name a caller sent),
/// with `...` when cut: error messages and log lines never echo a caller's string whole.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(ECHO_CHARS) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_at_a_character() {
        assert_eq!(clip("42"), "42");
        assert_eq!(clip(&"x".repeat(1000)).len(), 67);
        let s = "é".repeat(100);
        assert_eq!(clip(&s).chars().count(), 67);
    }
}
