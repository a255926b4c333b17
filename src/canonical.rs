//! Canonical JSON: the byte-exact form every hash in `kernels` is computed over.
//!
//! The evidence format is shared with the Python KERNELS library, which hashes
//! `json.dumps(x, sort_keys=True, separators=(",", ":"))` (default
//! `ensure_ascii=True`). This module reproduces that output byte for byte:
//! keys in code-point order, no whitespace, every non-printable-ASCII
//! character as a lowercase `\uXXXX` escape (UTF-16 surrogate pairs above
//! U+FFFF), integers exactly as written (any size), floats as Python's `repr`
//! (shortest round-trip digits, exponent form below 1e-4 and from 1e16 up).
//! NaN and infinities cannot be represented and are rejected.
//!
//! Numbers rely on serde_json's `arbitrary_precision` feature, so a parsed
//! number keeps its source text and a 30-digit integer is never rounded.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A float that is NaN or infinite (or a literal too large for a double,
    /// which Python would read as infinity): it cannot be hashed.
    #[error("number {0} is not finite (NaN and Infinity are not allowed)")]
    NonFinite(String),
    /// A number literal that is neither an integer nor a float.
    #[error("invalid number literal {0}")]
    BadNumber(String),
}

/// Canonical JSON text of `value`.
///
/// ```
/// use serde_json::json;
/// let text = kernels::canonical::to_string(&json!({"b": [1, 2.5], "a": "é"})).unwrap();
/// assert_eq!(text, r#"{"a":"\u00e9","b":[1,2.5]}"#);
/// ```
pub fn to_string(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value)?;
    Ok(out)
}

/// Lowercase hex SHA-256 of the canonical JSON of `value`.
pub fn sha256_of(value: &Value) -> Result<String, CanonicalError> {
    Ok(sha256_hex(to_string(value)?.as_bytes()))
}

/// Lowercase hex SHA-256 of raw bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Appends the canonical JSON of `value` to `out`.
pub fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    write_value_styled(out, value, true)
}

/// Canonical JSON with `ensure_ascii=False`: non-ASCII characters are written
/// as UTF-8 instead of escapes. The Python library signs permits in this form.
pub fn to_string_utf8(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(128);
    write_value_styled(&mut out, value, false)?;
    Ok(out)
}

fn write_value_styled(out: &mut String, value: &Value, ascii: bool) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_str_styled(out, s, ascii),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value_styled(out, item, ascii)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object_styled(out, map, ascii)?,
    }
    Ok(())
}

/// Canonical JSON text of a JSON object (without wrapping it in a [`Value`]).
pub fn object_to_string(map: &Map<String, Value>) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(128);
    write_object_styled(&mut out, map, true)?;
    Ok(out)
}

fn write_object_styled(
    out: &mut String,
    map: &Map<String, Value>,
    ascii: bool,
) -> Result<(), CanonicalError> {
    // Rust's `str` order is UTF-8 byte order, which equals code-point order:
    // exactly Python's `sort_keys`.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str_styled(out, key, ascii);
        out.push(':');
        write_value_styled(out, &map[key], ascii)?;
    }
    out.push('}');
    Ok(())
}

/// Appends a JSON string literal with Python's `ensure_ascii` escaping.
pub fn write_str(out: &mut String, s: &str) {
    write_str_styled(out, s, true)
}

fn write_str_styled(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    // Fast path: printable ASCII without quote or backslash is written as is.
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut plain_start = 0;
    for (i, ch) in s.char_indices() {
        let escape: Option<&str> = match ch {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            ' '..='~' => continue,
            c if !ascii && c >= ' ' => continue,
            _ => None,
        };
        out.push_str(&s[plain_start..i]);
        plain_start = i + ch.len_utf8();
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push_str(&s[plain_start..]);
    out.push('"');
}

/// Whether a JSON number literal is a float for Python's `json.loads`: it
/// has a fraction or an exponent. (serde_json's `is_f64` also says false for
/// literals like `1e400` that overflow a double, which Python reads as inf.)
pub fn is_float_literal(n: &Number) -> bool {
    n.as_str().contains(['.', 'e', 'E'])
}

/// Appends a number: integers verbatim, floats as Python's `repr`.
fn write_number(out: &mut String, n: &Number) -> Result<(), CanonicalError> {
    let text = n.as_str();
    if is_float_literal(n) {
        let f: f64 = text
            .parse()
            .map_err(|_| CanonicalError::BadNumber(text.to_owned()))?;
        write_float(out, f).map_err(|_| CanonicalError::NonFinite(text.to_owned()))
    } else {
        // A JSON integer literal has no '+' and no leading zeros; Python reads
        // "-0" as the integer 0.
        if text == "-0" {
            out.push('0');
        } else if text
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-' && text.len() > 1))
        {
            out.push_str(text);
        } else {
            return Err(CanonicalError::BadNumber(text.to_owned()));
        }
        Ok(())
    }
}

/// Appends `f` formatted as Python's `repr(float)`; errors on NaN/infinity.
pub fn write_float(out: &mut String, f: f64) -> Result<(), CanonicalError> {
    if !f.is_finite() {
        return Err(CanonicalError::NonFinite(f.to_string()));
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, like Python's
    // repr (both pick the closest of the shortest candidates): "1.5e-7", "-0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    // Python's format_float_short: the point sits after `decpt` digits; it uses
    // exponent notation when decpt <= -4 or decpt > 16.
    let decpt = exp + 1;
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.unsigned_abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let decpt = decpt as usize;
        if digits.len() <= decpt {
            out.push_str(&digits);
            for _ in digits.len()..decpt {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt]);
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
    Ok(())
}

/// Parses JSON text into a [`Value`], keeping every number's exact text.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(text: &str) -> String {
        to_string(&parse(text).unwrap()).unwrap()
    }

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f).unwrap();
        s
    }

    #[test]
    fn floats_match_python_repr() {
        let table: &[(f64, &str)] = &[
            (0.1, "0.1"),
            (3.0, "3.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1e20, "1e+20"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (2.5, "2.5"),
            (-1234.5678, "-1234.5678"),
            (1e100, "1e+100"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.30000000000000004, "0.30000000000000004"),
        ];
        for (f, want) in table {
            assert_eq!(float(*f), *want, "repr of {f:e}");
        }
    }

    #[test]
    fn tricky_documents() {
        let table: &[(&str, &str)] = &[
            (r#"{"b":1,"a":2,"B":3}"#, r#"{"B":3,"a":2,"b":1}"#),
            (r#""é🙂""#, r#""\u00e9\ud83d\ude42""#),
            ("\"\\u007f\\u0000\\u001f\"", r#""\u007f\u0000\u001f""#),
            (r#""a/b\"c\\ \n\r\t\b\f""#, r#""a/b\"c\\ \n\r\t\b\f""#),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("-0", "0"),
            ("-0.0", "-0.0"),
            ("1E5", "100000.0"),
            ("1e400", ""),
            ("[1.0, 10, 1e-7]", "[1.0,10,1e-07]"),
            (
                r#"{"z":{"y":[],"x":{}}, "\u00e9":null}"#,
                r#"{"z":{"x":{},"y":[]},"\u00e9":null}"#,
            ),
            (r#"{"é":1,"z":2,"~":3}"#, r#"{"z":2,"~":3,"\u00e9":1}"#),
            ("0.1000000000000000055511151231257827", "0.1"),
            ("true", "true"),
        ];
        for (input, want) in table {
            let v = parse(input).unwrap();
            match to_string(&v) {
                Ok(got) => assert_eq!(got, *want, "canonical of {input}"),
                Err(e) => assert!(want.is_empty(), "{input}: unexpected error {e}"),
            }
        }
    }

    #[test]
    fn keys_sort_by_code_point_across_planes() {
        // U+FFFF sorts before U+1F642 by code point (Python) even though the
        // UTF-16 order of the surrogate pair would put it after.
        let text = canon("{\"\u{1F642}\":1,\"\u{FFFF}\":2}");
        assert_eq!(text, r#"{"\uffff":2,"\ud83d\ude42":1}"#);
    }

    #[test]
    fn utf8_style_keeps_non_ascii() {
        let v = parse("{\"k\":\"é🙂\\u007f\\n\\u0001\"}").unwrap();
        assert_eq!(
            to_string_utf8(&v).unwrap(),
            "{\"k\":\"é🙂\u{7f}\\n\\u0001\"}"
        );
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #[test]
        fn float_text_round_trips(f in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            let s = float(f);
            let back: f64 = s.parse().unwrap();
            prop_assert_eq!(back.to_bits(), f.to_bits());
            // Python's repr always has a '.', or an exponent.
            prop_assert!(s.contains('.') || s.contains('e'));
        }

        #[test]
        fn canonical_is_a_fixed_point(v in arb_json()) {
            let once = to_string(&v).unwrap();
            let twice = canon(&once);
            prop_assert_eq!(&once, &twice);
            prop_assert!(once.is_ascii());
        }

        #[test]
        fn strings_round_trip(s in "\\PC*|[\\u{0}-\\u{7f}]*") {
            let text = to_string(&Value::String(s.clone())).unwrap();
            let back: String = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, s);
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (proptest::num::f64::NORMAL | proptest::num::f64::ZERO)
                .prop_map(|f| parse(&float(f)).unwrap()),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
