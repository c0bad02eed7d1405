//! Values as the config writes them: durations (`"500ms"`), percentages
//! (`"10%"`), sizes (`"1MiB"`) and path prefixes (`"/ops"`), each parsed in
//! one place.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as `"500ms"`, `"2s"`, `"1m"` or `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(DurationText).map_err(serde::de::Error::custom)
    }
}

impl From<DurationText> for Duration {
    fn from(text: DurationText) -> Duration {
        text.0
    }
}

impl From<Duration> for DurationText {
    fn from(duration: Duration) -> DurationText {
        DurationText(duration)
    }
}

/// Parses `"500ms"`, `"2s"`, `"1m"`, `"1h"`, `"30d"` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: expected a whole number and a unit (ms, s, m, h, d), such as \"500ms\" or \"2s\"")
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => return Err(invalid()),
    };
    millis.map(Duration::from_millis).ok_or_else(invalid)
}

/// A duration as the config writes it: `26h`, `90m`, `30s`, `500ms`.
pub fn show_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    let units = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    units
        .iter()
        .find(|(size, _)| ms >= *size && ms.is_multiple_of(*size))
        .map_or_else(|| format!("{ms}ms"), |(size, unit)| format!("{}{unit}", ms / size))
}

/// A percentage written as `"10%"`.
#[derive(Clone, Copy, Debug)]
pub struct PercentText(pub f64);

impl<'de> Deserialize<'de> for PercentText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || {
            serde::de::Error::custom(format!("invalid percentage {text:?}: expected a number from 0 to 100 and '%', such as \"10%\""))
        };
        let number: f64 =
            text.strip_suffix('%').ok_or_else(invalid)?.trim().parse().map_err(|_| invalid())?;
        if (0.0..=100.0).contains(&number) {
            Ok(PercentText(number))
        } else {
            Err(invalid())
        }
    }
}

/// A size in bytes: a whole number, or a string with a unit (`"10MiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeText(pub u64);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        let invalid = |shown: String| {
            serde::de::Error::custom(format!(
                "invalid size {shown}: expected a whole number of bytes, or a number and a unit \
                 (B, KB, MB, GB, KiB, MiB, GiB), such as \"10MiB\""
            ))
        };
        let text = match Raw::deserialize(deserializer).map_err(|_| invalid("".into()))? {
            Raw::Bytes(bytes) => return Ok(SizeText(bytes)),
            Raw::Text(text) => text,
        };
        parse_size(&text).map(SizeText).ok_or_else(|| invalid(format!("{text:?}")))
    }
}

/// `"512"`, `"10KB"`, `"1 MiB"`: bytes, with decimal or binary units.
pub fn parse_size(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A path prefix healthd is reached under: `""` (the root) or a plain
/// absolute path without a trailing slash (`/ops`). It ends up in URLs of
/// the served contract and of Swagger UI's script, so only letters, digits,
/// `-._~` and `%` escapes are allowed, and no empty, `.` or `..` segment:
/// nothing in it ever needs quoting. The config's `forwarded_prefix` and
/// the builder's `prefix` are both parsed here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// The root: no prefix.
    pub fn root() -> Prefix {
        Prefix(String::new())
    }

    /// `/ops/` and `/ops` are `/ops`, `/` is the root; anything else that
    /// is not a plain absolute path is refused with the reason.
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let Some(path) = text.strip_prefix('/') else {
            return Err(format!(
                "invalid path prefix {text:?}: expected an absolute path such as \"/ops\""
            ));
        };
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.is_empty() {
            return Ok(Prefix::root());
        }
        if path.split('/').all(plain_segment) {
            Ok(Prefix(format!("/{path}")))
        } else {
            Err(format!("invalid path prefix {text:?}: expected path segments of letters, digits, '-', '.', '_', '~' and %-escapes, such as \"/ops\""))
        }
    }

    /// `""` or `/a/b`, ready to put before a path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn plain_segment(segment: &str) -> bool {
    if segment.is_empty() || segment == "." || segment == ".." {
        return false;
    }
    let bytes = segment.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = bytes.get(index + 1..index + 3);
                if !hex.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                index += 3;
            }
            byte if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') => {
                index += 1
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("10KB"), Some(10_000));
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn prefixes_are_plain_absolute_paths() {
        assert_eq!(Prefix::parse("/ops/").unwrap().as_str(), "/ops");
        assert_eq!(Prefix::parse("/a/b").unwrap().as_str(), "/a/b");
        assert_eq!(Prefix::parse("/%41").unwrap().as_str(), "/%41");
        assert!(Prefix::parse("/").unwrap().is_root());
        assert_eq!(Prefix::parse("/a/b-c_d.e~f%2F").unwrap().as_str(), "/a/b-c_d.e~f%2F");
        for bad in [
            "ops",
            "",
            "/a b",
            "/a//b",
            "/a/./b",
            "/../x",
            "/a\"b",
            "/a%2",
            "/a?b",
            "/ö",
            "/<script>",
        ] {
            assert!(Prefix::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
