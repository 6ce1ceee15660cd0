//! How the CLI prints: `--format-type json|text`, tables, times and durations.

use std::time::Duration;

use comfy_table::{ContentArrangement, Table, TableComponent, presets};
use serde::Serialize;

/// `--format-type`: text for people, JSON for scripts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatType {
    /// Tables and sentences.
    #[default]
    Text,
    /// The API's JSON documents, as received.
    Json,
}

/// `--format-type/-t` for commands where `-t` means nothing else.
#[derive(Debug, Clone, clap::Args)]
pub struct FormatArgs {
    /// Output format: `text` for people, `json` for scripts.
    #[arg(long = "format-type", short = 't', value_enum, default_value_t = FormatType::Text)]
    pub format_type: FormatType,
}

impl FormatArgs {
    pub fn json(&self) -> bool {
        self.format_type == FormatType::Json
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Restores the default SIGPIPE action so `osmo workflow logs ID | head`
/// ends quietly instead of failing on a closed stdout. Only for commands that
/// print and exit (never for those that serve sockets).
pub fn die_quietly_on_broken_pipe() {
    // SAFETY: setting a signal's disposition to its default has no
    // preconditions; no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A table in the CLI's one style: no frame, a rule under the header.
/// Print it with [`table_text`].
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_style(TableComponent::HeaderLines, '─')
        .set_style(TableComponent::MiddleHeaderIntersections, '─')
        .set_header(header);
    // Wrap long cells to a real terminal's width; a pipe, or a terminal that
    // reports no usable size, gets whole lines.
    if t.width().is_some_and(|w| w >= 60) {
        t.set_content_arrangement(ContentArrangement::Dynamic);
    }
    t
}

/// A table's text, lines without trailing blanks, ending with a newline.
pub fn table_text(t: &Table) -> String {
    format!("{}\n", t.trim_fmt())
}

/// How times are shown: in a time zone (the system's: `TZ` or
/// `/etc/localtime`), with running durations measured up to `now`.
#[derive(Debug, Clone)]
pub struct Clock {
    tz: jiff::tz::TimeZone,
    now: jiff::Timestamp,
}

impl Clock {
    /// The system's zone and the current time.
    pub fn system() -> Clock {
        Clock {
            tz: jiff::tz::TimeZone::system(),
            now: jiff::Timestamp::now(),
        }
    }

    /// UTC, with `now` fixed (RFC 3339), for tests.
    #[cfg(test)]
    pub fn fixed_utc(now: &str) -> Clock {
        Clock {
            tz: jiff::tz::TimeZone::UTC,
            now: now.parse().expect("an RFC 3339 time"),
        }
    }

    /// An RFC 3339 time from the API in this clock's zone, `2026-11-25 11:20:02`;
    /// `-` when absent, the text as is when it cannot be read.
    pub fn time(&self, rfc3339: Option<&str>) -> String {
        let Some(text) = rfc3339 else {
            return "-".to_string();
        };
        match parse_utc(text) {
            Some(t) => t
                .to_zoned(self.tz.clone())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string(),
            None => text.to_string(),
        }
    }

    /// Seconds from `start` to `end`, or to now without `end`; None without a readable `start`.
    pub fn seconds(&self, start: Option<&str>, end: Option<&str>) -> Option<f64> {
        let start = parse_utc(start?)?;
        let end = match end {
            Some(e) => parse_utc(e)?,
            None => self.now,
        };
        Some(end.duration_since(start).as_secs_f64().max(0.0))
    }
}

/// A time from the API: RFC 3339, or UTC without a zone suffix as OSMO writes it.
fn parse_utc(text: &str) -> Option<jiff::Timestamp> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .or_else(|| format!("{text}Z").parse::<jiff::Timestamp>().ok())
}

/// A duration for people: `0.4s`, `12s`, `1m 05s`, `2h 03m`, `3d 04h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_string();
    }
    if seconds < 10.0 {
        return format!("{:.1}s", (seconds * 10.0).floor() / 10.0);
    }
    let s = Duration::from_secs_f64(seconds).as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `-` for nothing.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_osmo_times_without_a_zone_as_utc() {
        let clock = Clock::fixed_utc("2026-01-01T00:02:00Z");
        assert_eq!(
            clock.time(Some("2026-01-01T00:00:00.123")),
            "2026-01-01 00:00:00"
        );
        assert_eq!(
            clock.seconds(
                Some("2026-01-01T00:00:00"),
                Some("2026-01-01T00:00:30.000Z")
            ),
            Some(30.0)
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.0), "0.0s");
        assert_eq!(duration(0.46), "0.4s");
        assert_eq!(duration(9.99), "9.9s");
        assert_eq!(duration(12.0), "12s");
        assert_eq!(duration(65.0), "1m 05s");
        assert_eq!(duration(7380.0), "2h 03m");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0), "3d 04h");
        assert_eq!(duration(-1.0), "-");
    }

    #[test]
    fn seconds_between_two_times_or_until_now() {
        let clock = Clock::fixed_utc("2026-01-01T00:02:00Z");
        let s = clock.seconds(
            Some("2026-01-01T00:00:00.000Z"),
            Some("2026-01-01T00:01:05.500Z"),
        );
        assert_eq!(s, Some(65.5));
        assert_eq!(
            clock.seconds(Some("2026-01-01T00:00:00Z"), None),
            Some(120.0)
        );
        assert_eq!(clock.seconds(None, None), None);
    }

    #[test]
    fn times_in_the_clock_zone_and_unreadable_ones_as_is() {
        let clock = Clock::fixed_utc("2026-01-01T00:02:00Z");
        assert_eq!(
            clock.time(Some("2026-11-25T11:20:02.123Z")),
            "2026-11-25 11:20:02"
        );
        assert_eq!(clock.time(Some("yesterday")), "yesterday");
        assert_eq!(clock.time(None), "-");
    }
}
