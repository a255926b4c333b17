//! Server-Sent Events framing, as far as relaying a stream needs it: split
//! bytes into events (each kept as the bytes received, with its `data`
//! joined), and rewrite one event's data.
//!
//! Events end at a blank line (`\n\n`, `\r\n\r\n` or `\r\r`); `data:` lines
//! are joined with `\n`, one leading space after the colon dropped, as the
//! HTML standard's event-stream interpretation says.

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event as received, blank line included.
    pub raw: Vec<u8>,
    /// Its data (`None` for an event without `data:` lines, e.g. a comment).
    pub data: Option<String>,
}

impl Event {
    /// The same event with `data` instead of its data (other fields kept).
    pub fn with_data(&self, data: &str) -> Vec<u8> {
        let text = String::from_utf8_lossy(&self.raw);
        let mut out = String::new();
        for line in lines(&text) {
            if !(line == "data" || line.starts_with("data:") || line.is_empty()) {
                out.push_str(line);
                out.push('\n');
            }
        }
        for line in data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out.into_bytes()
    }
}

/// Lines of an event, any line ending.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .flat_map(|l| l.split('\r'))
        .filter(|l| !l.is_empty())
}

fn parse(raw: Vec<u8>) -> Event {
    let text = String::from_utf8_lossy(&raw);
    let mut data: Option<String> = None;
    for line in lines(&text) {
        let value = if line == "data" {
            Some("")
        } else {
            line.strip_prefix("data:")
                .map(|v| v.strip_prefix(' ').unwrap_or(v))
        };
        if let Some(v) = value {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_owned()),
            }
        }
    }
    Event { raw, data }
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
}

impl Splitter {
    /// Adds bytes; answers the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = event_end(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end).collect();
            events.push(parse(raw));
        }
        events
    }

    /// What is left when the stream ends (an event without its blank line).
    pub fn finish(&mut self) -> Option<Event> {
        let raw = std::mem::take(&mut self.buf);
        (!raw.is_empty()).then(|| parse(raw))
    }
}

/// The end (exclusive) of the first complete event in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        // A line ends at \r\n, \n or \r; an empty line after it ends the event.
        let eol = match buf[i] {
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            b'\r' if i + 1 == buf.len() => return None, // a \n may follow
            b'\r' | b'\n' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let next = i + eol;
        match (buf.get(next), buf.get(next + 1)) {
            (Some(b'\n'), _) => return Some(next + 1),
            (Some(b'\r'), Some(b'\n')) => return Some(next + 2),
            (Some(b'\r'), None) => return None,
            (Some(b'\r'), Some(_)) => return Some(next + 1),
            _ => i = next,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_at_blank_lines_in_any_chunking() {
        let stream = b"id: 1\nevent: message\ndata: {\"a\":1}\n\n: comment\n\ndata: x\r\ndata: y\r\n\r\ndata:z\r\rdata: tail";
        for chunk in [1, 2, 3, 7, stream.len()] {
            let mut s = Splitter::default();
            let mut events = Vec::new();
            for part in stream.chunks(chunk) {
                events.extend(s.push(part));
            }
            let tail = s.finish();
            let data: Vec<Option<String>> = events.iter().map(|e| e.data.clone()).collect();
            assert_eq!(
                data,
                vec![
                    Some("{\"a\":1}".into()),
                    None,
                    Some("x\ny".into()),
                    Some("z".into())
                ],
                "chunk {chunk}"
            );
            let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
            assert_eq!(&raw[..], &stream[..stream.len() - 10], "chunk {chunk}");
            assert_eq!(tail.unwrap().data.as_deref(), Some("tail"));
        }
    }

    #[test]
    fn rewriting_keeps_the_other_fields() {
        let mut s = Splitter::default();
        let e = s
            .push(b"id: 7\nevent: message\ndata: {\"old\":1}\ndata: more\n\n")
            .remove(0);
        assert_eq!(
            String::from_utf8(e.with_data("{\"new\":2}")).unwrap(),
            "id: 7\nevent: message\ndata: {\"new\":2}\n\n"
        );
    }
}
