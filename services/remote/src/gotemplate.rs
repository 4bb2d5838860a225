//! The placeholders of Baetyl v1's timer: Go `text/template` actions over v1's data, `.Time` and `.Rand`.
//!
//! v1.0.2's timer executed its payload as a Go template whose data had `Time` (methods `Now`, `NowUnix`,
//! `NowUnixNano`) and `Rand` (a `math/rand` generator with every method of Go's `*rand.Rand`, plus
//! `Float64n n` = n × Float64). This module reads those actions (not Go's whole template language):
//!
//! - `{{.Time.NowUnix}}`, `{{.Time.NowUnixNano}}`: integers.
//! - `{{.Time.Now}}`: Go's `Time.String()` form, `2023-11-14 22:13:20.123456789 +0000 UTC`, without the
//!   monotonic clock reading Go appends (` m=+0.01`, a reading relative to the process start that means
//!   nothing to a consumer). Methods of Go's `time.Time` chain on it: `Unix`, `UnixNano`, `Year`, `Month`,
//!   `Day`, `Hour`, `Minute`, `Second`, `Nanosecond`, `YearDay`, `Weekday`, `UTC`, `Local`, `String`,
//!   `Format "2006-01-02T15:04:05Z07:00"` (Go's reference-time layouts).
//! - `{{.Rand.Int}}`, `Int31`, `Int63`, `Uint32`, `Uint64`, `Float32`, `Float64`, `NormFloat64`,
//!   `ExpFloat64`, `Intn N`, `Int31n N`, `Int63n N` (N > 0, checked at load: Go panics on it), `Float64n X`,
//!   `Perm N` (N ≤ 1000; printed as Go prints a slice, `[2 0 1]`).
//!
//! Times are in UTC: Go's `Local` is the host's zone, and a device's services run without one (`Local` is
//! accepted and gives UTC). `{{-` and `-}}` trim the spaces next to an action, as in Go.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// One parsed action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    NowUnix,
    NowUnixNano,
    /// `.Time.Now` and the `time.Time` methods chained on it.
    Now(Vec<TimeMethod>),
    Rand(RandCall),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TimeMethod {
    Unix,
    UnixNano,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Nanosecond,
    YearDay,
    Weekday,
    /// `UTC`, `Local`: the same time (in UTC here).
    Same,
    String,
    Format(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RandCall {
    Int,
    Int31,
    Int63,
    Uint32,
    Uint64,
    Float32,
    Float64,
    NormFloat64,
    ExpFloat64,
    Intn(i64),
    Int31n(i64),
    Int63n(i64),
    Float64n(f64),
    Perm(usize),
}

/// What an action gives: a number becomes a JSON number when it is a mapping value's only content.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
    Text(String),
}

impl Value {
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match self {
            Value::Int(i) => i64::try_from(*i)
                .map(serde_json::Value::from)
                .ok()
                .or_else(|| u64::try_from(*i).ok().map(serde_json::Value::from)),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number),
            Value::Text(_) => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => f.write_str(&go_float(*x)),
            Value::Text(s) => f.write_str(s),
        }
    }
}

/// Go's `%v` of a float64: the shortest representation, in exponent form below 1e-4 or from 1e21.
fn go_float(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let exp = x.abs().log10().floor() as i32;
    if (-4..21).contains(&exp) {
        return format!("{x}");
    }
    let s = format!("{x:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

const PERM_MAX: usize = 1000;

fn known() -> &'static str {
    "{{.Time.Now}}, {{.Time.NowUnix}}, {{.Time.NowUnixNano}}, {{.Time.Now.Format \"2006-01-02\"}}, \
     {{.Rand.Int}}, {{.Rand.Int63}}, {{.Rand.Intn 10}}, {{.Rand.Float64}}, {{.Rand.Float64n 60}} (see the README)"
}

/// Splits an action into words: bare words and Go string literals (`"..."` with escapes, or `` `...` ``).
fn words(src: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(e @ ('"' | '\\')) => s.push(e),
                        other => {
                            return Err(format!("unsupported escape `\\{}`", other.unwrap_or(' ')));
                        }
                    },
                    Some(ch) => s.push(ch),
                    None => return Err("a string without its closing `\"`".into()),
                }
            }
            out.push(format!("\"{s}"));
        } else if c == '`' {
            chars.next();
            let s: String = chars.by_ref().take_while(|&ch| ch != '`').collect();
            out.push(format!("\"{s}"));
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn int_arg(method: &str, args: &[String], max: i64) -> Result<i64, String> {
    let [a] = args else {
        return Err(format!("`{method}` takes one number, e.g. `{method} 10`"));
    };
    let n: i64 = a
        .parse()
        .map_err(|_| format!("`{method}`: `{a}` is not an integer"))?;
    if n <= 0 || n > max {
        return Err(format!("`{method}`: {n} must be between 1 and {max}"));
    }
    Ok(n)
}

fn no_args(method: &str, args: &[String]) -> Result<(), String> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(format!("`{method}` takes no argument"))
    }
}

/// Parses the text between `{{` and `}}` (trim markers already removed) when it starts with `.`.
pub fn parse(action: &str) -> Result<Action, String> {
    let unknown = || {
        format!(
            "unsupported v1 template action `{{{{{action}}}}}`; known: {}",
            known()
        )
    };
    let words = words(action.trim())?;
    let (chain, args) = words.split_first().ok_or_else(unknown)?;
    if args.iter().any(|a| a.starts_with('.') || a == "|") {
        return Err(format!("{}: pipelines are not supported", unknown()));
    }
    let path: Vec<&str> = chain.split('.').skip(1).collect();
    match path.as_slice() {
        ["Time", "NowUnix"] => no_args("NowUnix", args).map(|_| Action::NowUnix),
        ["Time", "NowUnixNano"] => no_args("NowUnixNano", args).map(|_| Action::NowUnixNano),
        ["Time", "Now", methods @ ..] => {
            let mut out = Vec::new();
            for (i, m) in methods.iter().enumerate() {
                let last = i + 1 == methods.len();
                let method = match *m {
                    "Unix" => TimeMethod::Unix,
                    "UnixNano" => TimeMethod::UnixNano,
                    "Year" => TimeMethod::Year,
                    "Month" => TimeMethod::Month,
                    "Day" => TimeMethod::Day,
                    "Hour" => TimeMethod::Hour,
                    "Minute" => TimeMethod::Minute,
                    "Second" => TimeMethod::Second,
                    "Nanosecond" => TimeMethod::Nanosecond,
                    "YearDay" => TimeMethod::YearDay,
                    "Weekday" => TimeMethod::Weekday,
                    "UTC" | "Local" => TimeMethod::Same,
                    "String" => TimeMethod::String,
                    "Format" if last => match args {
                        [layout] if layout.starts_with('"') => {
                            TimeMethod::Format(layout[1..].to_string())
                        }
                        _ => return Err("`Format` takes one layout string, e.g. `Format \"2006-01-02 15:04:05\"`".into()),
                    },
                    _ => return Err(unknown()),
                };
                out.push(method);
            }
            if !matches!(out.last(), Some(TimeMethod::Format(_))) {
                no_args("Now", args)?;
            }
            Ok(Action::Now(out))
        }
        ["Rand", m] => {
            let call = match *m {
                "Int" => RandCall::Int,
                "Int31" => RandCall::Int31,
                "Int63" => RandCall::Int63,
                "Uint32" => RandCall::Uint32,
                "Uint64" => RandCall::Uint64,
                "Float32" => RandCall::Float32,
                "Float64" => RandCall::Float64,
                "NormFloat64" => RandCall::NormFloat64,
                "ExpFloat64" => RandCall::ExpFloat64,
                "Intn" => {
                    return int_arg(m, args, i64::MAX).map(|n| Action::Rand(RandCall::Intn(n)));
                }
                "Int31n" => {
                    return int_arg(m, args, i64::from(i32::MAX))
                        .map(|n| Action::Rand(RandCall::Int31n(n)));
                }
                "Int63n" => {
                    return int_arg(m, args, i64::MAX).map(|n| Action::Rand(RandCall::Int63n(n)));
                }
                "Perm" => {
                    return int_arg(m, args, PERM_MAX as i64)
                        .map(|n| Action::Rand(RandCall::Perm(n as usize)));
                }
                "Float64n" => {
                    let [a] = args else {
                        return Err("`Float64n` takes one number, e.g. `Float64n 60`".into());
                    };
                    let x: f64 = a
                        .parse()
                        .ok()
                        .filter(|x: &f64| x.is_finite())
                        .ok_or_else(|| format!("`Float64n`: `{a}` is not a number"))?;
                    return Ok(Action::Rand(RandCall::Float64n(x)));
                }
                _ => return Err(unknown()),
            };
            no_args(m, args).map(|_| Action::Rand(call))
        }
        _ => Err(unknown()),
    }
}

/// A point in time, broken down (UTC).
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 1..=366.
    yearday: u32,
}

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
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

impl Civil {
    fn new(secs: i64, nanos: u32) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Days to a proleptic Gregorian date (the civil-from-days algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][month as usize - 1];
        let yearday = before + day + u32::from(month > 2 && is_leap(year));
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            nanos,
            weekday: (days + 4).rem_euclid(7) as u32,
            yearday,
        }
    }

    fn hour12(&self) -> u32 {
        match self.hour % 12 {
            0 => 12,
            h => h,
        }
    }
}

/// Go's `time.Time.Format` for a UTC time.
fn format(t: &Civil, layout: &str) -> String {
    let mut out = String::new();
    let mut rest = layout;
    // Longest tokens first where one is a prefix of another.
    const TOKENS: &[&str] = &[
        "January",
        "Jan",
        "Monday",
        "Mon",
        "MST",
        "2006",
        "002",
        "01",
        "02",
        "03",
        "04",
        "05",
        "06",
        "__2",
        "_2",
        "15",
        "1",
        "2",
        "3",
        "4",
        "5",
        "PM",
        "pm",
        "-07:00:00",
        "-070000",
        "-07:00",
        "-0700",
        "-07",
        "Z07:00:00",
        "Z070000",
        "Z07:00",
        "Z0700",
        "Z07",
    ];
    while !rest.is_empty() {
        // Fractional seconds: `.000`, `,999`, ... not followed by a digit.
        if let Some(sep @ ('.' | ',')) = rest.chars().next() {
            let after = &rest[1..];
            if let Some(d @ ('0' | '9')) = after.chars().next() {
                let n = after.chars().take_while(|&c| c == d).count();
                if !after[n..].starts_with(|c: char| c.is_ascii_digit()) {
                    let digits = format!("{:09}", t.nanos);
                    let digits = &digits[..n.min(9)];
                    if d == '0' {
                        let _ = write!(out, "{sep}{digits}");
                    } else {
                        let trimmed = digits.trim_end_matches('0');
                        if !trimmed.is_empty() {
                            let _ = write!(out, "{sep}{trimmed}");
                        }
                    }
                    rest = &after[n..];
                    continue;
                }
            }
        }
        let Some(tok) = TOKENS.iter().find(|t| rest.starts_with(*t)) else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        let m = MONTHS[t.month as usize - 1];
        let w = WEEKDAYS[t.weekday as usize];
        let _ = match *tok {
            "January" => write!(out, "{m}"),
            "Jan" => write!(out, "{}", &m[..3]),
            "Monday" => write!(out, "{w}"),
            "Mon" => write!(out, "{}", &w[..3]),
            "MST" => write!(out, "UTC"),
            "2006" => write!(out, "{:04}", t.year),
            "06" => write!(out, "{:02}", t.year.rem_euclid(100)),
            "002" => write!(out, "{:03}", t.yearday),
            "__2" => write!(out, "{:>3}", t.yearday),
            "01" => write!(out, "{:02}", t.month),
            "1" => write!(out, "{}", t.month),
            "02" => write!(out, "{:02}", t.day),
            "_2" => write!(out, "{:>2}", t.day),
            "2" => write!(out, "{}", t.day),
            "15" => write!(out, "{:02}", t.hour),
            "03" => write!(out, "{:02}", t.hour12()),
            "3" => write!(out, "{}", t.hour12()),
            "04" => write!(out, "{:02}", t.minute),
            "4" => write!(out, "{}", t.minute),
            "05" => write!(out, "{:02}", t.second),
            "5" => write!(out, "{}", t.second),
            "PM" => write!(out, "{}", if t.hour >= 12 { "PM" } else { "AM" }),
            "pm" => write!(out, "{}", if t.hour >= 12 { "pm" } else { "am" }),
            "-07:00:00" => write!(out, "+00:00:00"),
            "-070000" => write!(out, "+000000"),
            "-07:00" => write!(out, "+00:00"),
            "-0700" => write!(out, "+0000"),
            "-07" => write!(out, "+00"),
            _ => write!(out, "Z"), // Z07:00 and the other ISO 8601 zones: UTC is written `Z`.
        };
        rest = &rest[tok.len()..];
    }
    out
}

/// Go's `Time.String()` without the monotonic reading.
fn go_time_string(t: &Civil) -> String {
    format(t, "2006-01-02 15:04:05.999999999 -0700 MST")
}

/// Runs `action` at `now`.
pub fn eval(action: &Action, now: SystemTime) -> Value {
    let (secs, nanos) = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    };
    let unix_nano = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let mut rng = rand::rng();
    match action {
        Action::NowUnix => Value::Int(i128::from(secs)),
        Action::NowUnixNano => Value::Int(unix_nano),
        Action::Now(methods) => {
            let t = Civil::new(secs, nanos);
            match methods.iter().find(|m| **m != TimeMethod::Same) {
                None | Some(TimeMethod::String) => Value::Text(go_time_string(&t)),
                Some(TimeMethod::Unix) => Value::Int(i128::from(secs)),
                Some(TimeMethod::UnixNano) => Value::Int(unix_nano),
                Some(TimeMethod::Year) => Value::Int(i128::from(t.year)),
                Some(TimeMethod::Month) => Value::Text(MONTHS[t.month as usize - 1].into()),
                Some(TimeMethod::Day) => Value::Int(t.day.into()),
                Some(TimeMethod::Hour) => Value::Int(t.hour.into()),
                Some(TimeMethod::Minute) => Value::Int(t.minute.into()),
                Some(TimeMethod::Second) => Value::Int(t.second.into()),
                Some(TimeMethod::Nanosecond) => Value::Int(t.nanos.into()),
                Some(TimeMethod::YearDay) => Value::Int(t.yearday.into()),
                Some(TimeMethod::Weekday) => Value::Text(WEEKDAYS[t.weekday as usize].into()),
                Some(TimeMethod::Format(layout)) => Value::Text(format(&t, layout)),
                Some(TimeMethod::Same) => Value::Text(go_time_string(&t)),
            }
        }
        Action::Rand(call) => match call {
            RandCall::Int | RandCall::Int63 => Value::Int(rng.random_range(0..i64::MAX).into()),
            RandCall::Int31 => Value::Int(rng.random_range(0..i32::MAX).into()),
            RandCall::Uint32 => Value::Int(rng.random::<u32>().into()),
            RandCall::Uint64 => Value::Int(rng.random::<u64>().into()),
            RandCall::Float32 => Value::Float(f64::from(rng.random::<f32>())),
            RandCall::Float64 => Value::Float(rng.random::<f64>()),
            RandCall::Float64n(x) => Value::Float(x * rng.random::<f64>()),
            RandCall::NormFloat64 => {
                // Box-Muller: a standard normal from two uniforms.
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random();
                Value::Float((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
            }
            RandCall::ExpFloat64 => Value::Float(-(1.0 - rng.random::<f64>()).ln()),
            RandCall::Intn(n) | RandCall::Int31n(n) | RandCall::Int63n(n) => {
                Value::Int(rng.random_range(0..*n).into())
            }
            RandCall::Perm(n) => {
                let mut p: Vec<usize> = (0..*n).collect();
                for i in (1..p.len()).rev() {
                    p.swap(i, rng.random_range(0..=i));
                }
                let items: Vec<String> = p.iter().map(usize::to_string).collect();
                Value::Text(format!("[{}]", items.join(" ")))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn run(action: &str, now: SystemTime) -> String {
        eval(
            &parse(action).unwrap_or_else(|e| panic!("{action}: {e}")),
            now,
        )
        .to_string()
    }

    #[test]
    fn time_actions_as_go_prints_them() {
        let now = at(1_700_000_000_123);
        assert_eq!(run(".Time.NowUnix", now), "1700000000");
        assert_eq!(run(".Time.NowUnixNano", now), "1700000000123000000");
        assert_eq!(run(".Time.Now", now), "2023-11-14 22:13:20.123 +0000 UTC");
        assert_eq!(run(".Time.Now", at(0)), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(run(".Time.Now.UTC.Unix", now), "1700000000");
        assert_eq!(run(".Time.Now.Year", now), "2023");
        assert_eq!(run(".Time.Now.Month", now), "November");
        assert_eq!(run(".Time.Now.Weekday", now), "Tuesday");
        assert_eq!(run(".Time.Now.YearDay", now), "318");
        assert_eq!(
            run(".Time.Now.Format \"2006-01-02T15:04:05.000Z07:00\"", now),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            run(
                ".Time.Now.Format `Mon Jan _2 3:04:05PM 2006 -0700 MST`",
                now
            ),
            "Tue Nov 14 10:13:20PM 2023 +0000 UTC"
        );
        // A leap day, and a date before the epoch.
        assert_eq!(
            run(".Time.Now.Format \"2006-01-02 002\"", at(951_782_400_000)),
            "2000-02-29 060"
        );
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(
            run(".Time.Now.Format \"2006-01-02 Monday\"", before),
            "1969-12-31 Wednesday"
        );
    }

    #[test]
    fn rand_actions_stay_in_range() {
        let now = at(0);
        for _ in 0..200 {
            let n: i64 = run(".Rand.Intn 10", now).parse().unwrap();
            assert!((0..10).contains(&n));
            let x: f64 = run(".Rand.Float64n 60", now).parse().unwrap();
            assert!((0.0..60.0).contains(&x));
            let x: f64 = run(".Rand.Float64", now).parse().unwrap();
            assert!((0.0..1.0).contains(&x));
            assert!(run(".Rand.Int", now).parse::<i64>().unwrap() >= 0);
            assert!(run(".Rand.Int31", now).parse::<i32>().unwrap() >= 0);
            run(".Rand.Uint64", now).parse::<u64>().unwrap();
            run(".Rand.NormFloat64", now).parse::<f64>().unwrap();
            assert!(run(".Rand.ExpFloat64", now).parse::<f64>().unwrap() >= 0.0);
        }
        let p = run(".Rand.Perm 5", now);
        let mut items: Vec<u32> = p
            .trim_matches(['[', ']'])
            .split(' ')
            .map(|s| s.parse().unwrap())
            .collect();
        items.sort();
        assert_eq!(items, vec![0, 1, 2, 3, 4], "{p}");
    }

    #[test]
    fn floats_print_as_go_does() {
        assert_eq!(go_float(0.6046602879796196), "0.6046602879796196");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(12.5), "12.5");
        assert_eq!(go_float(1e21), "1e+21");
    }

    #[test]
    fn mistakes_are_refused_with_what_is_known() {
        for (action, want) in [
            (".Rand.Intn 0", "between 1"),
            (".Rand.Intn", "takes one number"),
            (".Rand.Intn x", "not an integer"),
            (".Rand.Perm 100000", "between 1 and 1000"),
            (".Time.Later", "unsupported v1 template action"),
            (".Time.NowUnix 3", "takes no argument"),
            (".Rand.Int | printf", "pipelines"),
            (".Time.Now.Format", "layout string"),
        ] {
            let e = parse(action).unwrap_err();
            assert!(e.contains(want), "{action}: {e}");
        }
    }
}
