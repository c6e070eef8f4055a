//! Where the guest console goes, and what the VMM learns from it.
//!
//! [`ConsoleSink`] receives every byte the guest writes to its serial port.
//! Bytes go to a file as they arrive (nothing is buffered in the VMM, so a
//! crash loses nothing already written) and/or to the log a line at a time,
//! at debug level. The guest is not trusted with the host's disk or logs:
//! the file stops at [`DEFAULT_FILE_MAX`] bytes (a last line in it says
//! so; the watch below still sees everything, and keeps the last lines for
//! error reports), and the log takes at most [`LOG_BURST`] lines at once
//! and [`LOG_LINES_PER_SEC`] a second (held-back lines are counted in the
//! next one).
//! [`ConsoleWatch`] records when output started and when registered marker
//! strings (the agent's ready line, a kernel panic) first appeared, and keeps
//! the last lines for error reports.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Lines kept for error reports.
const TAIL_LINES: usize = 64;
/// Longest line kept; longer ones are split (a guest can write without newlines).
const MAX_LINE: usize = 4096;
/// The most bytes a console file gets (then it stops, saying so).
pub const DEFAULT_FILE_MAX: u64 = 16 << 20;
/// Console lines logged per second, at most, on average...
pub const LOG_LINES_PER_SEC: u32 = 50;
/// ...and in one burst.
pub const LOG_BURST: u32 = 200;

/// `text` with its control characters (escape sequences, stray `\r`)
/// written as escapes, so a guest line cannot forge log lines or drive
/// a terminal.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// A token bucket for log lines.
#[derive(Debug)]
struct LineBudget {
    tokens: f64,
    last: Instant,
    /// Lines held back since the last one logged.
    held: u64,
}

impl LineBudget {
    fn new() -> Self {
        Self {
            tokens: f64::from(LOG_BURST),
            last: Instant::now(),
            held: 0,
        }
    }

    /// Some(lines held back before this one) when this line may be logged.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let refill =
            now.saturating_duration_since(self.last).as_secs_f64() * f64::from(LOG_LINES_PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(LOG_BURST));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.held))
        } else {
            self.held += 1;
            None
        }
    }
}

#[derive(Debug, Default)]
struct WatchState {
    first_byte: Option<Instant>,
    first_line: Option<Instant>,
    /// (pattern, first time a line containing it was seen)
    markers: Vec<(String, Option<Instant>)>,
    tail: VecDeque<String>,
    bytes: u64,
}

/// Observes the console: first output, markers, the last lines.
#[derive(Debug, Default)]
pub struct ConsoleWatch {
    state: Mutex<WatchState>,
    changed: Condvar,
}

impl ConsoleWatch {
    /// A watch that records when a line containing any of `markers` appears.
    pub fn new<S: Into<String>>(markers: impl IntoIterator<Item = S>) -> Self {
        let markers = markers.into_iter().map(|m| (m.into(), None)).collect();
        Self {
            state: Mutex::new(WatchState {
                markers,
                ..WatchState::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_bytes(&self, n: usize) {
        let mut s = self.lock();
        if s.first_byte.is_none() {
            s.first_byte = Some(Instant::now());
        }
        s.bytes += n as u64;
    }

    fn on_line(&self, line: &str) {
        let now = Instant::now();
        let mut s = self.lock();
        if s.first_line.is_none() {
            s.first_line = Some(now);
        }
        for (pattern, seen) in s.markers.iter_mut() {
            if seen.is_none() && line.contains(pattern.as_str()) {
                *seen = Some(now);
            }
        }
        if s.tail.len() == TAIL_LINES {
            s.tail.pop_front();
        }
        s.tail.push_back(line.to_string());
        drop(s);
        self.changed.notify_all();
    }

    /// When the guest wrote its first byte.
    pub fn first_byte(&self) -> Option<Instant> {
        self.lock().first_byte
    }

    /// When the guest completed its first line.
    pub fn first_line(&self) -> Option<Instant> {
        self.lock().first_line
    }

    /// Total bytes written by the guest.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// When a line containing `marker` (registered at construction) appeared.
    pub fn marker(&self, marker: &str) -> Option<Instant> {
        self.lock()
            .markers
            .iter()
            .find(|(p, _)| p == marker)
            .and_then(|(_, t)| *t)
    }

    /// The first kept line containing `needle`.
    pub fn find_line(&self, needle: &str) -> Option<String> {
        self.lock()
            .tail
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// The last `n` complete lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let s = self.lock();
        s.tail
            .iter()
            .skip(s.tail.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Waits until a line containing `needle` (any text, registered or not)
    /// has been seen among the kept lines, or `timeout` passes.
    pub fn wait_marker_any(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if s.tail.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until `marker` has been seen or `timeout` passes.
    pub fn wait_marker(&self, marker: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(t) = s
                .markers
                .iter()
                .find(|(p, _)| p == marker)
                .and_then(|m| m.1)
            {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The writer behind the guest's serial port.
pub struct ConsoleSink {
    file: Option<File>,
    /// Bytes written to the file, and its bound.
    file_bytes: u64,
    file_max: u64,
    log: bool,
    budget: LineBudget,
    line: Vec<u8>,
    watch: std::sync::Arc<ConsoleWatch>,
    write_failed: bool,
}

impl ConsoleSink {
    /// Console bytes go to `file` (if any, empty; at most
    /// [`DEFAULT_FILE_MAX`] bytes) and, a line at a time, to the log
    /// (target `guest_console`, debug level, rate-limited) when `log` is set.
    pub fn new(file: Option<File>, log: bool, watch: std::sync::Arc<ConsoleWatch>) -> Self {
        Self {
            file,
            file_bytes: 0,
            file_max: DEFAULT_FILE_MAX,
            log,
            budget: LineBudget::new(),
            line: Vec::with_capacity(256),
            watch,
            write_failed: false,
        }
    }

    /// Another bound for the file than [`DEFAULT_FILE_MAX`].
    pub fn with_file_max(mut self, max: u64) -> Self {
        self.file_max = max;
        self
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        if self.log {
            if let Some(held) = self.budget.take(Instant::now()) {
                if held > 0 {
                    tracing::debug!(target: "guest_console", held_back = held,
                        "guest console lines not logged (over {LOG_LINES_PER_SEC}/s)");
                }
                tracing::debug!(target: "guest_console", "{}", escape_controls(text));
            }
        }
        self.watch.on_line(text);
        self.line.clear();
    }

    /// Appends `buf` to the file up to its bound; at the bound, one last
    /// line says the rest is dropped.
    fn write_file(&mut self, buf: &[u8]) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        if self.file_bytes >= self.file_max {
            return;
        }
        let room = self.file_max - self.file_bytes;
        let n = usize::try_from(room).map_or(buf.len(), |r| r.min(buf.len()));
        let mut result = f.write_all(&buf[..n]);
        self.file_bytes += n as u64;
        if self.file_bytes >= self.file_max {
            let note = format!(
                "\n[husk: the guest console passed {} bytes; the rest is not written here]\n",
                self.file_max
            );
            result = result.and_then(|()| f.write_all(note.as_bytes()));
            tracing::warn!(
                bytes = self.file_max,
                "guest console file full; further output is dropped"
            );
        }
        // A failing console file (disk full) must not stop the guest:
        // report it once and keep feeding the log and the watch.
        if let Err(e) = result {
            if !self.write_failed {
                tracing::warn!(error = %e, "guest console file write failed; console output is being dropped");
                self.write_failed = true;
            }
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.watch.on_bytes(buf.len());
        self.write_file(buf);
        for &b in buf {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.end_line();
                if b == b'\n' {
                    continue;
                }
            }
            self.line.push(b);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    #[test]
    fn markers_tail_and_file() {
        let watch = Arc::new(ConsoleWatch::new(["husk-agent ready", "Kernel panic"]));
        let mut path = std::env::temp_dir();
        path.push(format!("husk-console-test-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let mut sink = ConsoleSink::new(Some(file), false, watch.clone());
        assert!(watch.first_byte().is_none());
        for b in b"Linux version 6.1\r\nhusk-agent ready\npartial" {
            sink.write_all(&[*b]).unwrap();
        }
        assert!(watch.first_line().is_some());
        assert!(watch.marker("husk-agent ready").is_some());
        assert!(watch.marker("Kernel panic").is_none());
        assert_eq!(watch.tail(5), vec!["Linux version 6.1", "husk-agent ready"]);
        drop(sink);
        assert_eq!(watch.tail(1), vec!["partial"]);
        let mut s = String::new();
        File::open(&path).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "Linux version 6.1\r\nhusk-agent ready\npartial");
        std::fs::remove_file(path).unwrap();
        assert!(watch
            .wait_marker("Kernel panic", Duration::from_millis(10))
            .is_none());
    }

    /// The file stops at its bound with a note; the watch still sees it
    /// all.
    #[test]
    fn file_is_capped() {
        let watch = Arc::new(ConsoleWatch::new(Vec::<String>::new()));
        let mut path = std::env::temp_dir();
        path.push(format!("husk-console-cap-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let mut sink = ConsoleSink::new(Some(file), false, watch.clone()).with_file_max(1000);
        for _ in 0..100 {
            sink.write_all(&[b'y'; 99]).unwrap();
            sink.write_all(b"\n").unwrap();
        }
        drop(sink);
        let written = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (kept, note) = written.split_at(1000);
        assert!(kept.bytes().all(|b| b == b'y' || b == b'\n'));
        assert!(note.contains("passed 1000 bytes"), "{note}");
        assert!(note.len() < 200);
        assert_eq!(watch.bytes(), 10_000);
        assert_eq!(watch.tail(1), vec!["y".repeat(99)]);
    }

    /// A flood of lines logs a burst, then the rate, and counts the rest.
    #[test]
    fn log_lines_are_rate_limited() {
        let mut b = LineBudget::new();
        let t0 = b.last;
        let logged = (0..10_000).filter(|_| b.take(t0).is_some()).count();
        assert_eq!(logged, LOG_BURST as usize);
        assert_eq!(b.held, 10_000 - u64::from(LOG_BURST));
        // A second later: a second's worth, and the count of the held.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(t1), Some(10_000 - u64::from(LOG_BURST)));
        let more = (0..1000).filter(|_| b.take(t1).is_some()).count();
        assert_eq!(more, LOG_LINES_PER_SEC as usize - 1);
    }

    #[test]
    fn endless_line_is_split_and_bounded() {
        let watch = Arc::new(ConsoleWatch::new(Vec::<String>::new()));
        let mut sink = ConsoleSink::new(None, false, watch.clone());
        sink.write_all(&vec![b'x'; MAX_LINE * 3 + 5]).unwrap();
        assert_eq!(watch.tail(10).len(), 3);
        assert_eq!(watch.bytes(), (MAX_LINE * 3 + 5) as u64);
        for _ in 0..(TAIL_LINES * 2) {
            sink.write_all(b"line\n").unwrap();
        }
        assert_eq!(watch.tail(usize::MAX).len(), TAIL_LINES);
    }
}
