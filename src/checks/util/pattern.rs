//! Regular expressions from the config: compiled once at load, a bad one
//! reported as a one-line reason. Bodies, headers and replies are matched
//! as bytes (`regex::bytes`), so an answer that is not UTF-8 is matched as
//! it is, never converted or refused: its invalid bytes match no character
//! class, and `(?-u:\xff)` matches a raw byte.

/// Compiles `text` for matching bytes.
pub fn bytes_pattern(text: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::Regex::new(text).map_err(|error| reason(&error))
}

/// Compiles `text` for matching text (answers that are always UTF-8).
pub fn text_pattern(text: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|error| reason(&error))
}

/// `invalid regular expression: REASON`: the regex crate writes the
/// pattern and a caret over several lines; a problem is one line.
fn reason(error: &regex::Error) -> String {
    let text = error.to_string();
    let last = text.lines().last().unwrap_or("invalid").trim();
    format!("invalid regular expression: {}", last.trim_start_matches("error: "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_pattern_is_one_line_naming_the_reason() {
        let reason = bytes_pattern("(unclosed").unwrap_err();
        assert_eq!(reason, "invalid regular expression: unclosed group");
        assert!(text_pattern("a{2,1}").unwrap_err().starts_with("invalid regular expression: "));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_matched_as_they_are() {
        let pattern = bytes_pattern("^220 ").unwrap();
        assert!(pattern.is_match(b"220 \xff\xfe mail ready"));
        assert!(!bytes_pattern("^.$").unwrap().is_match(b"\xff"));
        assert!(bytes_pattern(r"(?-u:\xff)").unwrap().is_match(b"a\xffb"));
    }
}
