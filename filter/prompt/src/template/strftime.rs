//! `strftime_now(fmt)` without a clock: formats a caller-supplied UNIX time as UTC, like Python's `strftime`.
//!
//! HF calls `datetime.now().strftime(fmt)`: a naive local time, which is UTC in the usual
//! server container. `%Z`/`%z` of a naive datetime are empty strings; glibc's `-` flag
//! (`%-d`) drops zero padding. Unknown directives are copied through, as glibc does.

use std::fmt::Write as _;

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32, // 1..=12
    day: u32,   // 1..=31
    hour: u32,
    minute: u32,
    second: u32,
    weekday: u32, // 0 = Sunday
    yday: u32,    // 0-based day of the year
}

fn civil(unix_secs: i64) -> Civil {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Days since 1970-01-01 → proleptic Gregorian date, in 400-year eras of 146 097 days,
    // years counted from March so that the leap day is last.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let month_idx = usize::try_from(month - 1).unwrap_or(0);
    let yday = before.get(month_idx).copied().unwrap_or(0) + day - 1 + i64::from(leap && month > 2);
    let to_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
    Civil {
        year,
        month: to_u32(month),
        day: to_u32(day),
        hour: to_u32(secs / 3600),
        minute: to_u32(secs % 3600 / 60),
        second: to_u32(secs % 60),
        weekday: to_u32((days + 4).rem_euclid(7)),
        yday: to_u32(yday),
    }
}

/// Formats `unix_secs` (UTC) with a C `strftime` format string, C locale.
pub(crate) fn strftime(fmt: &str, unix_secs: i64) -> String {
    let t = civil(unix_secs);
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let num = |out: &mut String, v: i64, width: usize| {
            let _ = if no_pad {
                write!(out, "{v}")
            } else {
                write!(out, "{v:0width$}")
            };
        };
        let weekday = WEEKDAYS.get(t.weekday as usize).copied().unwrap_or("");
        let month = MONTHS
            .get(t.month.saturating_sub(1) as usize)
            .copied()
            .unwrap_or("");
        let hour12 = match t.hour % 12 {
            0 => 12,
            h => h,
        };
        match d {
            'a' => out.push_str(weekday.get(..3).unwrap_or(weekday)),
            'A' => out.push_str(weekday),
            'b' | 'h' => out.push_str(month.get(..3).unwrap_or(month)),
            'B' => out.push_str(month),
            'd' => num(&mut out, i64::from(t.day), 2),
            'e' => {
                let _ = write!(out, "{:>2}", t.day);
            }
            'H' => num(&mut out, i64::from(t.hour), 2),
            'I' => num(&mut out, i64::from(hour12), 2),
            'j' => num(&mut out, i64::from(t.yday + 1), 3),
            'm' => num(&mut out, i64::from(t.month), 2),
            'M' => num(&mut out, i64::from(t.minute), 2),
            'S' => num(&mut out, i64::from(t.second), 2),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'y' => num(&mut out, t.year.rem_euclid(100), 2),
            'Y' => {
                let _ = write!(out, "{}", t.year);
            }
            'u' => {
                let _ = write!(out, "{}", if t.weekday == 0 { 7 } else { t.weekday });
            }
            'w' => {
                let _ = write!(out, "{}", t.weekday);
            }
            'U' => num(&mut out, i64::from((t.yday + 7 - t.weekday) / 7), 2),
            'W' => num(
                &mut out,
                i64::from((t.yday + 7 - (t.weekday + 6) % 7) / 7),
                2,
            ),
            'F' => out.push_str(&strftime("%Y-%m-%d", unix_secs)),
            'D' | 'x' => out.push_str(&strftime("%m/%d/%y", unix_secs)),
            'T' | 'X' => out.push_str(&strftime("%H:%M:%S", unix_secs)),
            'R' => out.push_str(&strftime("%H:%M", unix_secs)),
            'c' => out.push_str(&strftime("%a %b %e %H:%M:%S %Y", unix_secs)),
            'Z' | 'z' => {} // naive datetime: empty
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %j", 0),
            "1970-01-01 00:00:00 Thu 001"
        );
        // 2024-07-26 12:34:56 UTC (Friday), the date Llama 3.1's template shows by default.
        assert_eq!(strftime("%d %b %Y", 1_721_997_296), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %-d, %Y %I:%M %p", 1_721_997_296),
            "Friday July 26, 2024 12:34 PM"
        );
        // Leap day and day of year.
        assert_eq!(strftime("%F %j", 1_709_164_800), "2024-02-29 060");
        assert_eq!(strftime("%F", 951_782_400), "2000-02-29");
        assert_eq!(strftime("%F %H", -1), "1969-12-31 23");
        assert_eq!(strftime("100%% %Z%z %q", 0), "100%  %q");
    }
}
