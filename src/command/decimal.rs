//! INCRBYFLOAT's arithmetic.
//!
//! Valkey adds in 80-bit long doubles and prints the sum with 17 decimals, trailing zeros cut:
//! `0.1 + 0.2` is `0.3`, `1e-20` prints as `0`. Rust has no long double, so decimal inputs are
//! added exactly (as scaled 128-bit integers) and the sum rounded to 17 decimals, which gives
//! Valkey's result whenever the long double was precise enough to hold it. Values too large for
//! that (or written in a form only floats express) are added as `f64`.

use super::args::parse_float;

/// Decimals Valkey prints.
const DECIMALS: u32 = 17;
/// Largest scale kept exactly (digits after the point in an input).
const SCALE_MAX: u32 = 30;

/// A decimal number `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    /// Parses `[-+]digits[.digits][e[-+]digits]` exactly; `None` for anything else or too large.
    fn parse(text: &[u8]) -> Option<Decimal> {
        let text = std::str::from_utf8(text).ok()?;
        let (body, exponent) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (negative, body) = match body.as_bytes().first()? {
            b'-' => (true, &body[1..]),
            b'+' => (false, &body[1..]),
            _ => (false, body),
        };
        let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut mantissa: i128 = 0;
        for b in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        let mut scale = i64::try_from(frac_part.len()).ok()? - i64::from(exponent);
        while scale < 0 {
            mantissa = mantissa.checked_mul(10)?;
            scale += 1;
        }
        let mut scale = u32::try_from(scale).ok()?;
        while scale > SCALE_MAX {
            // Digits this far below the point cannot change 17 printed decimals.
            mantissa /= 10;
            scale -= 1;
        }
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        })
    }

    fn rescale(self, scale: u32) -> Option<i128> {
        self.mantissa
            .checked_mul(10i128.checked_pow(scale - self.scale)?)
    }

    fn add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        Some(Decimal {
            mantissa: self.rescale(scale)?.checked_add(other.rescale(scale)?)?,
            scale,
        })
    }

    /// Rounds half away from zero to `DECIMALS` places and prints without trailing zeros.
    fn format(self) -> String {
        let mut mantissa = self.mantissa;
        let mut scale = self.scale;
        if scale > DECIMALS {
            let divisor = 10i128.pow(scale - DECIMALS);
            let rem = mantissa % divisor;
            mantissa /= divisor;
            if rem.abs() * 2 >= divisor {
                // Half away from zero: the remainder has the number's sign.
                mantissa += rem.signum();
            }
            scale = DECIMALS;
        }
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        let negative = mantissa < 0;
        let digits = mantissa.unsigned_abs().to_string();
        let scale = scale as usize;
        let text = if scale == 0 {
            digits
        } else if digits.len() > scale {
            format!(
                "{}.{}",
                &digits[..digits.len() - scale],
                &digits[digits.len() - scale..]
            )
        } else {
            format!("0.{}{}", "0".repeat(scale - digits.len()), digits)
        };
        if negative && text != "0" {
            format!("-{text}")
        } else {
            text
        }
    }
}

/// Parses a float as INCRBYFLOAT accepts it, also in hexadecimal (`0x10`, as `strtold` does).
pub fn parse_number(arg: &[u8]) -> Option<f64> {
    parse_float(arg).or_else(|| parse_hex(arg))
}

fn parse_hex(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let digits = rest
        .strip_prefix("0x")
        .or_else(|| rest.strip_prefix("0X"))?;
    let value = u64::from_str_radix(digits, 16).ok()? as f64;
    Some(if negative { -value } else { value })
}

/// `current + increment` as INCRBYFLOAT stores it, or `None` if the result is not finite.
pub fn add(current: &[u8], increment: &[u8], current_f: f64, increment_f: f64) -> Option<String> {
    if let (Some(a), Some(b)) = (Decimal::parse(current), Decimal::parse(increment)) {
        if let Some(sum) = a.add(b) {
            return Some(sum.format());
        }
    }
    let sum = current_f + increment_f;
    if !sum.is_finite() {
        return None;
    }
    let text = format!("{sum:.17}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    Some(if trimmed == "-0" {
        "0".to_string()
    } else {
        trimmed.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(a: &str, b: &str) -> String {
        let fa = parse_number(a.as_bytes()).expect("number");
        let fb = parse_number(b.as_bytes()).expect("number");
        add(a.as_bytes(), b.as_bytes(), fa, fb).expect("finite")
    }

    #[test]
    fn matches_valkey_results() {
        assert_eq!(sum("10.5", "0.1"), "10.6");
        assert_eq!(sum("0.1", "0.2"), "0.3");
        assert_eq!(sum("1.5", "1.5"), "3");
        assert_eq!(sum("0", "1e-20"), "0");
        assert_eq!(
            sum("18.5", "3.14159265358979323846"),
            "21.64159265358979324"
        );
        assert_eq!(sum("17179869184", "1.5"), "17179869185.5");
        assert_eq!(sum("2.5", "0x10"), "18.5");
        assert_eq!(sum("5", "-5"), "0");
        assert_eq!(sum("-1", "0.25"), "-0.75");
        assert_eq!(sum("3.0e3", "0"), "3000");
        assert_eq!(sum("0", "1e20"), "100000000000000000000");
        assert_eq!(sum("0", "0.99999999999999999999"), "1");
    }
}
