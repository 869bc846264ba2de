//! Go's `time.Duration` as kubelet's configuration, flags, events and messages write it: parsed as
//! `time.ParseDuration` parses it, printed as `Duration.String()` prints it. One copy for the whole agent.

use std::time::Duration;

/// A duration as Go's `Duration.String()` prints it (`1m0s`, `20s`, `5m0s`, `0s`).
pub fn format_go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let frac = d.subsec_millis();
    let secs = if frac > 0 { format!("{s}.{frac:03}").trim_end_matches('0').to_owned() } else { s.to_string() };
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// Go's `time.ParseDuration` (`[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`), in Go's integer arithmetic and with its error
/// messages, so that the agent accepts exactly the durations kubelet accepts: at most `1<<63 - 1` nanoseconds (about
/// 292 years), every larger one is Go's `time: invalid duration`, never a panic. A negative duration, valid in Go,
/// is refused: no setting of the agent takes one.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(text));
    let mut s = text;
    let mut negative = false;
    if let Some(c @ (b'-' | b'+')) = s.bytes().next() {
        negative = c == b'-';
        s = &s[1..];
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const MAX: u64 = 1 << 63;
    let mut total: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        // The integer part: an overflow is an invalid duration.
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = 0;
        for d in s[..digits].bytes() {
            if v > MAX / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(d - b'0');
            if v > MAX {
                return Err(invalid());
            }
        }
        let pre = digits > 0;
        s = &s[digits..];
        // The fraction: it only stops gaining precision where it would overflow.
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflow = false;
            for d in rest[..digits].bytes() {
                if overflow || f > (MAX - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(d - b'0');
                if y > MAX {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = digits > 0;
            s = &rest[digits..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(text)));
        }
        let unit_text = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u64 = match unit_text {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {} in duration {}", go_quote(unit_text), go_quote(text))),
        };
        if v > MAX / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // As Go: a float64 is exact to the nanosecond for fractions of an hour (at most 3.6e12 ns).
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > MAX {
                return Err(invalid());
            }
        }
        // Go's sum can wrap to zero here (two terms of exactly 1<<63 ns); it is an invalid duration all the same.
        total = match total.checked_add(v) {
            Some(t) if t <= MAX => t,
            _ => return Err(invalid()),
        };
    }
    if negative && total > 0 {
        return Err(format!("{} is negative: not allowed here", go_quote(text)));
    }
    if total > MAX - 1 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total))
}

/// The `quote` of Go's time package, as its errors show a duration: non-ASCII and control bytes as `\xNN`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if !c.is_ascii() || c < ' ' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_as_go_prints_it() {
        assert_eq!(format_go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(format_go_duration(Duration::from_secs(160)), "2m40s");
        assert_eq!(format_go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_go_duration(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("20").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("5 minutes").is_err());
    }

    #[test]
    fn durations_are_range_checked_as_go_does() {
        let max = Duration::from_nanos((1 << 63) - 1);
        assert_eq!(parse_go_duration("2562047h47m16.854775807s"), Ok(max));
        assert_eq!(parse_go_duration("9223372036854775807ns"), Ok(max));
        assert_eq!(
            parse_go_duration("2562047h47m16.854775808s"),
            Err("time: invalid duration \"2562047h47m16.854775808s\"".into())
        );
        let googol = format!("1{}s", "0".repeat(400));
        for huge in ["2562048h", "9223372036854775808ns", "99999999999999999999h", &googol, "1e400s"] {
            let want = if huge == "1e400s" {
                "time: unknown unit \"e\" in duration \"1e400s\"".to_owned()
            } else {
                format!("time: invalid duration {huge:?}")
            };
            assert_eq!(parse_go_duration(huge), Err(want), "{huge}");
        }
        // Go's running sum wraps to zero on this one; it is invalid here.
        assert!(parse_go_duration("9223372036854775808ns9223372036854775808ns").is_err());
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("5.s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("+3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_go_duration("-0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("1\u{b5}s"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_go_duration("1\u{3bc}s"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_go_duration("0.0000000001s"), Ok(Duration::ZERO), "below a nanosecond truncates, as Go");
        assert_eq!(parse_go_duration("1.000000000000000000000000001s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("-5s"), Err("\"-5s\" is negative: not allowed here".into()));
        assert_eq!(parse_go_duration("20"), Err("time: missing unit in duration \"20\"".into()));
        assert_eq!(
            parse_go_duration("5 minutes"),
            Err("time: unknown unit \" minutes\" in duration \"5 minutes\"".into())
        );
        assert_eq!(parse_go_duration("5d"), Err("time: unknown unit \"d\" in duration \"5d\"".into()));
        assert_eq!(parse_go_duration("ü"), Err("time: invalid duration \"\\xc3\\xbc\"".into()));
        for bad in ["", "+", "-", ".", ".s", "s", " 5s", "5s ", "1..5s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_text_parses_or_errs_without_panicking(text in any::<String>()) {
                if let Ok(d) = parse_go_duration(&text) {
                    prop_assert!(d.as_nanos() < 1 << 63);
                }
            }

            #[test]
            fn duration_shaped_text_stays_in_gos_range_and_usable(
                parts in proptest::collection::vec(("[0-9]{0,22}(\\.[0-9]{0,22})?", "ns|us|ms|s|m|h|µs|d|"), 1..4),
                sign in "[-+]?",
            ) {
                let text = format!("{sign}{}", parts.iter().map(|(n, u)| format!("{n}{u}")).collect::<String>());
                match parse_go_duration(&text) {
                    Ok(d) => {
                        prop_assert!(d.as_nanos() < 1 << 63);
                        // Whatever the agent does with a setting: deadlines and jitter.
                        prop_assert!(std::time::Instant::now().checked_add(d).is_some());
                        prop_assert!(std::time::SystemTime::now().checked_add(d).is_some());
                        prop_assert!(d.checked_add(d.mul_f64(0.5)).is_some());
                    }
                    Err(e) => prop_assert!(e.contains(&go_quote(&text)), "{}", e),
                }
            }

            #[test]
            fn whole_units_are_exact(n in 0u64..2_562_047, unit in 0usize..6) {
                let (name, nanos) = [("ns", 1u64), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
                    ("m", 60_000_000_000), ("h", 3_600_000_000_000)][unit];
                let text = format!("{n}{name}");
                match n.checked_mul(nanos).filter(|v| *v < 1 << 63) {
                    Some(v) => prop_assert_eq!(parse_go_duration(&text), Ok(Duration::from_nanos(v))),
                    None => prop_assert!(parse_go_duration(&text).is_err()),
                }
            }
        }
    }
}
