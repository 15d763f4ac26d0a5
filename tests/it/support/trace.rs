//! What `tracing` writes during a test: a `fmt` subscriber writing into
//! memory, the default on the current thread only. A `#[tokio::test]`
//! runtime runs its tasks (servers and clients) on that thread, while the
//! other tests of the binary, on theirs, write nothing here.

use std::io;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::format::FmtSpan;

/// The text written so far.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Whether a line says both `what` and `within` (a span's name and
    /// fields, as `fmt` writes them before the message).
    pub fn has(&self, within: &str, what: &str) -> bool {
        self.text()
            .lines()
            .any(|line| line.contains(within) && line.contains(what))
    }
}

impl io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures events at `level` and above, and `spans` (openings and
/// closings, say), until the guard is dropped.
pub fn capture(level: tracing::Level, spans: FmtSpan) -> (Log, DefaultGuard) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(level)
        .with_span_events(spans)
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}
