//! Exact money: integer minor units (cents) behind a newtype.
//!
//! The original system stored balances as floats, so `0.1 + 0.2` was not `0.3` and large
//! balances silently lost cents. Here every amount is an `i64` count of cents, parsed from the
//! exact decimal text the client sent (never through `f64`), and printed back as an exact decimal.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A non-negative or positive amount of money in cents. Balances and amounts share the type; the
/// constructors say which values each accepts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

/// Why an amount sent by a client was refused. The texts are shown to clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a JSON number or a string holding a decimal number (also NaN, Infinity, booleans).
    #[error("amount must be a number such as 12.5 or \"12.50\"")]
    NotANumber,
    /// More than two digits after the decimal point (after dropping trailing zeros).
    #[error("amount must have at most two decimal places")]
    TooManyDecimals,
    /// Zero or negative (including -0).
    #[error("amount must be greater than zero")]
    NotPositive,
    /// Above [`Money::MAX_AMOUNT`] (a balance: above [`Money::MAX_BALANCE`]).
    #[error("amount must not exceed 1000000000000")]
    TooLarge,
    /// A negative balance (balances are zero or more).
    #[error("a balance must not be negative")]
    Negative,
}

impl Money {
    /// Zero cents.
    pub const ZERO: Money = Money(0);
    /// The largest amount one operation may move: one trillion units (10^14 cents). Every
    /// balance is also capped at [`Money::MAX_BALANCE`], so sums of a few amounts never overflow.
    pub const MAX_AMOUNT: Money = Money(100_000_000_000_000);
    /// The largest balance an account may hold: 10^16 cents. A deposit that would pass it is
    /// refused (a business outcome, the same on every replica).
    pub const MAX_BALANCE: Money = Money(10_000_000_000_000_000);

    /// Money from a count of cents.
    pub const fn from_cents(cents: i64) -> Money {
        Money(cents)
    }

    /// The count of cents.
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// `self + other` if the result stays within [`Money::MAX_BALANCE`].
    pub fn checked_add_balance(self, other: Money) -> Option<Money> {
        self.0
            .checked_add(other.0)
            .filter(|sum| *sum <= Money::MAX_BALANCE.0)
            .map(Money)
    }

    /// `self - other` if the result is not negative.
    pub fn checked_sub_balance(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).filter(|d| *d >= 0).map(Money)
    }

    /// Parses an amount from the raw text of one JSON value: a number literal (`12.5`, `1e2`) or a
    /// string holding a decimal (`"12.50"`). The text is read exactly, never through a float.
    pub fn parse_json_amount(raw: &str) -> Result<Money, AmountError> {
        let raw = raw.trim();
        if raw.starts_with('"') {
            let text: String = serde_json::from_str(raw).map_err(|_| AmountError::NotANumber)?;
            Money::parse_amount(&text)
        } else {
            Money::parse_amount(raw)
        }
    }

    /// Parses a positive decimal amount with at most two decimals: optional sign, digits, an
    /// optional fraction and an optional exponent (`1.5e2`). Trailing zeros are fine (`12.500`).
    pub fn parse_amount(text: &str) -> Result<Money, AmountError> {
        let cents = parse_decimal_cents(text)?;
        if cents <= 0 {
            return Err(AmountError::NotPositive);
        }
        if cents > i128::from(Money::MAX_AMOUNT.0) {
            return Err(AmountError::TooLarge);
        }
        Ok(Money(cents as i64))
    }
}

impl Money {
    /// Parses a balance from the exact text of a JSON number (`12.5`, `0`): zero or more, at most
    /// two decimals, at most [`Money::MAX_BALANCE`]. What the bank's clients read balances with.
    pub fn parse_balance(text: &str) -> Result<Money, AmountError> {
        let cents = parse_decimal_cents(text.trim())?;
        if cents < 0 {
            return Err(AmountError::Negative);
        }
        if cents > i128::from(Money::MAX_BALANCE.0) {
            return Err(AmountError::TooLarge);
        }
        Ok(Money(cents as i64))
    }
}

/// Digits beyond this many are refused as too large before any arithmetic: they cannot hold a
/// valid amount with at most [`Money::MAX_AMOUNT`], except as trailing zeros of a fraction.
const MAX_DIGITS: usize = 64;

/// Exact decimal text to signed cents. Values beyond `i128` range report `TooLarge`.
fn parse_decimal_cents(text: &str) -> Result<i128, AmountError> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            pos += 1;
            true
        }
        Some(b'+') => {
            pos += 1;
            false
        }
        _ => false,
    };
    let int_start = pos;
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_digits = &text[int_start..pos];
    let mut frac_digits = "";
    if pos < bytes.len() && bytes[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_digits = &text[frac_start..pos];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(AmountError::NotANumber);
    }
    let mut exponent: i64 = 0;
    if pos < bytes.len() && (bytes[pos] == b'e' || bytes[pos] == b'E') {
        pos += 1;
        let exp_negative = match bytes.get(pos) {
            Some(b'-') => {
                pos += 1;
                true
            }
            Some(b'+') => {
                pos += 1;
                false
            }
            _ => false,
        };
        let exp_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let exp_text = &text[exp_start..pos];
        if exp_text.is_empty() {
            return Err(AmountError::NotANumber);
        }
        // Exponents this large are either overflow or (negative) too many decimals.
        let magnitude: i64 = if exp_text.len() > 6 {
            1_000_000
        } else {
            exp_text.parse().map_err(|_| AmountError::NotANumber)?
        };
        exponent = if exp_negative { -magnitude } else { magnitude };
    }
    if pos != bytes.len() {
        return Err(AmountError::NotANumber);
    }

    // value = digits * 10^(exponent - frac_len); cents = value * 100.
    let digits = format!("{int_digits}{frac_digits}");
    let digits = digits.trim_start_matches('0');
    let mut scale = exponent - frac_digits.len() as i64 + 2;
    // Drop trailing zeros into the scale so that "12.500" and "1250e-2" are exact.
    let significant = digits.trim_end_matches('0');
    scale += (digits.len() - significant.len()) as i64;
    if significant.is_empty() {
        return Ok(0);
    }
    if scale < 0 {
        return Err(AmountError::TooManyDecimals);
    }
    if significant.len() > MAX_DIGITS || scale > 40 {
        return Err(AmountError::TooLarge);
    }
    let mut value: i128 = 0;
    for d in significant.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(d - b'0')))
            .ok_or(AmountError::TooLarge)?;
    }
    for _ in 0..scale {
        value = value.checked_mul(10).ok_or(AmountError::TooLarge)?;
    }
    Ok(if negative { -value } else { value })
}

impl Money {
    /// Always two decimals, as a bank statement shows money: `1250` cents is `12.50`.
    pub fn to_fixed2(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!("{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl fmt::Display for Money {
    /// Exact decimal with the shortest fraction: `1250` cents is `12.5`, `1200` is `12`,
    /// `1` is `0.01`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (units, cents) = (abs / 100, abs % 100);
        match cents {
            0 => write!(f, "{sign}{units}"),
            c if c % 10 == 0 => write!(f, "{sign}{units}.{}", c / 10),
            c => write!(f, "{sign}{units}.{c:02}"),
        }
    }
}

/// Money as a plain JSON number (`12.5`), written from its exact decimal text so that no float
/// rounding happens on the way out either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonMoney(pub Money);

impl Serialize for JsonMoney {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.0.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents(text: &str) -> Result<i64, AmountError> {
        Money::parse_json_amount(text).map(Money::cents)
    }

    #[test]
    fn parses_plain_numbers_and_numeric_strings_exactly() {
        assert_eq!(cents("12.5"), Ok(1250));
        assert_eq!(cents("12"), Ok(1200));
        assert_eq!(cents("0.01"), Ok(1));
        assert_eq!(cents("\"12.50\""), Ok(1250));
        assert_eq!(cents("\"7\""), Ok(700));
        assert_eq!(cents("1e2"), Ok(10_000));
        assert_eq!(cents("1.5E1"), Ok(1_500));
        assert_eq!(cents("1250e-2"), Ok(1250));
        assert_eq!(cents("12.500"), Ok(1250));
        assert_eq!(cents("0.1"), Ok(10));
        assert_eq!(cents("0.2"), Ok(20));
    }

    #[test]
    fn balances_parse_exactly_from_zero_to_the_limit() {
        assert_eq!(Money::parse_balance("0"), Ok(Money::ZERO));
        assert_eq!(Money::parse_balance("12.5"), Ok(Money::from_cents(1250)));
        assert_eq!(
            Money::parse_balance("100000000000000"),
            Ok(Money::MAX_BALANCE)
        );
        assert_eq!(
            Money::parse_balance("100000000000000.01"),
            Err(AmountError::TooLarge)
        );
        assert_eq!(Money::parse_balance("-0.01"), Err(AmountError::Negative));
        assert_eq!(
            Money::parse_balance("0.001"),
            Err(AmountError::TooManyDecimals)
        );
        assert_eq!(Money::parse_balance("\"1\""), Err(AmountError::NotANumber));
    }

    #[test]
    fn point_one_plus_point_two_is_exactly_point_three() {
        let sum = Money::parse_amount("0.1")
            .unwrap()
            .checked_add_balance(Money::parse_amount("0.2").unwrap())
            .unwrap();
        assert_eq!(sum, Money::parse_amount("0.3").unwrap());
        assert_eq!(sum.to_string(), "0.3");
        // The float sum a client might send is refused rather than rounded.
        assert_eq!(
            cents("0.30000000000000004"),
            Err(AmountError::TooManyDecimals)
        );
    }

    #[test]
    fn refuses_more_than_two_decimals() {
        assert_eq!(cents("12.345"), Err(AmountError::TooManyDecimals));
        assert_eq!(cents("1e-3"), Err(AmountError::TooManyDecimals));
        assert_eq!(cents("\"0.001\""), Err(AmountError::TooManyDecimals));
        assert_eq!(cents("1e-1000000000"), Err(AmountError::TooManyDecimals));
    }

    #[test]
    fn refuses_zero_negative_and_negative_zero() {
        assert_eq!(cents("0"), Err(AmountError::NotPositive));
        assert_eq!(cents("0.00"), Err(AmountError::NotPositive));
        assert_eq!(cents("-0"), Err(AmountError::NotPositive));
        assert_eq!(cents("-0.0"), Err(AmountError::NotPositive));
        assert_eq!(cents("-5"), Err(AmountError::NotPositive));
        assert_eq!(cents("\"-5.25\""), Err(AmountError::NotPositive));
    }

    #[test]
    fn refuses_overflow_and_huge_values() {
        assert_eq!(cents("1e20"), Err(AmountError::TooLarge));
        assert_eq!(cents("1e1000000000"), Err(AmountError::TooLarge));
        assert_eq!(
            cents("99999999999999999999999999999999999999999999999999999999999999999999"),
            Err(AmountError::TooLarge)
        );
        assert_eq!(cents("1000000000000"), Ok(Money::MAX_AMOUNT.cents()));
        assert_eq!(cents("1000000000000.01"), Err(AmountError::TooLarge));
    }

    #[test]
    fn refuses_non_numbers() {
        for text in [
            "\"NaN\"",
            "\"nan\"",
            "\"Infinity\"",
            "\"-inf\"",
            "\"abc\"",
            "\"\"",
            "\"12,5\"",
            "\" 12\"",
            "\"1e\"",
            "\".\"",
            "true",
            "null",
            "[1]",
            "{}",
            "\"0x10\"",
        ] {
            assert_eq!(cents(text), Err(AmountError::NotANumber), "{text}");
        }
    }

    #[test]
    fn displays_exact_shortest_decimal() {
        assert_eq!(Money::from_cents(1250).to_string(), "12.5");
        assert_eq!(Money::from_cents(1200).to_string(), "12");
        assert_eq!(Money::from_cents(1).to_string(), "0.01");
        assert_eq!(Money::from_cents(0).to_string(), "0");
        assert_eq!(Money::from_cents(-205).to_string(), "-2.05");
        assert_eq!(
            Money::from_cents(i64::MAX).to_string(),
            "92233720368547758.07"
        );
    }

    #[test]
    fn fixed2_always_shows_cents() {
        assert_eq!(Money::from_cents(1250).to_fixed2(), "12.50");
        assert_eq!(Money::from_cents(700).to_fixed2(), "7.00");
        assert_eq!(Money::from_cents(-1).to_fixed2(), "-0.01");
    }

    #[test]
    fn json_money_is_a_plain_exact_number() {
        let json =
            serde_json::to_string(&JsonMoney(Money::from_cents(1_000_000_000_000_001))).unwrap();
        assert_eq!(json, "10000000000000.01");
        let json = serde_json::to_string(&JsonMoney(Money::from_cents(1250))).unwrap();
        assert_eq!(json, "12.5");
    }

    #[test]
    fn balance_arithmetic_is_checked() {
        assert_eq!(
            Money::MAX_BALANCE.checked_add_balance(Money::from_cents(1)),
            None
        );
        assert_eq!(
            Money::from_cents(5).checked_sub_balance(Money::from_cents(6)),
            None
        );
        assert_eq!(
            Money::from_cents(5).checked_sub_balance(Money::from_cents(5)),
            Some(Money::ZERO)
        );
    }
}
