//! Where guest `console.*` lines go. The engine only hands each line, with
//! its level and request, to a [`ConsoleSink`]; what becomes of it (a
//! `tracing` event, a frame to the node, a record in a log store) is the
//! sink's business. Nothing here knows of HTTP, workers or log storage.

use std::sync::Arc;

/// Longest console line kept when a sink does not say otherwise.
pub const DEFAULT_LINE_BYTES: usize = 16 * 1024;

/// What a console line costs against a budget beyond its text: a record's
/// envelope (fields, JSON, a frame) is about this much, so empty lines are
/// not free.
pub const LINE_COST: usize = 256;

/// A token bucket of bytes: `per_sec` a second, at most `per_sec` saved up.
/// Budgets console output that no request's budget covers.
#[derive(Debug)]
pub struct Rate {
    per_sec: u64,
    tokens: u64,
    last: std::time::Instant,
}

impl Rate {
    pub fn new(per_sec: u64) -> Self {
        Rate { per_sec, tokens: per_sec, last: std::time::Instant::now() }
    }

    /// Takes `n` bytes if the bucket holds them (then true); takes nothing otherwise.
    pub fn take(&mut self, n: u64) -> bool {
        let now = std::time::Instant::now();
        let refill = (now.duration_since(self.last).as_nanos() * u128::from(self.per_sec) / 1_000_000_000) as u64;
        // Only when whole bytes came in: time shorter than one byte's keeps adding up.
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(self.per_sec);
            self.last = now;
        }
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

/// Bunyan level numbers, as guest `console` methods map to them.
pub mod level {
    pub const TRACE: u8 = 10;
    pub const DEBUG: u8 = 20;
    pub const INFO: u8 = 30;
    pub const WARN: u8 = 40;
    pub const ERROR: u8 = 50;
    pub const FATAL: u8 = 60;

    /// Any number onto the nearest bunyan level at or below it (so nothing
    /// a guest or a worker sends can make up a level of its own).
    pub fn clamp(n: u32) -> u8 {
        match n {
            0..=19 => TRACE,
            20..=29 => DEBUG,
            30..=39 => INFO,
            40..=49 => WARN,
            50..=59 => ERROR,
            _ => FATAL,
        }
    }
}

/// One guest console line, already formatted and cut to the sink's cap.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    pub container: Arc<str>,
    /// The request whose code logged it; `None` for code left running after
    /// its request (timers).
    pub req_id: Option<Arc<str>>,
    /// A bunyan level (see [`level`]).
    pub level: u8,
    pub msg: String,
}

/// Receives console lines, on the isolate's thread: it must never block.
pub trait ConsoleSink: Send + Sync + 'static {
    /// Lines longer than this are cut and marked before they reach `log`.
    fn line_bytes(&self) -> usize {
        DEFAULT_LINE_BYTES
    }
    fn log(&self, line: ConsoleLine);
}

/// Console lines as `tracing` events with target `webtask::guest` (what an
/// embedded engine and `webtask run` do).
pub struct TracingSink;

impl ConsoleSink for TracingSink {
    fn log(&self, line: ConsoleLine) {
        let container = &*line.container;
        let req_id = line.req_id.as_deref().unwrap_or("");
        let msg = line.msg;
        match line.level {
            l if l <= level::TRACE => tracing::trace!(target: "webtask::guest", container, req_id, "{msg}"),
            l if l <= level::DEBUG => tracing::debug!(target: "webtask::guest", container, req_id, "{msg}"),
            l if l <= level::INFO => tracing::info!(target: "webtask::guest", container, req_id, "{msg}"),
            l if l <= level::WARN => tracing::warn!(target: "webtask::guest", container, req_id, "{msg}"),
            _ => tracing::error!(target: "webtask::guest", container, req_id, "{msg}"),
        }
    }
}

/// Cuts `msg` to at most `cap` bytes (on a character boundary) and says so.
pub fn truncate(msg: &str, cap: usize) -> std::borrow::Cow<'_, str> {
    if msg.len() <= cap {
        return msg.into();
    }
    let mut end = cap;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated {} bytes]", &msg[..end], msg.len() - end).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_marks_cut_lines_on_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééé", 3);
        assert_eq!(cut, "é… [truncated 4 bytes]");
    }

    #[test]
    fn a_rate_gives_its_burst_then_refuses() {
        let mut rate = Rate::new(1000);
        assert!(rate.take(600));
        assert!(!rate.take(600), "only 400 left (plus what came in meanwhile, far less than 200)");
        assert!(rate.take(300));
    }

    #[test]
    fn levels_clamp_to_bunyan() {
        assert_eq!(level::clamp(0), level::TRACE);
        assert_eq!(level::clamp(30), level::INFO);
        assert_eq!(level::clamp(45), level::WARN);
        assert_eq!(level::clamp(1000), level::FATAL);
    }
}
