//! Kubernetes resource quantities ("100m", "64Mi", "1.5", "2e3") as exact integers: the grammar of apimachinery's
//! `ParseQuantity` (`staging/src/k8s.io/apimachinery/pkg/api/resource/quantity.go`), whatever it accepts and
//! nothing else, then the exact value rounded up as `MilliValue` and `Value` do.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {reason}")]
pub struct QuantityError {
    pub text: String,
    pub reason: &'static str,
}

/// apimachinery's `ErrFormatWrong`, `ErrNumeric` and `ErrSuffix`.
const ERR_FORMAT_WRONG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const ERR_NUMERIC: &str = "unable to parse numeric part of quantity";
const ERR_SUFFIX: &str = "unable to parse quantity's suffix";
/// Kubernetes holds any size; the agent computes in 64-bit thousandths, as the cgroup values it derives need.
const ERR_TOO_LARGE: &str = "too large: more than 2^63-1 thousandths";
/// apimachinery's `maxInt64Factors`: the digits its fast path takes without big decimals.
const MAX_INT64_FACTORS: usize = 18;

/// A quantity as `parseQuantityString` splits it: sign, integer digits (leading zeros dropped, "0" when none), the
/// fraction's digits, the suffix, and whether the number part had any digit at all.
struct Parts<'a> {
    positive: bool,
    num: &'a str,
    denom: &'a str,
    suffix: &'a str,
    has_digits: bool,
}

fn is_suffix_char(b: u8) -> bool {
    b"eEinumkKMGTP".contains(&b)
}

/// apimachinery's `parseQuantityString`, scan for scan.
fn scan(s: &str) -> Result<Parts<'_>, &'static str> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut positive = true;
    match b.first() {
        Some(b'-') => {
            positive = false;
            pos = 1;
        }
        Some(b'+') => pos = 1,
        _ => {}
    }
    let number_start = pos;
    let digits_at = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    pos += b[pos..].iter().take_while(|&&c| c == b'0').count();
    let zeros = pos > number_start;
    let mut parts = Parts { positive, num: "0", denom: "", suffix: "", has_digits: zeros };
    if pos == b.len() {
        return Ok(parts);
    }
    let n = digits_at(pos);
    if n > 0 {
        parts.num = &s[pos..pos + n];
        parts.has_digits = true;
    }
    pos += n;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let n = digits_at(pos);
        parts.denom = &s[pos..pos + n];
        parts.has_digits |= n > 0;
        pos += n;
    }
    let suffix_start = pos;
    pos += b[pos..].iter().take_while(|&&c| is_suffix_char(c)).count();
    if matches!(b.get(pos), Some(b'-' | b'+')) {
        pos += 1;
    }
    pos += digits_at(pos);
    if pos != b.len() {
        return Err(ERR_FORMAT_WRONG);
    }
    parts.suffix = &s[suffix_start..];
    Ok(parts)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// apimachinery's `suffixer.interpret`: base, exponent, format.
fn interpret(suffix: &str) -> Option<(u32, i32, Format)> {
    let decimal = |e| Some((10, e, Format::DecimalSi));
    let binary = |e| Some((2, e, Format::BinarySi));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        s if s.len() > 1 && s.starts_with(['e', 'E']) => {
            // Go parses an int64 and keeps its low 32 bits (`int32(parsed)`); so does this.
            let e: i64 = s[1..].parse().ok()?;
            Some((10, e as i32, Format::DecimalExponent))
        }
        _ => None,
    }
}

/// The quantity in thousandths, rounded away from zero. `None` when it does not fit in an i64.
fn milli_of(parts: &Parts<'_>, base: u32, exponent: i32) -> Option<i128> {
    // digits × 10^exp10: the number without its decimal point, scaled to thousandths.
    let mut digits: Vec<u8> =
        parts.num.bytes().chain(parts.denom.bytes()).map(|c| c - b'0').skip_while(|&d| d == 0).collect();
    if digits.is_empty() {
        return Some(0);
    }
    let mut exp10 = 3 - parts.denom.len() as i128;
    if base == 10 {
        exp10 += i128::from(exponent);
    } else {
        // × 2^exponent (at most 60), by doubling the decimal digits.
        for _ in 0..exponent {
            let mut carry = 0;
            for d in digits.iter_mut().rev() {
                let v = *d * 2 + carry;
                *d = v % 10;
                carry = v / 10;
            }
            if carry > 0 {
                digits.insert(0, carry);
            }
        }
    }
    // Digits left of the point: more than 19 is beyond i64 whatever they are.
    let whole = digits.len() as i128 + exp10;
    if whole > 19 {
        return None;
    }
    if whole <= 0 {
        return Some(1);
    }
    let whole = whole as usize;
    let mut value: i128 = 0;
    for i in 0..whole {
        value = value * 10 + i128::from(digits.get(i).copied().unwrap_or(0));
    }
    if digits.iter().skip(whole).any(|&d| d != 0) {
        value += 1;
    }
    (value <= i128::from(i64::MAX)).then_some(value)
}

/// Parses a quantity and returns its value in thousandths, rounded up as `resource.Quantity.MilliValue()` does
/// (away from zero).
pub fn parse_milli(text: &str) -> Result<i128, QuantityError> {
    let err = |reason| QuantityError { text: text.to_owned(), reason };
    if text.is_empty() {
        return Err(err(ERR_FORMAT_WRONG));
    }
    let parts = scan(text).map_err(err)?;
    let (base, exponent, format) = interpret(parts.suffix).ok_or_else(|| err(ERR_SUFFIX))?;
    // Where Go leaves its int64 fast path for big decimals, a number part without a digit ("", "-", ".") does not
    // parse: "Ei" or "e-10" alone are errors where "Ki" or "n" alone are zero.
    let digits = parts.num.len() + parts.denom.len();
    let big_decimal = match format {
        Format::BinarySi => {
            let precision = 15 - parts.num.len() as i64 - (exponent as f32 * 3.0 / 10.0) as i64 - 1;
            !parts.denom.is_empty() || precision < 0
        }
        _ => digits > MAX_INT64_FACTORS || i64::from(exponent) - (parts.denom.len() as i64) < -9,
    };
    if big_decimal && !parts.has_digits {
        return Err(err(ERR_NUMERIC));
    }
    let milli = milli_of(&parts, base, exponent).ok_or_else(|| err(ERR_TOO_LARGE))?;
    Ok(if parts.positive { milli } else { -milli })
}

/// Whole units rounded away from zero, as `resource.Quantity.Value()` does (bytes for memory).
pub fn parse_value(text: &str) -> Result<i128, QuantityError> {
    let milli = parse_milli(text)?;
    let units = (milli.abs() + 999) / 1000;
    Ok(if milli < 0 { -units } else { units })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_milli("100m").unwrap(), 100);
        assert_eq!(parse_milli("1").unwrap(), 1000);
        assert_eq!(parse_milli("1.5").unwrap(), 1500);
        assert_eq!(parse_milli("0.1").unwrap(), 100);
        assert_eq!(parse_milli("2e3").unwrap(), 2_000_000);
        // MilliValue rounds up.
        assert_eq!(parse_milli("1u").unwrap(), 1);
        assert_eq!(parse_milli("0").unwrap(), 0);
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_value("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_value("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_value("128M").unwrap(), 128_000_000);
        assert_eq!(parse_value("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_value("1k").unwrap(), 1000);
    }

    #[test]
    fn invalid_quantities_are_errors() {
        for bad in ["", "abc", "10Q", "1.2.3", "1e", "1e99", "--1", " 1", "1 ", "1K", "1mi", "1e+", "Ei", "-Pi", "e-10"]
        {
            assert!(parse_milli(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = parse_milli("12 bananas").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid quantity \"12 bananas\": quantities must match the regular expression \
             '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert_eq!(parse_milli("10Mk").unwrap_err().reason, "unable to parse quantity's suffix");
        assert_eq!(parse_milli("1e1.5").unwrap_err().reason, ERR_FORMAT_WRONG);
        assert_eq!(parse_milli("Ei").unwrap_err().reason, "unable to parse numeric part of quantity");
        assert_eq!(parse_milli("1e99").unwrap_err().reason, "too large: more than 2^63-1 thousandths");
    }

    /// What apimachinery's scanner lets through besides the obvious: a bare suffix or sign is zero, a point needs
    /// no digits, an exponent takes a sign.
    #[test]
    fn kubernetes_edge_cases() {
        for zero in ["0", "-", "+", ".", "Mi", "Ki", "-Ki", "Ti", "m", "n", "e5", ".Ki", "000", "-0.0", "0Ei"] {
            assert_eq!(parse_milli(zero), Ok(0), "{zero:?}");
        }
        assert_eq!(parse_milli("1."), Ok(1000));
        assert_eq!(parse_milli(".5"), Ok(500));
        assert_eq!(parse_milli("1e+3"), Ok(1_000_000));
        assert_eq!(parse_milli("1E3"), Ok(1_000_000));
        assert_eq!(parse_milli("1P"), Ok(1_000_000_000_000_000_000));
        assert!(parse_milli("1E").is_err(), "10^21 thousandths");
        assert_eq!(parse_milli("5e-3"), Ok(5));
        assert_eq!(parse_milli("1Pi"), Ok((1i128 << 50) * 1000));
        // Below a thousandth rounds up (away from zero), however far below.
        assert_eq!(parse_milli(&format!("0.{}1", "0".repeat(100))), Ok(1));
        assert_eq!(parse_milli("-1n"), Ok(-1));
        assert_eq!(parse_value("-1500m"), Ok(-2));
        assert_eq!(parse_milli("1.0000000000000000000000000000000000001"), Ok(1001));
        // More digits than any fixed width, exact all the same.
        assert_eq!(parse_milli(&format!("{}1", "0".repeat(60))), Ok(1000));
        assert_eq!(parse_milli("0.000000000000999999999999999999999999999Gi"), Ok(2));
        assert_eq!(parse_milli("0.00000000000099999999999999999999999999999Gi"), Ok(2));
        // Go keeps the low 32 bits of the exponent.
        assert_eq!(parse_milli("1e4294967296"), Ok(1000));
        assert_eq!(parse_milli("9223372036854775807m"), Ok(i128::from(i64::MAX)));
        assert!(parse_milli("9223372036854775808m").is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const SUFFIXES: &[(&str, i32, u32)] = &[
            ("", 0, 0),
            ("n", -9, 0),
            ("u", -6, 0),
            ("m", -3, 0),
            ("k", 3, 0),
            ("M", 6, 0),
            ("G", 9, 0),
            ("Ki", 0, 10),
            ("Mi", 0, 20),
            ("Gi", 0, 30),
            ("e2", 2, 0),
            ("e-4", -4, 0),
            ("E+1", 1, 0),
        ];

        proptest! {
            #[test]
            fn any_text_parses_or_errs_without_panicking(text in any::<String>()) {
                if let Ok(m) = parse_milli(&text) {
                    prop_assert!(m.abs() <= i128::from(i64::MAX));
                }
                let _ = parse_value(&text);
            }

            #[test]
            fn quantity_shaped_text_never_panics(text in "[-+]?[0-9.]{0,40}[eEinumkKMGTP]{0,3}[-+]?[0-9]{0,12}") {
                let _ = parse_milli(&text);
            }

            /// The value, computed independently in integers for a range where that is easy: exact, rounded up.
            #[test]
            fn valid_quantities_have_their_exact_value(
                negative in any::<bool>(),
                int in 0u64..1_000_000,
                frac in "[0-9]{0,6}",
                suffix in 0..SUFFIXES.len(),
            ) {
                let (name, exp10, exp2) = SUFFIXES[suffix];
                let text = format!("{}{int}{}{frac}{name}", if negative { "-" } else { "" }, if frac.is_empty() { "" } else { "." });
                // int.frac × 10^exp10 × 2^exp2 × 1000 = numerator / 10^(len(frac)) with the powers applied.
                let mut numerator = i128::from(int) * 10i128.pow(frac.len() as u32) + frac.parse::<i128>().unwrap_or(0);
                numerator *= 1i128 << exp2;
                let scale = exp10 + 3 - frac.len() as i32;
                let magnitude = if scale >= 0 {
                    numerator * 10i128.pow(scale as u32)
                } else {
                    let d = 10i128.pow((-scale) as u32);
                    (numerator + d - 1) / d
                };
                let want = if negative { -magnitude } else { magnitude };
                prop_assert_eq!(parse_milli(&text), Ok(want), "{}", text);
            }

            /// What the agent computes reads back the same written as Kubernetes writes it: in thousandths, in
            /// whole units, in a binary suffix.
            #[test]
            fn values_round_trip(milli in -(i64::MAX as i128)..=(i64::MAX as i128), shift in 0usize..4) {
                prop_assert_eq!(parse_milli(&format!("{milli}m")), Ok(milli));
                let units = milli / 1000;
                prop_assert_eq!(parse_value(&units.to_string()), Ok(units));
                let (suffix, bits) = [("", 0), ("Ki", 10), ("Mi", 20), ("Gi", 30)][shift];
                let v = units >> bits;
                prop_assert_eq!(parse_value(&format!("{v}{suffix}")), Ok(v << bits));
                let nanos = milli.clamp(-(i64::MAX as i128) / 1_000_000, i64::MAX as i128 / 1_000_000) * 1_000_000;
                prop_assert_eq!(parse_milli(&format!("{nanos}n")), Ok(nanos / 1_000_000));
            }
        }
    }
}
