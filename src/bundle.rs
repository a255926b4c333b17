//! Evidence bundles: streamed reading and writing of the public JSON format.
//!
//! A bundle is `{"kernel_id", "variant", "exported_at_ms", "root_hash",
//! "ledger_entries": [entry, …]}`, optionally with `from_seq` and
//! `anchor_hash` for a range of a longer chain (docs/api.md, `GET /v1/evidence`). Bundles can be
//! many gigabytes, so neither direction ever holds the entry list. The reader
//! fills fixed-size blocks from its input and frames whole entries inside
//! them (whatever the key order of the bundle), handing out each block with
//! the byte ranges of its entries: no entry is copied, and an entry cut by the
//! end of a block is carried into the next one. The writer emits one entry per
//! line as it is given them.

use std::io::{self, Read, Write};
use std::ops::Range;

use serde::Serialize;
use serde_json::Value;

use crate::entry::Entry;

/// The largest single JSON value (one entry, or one header field) accepted.
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// Size of the blocks the reader fills (a block grows only to hold one
/// larger value).
pub const BLOCK_BYTES: usize = 256 * 1024;

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

/// A run of consecutive entries, as the raw bytes they were read from.
#[derive(Debug, Default)]
pub struct EntryBlock {
    /// The bytes read; only the ranges in `entries` are meaningful.
    pub bytes: Vec<u8>,
    /// Where each entry's JSON value lies in `bytes`, in bundle order.
    pub entries: Vec<Range<usize>>,
}

impl EntryBlock {
    /// The raw JSON of each entry, in order.
    pub fn raw_entries(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|r| &self.bytes[r.clone()])
    }
}

/// Reads a bundle from `input`, calling `on_entry` with the raw JSON bytes of
/// each entry in order, and returns the header once the whole input is read.
pub fn read_bundle<R: Read>(
    input: R,
    mut on_entry: impl FnMut(Vec<u8>),
) -> Result<BundleHeader, BundleError> {
    read_bundle_blocks(input, |mut block| {
        for raw in block.raw_entries() {
            on_entry(raw.to_vec());
        }
        block.entries.clear();
        block
    })
}

/// Reads a bundle from `input`, handing `on_block` each block of whole
/// entries in order, and returns the header once the whole input is read.
///
/// `on_block` returns a block for the reader to fill next: the one it was
/// given once done with it, a recycled one, or `EntryBlock::default()` for a
/// new one. Only the blocks in the caller's hands and the one being filled
/// exist, so memory does not grow with the bundle.
pub fn read_bundle_blocks<R: Read>(
    input: R,
    on_block: impl FnMut(EntryBlock) -> EntryBlock,
) -> Result<BundleHeader, BundleError> {
    read_blocks_sized(input, BLOCK_BYTES, on_block)
}

fn read_blocks_sized<R: Read>(
    input: R,
    block_bytes: usize,
    on_block: impl FnMut(EntryBlock) -> EntryBlock,
) -> Result<BundleHeader, BundleError> {
    let mut s = Scanner {
        input,
        on_block,
        block_bytes,
        block: EntryBlock {
            bytes: vec![0; block_bytes],
            entries: Vec::new(),
        },
        end: 0,
        pos: 0,
        base: 0,
        eof: false,
        carry: Vec::new(),
    };
    let mut header = BundleHeader::default();
    s.expect(b'{', "a bundle must be a JSON object")?;
    let mut first = true;
    loop {
        let b = s.peek_non_ws()?;
        if b == Some(b'}') {
            s.pos += 1;
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
                    s.pos += 1;
                    break;
                }
                if !first_entry {
                    s.expect(b',', "expected ',' or ']' between entries")?;
                }
                first_entry = false;
                let entry = s.value()?;
                s.block.entries.push(entry);
            }
            // Hand out the last entries now: the header may follow them.
            if !s.block.entries.is_empty() {
                s.ship(s.pos);
            }
        } else {
            let raw = s.value()?;
            let value: Value = serde_json::from_slice(&s.block.bytes[raw])
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

/// A structural scanner over blocks of the input: finds value boundaries,
/// leaves parsing to serde_json (or to the verifier's own entry reader).
struct Scanner<R, F> {
    input: R,
    on_block: F,
    block_bytes: usize,
    /// The block being filled; `block.bytes[..end]` holds input.
    block: EntryBlock,
    end: usize,
    /// Next byte to scan, in `block.bytes`.
    pos: usize,
    /// Input offset of `block.bytes[0]`.
    base: u64,
    eof: bool,
    /// The start of an entry cut by the end of a block, on its way to the next.
    carry: Vec<u8>,
}

impl<R: Read, F: FnMut(EntryBlock) -> EntryBlock> Scanner<R, F> {
    fn syntax(&self, message: &str) -> BundleError {
        BundleError::Syntax {
            message: message.to_owned(),
            offset: self.base + self.pos as u64,
        }
    }

    /// Hands out the block with its finished entries and continues in a new
    /// one that starts with the bytes from `keep` on.
    fn ship(&mut self, keep: usize) {
        self.carry.clear();
        self.carry
            .extend_from_slice(&self.block.bytes[keep..self.end]);
        let full = std::mem::take(&mut self.block);
        self.block = (self.on_block)(full);
        self.block.entries.clear();
        let want = self.block_bytes.max(self.carry.len());
        if self.block.bytes.len() < want {
            self.block.bytes.resize(want, 0);
        }
        self.block.bytes[..self.carry.len()].copy_from_slice(&self.carry);
        self.end = self.carry.len();
        self.base += keep as u64;
        self.pos -= keep;
    }

    /// Reads more input, keeping the bytes from `keep` on (they move to the
    /// front of the block, and `pos` with them). Returns whether anything new
    /// was read (false at the end of the input).
    fn fill(&mut self, keep: usize) -> Result<bool, BundleError> {
        if self.eof {
            return Ok(false);
        }
        if !self.block.entries.is_empty() {
            self.ship(keep);
        } else if keep > 0 {
            self.block.bytes.copy_within(keep..self.end, 0);
            self.end -= keep;
            self.base += keep as u64;
            self.pos -= keep;
        }
        if self.end == self.block.bytes.len() {
            // One value fills the whole block: grow it, within the limit.
            if self.end > MAX_VALUE_BYTES {
                return Err(self.syntax("a single value is larger than 64 MiB"));
            }
            let grown = (self.end * 2).clamp(16, MAX_VALUE_BYTES + 1);
            self.block.bytes.resize(grown, 0);
        }
        let before = self.end;
        while self.end < self.block.bytes.len() {
            match self.input.read(&mut self.block.bytes[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.end > before)
    }

    fn peek_non_ws(&mut self) -> Result<Option<u8>, BundleError> {
        loop {
            while let Some(&b) = self.block.bytes[..self.end].get(self.pos) {
                if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                    return Ok(Some(b));
                }
                self.pos += 1;
            }
            if !self.fill(self.pos)? {
                return Ok(None);
            }
        }
    }

    fn expect(&mut self, byte: u8, message: &str) -> Result<(), BundleError> {
        match self.peek_non_ws()? {
            Some(b) if b == byte => {
                self.pos += 1;
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
        let raw = self.value()?;
        serde_json::from_slice(&self.block.bytes[raw])
            .map_err(|e| self.syntax(&format!("bad key: {e}")))
    }

    /// Finds the next complete JSON value (of any kind), reading as much
    /// input as it needs; returns where it lies in the current block.
    fn value(&mut self) -> Result<Range<usize>, BundleError> {
        let Some(first) = self.peek_non_ws()? else {
            return Err(self.syntax("unexpected end of input"));
        };
        if matches!(first, b'}' | b']' | b',' | b':') {
            return Err(self.syntax("expected a value"));
        }
        loop {
            let start = self.pos;
            match value_end(&self.block.bytes[..self.end], start) {
                Ok(Some(end)) => {
                    self.pos = end;
                    return Ok(start..end);
                }
                Ok(None) => {
                    if !self.fill(start)? {
                        if !matches!(first, b'"' | b'{' | b'[') {
                            // A number or literal may end with the input.
                            let range = self.pos..self.end;
                            self.pos = self.end;
                            return Ok(range);
                        }
                        self.pos = self.end;
                        return Err(self.syntax(if first == b'"' {
                            "unterminated string"
                        } else {
                            "unexpected end of input inside a value"
                        }));
                    }
                }
                Err((message, at)) => {
                    self.pos = at;
                    return Err(self.syntax(message));
                }
            }
        }
    }
}

/// Where the JSON value starting at `buf[start]` ends (exclusive); `None`
/// when `buf` ends first. Only brackets and strings are checked: the bytes
/// in between are left for the parser. An error names its position.
pub(crate) fn value_end(buf: &[u8], start: usize) -> Result<Option<usize>, (&'static str, usize)> {
    match buf[start] {
        b'"' => Ok(string_end(buf, start + 1).map(|quote| quote + 1)),
        b'{' | b'[' => container_end(buf, start),
        _ => Ok(buf[start..]
            .iter()
            .position(|b| {
                matches!(
                    b,
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b':' | b'"' | b'{' | b'['
                )
            })
            .map(|n| start + n)),
    }
}

/// Bytes that matter to framing outside strings.
const STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

fn container_end(buf: &[u8], start: usize) -> Result<Option<usize>, (&'static str, usize)> {
    // The closing bracket expected at each open level.
    let mut stack = [0u8; 256];
    let mut depth = 0;
    let mut i = start;
    loop {
        while i < buf.len() && !STRUCTURAL[buf[i] as usize] {
            i += 1;
        }
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        match b {
            b'"' => match string_end(buf, i + 1) {
                Some(quote) => i = quote + 1,
                None => return Ok(None),
            },
            b'{' | b'[' => {
                if depth == stack.len() {
                    return Err(("nesting deeper than 256 levels", i));
                }
                stack[depth] = if b == b'{' { b'}' } else { b']' };
                depth += 1;
                i += 1;
            }
            _ => {
                if depth == 0 || stack[depth - 1] != b {
                    return Err(("mismatched bracket", i));
                }
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return Ok(Some(i));
                }
            }
        }
    }
}

/// The index of the quote that closes a string whose text starts at
/// `buf[from]`; `None` when `buf` ends first.
pub(crate) fn string_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        i = quote_or_backslash(buf, i);
        match buf.get(i)? {
            b'"' => return Some(i),
            _ => i += 2, // an escape: the next byte is never the end
        }
    }
}

/// Each byte of `x` that is zero gets its high bit set in the result; bits
/// above the lowest such byte may be set spuriously (borrows), never below.
pub(crate) const fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080
}

/// Every byte of a word set to `b`.
pub(crate) const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// The first index from `i` holding `"` or `\` (or `buf.len()`), eight
/// bytes at a time: strings are most of a bundle.
fn quote_or_backslash(buf: &[u8], mut i: usize) -> usize {
    while let Some(word) = buf.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let hits = zero_bytes(w ^ splat(b'"')) | zero_bytes(w ^ splat(b'\\'));
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < buf.len() && buf[i] != b'"' && buf[i] != b'\\' {
        i += 1;
    }
    i
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
        let texts = [
            r#"{"kernel_id":"k","ledger_entries":[{"s":"a\\\"b"},{"n":[[],{}]}],"root_hash":null}"#,
            r#" { "entries" : [ 12 , "x\"]" , {"a": "x]}\"y", "b": [1, {"c": 2}]}, null, -1.5e3 ] , "from_seq" : 7 } "#,
            r#"{"root_hash":"r","ledger_entries":[],"extra":{"deep":[[["]"]]]}}"#,
        ];
        for text in texts {
            let whole = read(text).unwrap();
            for size in 1..48 {
                let mut raws = Vec::new();
                let mut blocks = 0;
                let header = read_blocks_sized(text.as_bytes(), size, |mut block| {
                    blocks += 1;
                    raws.extend(
                        block
                            .raw_entries()
                            .map(|r| String::from_utf8(r.to_vec()).unwrap()),
                    );
                    block.entries.clear();
                    block
                })
                .unwrap();
                assert_eq!((header, raws), whole, "block size {size}: {text}");
                // Entries were cut by block ends and carried over.
                if size == 1 && whole.1.len() > 1 {
                    assert!(blocks > 1, "{text}");
                }
            }
        }
    }

    #[test]
    fn errors_name_the_same_offset_whatever_the_block_size() {
        let text = r#"{"ledger_entries": [{"a": 1}, {"b": 2]}]}"#;
        let offset = |size| match read_blocks_sized(text.as_bytes(), size, |b| b) {
            Err(BundleError::Syntax { offset, .. }) => offset,
            other => panic!("{other:?}"),
        };
        let want = offset(BLOCK_BYTES);
        assert_eq!(want, text.find("]}]").unwrap() as u64);
        for size in 1..40 {
            assert_eq!(offset(size), want, "block size {size}");
        }
    }

    #[test]
    fn a_value_over_the_limit_is_refused() {
        let mut text = String::from(r#"{"ledger_entries": ["#);
        text.push('"');
        text.push_str(&"x".repeat(MAX_VALUE_BYTES + 10));
        text.push_str("\"]}");
        let err = read(&text).unwrap_err().to_string();
        assert!(err.contains("larger than 64 MiB"), "{err}");
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
