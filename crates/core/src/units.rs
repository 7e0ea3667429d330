//! Human units in configuration: durations (`"30s"`, `"5m"`, `"1h"`, `"5d"`)
//! and sizes (`"50MiB"`, `"10MB"`, `"512"`).
//!
//! Entry points: [`parse_duration`], [`parse_size`], and the serde wrappers
//! [`HumanDuration`] and [`ByteSize`]. Bad input is a [`UnitError`] whose
//! message names the accepted forms, never a panic.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::num::ParseIntError;
use std::time::Duration;

/// The longest duration accepted anywhere (100 years): every timeout,
/// interval and age can then be added to "now" or doubled without overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why a duration or size was refused. `input` is the text as given
/// (trimmed); the message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The duration does not start with a number.
    #[error("invalid duration {input:?}: expected e.g. \"30s\", \"5m\", \"1h\"")]
    BadDuration {
        /// The text as given.
        input: String,
        /// Why the number did not parse.
        source: ParseIntError,
    },
    /// The duration's unit is not ms, s, m, h or d.
    #[error("invalid duration unit {unit:?} in {input:?}: use ms, s, m, h or d")]
    DurationUnit {
        /// The unit as written.
        unit: String,
        /// The text as given.
        input: String,
    },
    /// The duration is longer than [`MAX_DURATION`].
    #[error("duration {input:?} is too large (at most 100 years)")]
    DurationTooLarge {
        /// The text as given.
        input: String,
    },
    /// The size does not start with a number.
    #[error("invalid size {input:?}: expected e.g. \"50MiB\"")]
    BadSize {
        /// The text as given.
        input: String,
        /// Why the number did not parse.
        source: ParseIntError,
    },
    /// The size's unit is not one of B, KB, KiB, MB, MiB, GB, GiB.
    #[error("invalid size unit {unit:?} in {input:?}: use B, KiB, MiB, GiB, KB, MB, GB")]
    SizeUnit {
        /// The unit, lower-cased.
        unit: String,
        /// The text as given.
        input: String,
    },
    /// The size does not fit in 64 bits.
    #[error("size {input:?} is too large")]
    SizeTooLarge {
        /// The text as given.
        input: String,
    },
}

/// Parses `"<number><unit>"` with unit ms, s, m, h or d, up to
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|source| UnitError::BadDuration {
        input: s.to_string(),
        source,
    })?;
    let too_large = || UnitError::DurationTooLarge {
        input: s.to_string(),
    };
    let secs = match unit.trim() {
        "ms" => {
            return Some(Duration::from_millis(n))
                .filter(|d| *d <= MAX_DURATION)
                .ok_or_else(too_large)
        }
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(UnitError::DurationUnit {
                unit: other.to_string(),
                input: s.to_string(),
            })
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(too_large)
}

/// Parses `"<number><unit>"` with unit B, KB, KiB, MB, MiB, GB, GiB.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|source| UnitError::BadSize {
        input: s.to_string(),
        source,
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "kib" => 1024,
        "mb" | "m" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "gb" | "g" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(UnitError::SizeUnit {
                unit: other.to_string(),
                input: s.to_string(),
            })
        }
    };
    n.checked_mul(mult).ok_or_else(|| UnitError::SizeTooLarge {
        input: s.to_string(),
    })
}

/// A duration written as text in configuration (see [`parse_duration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

/// A size in octets, written as text or as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("200000000000000d").is_err());
        assert!(parse_duration("36500d").is_ok());
        assert!(parse_duration("36501d").is_err());
        assert!(parse_duration("18446744073709551615ms").is_err());
        assert_eq!(parse_size("50MiB"), Ok(50 * 1024 * 1024));
        assert_eq!(parse_size("10 KB"), Ok(10_000));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
    }

    #[test]
    fn messages_name_the_accepted_forms() {
        let msg = |r: Result<Duration, UnitError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(parse_duration(" 5x ")),
            "invalid duration unit \"x\" in \"5x\": use ms, s, m, h or d"
        );
        assert_eq!(
            msg(parse_duration("s")),
            "invalid duration \"s\": expected e.g. \"30s\", \"5m\", \"1h\""
        );
        assert_eq!(
            msg(parse_duration("36501d")),
            "duration \"36501d\" is too large (at most 100 years)"
        );
        assert_eq!(
            parse_size("1TB").unwrap_err().to_string(),
            "invalid size unit \"tb\" in \"1TB\": use B, KiB, MiB, GiB, KB, MB, GB"
        );
        assert_eq!(
            parse_size("x").unwrap_err().to_string(),
            "invalid size \"x\": expected e.g. \"50MiB\""
        );
        assert_eq!(
            parse_size("18446744073709551615GiB")
                .unwrap_err()
                .to_string(),
            "size \"18446744073709551615GiB\" is too large"
        );
        // The number's own parse error is kept as the source.
        let e = parse_duration("99999999999999999999d").unwrap_err();
        assert!(std::error::Error::source(&e).is_some());
    }
}
