//! Kubernetes resource quantities ("100m", "64Mi", "1.5", "2e3") as exact integers.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {reason}")]
pub struct QuantityError {
    pub text: String,
    pub reason: &'static str,
}

/// Parses a quantity and returns its value in thousandths, rounded up as `resource.Quantity.MilliValue()` does.
pub fn parse_milli(text: &str) -> Result<i128, QuantityError> {
    let err = |reason| QuantityError { text: text.to_owned(), reason };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err("no number"));
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    // value = digits * 10^(exp10) * 2^(exp2), held as digits and exponents to stay exact.
    let digits = format!("{int_part}{frac_part}");
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| err("bad exponent"))?;
            if !(-30..=30).contains(&e) {
                return Err(err("exponent out of range"));
            }
            exp10 += e;
        }
        _ => return Err(err("unknown suffix")),
    }
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(err("too many digits"));
    }
    let mut value: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| err("no number"))? };
    value = value.checked_mul(1i128 << exp2).ok_or_else(|| err("too large"))?;
    // Scale to milli-units.
    exp10 += 3;
    if exp10 >= 0 {
        for _ in 0..exp10 {
            value = value.checked_mul(10).ok_or_else(|| err("too large"))?;
        }
    } else {
        let div = 10i128.checked_pow((-exp10) as u32).ok_or_else(|| err("too small"))?;
        value = (value + div - 1) / div;
    }
    if value > i64::MAX as i128 {
        return Err(err("too large"));
    }
    Ok(if negative { -value } else { value })
}

/// Whole units rounded up, as `resource.Quantity.Value()` does (bytes for memory).
pub fn parse_value(text: &str) -> Result<i128, QuantityError> {
    let milli = parse_milli(text)?;
    Ok(if milli >= 0 { (milli + 999) / 1000 } else { milli / 1000 })
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
        for bad in ["", "abc", "10Q", "1.2.3", "Mi", "1e", "1e99", "--1"] {
            assert!(parse_milli(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = parse_milli("12 bananas").unwrap_err();
        assert_eq!(e.to_string(), "invalid quantity \"12 bananas\": unknown suffix");
    }
}
