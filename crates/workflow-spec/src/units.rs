//! Durations (`10s`, `5m`, `2h`, `1d`, `100ms`, `PT10S`, bare seconds) and
//! Kubernetes-style quantities (`16Gi`, `512Mi`, `1G`, `100M`, `1024`, CPU `500m`).

use std::time::Duration;

/// Parses a duration as OSMO does: `<int><unit>` with unit `us`, `ms`, `s`,
/// `m`, `h` or `d` (no mixed units), an ISO-8601 duration such as `PT10S` or
/// `P1DT2H`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let expected = "expected a duration such as `30s`, `10m`, `2h`, `1d` or `PT10S`";
    if s.is_empty() {
        return Err(format!("empty duration; {expected}"));
    }
    if let Some(iso) = s.strip_prefix(['P', 'p']) {
        return parse_iso(iso)
            .ok_or_else(|| format!("`{s}` is not a valid ISO-8601 duration; {expected}"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(format!("`{s}` is not a duration; {expected}"));
    }
    let per_unit: f64 = match unit {
        "" | "s" => 1.0,
        "us" => 1e-6,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("`{s}` has an unknown unit `{unit}`; {expected}")),
    };
    // Units other than bare seconds take whole numbers, as in OSMO.
    let valid = if unit.is_empty() {
        is_decimal(number)
    } else {
        is_integer(number)
    };
    if !valid {
        return Err(format!("`{s}` is not a duration; {expected}"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; {expected}"))?;
    seconds(value * per_unit).ok_or_else(|| format!("`{s}` is too long a duration"))
}

fn seconds(value: f64) -> Option<Duration> {
    // About 31 700 years: far beyond any timeout, far below Duration's limit.
    (value.is_finite() && (0.0..1e12).contains(&value)).then(|| Duration::from_secs_f64(value))
}

fn is_integer(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_decimal(s: &str) -> bool {
    let mut parts = s.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    match parts.next() {
        None => is_integer(whole),
        Some(frac) => {
            (is_integer(whole) || whole.is_empty())
                && (is_integer(frac) || (frac.is_empty() && !whole.is_empty()))
        }
    }
}

/// `[nD][T[nH][nM][nS]]` (after the `P`); seconds may have a fraction.
fn parse_iso(rest: &str) -> Option<Duration> {
    let (date, time) = match rest.find(['T', 't']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut total = 0.0;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut rest = part;
        let mut next_unit = 0;
        while !rest.is_empty() {
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
            let (number, tail) = rest.split_at(end);
            let unit = tail.chars().next()?.to_ascii_uppercase();
            let index = units[next_unit..].iter().position(|(u, _)| *u == unit)? + next_unit;
            let fractional_ok = unit == 'S';
            if !(is_integer(number) || (fractional_ok && is_decimal(number))) {
                return None;
            }
            total += number.parse::<f64>().ok()? * units[index].1;
            any = true;
            next_unit = index + 1;
            rest = &tail[1..];
        }
        Some(())
    };
    take(date, &[('W', 604800.0), ('D', 86400.0)])?;
    if let Some(time) = time {
        if time.is_empty() {
            return None;
        }
        take(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    if !any {
        return None;
    }
    seconds(total)
}

/// Parses a byte quantity, Kubernetes style: a non-negative number (a
/// fraction allowed) with an optional suffix `k`/`K`, `M`, `G`, `T`, `P`, `E`
/// (powers of 1000) or `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei` (powers of 1024).
/// Returns bytes, rounded up.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let expected = "expected a size such as `512Mi`, `16Gi`, `1G` or `1024`";
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return Err(format!("`{s}` is not a size; {expected}"));
    }
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            return Err(format!(
                "`{s}` has an unknown suffix `{suffix}`; {expected}"
            ));
        }
    };
    if !is_decimal(number) {
        return Err(format!("`{s}` is not a size; {expected}"));
    }
    let value = number
        .parse::<f64>()
        .map_err(|_| format!("`{s}` is not a size; {expected}"))?
        * factor;
    if !value.is_finite() || value >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large a size"));
    }
    Ok(value.ceil() as u64)
}

/// Parses a CPU count: a non-negative number (`2`, `0.5`) or millicores (`500m`).
pub fn parse_cpu(text: &str) -> Result<f64, String> {
    let s = text.trim();
    let expected = "expected a number of CPUs such as `2`, `0.5` or `500m`";
    let (number, factor) = match s.strip_suffix('m') {
        Some(n) => (n, 1e-3),
        None => (s, 1.0),
    };
    if !is_decimal(number) {
        return Err(format!("`{s}` is not a CPU count; {expected}"));
    }
    let value = number
        .parse::<f64>()
        .map_err(|_| format!("`{s}` is not a CPU count; {expected}"))?
        * factor;
    if !value.is_finite() || value > 1e9 {
        return Err(format!("`{s}` is too large a CPU count"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("30s", 30.0),
            ("10m", 600.0),
            ("2h", 7200.0),
            ("1d", 86400.0),
            ("250ms", 0.25),
            ("5us", 0.000005),
            ("45", 45.0),
            ("1.5", 1.5),
            ("PT10S", 10.0),
            ("PT1H30M", 5400.0),
            ("P1DT2H", 93600.0),
            ("P1W", 604800.0),
            ("PT0.5S", 0.5),
        ];
        for (text, secs) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs_f64(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "h",
            "1h30m",
            "2x",
            "-1s",
            "1.5h",
            "P",
            "PT",
            "PT1M1H",
            "P1H",
            "1e3",
            "9999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(
            parse_duration("2x")
                .unwrap_err()
                .contains("unknown unit `x`")
        );
    }

    #[test]
    fn quantities() {
        let ok = [
            ("16Gi", 16 << 30),
            ("512Mi", 512 << 20),
            ("1G", 1_000_000_000),
            ("100M", 100_000_000),
            ("1024", 1024),
            ("1.5Ki", 1536),
            ("2k", 2000),
        ];
        for (text, bytes) in ok {
            assert_eq!(parse_quantity(text), Ok(bytes), "{text}");
        }
        for bad in ["", "Gi", "16GB", "-1Gi", "1..2", "16 Gi x", "99999999999Ei"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_cpu("500m"), Ok(0.5));
        assert_eq!(parse_cpu("2"), Ok(2.0));
        assert!(parse_cpu("two").is_err());
    }
}
