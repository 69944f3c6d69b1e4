//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`) as exact numbers, so a Quota
//! can sum the requests of running attempts and compare them with its limits.

/// The value of a quantity in thousandths of its unit (`500m` → 500, `1Gi` → 1024³ × 1000),
/// or `None` if `text` is not a quantity (or overflows).
pub fn milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let (sign, text) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // The number as an integer and a power of ten: 1.25 → (125, -2).
    let digits = format!("{whole}{fraction}");
    let mut mantissa: i128 = digits.parse().ok()?;
    let mut exponent: i32 = -(fraction.len() as i32) + 3; // in thousandths
    let mut binary: u32 = 0;
    match suffix {
        "" => {}
        "n" => exponent -= 9,
        "u" => exponent -= 6,
        "m" => exponent -= 3,
        "k" => exponent += 3,
        "M" => exponent += 6,
        "G" => exponent += 9,
        "T" => exponent += 12,
        "P" => exponent += 15,
        "E" => exponent += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        other => {
            let power = other.strip_prefix(['e', 'E'])?;
            exponent += power.parse::<i32>().ok()?;
        }
    }
    mantissa = mantissa.checked_mul(1i128.checked_shl(binary)?)?;
    while exponent > 0 {
        mantissa = mantissa.checked_mul(10)?;
        exponent -= 1;
    }
    while exponent < 0 {
        // Round up, as Kubernetes does for precision it cannot hold.
        mantissa = (mantissa + 9) / 10;
        exponent += 1;
    }
    Some(sign * mantissa)
}

/// A value in thousandths shown the way Kubernetes prints quantities: `1500` → `1500m`,
/// `2000` → `2` (CPU), or with a binary suffix when `binary` (memory: `1Gi`).
pub fn show(milli: i128, binary: bool) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut whole = milli / 1000;
    if binary && whole != 0 {
        for suffix in ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
            if whole % 1024 != 0 || suffix == "Ei" {
                return format!("{whole}{suffix}");
            }
            whole /= 1024;
        }
    }
    whole.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        for (text, want) in [
            ("500m", Some(500)),
            ("2", Some(2000)),
            ("1.5", Some(1500)),
            ("0.1", Some(100)),
            ("1Ki", Some(1024 * 1000)),
            ("1Gi", Some(1024 * 1024 * 1024 * 1000)),
            ("1.5Gi", Some(3 * 512 * 1024 * 1024 * 1000)),
            ("128M", Some(128_000_000_000)),
            ("1e3", Some(1_000_000)),
            ("100u", Some(1)),
            ("-1", Some(-1000)),
            ("lots", None),
            ("", None),
            ("1.2.3", None),
            ("1Xi", None),
        ] {
            assert_eq!(milli(text), want, "{text:?}");
        }
    }

    #[test]
    fn shows_values_back() {
        assert_eq!(show(1500, false), "1500m");
        assert_eq!(show(2000, false), "2");
        assert_eq!(show(milli("1Gi").unwrap(), true), "1Gi");
        assert_eq!(show(milli("1536Mi").unwrap(), true), "1536Mi");
        assert_eq!(show(0, true), "0");
    }
}
