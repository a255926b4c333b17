//! Built-in tools: `echo(text)` and `add(a, b)`, pure functions of their params,
//! and the rule that says which allowed tool calls the kernel runs at all.
//!
//! Tools run inside the decision, so they must be deterministic. Their
//! failures reproduce the Python library's texts, including CPython's own
//! `TypeError` messages for bad keyword arguments and for `a + b` on
//! mismatched types. A tool that runs elsewhere (named in `external_tools`,
//! or a request marked `external_tool: true`, as the MCP proxy marks every
//! `tools/call`) is authorised and recorded, never run here.

use std::collections::BTreeSet;

use num_bigint::BigInt;
use serde_json::{Map, Number, Value};

use super::pysem::{self, PyNumber};

/// Names of the built-in tools.
pub const BUILTIN_TOOLS: [&str; 2] = ["echo", "add"];

/// Why a tool call did not produce a result (the text after `Tool execution failed: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No tool of that name exists.
    #[error("Tool '{0}' is not registered")]
    NotRegistered(String),
    /// The tool rejected its arguments.
    #[error("Invalid parameters for tool '{tool}': {message}")]
    InvalidParameters {
        /// Tool name.
        tool: String,
        /// CPython's TypeError text.
        message: String,
    },
}

/// Whether the kernel runs an allowed call of `name` itself. It does not when
/// the caller declared the tool external (`external_tool: true`: an MCP
/// server behind the proxy runs it) or the operator listed it in
/// `external_tools`; such a call is ALLOWed without a `tool_result`, and the
/// tool's name needs to be written only once, in the policy's `allowed_tools`.
/// Every other call runs here, and an unknown name is FAILED (`Tool 'T' is
/// not registered`), as in the Python library.
pub fn runs_in_kernel(
    name: &str,
    declared_external: bool,
    external_tools: &BTreeSet<String>,
) -> bool {
    !declared_external && !external_tools.contains(name)
}

/// Runs the tool `name` with `params`.
pub fn execute(name: &str, params: &Map<String, Value>) -> Result<Value, ToolError> {
    match name {
        "echo" => {
            let args = bind(name, &["text"], params)?;
            Ok(args[0].clone())
        }
        "add" => {
            let args = bind(name, &["a", "b"], params)?;
            add(args[0], args[1]).map_err(|message| ToolError::InvalidParameters {
                tool: name.to_owned(),
                message,
            })
        }
        _ => Err(ToolError::NotRegistered(name.to_owned())),
    }
}

/// Binds keyword arguments like CPython's `f(**params)` for `def f(<names>)`.
fn bind<'a>(
    tool: &str,
    names: &[&str],
    params: &'a Map<String, Value>,
) -> Result<Vec<&'a Value>, ToolError> {
    let qualname = format!("create_default_registry.<locals>.{tool}");
    let invalid = |message: String| ToolError::InvalidParameters {
        tool: tool.to_owned(),
        message,
    };
    if let Some(key) = params.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(invalid(format!(
            "{qualname}() got an unexpected keyword argument '{key}'"
        )));
    }
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !params.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        let quoted: Vec<String> = missing.iter().map(|m| format!("'{m}'")).collect();
        let list = match quoted.len() {
            1 => quoted[0].clone(),
            n => format!("{} and {}", quoted[..n - 1].join(", "), quoted[n - 1]),
        };
        let plural = if missing.len() == 1 {
            "argument"
        } else {
            "arguments"
        };
        return Err(invalid(format!(
            "{qualname}() missing {} required positional {plural}: {list}",
            missing.len()
        )));
    }
    Ok(names.iter().map(|n| &params[*n]).collect())
}

/// Python's `a + b` on decoded JSON values.
fn add(a: &Value, b: &Value) -> Result<Value, String> {
    let unsupported = || {
        format!(
            "unsupported operand type(s) for +: '{}' and '{}'",
            pysem::type_name(a),
            pysem::type_name(b)
        )
    };
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(Value::String(format!("{x}{y}"))),
        (Value::String(_), _) => Err(format!(
            "can only concatenate str (not \"{}\") to str",
            pysem::type_name(b)
        )),
        (Value::Array(x), Value::Array(y)) => {
            Ok(Value::Array(x.iter().chain(y).cloned().collect()))
        }
        (Value::Array(_), _) => Err(format!(
            "can only concatenate list (not \"{}\") to list",
            pysem::type_name(b)
        )),
        (Value::Bool(_) | Value::Number(_), Value::Bool(_) | Value::Number(_)) => add_numbers(a, b),
        _ => Err(unsupported()),
    }
}

enum Num {
    Int(BigInt),
    Float(f64),
}

fn to_num(v: &Value) -> Num {
    match v {
        Value::Bool(b) => Num::Int(BigInt::from(u8::from(*b))),
        Value::Number(n) => match pysem::as_number(n) {
            PyNumber::Int(i) => Num::Int(BigInt::from(i)),
            PyNumber::BigInt(s) => Num::Int(s.parse().expect("JSON integers are decimal")),
            PyNumber::Float(f) => Num::Float(f),
        },
        _ => unreachable!("add_numbers is only called on bools and numbers"),
    }
}

fn int_to_float(i: &BigInt) -> Result<f64, String> {
    let f: f64 = i
        .to_string()
        .parse()
        .map_err(|_| "int too large to convert to float".to_owned())?;
    if f.is_finite() {
        Ok(f)
    } else {
        Err("int too large to convert to float".to_owned())
    }
}

fn add_numbers(a: &Value, b: &Value) -> Result<Value, String> {
    let sum = match (to_num(a), to_num(b)) {
        (Num::Int(x), Num::Int(y)) => {
            return Ok(Value::Number(Number::from_string_unchecked(
                (x + y).to_string(),
            )));
        }
        (Num::Float(x), Num::Float(y)) => x + y,
        (Num::Int(x), Num::Float(y)) => int_to_float(&x)? + y,
        (Num::Float(x), Num::Int(y)) => x + int_to_float(&y)?,
    };
    float_value(sum)
}

fn float_value(f: f64) -> Result<Value, String> {
    let mut text = String::new();
    crate::canonical::write_float(&mut text, f)
        .map_err(|_| "result is not a finite number".to_owned())?;
    Ok(Value::Number(Number::from_string_unchecked(text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(name: &str, params: Value) -> Result<Value, String> {
        execute(name, params.as_object().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn echo_and_add_work() {
        assert_eq!(run("echo", json!({"text": "hi"})), Ok(json!("hi")));
        assert_eq!(run("add", json!({"a": 2, "b": 3})), Ok(json!(5)));
        assert_eq!(run("add", json!({"a": true, "b": 1.5})), Ok(json!(2.5)));
        assert_eq!(run("add", json!({"a": "x", "b": "y"})), Ok(json!("xy")));
        let big = crate::canonical::parse(r#"{"a": 1208925819614629174706176, "b": 1}"#).unwrap();
        assert_eq!(
            run("add", big).unwrap().to_string(),
            "1208925819614629174706177"
        );
    }

    #[test]
    fn failures_use_cpython_texts() {
        assert_eq!(
            run("echo", json!({"text": 1, "loud": true})).unwrap_err(),
            "Invalid parameters for tool 'echo': create_default_registry.<locals>.echo() got an unexpected keyword argument 'loud'"
        );
        assert_eq!(
            run("add", json!({})).unwrap_err(),
            "Invalid parameters for tool 'add': create_default_registry.<locals>.add() missing 2 required positional arguments: 'a' and 'b'"
        );
        assert_eq!(
            run("add", json!({"a": 1, "b": "x"})).unwrap_err(),
            "Invalid parameters for tool 'add': unsupported operand type(s) for +: 'int' and 'str'"
        );
        assert_eq!(
            run("add", json!({"a": "x", "b": 1})).unwrap_err(),
            "Invalid parameters for tool 'add': can only concatenate str (not \"int\") to str"
        );
        assert_eq!(
            run("ghost", json!({})).unwrap_err(),
            "Tool 'ghost' is not registered"
        );
    }
}

#[cfg(test)]
mod where_tools_run {
    //! Given a policy that names an MCP tool once, when a call is marked
    //! `external_tool`, then it is ALLOWed without running here.
    use crate::kernel::tests::ctx;
    use crate::kernel::{MemoryKernel, Policy, RawRequest, Receipt, Status, Variant};
    use serde_json::{Value, json};

    fn submit(request: Value) -> Receipt {
        submit_to(request).0
    }

    fn submit_to(request: Value) -> (Receipt, MemoryKernel) {
        let policy =
            Policy::from_yaml("allowed_actors: [alice]\nallowed_tools: [echo, fs.read_file]\n")
                .unwrap();
        let mut k = MemoryKernel::create("k-tools", Variant::Strict, &policy, 1_000).unwrap();
        let receipt = k
            .submit(&RawRequest::from_value(request).unwrap(), &ctx(2_000))
            .unwrap();
        (receipt, k)
    }

    #[test]
    fn a_call_marked_external_is_allowed_without_a_result() {
        let r = submit(
            json!({"request_id": "r1", "actor": "alice", "intent": "read",
            "tool_call": {"name": "fs.read_file", "params": {"path": "/etc/motd"}}, "external_tool": true}),
        );
        assert_eq!((r.status, r.decision.as_str()), (Status::Accepted, "ALLOW"));
        assert_eq!(r.tool_result, None);
    }

    #[test]
    fn the_same_call_unmarked_is_failed_as_not_registered() {
        let r = submit(
            json!({"request_id": "r1", "actor": "alice", "intent": "read",
            "tool_call": {"name": "fs.read_file", "params": {"path": "/etc/motd"}}}),
        );
        assert_eq!((r.status, r.decision.as_str()), (Status::Failed, "DENY"));
        assert_eq!(
            r.error.as_deref(),
            Some("Tool execution failed: Tool 'fs.read_file' is not registered")
        );
    }

    #[test]
    fn a_built_in_name_marked_external_is_not_run_here() {
        // An upstream `echo` takes other arguments than ours: running ours would FAIL it.
        let r = submit(
            json!({"request_id": "r1", "actor": "alice", "intent": "say",
            "tool_call": {"name": "echo", "params": {"message": "hi"}}, "external_tool": true}),
        );
        assert_eq!((r.status, r.tool_result), (Status::Accepted, None));
    }

    #[test]
    fn a_marked_call_is_still_judged_by_the_policy_and_its_denial_names_the_tool() {
        let (r, k) = submit_to(json!({"request_id": "r1", "actor": "alice", "intent": "rm",
            "tool_call": {"name": "fs.delete", "params": {}}, "external_tool": true}));
        assert_eq!((r.status, r.decision.as_str()), (Status::Rejected, "DENY"));
        assert_eq!(
            r.error.as_deref(),
            Some("Jurisdiction denied: Tool 'fs.delete' is not in allowed tools")
        );
        assert_eq!(k.entries[1].tool_name.as_deref(), Some("fs.delete"));
    }

    #[test]
    fn a_non_boolean_mark_fails_validation() {
        let r = submit(json!({"request_id": "r1", "actor": "alice", "intent": "x",
            "tool_call": {"name": "echo", "params": {"text": "x"}}, "external_tool": "yes"}));
        assert_eq!(
            r.error.as_deref(),
            Some("Validation failed: external_tool must be a boolean")
        );
    }
}
