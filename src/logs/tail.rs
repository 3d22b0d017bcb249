//! `webtask logs CONTAINER`: follows a container's stream over HTTP (the
//! SSE endpoint, as any client would) and prints each record as one line:
//! time, level (in colour on a terminal), container-relative message.
//!
//! Owns the client side and the pretty format only.

use std::io::Write;

use bytes::{Buf, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("connecting to the node: {0}")]
    Connect(String),
    #[error("the node answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the stream broke: {0}")]
    Stream(String),
}

/// Where to follow and how.
pub struct Tail {
    /// Base URL of the node, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub container: String,
    /// Replay this many seconds of records first.
    pub since: Option<u64>,
    /// ANSI colours for the level.
    pub colour: bool,
}

impl Tail {
    /// Prints records to `out` until the node ends the stream.
    pub async fn run(&self, out: &mut impl Write) -> Result<(), TailError> {
        let mut url = format!("{}/api/logs/tenant/{}", self.url.trim_end_matches('/'), self.container);
        if let Some(s) = self.since {
            url.push_str(&format!("?since={s}"));
        }
        let uri: http::Uri = url.parse().map_err(|_| TailError::Url(url.clone()))?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|_| TailError::Url(url.clone()))?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let res = client.request(req).await.map_err(|e| TailError::Connect(e.to_string()))?;
        let status = res.status().as_u16();
        let mut body = res.into_body();
        if status != 200 {
            let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            return Err(TailError::Refused { status, body: String::from_utf8_lossy(&bytes).into_owned() });
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| TailError::Stream(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            while let Some(end) = find(&buf, b"\n\n") {
                let event = buf.split_to(end);
                buf.advance(2);
                if let Some(line) = self.event_line(&event) {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
        }
        Ok(())
    }

    /// The printed line of one SSE event; `None` for comments.
    fn event_line(&self, event: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(event).ok()?;
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
        if data.is_empty() {
            return None;
        }
        let record: Value = serde_json::from_str(&data.join("\n")).ok()?;
        Some(pretty(&record, self.colour))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `2026-11-29T08:00:00.123Z INFO  message`, level coloured if asked.
pub fn pretty(record: &Value, colour: bool) -> String {
    let time = record["time"].as_str().unwrap_or("-");
    let level = record["level"].as_u64().unwrap_or(30);
    let (name, code) = match level {
        0..=10 => ("TRACE", "90"),
        11..=20 => ("DEBUG", "34"),
        21..=30 => ("INFO", "32"),
        31..=40 => ("WARN", "33"),
        41..=50 => ("ERROR", "31"),
        _ => ("FATAL", "35"),
    };
    // Fields come from guests: nothing in them may drive the terminal.
    let (time, msg) = (printable(time), printable(record["msg"].as_str().unwrap_or("")));
    let label = if colour { format!("\x1b[{code}m{name:<5}\x1b[0m") } else { format!("{name:<5}") };
    let system = if record["source"] == "system" { " [system]" } else { "" };
    format!("{time} {label}{system} {msg}")
}

/// `text` with control characters shown, not obeyed: a tab stays, a line
/// break is `\n` / `\r` (one record, one line), anything else (escape
/// sequences, backspace, C1 controls) is `\u{..}`.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let r = serde_json::json!({"time": "t\x1b[2J", "level": 30, "msg": "a\tb\nc\rd\x1b]0;owned\x07\u{9b}e\x08"});
        assert_eq!(pretty(&r, false), "t\\u{1b}[2J INFO  a\tb\\nc\\rd\\u{1b}]0;owned\\u{7}\\u{9b}e\\u{8}");
        assert_eq!(printable("plain"), "plain");
    }

    #[test]
    fn pretty_lines_have_time_level_and_message() {
        let r = serde_json::json!({"time": "2026-01-01T00:00:00.000Z", "level": 40, "msg": "careful", "source": "tenant"});
        assert_eq!(pretty(&r, false), "2026-01-01T00:00:00.000Z WARN  careful");
        assert_eq!(pretty(&r, true), "2026-01-01T00:00:00.000Z \x1b[33mWARN \x1b[0m careful");
    }
}
