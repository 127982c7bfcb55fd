//! Exact money, prices, ratios and durations.
//!
//! Money is an integer count of pico-dollars (1e-12 USD) in an `i128`. Prices are given in USD
//! per one million tokens with at most six decimals, so one token costs an integer number of
//! pico-dollars and every cost is exact: no rounding, no `f64` anywhere in the accounting.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Pico-dollars per dollar.
pub const PICOS_PER_USD: i128 = 1_000_000_000_000;

/// An exact amount of USD, in pico-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i128);

/// A decimal string that is not a valid amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a decimal USD amount ({why})")]
pub struct ParseMoneyError {
    input: String,
    why: &'static str,
}

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(0);

    /// From pico-dollars.
    pub const fn from_picos(p: i128) -> Self {
        Money(p)
    }

    /// In pico-dollars.
    pub const fn picos(self) -> i128 {
        self.0
    }

    /// From whole dollars.
    pub const fn from_usd(d: i64) -> Self {
        Money(d as i128 * PICOS_PER_USD)
    }

    /// Saturating subtraction at zero.
    pub fn saturating_sub(self, other: Money) -> Money {
        Money((self.0 - other.0).max(0))
    }

    /// Whether this is below zero.
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Multiply by a count (e.g. tokens × per-token price).
    pub fn times(self, n: u64) -> Money {
        Money(self.0 * n as i128)
    }

    /// `self / total` in basis points of a percent (1/100 of a percent), floored; `None` when
    /// `total` is zero.
    pub fn percent_hundredths_of(self, total: Money) -> Option<i128> {
        if total.0 == 0 {
            return None;
        }
        Some(self.0 * 10_000 / total.0)
    }

    /// Lossy conversion for display and Prometheus exposition only.
    pub fn as_f64_lossy(self) -> f64 {
        self.0 as f64 / PICOS_PER_USD as f64
    }

    /// Exact decimal string with at least `min_decimals` decimals (trailing zeros beyond that
    /// trimmed), so the string round-trips exactly.
    /// Digits are written by hand (no formatting machinery): a document of 10,000 routes
    /// prints 250,000 prices.
    pub fn to_decimal(self, min_decimals: usize) -> String {
        let abs = self.0.unsigned_abs();
        let mut frac = abs % PICOS_PER_USD as u128;
        // 12 fraction digits, then as many of them as are significant or asked for.
        let mut frac_digits = [b'0'; 12];
        for d in frac_digits.iter_mut().rev() {
            *d = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        let significant = frac_digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        let kept = significant.max(min_decimals.min(12));
        let mut whole = abs / PICOS_PER_USD as u128;
        let mut whole_digits = [0u8; 40];
        let mut start = whole_digits.len();
        loop {
            start -= 1;
            whole_digits[start] = b'0' + (whole % 10) as u8;
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        let mut out = String::with_capacity(2 + whole_digits.len() - start + kept);
        if self.0 < 0 {
            out.push('-');
        }
        out.extend(whole_digits[start..].iter().map(|&d| char::from(d)));
        if kept > 0 {
            out.push('.');
            out.extend(frac_digits[..kept].iter().map(|&d| char::from(d)));
        }
        out
    }
}

impl Money {
    /// Decimal string rounded (half away from zero) to exactly `decimals` decimals, for display
    /// only (e.g. a burn rate); amounts that are stored use [`Money::to_decimal`].
    pub fn to_fixed(self, decimals: u32) -> String {
        let decimals = decimals.min(12);
        let unit = 10i128.pow(12 - decimals);
        let abs = self.0.abs();
        let rounded = (abs + unit / 2) / unit * unit;
        let m = Money(if self.0 < 0 { -rounded } else { rounded });
        let s = m.to_decimal(decimals as usize);
        match s.split_once('.') {
            Some((w, f)) if decimals > 0 => format!("{w}.{}", &f[..decimals as usize]),
            Some((w, _)) => w.to_string(),
            None => s,
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal(6))
    }
}

impl FromStr for Money {
    type Err = ParseMoneyError;

    /// Parses `"12"`, `"0.27"`, `"-1.5"`: up to twelve decimals.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseMoneyError { input: s.to_string(), why };
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, f),
            None => (body, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("expected digits before the decimal point"));
        }
        if body.contains('.') && frac.is_empty() {
            return Err(err("expected digits after the decimal point"));
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("expected digits after the decimal point"));
        }
        if frac.len() > 12 {
            return Err(err("more than twelve decimals"));
        }
        if whole.len() > 18 {
            return Err(err("too large"));
        }
        let w: i128 = whole.parse().map_err(|_| err("too large"))?;
        let mut f: i128 = 0;
        for b in frac.bytes() {
            f = f * 10 + i128::from(b - b'0');
        }
        for _ in frac.len()..12 {
            f *= 10;
        }
        let v = w * PICOS_PER_USD + f;
        Ok(Money(if neg { -v } else { v }))
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0 + o.0)
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, o: Money) {
        self.0 += o.0;
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, o: Money) -> Money {
        Money(self.0 - o.0)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Add::add)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_decimal(6))
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A price in USD per one million tokens. Internally the cost of one token in pico-dollars,
/// which is an integer because prices carry at most six decimals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PricePerMillion(Money);

impl PricePerMillion {
    /// Cost of one token.
    pub fn per_token(self) -> Money {
        self.0
    }

    /// Cost of `n` tokens, exact.
    pub fn cost(self, n: u64) -> Money {
        self.0.times(n)
    }

    /// The price `k` times over (a multiplier rule such as Anthropic's 1-hour cache writes).
    pub fn times(self, k: u64) -> PricePerMillion {
        PricePerMillion(self.0.times(k))
    }

    /// The price as written (USD per 1M tokens).
    pub fn per_million(self) -> Money {
        self.0.times(1_000_000)
    }
}

impl FromStr for PricePerMillion {
    type Err = ParseMoneyError;

    /// Parses `"0.27"` (USD per 1M tokens), at most six decimals, not negative.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let m: Money = s.parse()?;
        if m.is_negative() {
            return Err(ParseMoneyError { input: s.to_string(), why: "a price cannot be negative" });
        }
        // USD per 1M tokens → pico-USD per token: picos / 1e6 must be exact.
        if m.picos() % 1_000_000 != 0 {
            return Err(ParseMoneyError { input: s.to_string(), why: "more than six decimals" });
        }
        Ok(PricePerMillion(Money(m.picos() / 1_000_000)))
    }
}

impl fmt::Display for PricePerMillion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.per_million().to_decimal(2))
    }
}

impl Serialize for PricePerMillion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PricePerMillion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A ratio in parts per million (`"0.20"` = 200_000 ppm).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ppm(pub u32);

impl Ppm {
    /// `num / den` in ppm, floored; `None` when `den` is zero.
    pub fn ratio(num: u64, den: u64) -> Option<Ppm> {
        if den == 0 {
            return None;
        }
        Some(Ppm((u128::from(num) * 1_000_000 / u128::from(den)).min(u128::from(u32::MAX)) as u32))
    }

    /// Decimal string with up to six decimals (`"0.2"`).
    pub fn to_decimal(self) -> String {
        let m = Money::from_picos(i128::from(self.0) * 1_000_000);
        m.to_decimal(2)
    }
}

impl FromStr for Ppm {
    type Err = ParseMoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let m: Money = s.parse()?;
        let err = |why| ParseMoneyError { input: s.to_string(), why };
        if m.is_negative() || m > Money::from_usd(1) {
            return Err(err("a ratio must be between 0 and 1"));
        }
        if m.picos() % 1_000_000 != 0 {
            return Err(err("more than six decimals"));
        }
        Ok(Ppm((m.picos() / 1_000_000) as u32))
    }
}

/// Parses a duration as the CRDs' `DURATION_PATTERN` (`^([0-9]{1,9}(ms|s|m|h))+$`) accepts it:
/// one or more `<integer><unit>` parts, unit `ms`, `s`, `m` or `h` (`30s`, `5m`, `1h30m`,
/// `250ms`), into milliseconds. No sign, no fraction, no spaces, no empty input; each number
/// has at most nine digits. Errors say what is wrong with the text.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("{s:?} is not a duration like 30s, 5m, 1h30m or 250ms ({why})");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("each part needs a whole number before its unit"));
        }
        if digits > 9 {
            return Err(bad("a number has more than nine digits"));
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad("not a number"))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(bad("each number needs a unit: ms, s, m or h"));
        };
        rest = &rest[len..];
        total = n.checked_mul(unit_ms).and_then(|ms| total.checked_add(ms)).ok_or_else(|| bad("too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formatting-based definition `to_decimal` replaced.
    fn reference_decimal(m: Money, min_decimals: usize) -> String {
        let abs = m.0.unsigned_abs();
        let whole = abs / PICOS_PER_USD as u128;
        let frac = abs % PICOS_PER_USD as u128;
        let mut frac_s = format!("{frac:012}");
        while frac_s.len() > min_decimals && frac_s.ends_with('0') {
            frac_s.pop();
        }
        let sign = if m.0 < 0 { "-" } else { "" };
        if frac_s.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{frac_s}") }
    }

    #[test]
    fn to_decimal_matches_its_formatting_definition() {
        let mut values = vec![0i128, 1, -1, 10, 999_999_999_999, PICOS_PER_USD, -PICOS_PER_USD, i128::MAX, i128::MIN];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let shift = x % 100;
            values.push(i128::from(x as i64) >> (shift % 60));
            values
                .push((i128::from(x) * 10i128.pow((shift % 19) as u32)) * if shift.is_multiple_of(2) { 1 } else { -1 });
        }
        for v in values {
            for min in 0..15 {
                assert_eq!(Money(v).to_decimal(min), reference_decimal(Money(v), min), "{v} with {min} decimals");
            }
        }
    }

    #[test]
    fn money_parses_and_prints_exactly() {
        let m: Money = "4123.5512".parse().unwrap();
        assert_eq!(m.picos(), 4_123_551_200_000_000);
        assert_eq!(m.to_string(), "4123.551200");
        let tiny = Money::from_picos(1);
        assert_eq!(tiny.to_string(), "0.000000000001");
        assert_eq!("0.000000000001".parse::<Money>().unwrap(), tiny);
        assert_eq!("-1.5".parse::<Money>().unwrap().to_string(), "-1.500000");
        assert_eq!(Money::from_usd(5000).to_decimal(0), "5000");
    }

    #[test]
    fn money_rejects_garbage() {
        for bad in ["", ".5", "1.", "1e3", "abc", "1.0000000000001", "--1", "1,5"] {
            assert!(bad.parse::<Money>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn price_is_exact_per_token() {
        let p: PricePerMillion = "0.27".parse().unwrap();
        assert_eq!(p.per_token(), Money::from_picos(270_000));
        assert_eq!(p.cost(1_000_000), "0.27".parse().unwrap());
        assert_eq!(p.to_string(), "0.27");
        assert!("0.0000001".parse::<PricePerMillion>().is_err());
        assert!("-1".parse::<PricePerMillion>().is_err());
    }

    #[test]
    fn ppm_and_durations() {
        assert_eq!("0.20".parse::<Ppm>().unwrap(), Ppm(200_000));
        assert_eq!(Ppm::ratio(1, 3).unwrap(), Ppm(333_333));
        assert_eq!(Ppm(200_000).to_decimal(), "0.20");
        assert!("1.5".parse::<Ppm>().is_err());
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert!(parse_duration_ms("5 minutes").is_err());
    }

    #[test]
    fn durations_accept_exactly_the_crd_pattern() {
        let schema = serde_json::json!({"type": "string", "pattern": crate::api::DURATION_PATTERN});
        let pattern = jsonschema::validator_for(&schema).unwrap();
        for (text, ms) in [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("0s", 0),
            ("1m1ms", 60_001),
            ("2h2h", 14_400_000),
            ("999999999h", 3_599_999_996_400_000),
        ] {
            assert!(pattern.is_valid(&serde_json::json!(text)), "{text}");
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
        for text in ["", "1.5h", "-1s", "+1s", "30", "s", "1d", "1 h", "1H", "1h ", "1us", "1msx", "1234567890s", "ms"]
        {
            assert!(!pattern.is_valid(&serde_json::json!(text)), "{text}");
            let err = parse_duration_ms(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
        assert!(parse_duration_ms("1.5h").unwrap_err().contains("unit"));
        assert!(parse_duration_ms("1234567890s").unwrap_err().contains("nine digits"));
    }

    #[test]
    fn fixed_rounds_for_display() {
        assert_eq!(Money::from_picos(8_333_333_333_333).to_fixed(2), "8.33");
        assert_eq!(Money::from_picos(8_335_000_000_000).to_fixed(2), "8.34");
        assert_eq!(Money::from_usd(10).to_fixed(2), "10.00");
        assert_eq!(Money::from_picos(-1_005_000_000_000).to_fixed(2), "-1.01");
        assert_eq!(Money::from_picos(999_999_999_999).to_fixed(0), "1");
    }

    #[test]
    fn percent_hundredths() {
        let spent: Money = "4123.5512".parse().unwrap();
        assert_eq!(spent.percent_hundredths_of(Money::from_usd(5000)), Some(8247));
        assert_eq!(spent.percent_hundredths_of(Money::ZERO), None);
    }
}
