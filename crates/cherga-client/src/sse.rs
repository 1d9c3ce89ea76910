//! A server-sent events parser (the `text/event-stream` format of the HTML
//! standard), fed with bytes as they arrive and giving back whole events.
//!
//! It keeps only what the standard says a client keeps: the `id`, `event` and
//! `data` fields of the event being read. Comments (lines starting with `:`, the
//! server's heartbeats) and unknown fields are skipped.
//!
//! **Invariant:** a line is only parsed once its end has arrived, so an event cut
//! across chunks (or a multi-byte character cut across them) is read whole.

/// One event of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id` field, if the event had one.
    pub id: Option<String>,
    /// The `event` field; `message` when absent, as the standard says.
    pub event: String,
    /// The `data` lines, joined by `\n`.
    pub data: String,
}

/// Turns chunks of a `text/event-stream` body into [`SseEvent`]s.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    /// `None` until a `data` line arrives: an event without one is not dispatched.
    data: Option<String>,
    /// The previous chunk ended with `\r`, so a `\n` starting this one ends nothing.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the body; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let mut start = 0;
        let mut bytes = chunk;
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            if byte == b'\n' || byte == b'\r' {
                self.partial.extend_from_slice(&bytes[start..i]);
                let line = std::mem::take(&mut self.partial);
                if let Some(event) = self.line(&line) {
                    events.push(event);
                }
                if byte == b'\r' {
                    if bytes.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    } else if i + 1 == bytes.len() {
                        self.after_cr = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.partial.extend_from_slice(&bytes[start..]);
        events
    }

    /// Handles one complete line; a blank line dispatches the event read so far.
    fn line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            // The id is kept for the next events, as the standard's "last event
            // ID buffer" is; it is reported with each event that follows.
            return data.map(|data| SseEvent {
                id: self.id.clone(),
                event: event.unwrap_or_else(|| "message".to_owned()),
                data,
            });
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            // An id with a NUL is ignored, as the standard says.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_chunks(text: &str, size: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        text.as_bytes().chunks(size).flat_map(|chunk| parser.push(chunk)).collect()
    }

    fn event(id: Option<&str>, name: &str, data: &str) -> SseEvent {
        SseEvent { id: id.map(str::to_owned), event: name.to_owned(), data: data.to_owned() }
    }

    #[test]
    fn reads_events_cut_anywhere() {
        let text = ": heartbeat\n\nid: 1\nevent: acked\ndata: {\"a\":1}\n\nid: 2\ndata: x\ndata: y\n\n";
        let expected = vec![event(Some("1"), "acked", "{\"a\":1}"), event(Some("2"), "message", "x\ny")];
        for size in 1..=text.len() {
            assert_eq!(parse_in_chunks(text, size), expected, "chunks of {size} bytes");
        }
    }

    #[test]
    fn crlf_and_cr_end_lines_too() {
        for text in ["id: 7\r\ndata: é\r\n\r\n", "id: 7\rdata: é\r\r"] {
            for size in 1..=text.len() {
                assert_eq!(
                    parse_in_chunks(text, size),
                    vec![event(Some("7"), "message", "é")],
                    "{text:?}/{size}"
                );
            }
        }
    }

    #[test]
    fn comments_fields_without_data_and_unfinished_events_give_nothing() {
        assert_eq!(parse_in_chunks(":x\nevent: e\n\nretry: 5\n\ndata: cut", 3), vec![]);
    }

    #[test]
    fn the_id_carries_over_and_an_error_event_has_none_of_its_own() {
        let text = "id: 4\ndata: a\n\nevent: error\ndata: {}\n\n";
        assert_eq!(
            parse_in_chunks(text, 5),
            vec![event(Some("4"), "message", "a"), event(Some("4"), "error", "{}")]
        );
    }
}
