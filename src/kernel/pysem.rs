//! The few Python value semantics the reference library's checks depend on.
//!
//! The Python KERNELS library decides with `if not value`, `str.strip()`,
//! `len(str)` and `==` on decoded JSON. Reproducing those exactly (truthiness,
//! Unicode whitespace, code-point length, numeric equality across int/float/
//! bool) is what makes our decisions byte-identical to its decisions.

use serde_json::Value;

/// Python's `bool(value)` for a decoded JSON value.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => match as_number(n) {
            PyNumber::Int(i) => i != 0,
            PyNumber::BigInt(_) => true,
            PyNumber::Float(f) => f != 0.0,
        },
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Python's `str.isspace()` for one character: Unicode White_Space plus the
/// four information separators U+001C–U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip() == ""`.
pub fn is_blank(s: &str) -> bool {
    s.chars().all(is_py_space)
}

/// Python's `len(s)`: the number of code points.
pub fn py_len(s: &str) -> usize {
    s.chars().count()
}

/// A JSON number as Python would hold it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PyNumber<'a> {
    /// An int that fits in i128.
    Int(i128),
    /// An int too large for i128 (kept as its decimal text).
    BigInt(&'a str),
    /// A float.
    Float(f64),
}

/// Classifies a JSON number the way `json.loads` would.
pub fn as_number(n: &serde_json::Number) -> PyNumber<'_> {
    let text = n.as_str();
    if crate::canonical::is_float_literal(n) {
        PyNumber::Float(text.parse().unwrap_or(f64::NAN))
    } else {
        match text.parse::<i128>() {
            Ok(i) => PyNumber::Int(i),
            Err(_) => PyNumber::BigInt(text),
        }
    }
}

/// Python's `isinstance(value, int)` (bools are ints in Python).
pub fn is_int(value: &Value) -> bool {
    match value {
        Value::Bool(_) => true,
        Value::Number(n) => !crate::canonical::is_float_literal(n),
        _ => false,
    }
}

/// Python's `a == b` for decoded JSON (1 == 1.0 == True).
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        (Value::Bool(_) | Value::Number(_), Value::Bool(_) | Value::Number(_)) => numeric_eq(a, b),
        _ => false,
    }
}

fn numeric_eq(a: &Value, b: &Value) -> bool {
    fn num(v: &Value) -> PyNumber<'_> {
        match v {
            Value::Bool(b) => PyNumber::Int(i128::from(*b)),
            Value::Number(n) => as_number(n),
            _ => unreachable!("numeric_eq is only called on bools and numbers"),
        }
    }
    match (num(a), num(b)) {
        (PyNumber::Int(x), PyNumber::Int(y)) => x == y,
        (PyNumber::BigInt(x), PyNumber::BigInt(y)) => x == y,
        (PyNumber::Float(x), PyNumber::Float(y)) => x == y,
        // Python compares int and float exactly; i128 -> f64 is exact for any
        // value a float can equal (floats above 2^53 are integers).
        (PyNumber::Int(i), PyNumber::Float(f)) | (PyNumber::Float(f), PyNumber::Int(i)) => {
            f.fract() == 0.0 && f.abs() < 1.7e38 && f as i128 == i
        }
        (PyNumber::BigInt(s), PyNumber::Float(f)) | (PyNumber::Float(f), PyNumber::BigInt(s)) => {
            // `{:.0}` prints a float's exact integer value, digit for digit.
            f.is_finite() && f.fract() == 0.0 && format!("{f:.0}") == s
        }
        _ => false,
    }
}

/// Python's `type(value).__name__` for a decoded JSON value.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if crate::canonical::is_float_literal(n) => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truthiness_follows_python() {
        for falsy in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(&falsy), "{falsy} should be falsy");
        }
        for t in [
            json!(true),
            json!(1),
            json!(-0.5),
            json!("0"),
            json!([0]),
            json!({"a": null}),
        ] {
            assert!(truthy(&t), "{t} should be truthy");
        }
    }

    #[test]
    fn whitespace_follows_str_isspace() {
        assert!(is_blank(" \t\n\u{1c}\u{1f}\u{a0}\u{3000}"));
        assert!(!is_blank(" \u{200b} "));
        assert!(is_blank(""));
    }

    #[test]
    fn equality_follows_python() {
        assert!(py_eq(&json!(1), &json!(1.0)));
        assert!(py_eq(&json!(true), &json!(1)));
        assert!(!py_eq(&json!("1"), &json!(1)));
        assert!(py_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!py_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        let big = crate::canonical::parse("1267650600228229401496703205376").unwrap();
        assert!(py_eq(&big, &json!(1.2676506002282294e30)));
        assert!(!py_eq(&big, &json!(1)));
    }
}
