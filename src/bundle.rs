//! Evidence bundles: streamed reading and writing of the public JSON format.
//!
//! A bundle is `{"kernel_id", "variant", "exported_at_ms", "root_hash",
//! "ledger_entries": [entry, …]}`, optionally with `from_seq` and
//! `anchor_hash` for a range of a longer chain (CONTRACT §2). Bundles can be
//! many gigabytes, so neither direction ever holds the entry list: the reader
//! is a small structural scanner that hands out each entry's raw bytes as soon
//! as its closing brace is read (whatever the key order of the bundle), and the
//! writer emits one entry per line as it is given them.

use std::io::{self, BufRead, Write};

use serde::Serialize;
use serde_json::Value;

use crate::entry::Entry;

/// The largest single JSON value (one entry, or one header field) accepted.
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// Why a bundle could not be read at all (as opposed to being read and found invalid).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading the underlying file or stream failed.
    #[error("cannot read bundle: {0}")]
    Io(#[from] io::Error),
    /// The text is not JSON, or not shaped like a bundle.
    #[error("not a valid evidence bundle: {message} (at byte {offset})")]
    Syntax {
        /// What is wrong.
        message: String,
        /// Byte offset in the input where it was noticed.
        offset: u64,
    },
}

/// The bundle fields other than its entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BundleHeader {
    /// Kernel the entries belong to.
    pub kernel_id: Option<String>,
    /// Kernel variant.
    pub variant: Option<String>,
    /// When the bundle was exported.
    pub exported_at_ms: Option<Value>,
    /// Stated root hash (last entry hash, or the anchor for an empty range).
    pub root_hash: Option<String>,
    /// First `ledger_seq` of a range bundle.
    pub from_seq: Option<u64>,
    /// `prev_hash` of a range bundle's first entry.
    pub anchor_hash: Option<String>,
    /// Whether a `ledger_entries` array was present.
    pub has_entries: bool,
}

/// Reads a bundle from `input`, calling `on_entry` with the raw JSON bytes of
/// each entry in order, and returns the header once the whole input is read.
pub fn read_bundle<R: BufRead>(
    input: R,
    mut on_entry: impl FnMut(Vec<u8>),
) -> Result<BundleHeader, BundleError> {
    let mut s = Scanner {
        input,
        offset: 0,
        buf: Vec::new(),
    };
    let mut header = BundleHeader::default();
    s.expect(b'{', "a bundle must be a JSON object")?;
    let mut first = true;
    loop {
        let b = s.peek_non_ws()?;
        if b == Some(b'}') {
            s.bump();
            break;
        }
        if !first {
            s.expect(b',', "expected ',' or '}' after a bundle field")?;
        }
        first = false;
        let key = s.read_key()?;
        s.expect(b':', "expected ':' after a key")?;
        // `entries` is the key the Python library's framework adapters export.
        if key == "ledger_entries" || key == "entries" {
            if header.has_entries {
                return Err(s.syntax("more than one entry list (ledger_entries / entries)"));
            }
            header.has_entries = true;
            s.expect(b'[', "ledger_entries must be an array")?;
            let mut first_entry = true;
            loop {
                if s.peek_non_ws()? == Some(b']') {
                    s.bump();
                    break;
                }
                if !first_entry {
                    s.expect(b',', "expected ',' or ']' between entries")?;
                }
                first_entry = false;
                let mut raw = Vec::with_capacity(1024);
                s.capture_value(&mut raw)?;
                on_entry(raw);
            }
        } else {
            let mut raw = Vec::new();
            s.capture_value(&mut raw)?;
            let value: Value = serde_json::from_slice(&raw)
                .map_err(|e| s.syntax(&format!("field {key:?}: {e}")))?;
            let wrong = |what: &str| s.syntax(&format!("field {key:?} must be {what}"));
            match key.as_str() {
                "kernel_id" => {
                    header.kernel_id = opt_string(value).map_err(|_| wrong("a string"))?
                }
                "variant" => header.variant = opt_string(value).map_err(|_| wrong("a string"))?,
                "root_hash" => {
                    header.root_hash = opt_string(value).map_err(|_| wrong("a string"))?
                }
                "anchor_hash" => {
                    header.anchor_hash = opt_string(value).map_err(|_| wrong("a string"))?
                }
                "from_seq" => {
                    header.from_seq = match value {
                        Value::Null => None,
                        v => Some(v.as_u64().ok_or_else(|| wrong("a non-negative integer"))?),
                    }
                }
                "exported_at_ms" => header.exported_at_ms = Some(value),
                // Other keys are allowed (the format may grow) and ignored.
                _ => {}
            }
        }
    }
    if let Some(b) = s.peek_non_ws()? {
        return Err(s.syntax(&format!(
            "unexpected {:?} after the end of the bundle",
            b as char
        )));
    }
    if !header.has_entries {
        return Err(s.syntax("no ledger_entries array"));
    }
    Ok(header)
}

fn opt_string(value: Value) -> Result<Option<String>, ()> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(()),
    }
}

/// A byte-level JSON scanner: finds value boundaries, leaves parsing to serde_json.
struct Scanner<R> {
    input: R,
    offset: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Scanner<R> {
    fn syntax(&self, message: &str) -> BundleError {
        BundleError::Syntax {
            message: message.to_owned(),
            offset: self.offset,
        }
    }

    fn bump(&mut self) {
        self.input.consume(1);
        self.offset += 1;
    }

    fn peek_non_ws(&mut self) -> Result<Option<u8>, BundleError> {
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let n = chunk
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
            match n {
                Some(i) => {
                    let b = chunk[i];
                    self.input.consume(i);
                    self.offset += i as u64;
                    return Ok(Some(b));
                }
                None => {
                    let len = chunk.len();
                    self.input.consume(len);
                    self.offset += len as u64;
                }
            }
        }
    }

    fn expect(&mut self, byte: u8, message: &str) -> Result<(), BundleError> {
        match self.peek_non_ws()? {
            Some(b) if b == byte => {
                self.bump();
                Ok(())
            }
            Some(_) => Err(self.syntax(message)),
            None => Err(self.syntax("unexpected end of input")),
        }
    }

    fn read_key(&mut self) -> Result<String, BundleError> {
        if self.peek_non_ws()? != Some(b'"') {
            return Err(self.syntax("expected a string key"));
        }
        let mut raw = std::mem::take(&mut self.buf);
        raw.clear();
        self.capture_string(&mut raw)?;
        let key: Result<String, _> = serde_json::from_slice(&raw);
        self.buf = raw;
        key.map_err(|e| self.syntax(&format!("bad key: {e}")))
    }

    /// Copies one complete JSON value (of any kind) into `out`.
    fn capture_value(&mut self, out: &mut Vec<u8>) -> Result<(), BundleError> {
        let Some(first) = self.peek_non_ws()? else {
            return Err(self.syntax("unexpected end of input"));
        };
        match first {
            b'"' => self.capture_string(out),
            b'{' | b'[' => self.capture_container(out),
            b'}' | b']' | b',' | b':' => Err(self.syntax("expected a value")),
            _ => self.capture_scalar(out),
        }
    }

    fn too_large(&self) -> BundleError {
        self.syntax("a single value is larger than 64 MiB")
    }

    /// Copies `n` bytes of the current buffer into `out` and consumes them.
    fn take(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), BundleError> {
        let chunk = self.input.fill_buf()?;
        if out.len() + n > MAX_VALUE_BYTES {
            return Err(self.too_large());
        }
        out.extend_from_slice(&chunk[..n]);
        self.input.consume(n);
        self.offset += n as u64;
        Ok(())
    }

    fn capture_string(&mut self, out: &mut Vec<u8>) -> Result<(), BundleError> {
        // Caller guarantees the next byte is the opening quote.
        self.take(1, out)?;
        let mut escaped = false;
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                return Err(self.syntax("unterminated string"));
            }
            let mut end = None;
            for (i, &b) in chunk.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    end = Some(i);
                    break;
                }
            }
            let n = end.map_or(chunk.len(), |i| i + 1);
            self.take(n, out)?;
            if end.is_some() {
                return Ok(());
            }
        }
    }

    fn capture_container(&mut self, out: &mut Vec<u8>) -> Result<(), BundleError> {
        let mut stack: Vec<u8> = Vec::new();
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                return Err(self.syntax("unexpected end of input inside a value"));
            }
            let mut i = 0;
            let mut done = false;
            let mut at_string = false;
            let mut bad = None;
            while i < chunk.len() {
                let b = chunk[i];
                match b {
                    b'{' | b'[' => {
                        if stack.len() >= 256 {
                            bad = Some("nesting deeper than 256 levels");
                            break;
                        }
                        stack.push(if b == b'{' { b'}' } else { b']' });
                    }
                    b'}' | b']' => {
                        if stack.pop() != Some(b) {
                            bad = Some("mismatched bracket");
                            break;
                        }
                        if stack.is_empty() {
                            i += 1;
                            done = true;
                            break;
                        }
                    }
                    b'"' => {
                        at_string = true;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
            if let Some(message) = bad {
                return Err(self.syntax(message));
            }
            self.take(i, out)?;
            if done {
                return Ok(());
            }
            if at_string {
                self.capture_string(out)?;
            }
        }
    }

    fn capture_scalar(&mut self, out: &mut Vec<u8>) -> Result<(), BundleError> {
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                return Ok(());
            }
            let end = chunk.iter().position(|b| {
                matches!(
                    b,
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b':' | b'"' | b'{' | b'['
                )
            });
            let n = end.unwrap_or(chunk.len());
            self.take(n, out)?;
            if end.is_some() {
                return Ok(());
            }
        }
    }
}

/// Header fields written at the top of an exported bundle.
#[derive(Debug, Clone, Serialize)]
pub struct ExportHeader<'a> {
    /// Kernel id.
    pub kernel_id: &'a str,
    /// Kernel variant.
    pub variant: &'a str,
    /// Export time.
    pub exported_at_ms: u64,
    /// First seq of a range export (omitted for a whole-chain export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// `prev_hash` of the first entry of a range export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_hash: Option<&'a str>,
    /// Hash of the last entry of the export (or its anchor when empty).
    pub root_hash: &'a str,
}

/// Streams a bundle out, one entry per line.
pub struct BundleWriter<W: Write> {
    out: W,
    count: u64,
}

impl<W: Write> BundleWriter<W> {
    /// Writes the header and opens the entry list.
    pub fn start(mut out: W, header: &ExportHeader<'_>) -> io::Result<Self> {
        let head = serde_json::to_string(header)?;
        // Re-open the header object to append the entry list to it.
        out.write_all(&head.as_bytes()[..head.len() - 1])?;
        out.write_all(b",\"ledger_entries\":[")?;
        Ok(BundleWriter { out, count: 0 })
    }

    /// Appends one entry.
    pub fn entry(&mut self, entry: &Entry) -> io::Result<()> {
        self.out
            .write_all(if self.count == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut self.out, entry)?;
        self.count += 1;
        Ok(())
    }

    /// Closes the entry list and the object; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Renders a whole bundle held in memory (small exports and tests).
pub fn to_vec(header: &ExportHeader<'_>, entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut w = BundleWriter::start(Vec::new(), header)?;
    for e in entries {
        w.entry(e)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<(BundleHeader, Vec<String>), BundleError> {
        let mut raws = Vec::new();
        let header = read_bundle(text.as_bytes(), |raw| {
            raws.push(String::from_utf8(raw).unwrap())
        })?;
        Ok((header, raws))
    }

    #[test]
    fn reads_entries_in_any_key_order() {
        let text = r#" { "ledger_entries" : [ {"a": "x]}\"y", "b": [1, {"c": 2}]} , {} ], "root_hash": "ab", "from_seq": 3, "extra": {"z": [1]} } "#;
        let (header, raws) = read(text).unwrap();
        assert_eq!(raws, vec![r#"{"a": "x]}\"y", "b": [1, {"c": 2}]}"#, "{}"]);
        assert_eq!(header.root_hash.as_deref(), Some("ab"));
        assert_eq!(header.from_seq, Some(3));
    }

    #[test]
    fn small_buffers_do_not_change_the_result() {
        let text =
            r#"{"kernel_id":"k","ledger_entries":[{"s":"a\\\"b"},{"n":[[],{}]}],"root_hash":null}"#;
        let mut raws = Vec::new();
        let reader = io::BufReader::with_capacity(1, text.as_bytes());
        let header = read_bundle(reader, |raw| raws.push(raw)).unwrap();
        assert_eq!(header.kernel_id.as_deref(), Some("k"));
        assert_eq!(raws.len(), 2);
        assert_eq!(raws[0], br#"{"s":"a\\\"b"}"#);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        for text in [
            "",
            "[]",
            "{",
            r#"{"ledger_entries": [}"#,
            r#"{"ledger_entries": [{]}"#,
            r#"{"ledger_entries": []} x"#,
            r#"{"root_hash": "a"}"#,
            r#"{"root_hash": 5, "ledger_entries": []}"#,
            r#"{"ledger_entries": [{"a": "unterminated}]}"#,
        ] {
            assert!(read(text).is_err(), "{text:?} should be rejected");
        }
    }
}
