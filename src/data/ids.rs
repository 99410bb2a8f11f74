//! Ordering of external ids (item and user ids are strings on the wire).
//!
//! The leave-one-out protocol breaks timestamp ties by item id, and MovieLens ids are integers:
//! "9" must sort before "10". So a set of ids is compared numerically when every id in it is an
//! integer (`-?[0-9]+`, any length: compared digit-wise, never parsed, so no overflow), and
//! bytewise as strings otherwise. Numerically equal ids ("7", "007") fall back to bytewise order,
//! which keeps the order total and deterministic.

use std::cmp::Ordering;

/// How a set of ids is ordered; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrder {
    /// Every id is an integer: compare as numbers.
    Numeric,
    /// Some id is not an integer: compare as byte strings.
    Lexicographic,
}

impl IdOrder {
    /// `Numeric` when every id is an integer (and there is at least one id).
    pub fn detect<'a>(ids: impl IntoIterator<Item = &'a str>) -> IdOrder {
        let mut any = false;
        for id in ids {
            any = true;
            if !is_integer(id) {
                return IdOrder::Lexicographic;
            }
        }
        if any {
            IdOrder::Numeric
        } else {
            IdOrder::Lexicographic
        }
    }

    /// Compares two ids under this order. Under `Numeric`, a non-integer id (which `detect` would
    /// not have allowed) sorts after every integer, so the order stays total.
    pub fn compare(self, a: &str, b: &str) -> Ordering {
        match self {
            IdOrder::Lexicographic => a.cmp(b),
            IdOrder::Numeric => match (is_integer(a), is_integer(b)) {
                (true, true) => cmp_integers(a, b).then_with(|| a.cmp(b)),
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => a.cmp(b),
            },
        }
    }
}

/// `-?[0-9]+`
pub fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Numeric comparison of two strings that satisfy `is_integer`.
fn cmp_integers(a: &str, b: &str) -> Ordering {
    let (a_neg, a_mag) = split_sign(a);
    let (b_neg, b_mag) = split_sign(b);
    match (a_neg, b_neg) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => cmp_magnitudes(a_mag, b_mag),
        (true, true) => cmp_magnitudes(b_mag, a_mag),
    }
}

/// Sign and magnitude without leading zeros; "-0" counts as non-negative zero.
fn split_sign(s: &str) -> (bool, &str) {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let mag = digits.trim_start_matches('0');
    (neg && !mag.is_empty(), mag)
}

fn cmp_magnitudes(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_numeric_only_when_all_ids_are_integers() {
        assert_eq!(IdOrder::detect(["1", "10", "-3"]), IdOrder::Numeric);
        assert_eq!(IdOrder::detect(["1", "x"]), IdOrder::Lexicographic);
        assert_eq!(IdOrder::detect(["1.5"]), IdOrder::Lexicographic);
        assert_eq!(IdOrder::detect(["", "1"]), IdOrder::Lexicographic);
        assert_eq!(IdOrder::detect([]), IdOrder::Lexicographic);
    }

    #[test]
    fn numeric_and_string_orders_differ_on_9_and_10() {
        assert_eq!(IdOrder::Numeric.compare("9", "10"), Ordering::Less);
        assert_eq!(IdOrder::Lexicographic.compare("9", "10"), Ordering::Greater);
    }

    #[test]
    fn numeric_order_handles_signs_zeros_and_huge_ids() {
        let o = IdOrder::Numeric;
        assert_eq!(o.compare("-10", "-9"), Ordering::Less);
        assert_eq!(o.compare("-1", "0"), Ordering::Less);
        assert_eq!(o.compare("-0", "0"), Ordering::Less); // equal numbers: bytewise tie-break
        assert_eq!(o.compare("007", "7"), Ordering::Less);
        assert_eq!(o.compare("7", "007"), Ordering::Greater);
        assert_eq!(o.compare("008", "7"), Ordering::Greater);
        let big = "123456789012345678901234567890";
        assert_eq!(o.compare(big, "99999999999999999999"), Ordering::Greater);
        assert_eq!(o.compare("5", "5"), Ordering::Equal);
    }

    #[test]
    fn numeric_order_is_a_total_order_on_mixed_input() {
        let mut ids = vec!["b", "10", "a", "9", "-1", "007", "7"];
        ids.sort_by(|a, b| IdOrder::Numeric.compare(a, b));
        assert_eq!(ids, ["-1", "007", "7", "9", "10", "a", "b"]);
    }
}
