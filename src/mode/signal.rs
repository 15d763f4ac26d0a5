//! Operator read-only by Unix signal (feature `signal`).

use std::io;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use super::ServerMode;

impl ServerMode {
    /// Toggles operator read-only each time the process receives
    /// `SIGUSR1`: `kill -USR1 <pid>` puts a running server in read-only,
    /// the next one lifts it.
    ///
    /// The listener runs until the returned task is aborted or every handle
    /// on the mode is gone. Fails if the signal handler cannot be
    /// installed; must run inside a tokio runtime.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> std::io::Result<()> {
    /// let mode = tower_sse::mode::ServerMode::new();
    /// mode.toggle_read_only_on_sigusr1()?;
    /// # Ok(()) }
    /// ```
    pub fn toggle_read_only_on_sigusr1(&self) -> io::Result<JoinHandle<()>> {
        self.toggle_read_only_on(SignalKind::user_defined1(), "operator (SIGUSR1)")
    }

    /// Toggles operator read-only, with `reason`, on each delivery of
    /// the signal `kind`.
    pub fn toggle_read_only_on(
        &self,
        kind: SignalKind,
        reason: &'static str,
    ) -> io::Result<JoinHandle<()>> {
        let mut stream = signal(kind)?;
        let mode = std::sync::Arc::downgrade(&self.inner);
        Ok(tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let Some(inner) = mode.upgrade() else {
                    return;
                };
                let on = ServerMode { inner }.toggle_read_only(reason);
                tracing::info!(read_only = on, "signal toggled operator read-only");
            }
        }))
    }
}
