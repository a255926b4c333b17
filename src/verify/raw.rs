//! Hashing an entry straight from its bytes in a bundle: the fast path of
//! verification.
//!
//! Nearly every entry of a bundle is one we or the Python library wrote: an
//! object of the known keys whose strings are printable ASCII without
//! escapes. The canonical JSON of such a string is its text in the bundle,
//! byte for byte, so the hash preimage of the entry can be assembled from
//! slices of the bundle, in sorted key order, without building any value.
//! Strings with escapes or non-ASCII text are decoded by serde_json and
//! re-encoded canonically.
//!
//! This reader only *accepts* what it fully understands, in any key order and
//! with any whitespace. Anything else (an unknown or repeated key, a null or a
//! number where a string belongs, a float, a negative or oversized integer,
//! a malformed byte) makes it decline, and the caller falls back to the
//! general serde path, which decides and words the errors. Declining is
//! always safe; accepting happens only where the general path would compute
//! the same hash and find the same problems.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::bundle::{splat, string_end, value_end, zero_bytes};
use crate::chain::{ChainHash, HashedLink, decode_hex};

/// Buffers a worker reuses from entry to entry, so that reading an entry
/// allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// The hash preimage being assembled.
    preimage: Vec<u8>,
    /// The decoded text of this entry's strings that are not plain.
    decoded: String,
    /// Canonical forms written for this entry (lists, decoded strings).
    canon: String,
}

/// A string value: printable ASCII without escapes, kept as written with its
/// quotes (which is its canonical JSON), or anything else, decoded into
/// [`Scratch::decoded`] at this range.
#[derive(Clone, Copy)]
enum Str<'a> {
    Plain(&'a [u8]),
    Decoded(usize, usize),
}

impl<'a> Str<'a> {
    /// The string's UTF-8 bytes.
    fn text<'s>(self, decoded: &'s str) -> &'s [u8]
    where
        'a: 's,
    {
        match self {
            Str::Plain(quoted) => &quoted[1..quoted.len() - 1],
            Str::Decoded(a, b) => &decoded.as_bytes()[a..b],
        }
    }

    /// Appends the canonical JSON of the string to `canon`.
    fn canonical(self, decoded: &str, canon: &mut String) {
        match self {
            Str::Plain(quoted) => {
                canon.push_str(std::str::from_utf8(quoted).expect("plain strings are ASCII"))
            }
            Str::Decoded(a, b) => crate::canonical::write_str(canon, &decoded[a..b]),
        }
    }

    fn hash(self, decoded: &str) -> ChainHash {
        match self {
            Str::Plain(_) => match decode_hex(self.text(decoded)) {
                Some(d) => ChainHash::Digest(d),
                None => ChainHash::Other(String::from_utf8_lossy(self.text(decoded)).into_owned()),
            },
            Str::Decoded(a, b) => ChainHash::from_text(&decoded[a..b]),
        }
    }
}

/// One field's value, as read.
#[derive(Clone, Copy)]
enum Slot<'a> {
    Absent,
    Null,
    Str(Str<'a>),
    /// A non-negative integer that fits a `u64`, in its canonical digits.
    Uint(&'a [u8], u64),
    /// `permit_denial_reasons`: the canonical JSON of a list of strings, in
    /// [`Scratch::canon`] at this range (empty for an empty list).
    List(usize, usize),
    /// `payload`: any JSON value, checked later by serde_json.
    Json(&'a [u8]),
}

/// What a field may hold (anything else declines).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A string (the required text fields and hashes).
    Str,
    /// A string or null.
    OptStr,
    /// A non-negative integer.
    Uint,
    /// A non-negative integer or null.
    OptUint,
    /// Null or a list of strings.
    OptList,
    /// Any JSON value, or null.
    OptJson,
}

/// A field of an entry: its name as a quoted JSON key, the canonical text
/// written before its value in the hash preimage, what it may hold, and
/// whether the general path requires it.
struct Field {
    quoted: &'static str,
    prefix: &'static str,
    kind: Kind,
    required: bool,
}

macro_rules! field {
    ($name:literal, $separator:literal, $kind:ident, $required:literal) => {
        Field {
            quoted: concat!("\"", $name, "\""),
            prefix: concat!($separator, "\"", $name, "\":"),
            kind: Kind::$kind,
            required: $required,
        }
    };
}

/// The 19 hashed fields in canonical (sorted) order, then the others.
const FIELDS: [Field; 23] = [
    field!("actor", "{", Str, true),
    field!("decision", ",", Str, true),
    field!("error", ",", OptStr, false),
    field!("evidence_hash", ",", OptStr, false),
    field!("intent", ",", Str, true),
    field!("params_hash", ",", OptStr, false),
    field!("permit_denial_reasons", ",", OptList, false),
    field!("permit_digest", ",", OptStr, false),
    field!("permit_issuer", ",", OptStr, false),
    field!("permit_max_executions", ",", OptUint, false),
    field!("permit_nonce", ",", OptStr, false),
    field!("permit_subject", ",", OptStr, false),
    field!("permit_verification", ",", OptStr, false),
    field!("proposal_hash", ",", OptStr, false),
    field!("request_id", ",", Str, true),
    field!("state_from", ",", Str, true),
    field!("state_to", ",", Str, true),
    field!("tool_name", ",", OptStr, false),
    field!("ts_ms", ",", Uint, true),
    // Not hashed (their prefix is unused).
    field!("ledger_seq", "", Uint, true),
    field!("prev_hash", "", Str, true),
    field!("entry_hash", "", Str, true),
    field!("payload", "", OptJson, false),
];

const HASHED: usize = 19;
const PARAMS_HASH: usize = 5;
const LEDGER_SEQ: usize = 19;
const PREV_HASH: usize = 20;
const ENTRY_HASH: usize = 21;
const PAYLOAD: usize = 22;

/// The key order of the entries we and the Python library write, as
/// [`FIELDS`] indexes: each key is first compared with the one expected next.
const WRITTEN_ORDER: [usize; 23] = [
    LEDGER_SEQ, PREV_HASH, ENTRY_HASH, 18, 14, 0, 4, 1, 15, 16, 17, 5, 3, 2, 7, 12, 6, 13, 10, 8,
    11, 9, PAYLOAD,
];

/// The [`FIELDS`] index of the key at the reader's position, trying first
/// the one at `order` in [`WRITTEN_ORDER`] (a byte comparison, quotes
/// included, with no scan of the string); `order` moves past the key found.
fn next_key(r: &mut Reader<'_, '_>, order: &mut usize) -> Option<usize> {
    if let Some(&guess) = WRITTEN_ORDER.get(*order) {
        let quoted = FIELDS[guess].quoted.as_bytes();
        if let Some(bytes) = r.b.get(r.i..r.i + quoted.len())
            && same(bytes, quoted)
        {
            r.i += quoted.len();
            *order += 1;
            return Some(guess);
        }
    }
    let Str::Plain(quoted) = r.string()? else {
        return None;
    };
    let index = FIELDS.iter().position(|f| f.quoted.as_bytes() == quoted)?;
    *order = WRITTEN_ORDER.iter().position(|&i| i == index)? + 1;
    Some(index)
}

/// Verifies one entry from its raw JSON, or `None` when it is not plainly a
/// well-formed entry (the caller then takes the general path).
pub(super) fn link(raw: &[u8], scratch: &mut Scratch) -> Option<HashedLink> {
    scratch.decoded.clear();
    scratch.canon.clear();
    let slots = read_entry(raw, &mut scratch.decoded, &mut scratch.canon)?;
    let Scratch {
        preimage,
        decoded,
        canon,
    } = scratch;
    let decoded = &*decoded;
    let Slot::Str(prev_hash) = slots[PREV_HASH] else {
        return None;
    };
    let Slot::Str(entry_hash) = slots[ENTRY_HASH] else {
        return None;
    };
    let Slot::Uint(_, seq) = slots[LEDGER_SEQ] else {
        return None;
    };
    let mut problems = Vec::new();
    if let Slot::Json(payload) = slots[PAYLOAD] {
        // Invalid JSON here is the general path's to report.
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let params_hash = match slots[PARAMS_HASH] {
            Slot::Str(s) => Some(s.text(decoded)),
            _ => None,
        };
        match crate::canonical::sha256_of(&value) {
            Ok(h) if params_hash == Some(h.as_bytes()) => {}
            Ok(_) => problems.push("payload does not match params_hash".to_owned()),
            Err(e) => problems.push(format!("payload cannot be hashed: {e}")),
        }
    }

    // sha256_hex(prev_hash + ":" + canonical(the 19 fields))
    preimage.clear();
    preimage.extend_from_slice(prev_hash.text(decoded));
    preimage.push(b':');
    for (slot, field) in slots[..HASHED].iter().zip(&FIELDS) {
        preimage.extend_from_slice(field.prefix.as_bytes());
        match *slot {
            Slot::Absent | Slot::Null => preimage.extend_from_slice(b"null"),
            Slot::Str(Str::Plain(quoted)) => preimage.extend_from_slice(quoted),
            Slot::Str(s) => {
                let start = canon.len();
                s.canonical(decoded, canon);
                preimage.extend_from_slice(&canon.as_bytes()[start..]);
            }
            Slot::Uint(digits, _) => preimage.extend_from_slice(digits),
            // An empty list hashes as null (as the Python library writes it).
            Slot::List(a, b) if a == b => preimage.extend_from_slice(b"null"),
            Slot::List(a, b) => preimage.extend_from_slice(&canon.as_bytes()[a..b]),
            Slot::Json(_) => return None, // no hashed field holds any JSON
        }
    }
    preimage.push(b'}');
    let computed: [u8; 32] = Sha256::digest(&preimage[..]).into();

    Some(HashedLink {
        seq: Some(seq),
        prev_hash: Some(prev_hash.hash(decoded)),
        entry_hash: Some(entry_hash.hash(decoded)),
        computed_hash: Some(ChainHash::Digest(computed)),
        problems,
    })
}

/// The fields of an entry object, by [`FIELDS`] index.
fn read_entry<'a>(
    raw: &'a [u8],
    decoded: &mut String,
    canon: &mut String,
) -> Option<[Slot<'a>; 23]> {
    let mut r = Reader {
        b: raw,
        i: 0,
        decoded,
        canon,
    };
    let mut slots = [Slot::Absent; 23];
    r.ws();
    r.eat(b'{')?;
    r.ws();
    if r.peek()? == b'}' {
        return None; // no fields: not an entry
    }
    let mut order = 0;
    loop {
        let index = next_key(&mut r, &mut order)?;
        if !matches!(slots[index], Slot::Absent) {
            return None; // repeated key
        }
        r.ws();
        r.eat(b':')?;
        r.ws();
        slots[index] = r.value(FIELDS[index].kind)?;
        r.ws();
        match r.next()? {
            b',' => r.ws(),
            b'}' => break,
            _ => return None,
        }
    }
    r.ws();
    if r.i != raw.len() {
        return None;
    }
    let complete = FIELDS
        .iter()
        .zip(&slots)
        .all(|(field, slot)| !field.required || !matches!(slot, Slot::Absent));
    complete.then_some(slots)
}

/// Byte-slice equality for short keys, without a call to `memcmp`.
fn same(a: &[u8], b: &[u8]) -> bool {
    fn word(s: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
    }
    fn half(s: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"))
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0..4 => a == b,
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => {
            let mut at = 0;
            while at + 8 < n {
                if word(a, at) != word(b, at) {
                    return false;
                }
                at += 8;
            }
            word(a, n - 8) == word(b, n - 8)
        }
    }
}

/// A cursor over the bytes of one entry.
struct Reader<'a, 's> {
    b: &'a [u8],
    i: usize,
    decoded: &'s mut String,
    canon: &'s mut String,
}

impl<'a> Reader<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        same(self.b.get(self.i..end)?, word).then(|| self.i = end)
    }

    fn value(&mut self, kind: Kind) -> Option<Slot<'a>> {
        let first = self.peek()?;
        if first == b'n' && !matches!(kind, Kind::Str | Kind::Uint) {
            self.literal(b"null")?;
            return Some(Slot::Null);
        }
        match kind {
            Kind::Str | Kind::OptStr => Some(Slot::Str(self.string()?)),
            Kind::Uint | Kind::OptUint => self.uint(),
            Kind::OptList => {
                self.eat(b'[')?;
                self.ws();
                let start = self.canon.len();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(Slot::List(start, start));
                }
                loop {
                    let item = self.string()?;
                    self.canon
                        .push(if self.canon.len() == start { '[' } else { ',' });
                    item.canonical(self.decoded, self.canon);
                    self.ws();
                    match self.next()? {
                        b',' => self.ws(),
                        b']' => {
                            self.canon.push(']');
                            return Some(Slot::List(start, self.canon.len()));
                        }
                        _ => return None,
                    }
                }
            }
            Kind::OptJson => {
                let end = value_end(self.b, self.i).ok()??;
                let json = &self.b[self.i..end];
                self.i = end;
                Some(Slot::Json(json))
            }
        }
    }

    /// A JSON string; escapes, control and non-ASCII characters are left to
    /// serde_json (which also validates them).
    fn string(&mut self) -> Option<Str<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let stop = plain_run(self.b, start);
        if self.b.get(stop) == Some(&b'"') {
            self.i = stop + 1;
            return Some(Str::Plain(&self.b[start - 1..self.i]));
        }
        let quote = string_end(self.b, stop)?;
        self.i = quote + 1;
        let text: Cow<'_, str> = serde_json::from_slice(&self.b[start - 1..self.i]).ok()?;
        let at = self.decoded.len();
        self.decoded.push_str(&text);
        Some(Str::Decoded(at, self.decoded.len()))
    }

    /// `0` or `[1-9][0-9]*` within `u64` (anything else declines).
    fn uint(&mut self) -> Option<Slot<'a>> {
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty() || (digits[0] == b'0' && digits.len() > 1) {
            return None;
        }
        // A fraction or exponent makes it a float: decline.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(Slot::Uint(digits, n))
    }
}

/// The first index from `i` whose byte is not printable ASCII, or is `"` or
/// `\` (or `buf.len()`), eight bytes at a time.
fn plain_run(buf: &[u8], mut i: usize) -> usize {
    while let Some(word) = buf.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        // Below 0x20: subtracting 0x20 borrows into the high bit, which the
        // byte did not have. From 0x7f: adding 1 carries into the high bit,
        // or the byte had it. Either may flag bytes above a real hit (by
        // carry or borrow), never below it.
        let control = w.wrapping_sub(splat(0x20)) & !w & splat(0x80);
        let high = (w | w.wrapping_add(splat(0x01))) & splat(0x80);
        let hits = zero_bytes(w ^ splat(b'"')) | zero_bytes(w ^ splat(b'\\')) | control | high;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < buf.len() && matches!(buf[i], 0x20..=0x7e) && buf[i] != b'"' && buf[i] != b'\\' {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_order_names_every_field_once() {
        let mut seen = WRITTEN_ORDER.to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (0..FIELDS.len()).collect::<Vec<_>>());
        let name = |f: &Field| f.quoted.trim_matches('"');
        let names: Vec<&str> = WRITTEN_ORDER.iter().map(|&i| name(&FIELDS[i])).collect();
        let entry = crate::entry::test_chain(1, 0, crate::entry::GENESIS_HASH).remove(0);
        let mut value = serde_json::to_value(&entry).unwrap();
        value["payload"] = serde_json::json!({});
        let written: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names, written);
        let hashed: Vec<&str> = FIELDS[..HASHED].iter().map(name).collect();
        assert_eq!(hashed, crate::entry::HASHED_FIELDS);
        // The prefixes spell out the canonical object of an entry.
        let mut written: String = FIELDS[..HASHED]
            .iter()
            .map(|f| f.prefix)
            .collect::<Vec<_>>()
            .join("null");
        written.push_str("null}");
        let entry = crate::entry::EntryBody::default().seal(0, crate::entry::GENESIS_HASH);
        let mut want = entry.hashed_json();
        for (field, value) in [
            ("decision", "\"\""),
            ("state_from", "\"\""),
            ("state_to", "\"\""),
            ("actor", "null"),
            ("intent", "null"),
            ("request_id", "null"),
            ("ts_ms", "0"),
        ] {
            want = want.replace(
                &format!("\"{field}\":{value}"),
                &format!("\"{field}\":null"),
            );
        }
        assert_eq!(written, want);
    }

    #[test]
    fn short_slices_compare_like_slices() {
        let words: Vec<Vec<u8>> = (0..24)
            .flat_map(|n| {
                let base = vec![b'k'; n];
                let mut last = base.clone();
                if let Some(b) = last.last_mut() {
                    *b = b'x';
                }
                let mut first = base.clone();
                if let Some(b) = first.first_mut() {
                    *b = b'x';
                }
                [base, last, first]
            })
            .collect();
        for a in &words {
            for b in &words {
                assert_eq!(same(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn plain_runs_stop_at_the_first_special_byte() {
        for special in [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xff] {
            for len in 0..40 {
                for at in 0..len {
                    let mut buf = vec![b'a'; len];
                    buf[at] = special;
                    // Bytes after the hit must not matter.
                    for b in buf.iter_mut().skip(at + 1) {
                        *b = 0xff;
                    }
                    assert_eq!(plain_run(&buf, 0), at, "{special:#x} at {at} of {len}");
                }
                let buf = vec![b'~'; len];
                assert_eq!(plain_run(&buf, 0), len);
                let buf = vec![b' '; len];
                assert_eq!(plain_run(&buf, 0), len);
            }
        }
    }
}
