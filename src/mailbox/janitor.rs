//! The task that purges expired notifications.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::Mailbox;

/// A running janitor, from [`Mailbox::spawn_janitor`]. Dropping the handle
/// stops the task, so a janitor never outlives what started it; the task
/// holds only a weak reference, so it never keeps a mailbox alive either.
#[derive(Debug)]
pub struct Janitor {
    task: JoinHandle<()>,
}

impl Janitor {
    /// Stops the task and waits until it is gone.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Whether the task has ended (stopped, or its mailbox is gone).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mailbox {
    /// Purges expired notifications every `interval` on the current tokio
    /// runtime, until the handle is dropped or the mailbox is gone.
    /// Expired notifications are also purged whenever the mailbox is used;
    /// the janitor bounds the memory of a mailbox nobody uses.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn_janitor(&self, interval: Duration) -> Janitor {
        let weak = std::sync::Arc::downgrade(&self.shared);
        let interval = interval.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut timer = tokio::time::interval(interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let purged = Mailbox { shared }.purge_expired();
                if purged > 0 {
                    tracing::debug!(purged, "janitor purged expired notifications");
                }
            }
        });
        Janitor { task }
    }
}
