//! What `tracing` writes during a test: a `fmt` subscriber writing into
//! memory, the default on the current thread only. A `#[tokio::test]`
//! runtime runs its tasks (servers and clients) on that thread, while the
//! other tests of the binary, on theirs, write nothing here.

use std::io;
use std::sync::{Arc, Mutex, Once};

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
    static ASK_EACH_TIME: Once = Once::new();
    ASK_EACH_TIME.call_once(|| {
        let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(AskEachTime));
    });
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

/// The global default while tests capture: it records nothing, and it
/// tells `tracing` that whether a call site is enabled must be asked each
/// time. Without it, while one test's subscriber is the only one listed,
/// `tracing` works out a call site's interest, the first time any thread
/// reaches it, from that thread's default alone: on another test's
/// thread, with none, that is "never", cached for every thread, and the
/// capturing test's log misses the event.
struct AskEachTime;

impl tracing::Subscriber for AskEachTime {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}
