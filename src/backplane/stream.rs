//! What the backplane keeps in Redis, and the scripts that change it, each
//! one atomic step:
//!
//! - `KEY` is a stream: one entry per event, with the explicit id `SEQ-0`
//!   and the fields `epoch`, `topic`, `type` (empty for `message`), `data`
//!   `at` (publish time by Redis's clock, milliseconds since the Unix
//!   epoch, so that every replica counts an event's age alike) and `tok`
//!   (the publishing replica's token for it, so that a retried publish
//!   finds itself instead of appending twice); an entry that is a direct
//!   message (a notification or reply of the mailbox kept in Redis) has
//!   `key` too (what names it for taking it back);
//! - `KEY:meta` is a hash: `epoch`, the epoch of the stream's ids, and
//!   `seq`, the last seq given.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Script, Value};

use crate::broker::{Mirrored, MirroredDirect};

/// A Lua function, `append(stream, meta, epoch_if_none, retention,
/// topic, type, data, extra)`, that every script writing the stream
/// starts with: the epoch (created if the stream has none, the stream then
/// started afresh), the next seq, the entry with the explicit id `SEQ-0`
/// and the fields `extra` besides the common ones, trimmed to about the
/// retention. Returns `{epoch, seq}`, or an error reply (the seq not taken).
///
/// An entry something else appended with a larger id (`XADD KEY *`, say)
/// makes the append impossible: it then answers an error that says so,
/// rather than consuming seqs no entry has.
pub(crate) const APPEND: &str = r"
local function append(stream, meta, new_epoch, retention, topic, etype, data, extra)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = new_epoch
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
  end
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local now = redis.call('TIME')
  local at = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
  local args = {'XADD', stream, 'MAXLEN', '~', retention, seq .. '-0',
    'epoch', epoch, 'topic', topic, 'type', etype, 'data', data, 'at', at}
  for _, field in ipairs(extra) do
    args[#args + 1] = field
  end
  local added = redis.pcall(unpack(args))
  if type(added) == 'table' and added.err then
    redis.call('HINCRBY', meta, 'seq', -1)
    if string.find(added.err, 'equal or smaller', 1, true) then
      return redis.error_reply('FOREIGN the stream holds an entry this backplane did not write at or past '
        .. seq .. '-0: the key must be the backplane\'s alone (delete it to start afresh)')
    end
    return added
  end
  return {epoch, seq}
end
";

/// Appends one event (see [`APPEND`]), its field `tok` the publishing
/// replica's token for it. Returns `{epoch, seq}`.
///
/// A publish whose connection broke may have been appended or not; it is
/// sent again with the same token and `retry` set, and then first looks
/// for its token among the (at most [`RETRY_WINDOW`]) newest entries,
/// returning that entry's seq instead of appending twice. Newest first,
/// and not bounded by a seq the replica knew: if Redis came back empty
/// and the first attempt began a new epoch, every seq the replica knew
/// is from the old one.
///
/// KEYS: stream, meta. ARGV: epoch if none, retention, topic, type, data,
/// token, retry (`1` on a retry, empty on a first attempt), retry window.
const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch and ARGV[7] ~= '' then
  -- Newest first: the first attempt was a moment ago.
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[8])
  for _, entry in ipairs(newest) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'tok' and fields[i + 1] == ARGV[6] then
        return {epoch, tonumber(string.match(entry[1], '^(%d+)-'))}
      end
    end
  end
end
return append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], {'tok', ARGV[6]})
";

/// Most entries the stream keeps, whatever the broker's retained count:
/// Redis takes counts up to `i64::MAX`, and a replica that joins takes the
/// whole retained tail in one read.
pub(super) const MAX_STREAM_ENTRIES: usize = 1 << 20;

/// How many entries the stream keeps for a broker that retains `events`.
pub(super) fn stream_retention(events: usize) -> usize {
    events.min(MAX_STREAM_ENTRIES)
}

/// Most entries a retried publish looks through for its own: the
/// publishes of every replica between its first attempt and the retry, a
/// moment later.
pub(super) const RETRY_WINDOW: usize = 1024;

/// Makes sure the stream has an epoch, creating one (and dropping any
/// stream left without it) if not. Returns `{epoch, seq, now}`, `now`
/// being Redis's clock in milliseconds (entries' ages are counted by it).
///
/// KEYS: stream, meta. ARGV: epoch if none.
pub(super) const ENSURE_EPOCH: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0)
end
local now = redis.call('TIME')
return {epoch, tonumber(redis.call('HGET', KEYS[2], 'seq') or 0),
  tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
";

/// Starts the stream afresh under a new epoch, unless another replica did
/// already: for a stream whose seq went backwards (a promoted replica that
/// had not received every write), where ids of the old epoch can no longer
/// be trusted. Returns `{epoch, seq}`.
///
/// KEYS: stream, meta. ARGV: the epoch found wanting, the new epoch.
pub(super) const RESTART: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch == ARGV[1] or not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0)
end
return {epoch, tonumber(redis.call('HGET', KEYS[2], 'seq') or 0)}
";

/// The scripts, loaded once.
pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) ensure_epoch: Script,
    pub(super) restart: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            publish: Script::new(&format!("{APPEND}{PUBLISH}")),
            ensure_epoch: Script::new(ENSURE_EPOCH),
            restart: Script::new(RESTART),
        }
    }
}

/// A fresh epoch: the time in nanoseconds, as the in-memory broker's.
pub(super) fn new_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(1)
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The stream seq of an entry id this backplane wrote (`SEQ-0`, `SEQ` at
/// most [`MAX_STREAM_SEQ`](crate::broker::MAX_STREAM_SEQ)).
pub(super) fn entry_seq(id: &str) -> Option<u64> {
    let (seq, zero) = id.split_once('-')?;
    let seq: u64 = (zero == "0").then(|| seq.parse().ok()).flatten()?;
    (seq <= crate::broker::MAX_STREAM_SEQ).then_some(seq)
}

/// Any entry id, as Redis orders them.
pub(super) fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The publish token of an entry (empty if it has none).
pub(super) fn entry_token(fields: &HashMap<String, Value>) -> String {
    fields
        .get("tok")
        .and_then(|value| redis::from_redis_value_ref::<String>(value).ok())
        .unwrap_or_default()
}

/// An entry of the stream as the broker mirrors it, if it is one this
/// backplane wrote in `epoch`; anything else (written by something else,
/// from another epoch, missing a field) is `None`, to be skipped.
pub(super) fn parse_entry(
    id: &str,
    fields: &HashMap<String, Value>,
    epoch: u64,
    now_millis: u64,
) -> Option<Mirrored> {
    let stream_seq = entry_seq(id)?;
    let text = |name: &str| -> Option<String> {
        redis::from_redis_value_ref::<String>(fields.get(name)?).ok()
    };
    if text("epoch")?.parse::<u64>().ok()? != epoch {
        return None;
    }
    let data: Vec<u8> = redis::from_redis_value_ref(fields.get("data")?).ok()?;
    let at: u64 = text("at")?.parse().ok()?;
    let event_type = text("type")?;
    let direct = match text("key") {
        None => None,
        Some(key) => Some(MirroredDirect {
            key: key.parse().ok()?,
        }),
    };
    Some(Mirrored {
        stream_seq,
        age: Duration::from_millis(now_millis.saturating_sub(at)),
        topic: text("topic")?,
        event_type: (!event_type.is_empty()).then_some(event_type),
        data: data.into(),
        direct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::BulkString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn only_entries_of_this_backplane_and_epoch_parse() {
        let good = fields(&[
            ("epoch", "7"),
            ("topic", "a"),
            ("type", ""),
            ("data", "hi"),
            ("at", "1000"),
        ]);
        let entry = parse_entry("12-0", &good, 7, 1500).expect("parses");
        assert_eq!(entry.stream_seq, 12);
        assert_eq!(entry.age, Duration::from_millis(500));
        assert_eq!(entry.event_type, None);
        assert_eq!(&entry.data[..], b"hi");
        // Another epoch, another writer's id, a missing field: skipped.
        assert!(parse_entry("12-0", &good, 8, 1500).is_none());
        assert!(parse_entry("1712345678901-3", &good, 7, 1500).is_none());
        assert!(parse_entry("x-0", &good, 7, 1500).is_none());
        let mut partial = good.clone();
        partial.remove("data");
        assert!(parse_entry("12-0", &partial, 7, 1500).is_none());
        // A publish time in the future counts as now.
        assert_eq!(
            parse_entry("12-0", &good, 7, 10).unwrap().age,
            Duration::ZERO
        );
    }

    #[test]
    fn a_direct_message_has_a_key() {
        let mut direct = fields(&[
            ("epoch", "7"),
            ("topic", "$client/bob"),
            ("type", "notification"),
            ("data", "{}"),
            ("at", "1000"),
            ("key", "42"),
        ]);
        let entry = parse_entry("3-0", &direct, 7, 1000).expect("parses");
        assert_eq!(entry.direct, Some(MirroredDirect { key: 42 }));
        // A key that does not parse: not an entry of this backplane.
        direct.insert("key".into(), Value::BulkString(b"x".to_vec()));
        assert!(parse_entry("3-0", &direct, 7, 1000).is_none());
    }

    #[test]
    fn only_ids_of_this_backplane_within_the_seq_range_have_a_seq() {
        assert_eq!(entry_seq("7-0"), Some(7));
        let max = crate::broker::MAX_STREAM_SEQ;
        assert_eq!(entry_seq(&format!("{max}-0")), Some(max));
        assert_eq!(entry_seq(&format!("{}-0", max + 1)), None);
        assert_eq!(entry_seq(&format!("{}-0", u64::MAX)), None);
        assert_eq!(entry_seq("7-1"), None);
        assert_eq!(entry_seq("x-0"), None);
        assert_eq!(entry_seq("99999999999999999999999-0"), None);
    }
}
