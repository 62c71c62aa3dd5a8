//! FQL (Falcon Query Language) values: quoting with `\` and `'` escaped, and timestamps in the
//! one form Falcon compares correctly (UTC, RFC 3339, no fraction).

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Escapes a value for use inside single quotes.
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

/// `'value'`, escaped.
pub fn quote(value: &str) -> String {
    format!("'{}'", escape(value))
}

/// `2025-01-01T00:00:00Z`: converted to UTC (the original used local time with a `Z`) and
/// truncated to whole seconds.
pub fn timestamp(at: OffsetDateTime) -> String {
    let utc = at.to_offset(UtcOffset::UTC);
    let utc = utc.replace_nanosecond(0).unwrap_or(utc);
    utc.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Reads a timestamp as Falcon writes it (with or without a fraction); `None` if it is not one.
pub(crate) fn parse_timestamp(raw: Option<&str>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(raw?.trim(), &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(escape(r"it's C:\temp"), r"it\'s C:\\temp");
        assert_eq!(quote(r"a'\b"), r"'a\'\\b'");
        // A value ending in a backslash cannot swallow the closing quote.
        assert_eq!(quote("x\\"), r"'x\\'");
    }

    #[test]
    fn timestamps_are_utc_whole_seconds() {
        assert_eq!(
            timestamp(datetime!(2025-03-01 14:34:56.789 +02:00)),
            "2025-03-01T12:34:56Z"
        );
    }

    #[test]
    fn falcon_timestamps_parse_with_or_without_fraction() {
        assert_eq!(
            parse_timestamp(Some("2024-02-22T14:16:04.973070837Z")),
            Some(datetime!(2024-02-22 14:16:04.973070837 UTC))
        );
        assert_eq!(
            parse_timestamp(Some("2024-02-22T14:16:04Z")),
            Some(datetime!(2024-02-22 14:16:04 UTC))
        );
        assert_eq!(parse_timestamp(Some("yesterday")), None);
        assert_eq!(parse_timestamp(None), None);
    }
}
