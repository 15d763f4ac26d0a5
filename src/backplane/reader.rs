//! The replica's reader: one task, on a connection of its own, that keeps
//! the broker's log a mirror of the stream.
//!
//! Each session connects, puts the mirror in step with the stream's epoch
//! and seq (a new epoch resets the mirror; a seq behind the mirror's starts
//! the stream afresh under a new epoch, since its ids can no longer be
//! trusted), takes the retained tail if the mirror is empty, then reads
//! with `XREAD BLOCK` from where the mirror stands, looking at the epoch
//! and seq again whenever a read comes back empty. Any error ends the
//! session; the next starts after a back-off, from where the mirror stands:
//! nothing is read twice or skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, RedisResult};

use super::stream::{self, entry_seq, parse_entry};
use super::Shared;
use crate::broker::{Broker, Mirrored, WeakBroker};
use crate::mode::{self, ServerMode};

/// First wait before reconnecting; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Marks `mode` failing for a reader about to start, so that the app is
/// degraded from its first request until the reader is in step.
pub(super) fn probe(mode: Option<ServerMode>) -> Option<(ServerMode, u64)> {
    mode.map(|mode| {
        let id = mode::next_probe_id();
        mode.probe_failing(id, "redis", "not in step with the stream yet".into());
        (mode, id)
    })
}

pub(super) struct Reader {
    pub(super) client: redis::Client,
    pub(super) broker: WeakBroker,
    pub(super) shared: Arc<Shared>,
    /// The mode to report in, with this reader's probe id; already marked
    /// failing when the reader starts.
    pub(super) probe: Option<(ServerMode, u64)>,
    pub(super) block: Duration,
    pub(super) batch: usize,
    /// The stream seq and publish token of the last entry mirrored: after
    /// a reconnect, the entry under that seq must still be the same one.
    pub(super) last: std::sync::Mutex<Option<(u64, String)>>,
    /// Redis's clock less this machine's, in milliseconds, as last seen.
    pub(super) clock_offset: std::sync::atomic::AtomicI64,
}

/// Where the mirror stands against the stream.
enum Step {
    /// In the stream's epoch: read after the mirrored stream seq; the
    /// stream's top seq.
    After { mirrored: u64, top: u64 },
    /// The stream is in another epoch: join it.
    Join(u64),
}

/// Whether the next read goes on after `id`, the last entry read (which
/// may be another program's), rather than after the mirrored seq: unless
/// that would pass over entries of the stream's seqs not mirrored yet (the
/// stream was deleted and started again below `id`, say). Reading on
/// passes over another program's entries once, instead of at every read.
fn read_on_from(id: &str, mirrored: u64, top: u64) -> bool {
    let Some(read) = stream::entry_id(id) else {
        return false;
    };
    read >= (mirrored, 0) && (top <= mirrored || read < (top, 0))
}

/// Marks the backplane down if the reader stops before its broker closes
/// (a panic), or releases the mode if it was stopped on purpose (the last
/// replica handle dropped).
pub(super) struct Stopped {
    shared: Arc<Shared>,
    probe: Option<(ServerMode, u64)>,
    armed: bool,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.shared.dropped.load(Ordering::Acquire) {
            // Stopped with the last replica handle: nothing failed, and
            // the mode no longer waits for this reader.
            if self.shared.health.up.swap(false, Ordering::AcqRel) {
                crate::metrics::backplane_in_step(false);
            }
            if let Some((mode, id)) = &self.probe {
                mode.probe_passing(*id);
            }
            return;
        }
        let why = "the backplane reader stopped".to_owned();
        let health = &self.shared.health;
        if health.up.swap(false, Ordering::AcqRel) {
            crate::metrics::backplane_in_step(false);
        }
        *health.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        if let Some((mode, id)) = &self.probe {
            mode.probe_failing(*id, "redis", why);
        }
    }
}

/// How a session ended.
enum Ended {
    /// The broker is gone or closed: the reader is done.
    Closed,
    /// Redis failed; try again.
    Failed(String),
}

impl Reader {
    /// Reads until the broker closes or goes. The guard is made with the
    /// task (see [`Reader::guard`]), so that it also speaks for a task
    /// aborted before it first ran.
    pub(super) async fn run(self, mut stopped: Stopped) {
        let probe = self.probe.clone();
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.session(&probe).await {
                Ended::Closed => break,
                Ended::Failed(error) => {
                    tracing::warn!(%error, "backplane reader lost Redis; reconnecting");
                    let health = &self.shared.health;
                    if health.up.swap(false, Ordering::AcqRel) {
                        // It had been in step: a new outage, a new back-off.
                        if let Some(broker) = self.broker() {
                            broker.mirror_reconnecting();
                        }
                        crate::metrics::backplane_in_step(false);
                        crate::metrics::backplane_disconnected();
                        backoff = MIN_BACKOFF;
                    }
                    *health.error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("redis: {error}"));
                    if let Some((mode, id)) = &probe {
                        mode.probe_failing(*id, "redis", error);
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if self.broker().is_none() {
                break;
            }
        }
        stopped.armed = false;
        if self.shared.health.up.load(Ordering::Acquire) {
            // Done with the broker, still in step: no longer a reader.
            crate::metrics::backplane_in_step(false);
        }
        if let Some((mode, id)) = probe {
            mode.probe_passing(id);
        }
    }

    /// What speaks for the reader if it stops before its broker closes.
    pub(super) fn guard(&self) -> Stopped {
        Stopped {
            shared: self.shared.clone(),
            probe: self.probe.clone(),
            armed: true,
        }
    }

    /// The broker, while it is open.
    fn broker(&self) -> Option<Broker> {
        self.broker.upgrade().filter(|broker| !broker.is_closed())
    }

    async fn session(&self, probe: &Option<(ServerMode, u64)>) -> Ended {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(self.block + Duration::from_secs(2)));
        let mut conn = match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(error) => return Ended::Failed(error.to_string()),
        };
        let mut read_from: Option<String> = None;
        loop {
            let Some(broker) = self.broker() else {
                return Ended::Closed;
            };
            // In step with the stream's epoch and seq.
            let from = match self.step(&mut conn, &broker).await {
                Ok(from) => from,
                Err(error) => return Ended::Failed(error.to_string()),
            };
            let from = match from {
                Step::After { mirrored, top } => match read_from.take() {
                    Some(id) if read_on_from(&id, mirrored, top) => id,
                    _ => format!("{mirrored}-0"),
                },
                // A new epoch starts from the stream's tail.
                Step::Join(epoch) => match self.join(&mut conn, &broker, epoch).await {
                    Ok(id) => id,
                    Err(error) => return Ended::Failed(error.to_string()),
                },
            };
            self.in_step(probe);
            drop(broker);
            match self.read(&mut conn, from).await {
                Ok(Some(id)) => read_from = Some(id),
                Ok(None) => return Ended::Closed,
                Err(error) => return Ended::Failed(error.to_string()),
            }
        }
    }

    /// Puts the mirror in step with the stream's epoch and seq.
    async fn step(&self, conn: &mut MultiplexedConnection, broker: &Broker) -> RedisResult<Step> {
        let scripts = &self.shared.scripts;
        let (epoch, top, redis_now): (String, u64, i64) = scripts
            .ensure_epoch
            .key(&self.shared.stream)
            .key(&self.shared.meta)
            .arg(stream::new_epoch().to_string())
            .invoke_async(conn)
            .await?;
        // Ages count by Redis's clock, as publish times do.
        let offset = redis_now.saturating_sub(stream::now_millis() as i64);
        self.clock_offset.store(offset, Ordering::Relaxed);
        let mut epoch = parse_epoch(&epoch)?;
        let mut top = top;
        let (mirror_epoch, mirrored) = broker.mirror_position().unwrap_or_default();
        if epoch == mirror_epoch && (top < mirrored || self.rewritten(conn, mirrored).await?) {
            // The stream went back (writes this mirror saw are gone from
            // it), or on to other writes under the same seqs: its ids can
            // no longer be trusted.
            tracing::warn!(
                top,
                mirrored,
                "the Redis stream lost writes this replica saw; starting a new epoch"
            );
            let (new, new_top): (String, u64) = scripts
                .restart
                .key(&self.shared.stream)
                .key(&self.shared.meta)
                .arg(epoch.to_string())
                .arg(stream::new_epoch().to_string())
                .invoke_async(conn)
                .await?;
            (epoch, top) = (parse_epoch(&new)?, new_top);
        }
        if epoch != mirror_epoch {
            return Ok(Step::Join(epoch));
        }
        broker.mirror_top(top);
        Ok(Step::After { mirrored, top })
    }

    /// Whether the stream holds another entry under `seq` than the one
    /// mirrored there: it lost writes (a failover to a replica that missed
    /// them, a restart from an old file) and others were appended since.
    /// Only the last entry read is compared (a mirror at seq 0 has read
    /// none: Redis refuses the id `0-0`).
    async fn rewritten(&self, conn: &mut MultiplexedConnection, seq: u64) -> RedisResult<bool> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((last_seq, token)) = last.filter(|(last_seq, _)| *last_seq == seq) else {
            return Ok(false);
        };
        let id = format!("{last_seq}-0");
        let now: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.shared.stream)
            .arg(&id)
            .arg(&id)
            .query_async(conn)
            .await?;
        // Trimmed since: nothing to compare with.
        Ok(now
            .ids
            .first()
            .is_some_and(|entry| stream::entry_token(&entry.map) != token))
    }

    /// Starts the mirror afresh under `epoch` with the retained tail of the
    /// stream (at most the broker's retained count); returns the id to read
    /// after.
    async fn join(
        &self,
        conn: &mut MultiplexedConnection,
        broker: &Broker,
        epoch: u64,
    ) -> RedisResult<String> {
        let tail: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.shared.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(stream::stream_retention(broker.retained_events_limit()))
            .query_async(conn)
            .await?;
        let newest = tail
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone());
        let entries = self.parse(broker, epoch, tail.ids.iter().rev());
        broker.mirror_reset(epoch, entries);
        Ok(newest)
    }

    /// Reads from after `from` until a read comes back empty; returns the
    /// id to read after next, `None` once the broker is gone.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        mut from: String,
    ) -> RedisResult<Option<String>> {
        loop {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(self.batch)
                .arg("BLOCK")
                .arg(u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX))
                .arg("STREAMS")
                .arg(&self.shared.stream)
                .arg(&from)
                .query_async(conn)
                .await?;
            let Some(broker) = self.broker() else {
                return Ok(None);
            };
            let ids: Vec<_> = reply
                .into_iter()
                .flat_map(|reply| reply.keys)
                .flat_map(|key| key.ids)
                .collect();
            let Some(last) = ids.last() else {
                return Ok(Some(from));
            };
            from = last.id.clone();
            let full = ids.len() >= self.batch;
            let entries = self.parse(&broker, broker.epoch(), ids.iter());
            let outcome = broker.mirror(entries);
            crate::metrics::backplane_mirrored(outcome.appended as u64);
            if outcome.skipped > 0 {
                // Another replica took them: its limits differ from this one's.
                tracing::warn!(
                    skipped = outcome.skipped,
                    "stream entries this replica's broker refuses (an event larger than the bytes \
                     its log retains, or a bad topic): replicas of one service need the same limits"
                );
            }
            if full {
                // Behind: how far, for the stats (an empty read says 0).
                let top: Option<u64> = redis::cmd("HGET")
                    .arg(&self.shared.meta)
                    .arg("seq")
                    .query_async(conn)
                    .await?;
                broker.mirror_top(top.unwrap_or(0));
            }
            crate::metrics::backplane_lag(|| broker.mirror_lag());
        }
    }

    /// The entries this backplane wrote in the mirror's epoch; the rest are
    /// counted as skipped.
    fn parse<'a>(
        &self,
        broker: &Broker,
        epoch: u64,
        ids: impl Iterator<Item = &'a redis::streams::StreamId>,
    ) -> Vec<Mirrored> {
        let now =
            stream::now_millis().saturating_add_signed(self.clock_offset.load(Ordering::Relaxed));
        let mut entries = Vec::new();
        let mut last = None;
        for entry in ids {
            last = Some(entry);
            match parse_entry(&entry.id, &entry.map, epoch, now) {
                Some(entry) => entries.push(entry),
                None => {
                    tracing::debug!(id = %entry.id, "skipping a stream entry this backplane did not write");
                    broker.count_skipped_mirror_entry();
                }
            }
        }
        if let Some(entry) =
            last.and_then(|e| Some((entry_seq(&e.id)?, stream::entry_token(&e.map))))
        {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
        }
        entries
    }

    /// The reader is in step with the stream.
    fn in_step(&self, probe: &Option<(ServerMode, u64)>) {
        let health = &self.shared.health;
        if !health.up.swap(true, Ordering::AcqRel) {
            crate::metrics::backplane_in_step(true);
            *health.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if let Some((mode, id)) = probe {
                mode.probe_passing(*id);
            }
            tracing::info!("backplane reader in step with Redis");
        }
    }
}

fn parse_epoch(epoch: &str) -> RedisResult<u64> {
    epoch.parse().map_err(|_| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "the stream's epoch is not a number",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::read_on_from;

    #[test]
    fn a_read_goes_on_after_the_last_entry_unless_that_passes_over_seqs_not_mirrored() {
        // After its own entries.
        assert!(read_on_from("5-0", 5, 5));
        assert!(read_on_from("5-0", 5, 9));
        // After another program's entry among them, or past them while
        // nothing of the stream's seqs is pending.
        assert!(read_on_from("5-1", 5, 9));
        assert!(read_on_from("1733500000000-0", 5, 5));
        // Past seqs not mirrored yet: the stream started again below it.
        assert!(!read_on_from("1733500000000-0", 5, 6));
        assert!(!read_on_from("9-0", 5, 9));
        // Before the mirror (a stale read), or not an id.
        assert!(!read_on_from("4-0", 5, 5));
        assert!(!read_on_from("x", 5, 5));
    }
}
