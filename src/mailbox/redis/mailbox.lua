-- The mailbox kept in Redis: every operation is this one script, so each
-- is one atomic step, as each is one critical section in memory. It is
-- run after the backplane's `append` function (the stream's own script),
-- so that a notification is held and its frame is in the stream in the
-- same step.
--
-- KEYS: the backplane's stream and its meta hash.
-- ARGV: prefix, now (ms on the mailbox's clock, empty for Redis's),
-- wall-clock ms, an epoch for a stream that has none, the stream's
-- retention, a token for stream entries, per_target, per_target_bytes,
-- per_sender, per_sender_bytes, capacity, capacity_bytes, the operation,
-- then its arguments.
--
-- Keys under the prefix P:
--   P:m        hash: serial, fseq (finish order), rseq (reply order),
--              held, bytes, counters
--   P:r:TRACE  hash: a record (stok = the token of the step that sent it,
--              from, to, er, exp, serial, cost, nd = the notification
--              frame's data, ep/last/lastk = its newest frame to any
--              stream, aep/all = its newest frame to every stream, dl =
--              delivered at; rby, rcost, rd, rep/rlast/rlastk, raep/rall,
--              rseen, rtok for its reply)
--   P:t:TO     zset by serial: a target's notifications, oldest first
--   P:tb       hash: bytes held per target
--   P:sc, P:sb hash: count and bytes per sender
--   P:sf:FROM  zset by finish order: a sender's finished notifications
--   P:fin      zset by finish order: every finished notification
--   P:exp      zset by expiry: every notification
--   P:ur:FROM  zset by reply order: replies their sender has not shown it saw

local P = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local wall = ARGV[3]
local NEW_EPOCH, RETENTION, TOKEN = ARGV[4], ARGV[5], ARGV[6]
local PER_TARGET, PER_TARGET_BYTES = tonumber(ARGV[7]), tonumber(ARGV[8])
local PER_SENDER, PER_SENDER_BYTES = tonumber(ARGV[9]), tonumber(ARGV[10])
local CAPACITY, CAPACITY_BYTES = tonumber(ARGV[11]), tonumber(ARGV[12])
local OP = ARGV[13]
local M = P .. ':m'
local appended_n = 0

local function rk(trace) return P .. ':r:' .. trace end
local function num(v) return tonumber(v or '0') or 0 end
local function count(field, by) redis.call('HINCRBY', M, field, by) end

-- Appends a direct message to the stream, for every stream watching the
-- topic. Returns epoch, seq, or nil and the error.
local function frame(topic, etype, data, key)
  appended_n = appended_n + 1
  local added = append(KEYS[1], KEYS[2], NEW_EPOCH, RETENTION, topic, etype, data,
    {'tok', TOKEN .. '.' .. appended_n, 'key', key})
  if added.err then return nil, added end
  count('published', 1)
  return added[1], added[2]
end

-- Removes a record everywhere; whether it was held.
local function forget(trace)
  local r = rk(trace)
  local f = redis.call('HMGET', r, 'from', 'to', 'cost', 'rcost')
  if not f[1] then
    -- The record went some other way (evicted, deleted by hand): its
    -- trace must not stay where purges and forgetting look for it.
    redis.call('ZREM', P .. ':exp', trace)
    redis.call('ZREM', P .. ':fin', trace)
    return false
  end
  local from, to, cost = f[1], f[2], num(f[3])
  local total = cost + num(f[4])
  redis.call('DEL', r)
  redis.call('ZREM', P .. ':exp', trace)
  redis.call('ZREM', P .. ':fin', trace)
  redis.call('ZREM', P .. ':t:' .. to, trace)
  redis.call('ZREM', P .. ':sf:' .. from, trace)
  redis.call('ZREM', P .. ':ur:' .. from, trace)
  if redis.call('HINCRBY', P .. ':tb', to, -cost) <= 0 then
    redis.call('HDEL', P .. ':tb', to)
  end
  if redis.call('HINCRBY', P .. ':sc', from, -1) <= 0 then
    redis.call('HDEL', P .. ':sc', from)
    redis.call('HDEL', P .. ':sb', from)
  else
    redis.call('HINCRBY', P .. ':sb', from, -total)
  end
  count('held', -1)
  count('bytes', -total)
  return true
end

-- Purges what expired, oldest first, at most `limit`; how many.
local function purge(limit)
  local n = 0
  local due = redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', now, 'LIMIT', 0, limit)
  for _, trace in ipairs(due) do
    if forget(trace) then n = n + 1 end
  end
  if n > 0 then count('expired', n) end
  return n, #due
end

local function note_if_finished(trace)
  local f = redis.call('HMGET', rk(trace), 'dl', 'er', 'rseen', 'from')
  if f[1] and (f[2] == '0' or f[3] == '1') then
    local order = redis.call('HINCRBY', M, 'fseq', 1)
    redis.call('ZADD', P .. ':fin', order, trace)
    redis.call('ZADD', P .. ':sf:' .. f[4], order, trace)
  end
end

local function mark_delivered(trace)
  local r = rk(trace)
  if redis.call('HEXISTS', r, 'dl') == 1 then return end
  redis.call('HSET', r, 'dl', wall)
  count('delivered', 1)
  note_if_finished(trace)
end

local function mark_reply_seen(trace, from)
  redis.call('HSET', rk(trace), 'rseen', '1')
  redis.call('ZREM', P .. ':ur:' .. from, trace)
  note_if_finished(trace)
end

-- Forgets the oldest finished notifications (of `sender` only, if given)
-- until `n` of them and `bytes` bytes are freed, or none is left.
local function forget_finished(n, bytes, sender)
  local queue = sender and (P .. ':sf:' .. sender) or (P .. ':fin')
  while n > 0 or bytes > 0 do
    local trace = redis.call('ZRANGE', queue, 0, 0)[1]
    if not trace then return end
    local f = redis.call('HMGET', rk(trace), 'cost', 'rcost')
    forget(trace)
    redis.call('ZREM', queue, trace)
    if f[1] then
      count('forgotten', 1)
      n = math.max(n - 1, 0)
      bytes = math.max(bytes - num(f[1]) - num(f[2]), 0)
    end
  end
end

local function sender_over(sender, n, bytes)
  local c = num(redis.call('HGET', P .. ':sc', sender))
  local b = num(redis.call('HGET', P .. ':sb', sender))
  return math.max(c + n - PER_SENDER, 0), math.max(b + bytes - PER_SENDER_BYTES, 0)
end

-- Whether `sender` has room for `n` more and `bytes` more, forgetting its
-- own finished notifications to make it.
local function sender_has_room(sender, n, bytes)
  local co, bo = sender_over(sender, n, bytes)
  if co == 0 and bo == 0 then return true end
  forget_finished(co, bo, sender)
  co, bo = sender_over(sender, n, bytes)
  return co == 0 and bo == 0
end

-- The frame key a stream's inbox names a message by.
local function key(serial, reply)
  return tostring(serial * 2 + (reply and 1 or 0))
end

if OP == 'send' then
  local trace, from, to, er, ttl, cost, data =
    ARGV[14], ARGV[15], ARGV[16], ARGV[17], tonumber(ARGV[18]), tonumber(ARGV[19]), ARGV[20]
  -- A send retried after a broken connection that had gone through (the
  -- same step's token); any other record under this trace is a clash.
  local taken = redis.call('HGET', rk(trace), 'stok')
  if taken then
    if taken == TOKEN then return {'ok'} end
    return redis.error_reply('a notification with trace ' .. trace .. ' is held already')
  end
  purge(256)
  if not sender_has_room(from, 1, cost) then
    count('refused_sender', 1)
    return {'sender'}
  end
  -- What the target's bounds drop to take this one.
  local held = redis.call('ZRANGE', P .. ':t:' .. to, 0, -1)
  local n = #held + 1
  local bytes = num(redis.call('HGET', P .. ':tb', to)) + cost
  local drop = {}
  for _, t in ipairs(held) do
    if n <= PER_TARGET and bytes <= PER_TARGET_BYTES then break end
    n = n - 1
    bytes = bytes - num(redis.call('HGET', rk(t), 'cost'))
    drop[#drop + 1] = t
  end
  local function over_capacity()
    local c = num(redis.call('HGET', M, 'held')) + 1
    local b = num(redis.call('HGET', M, 'bytes')) + cost
    for _, t in ipairs(drop) do
      local f = redis.call('HMGET', rk(t), 'cost', 'rcost')
      if f[1] then
        c = c - 1
        b = b - num(f[1]) - num(f[2])
      end
    end
    return math.max(c - CAPACITY, 0), math.max(b - CAPACITY_BYTES, 0)
  end
  local co, bo = over_capacity()
  if co > 0 or bo > 0 then
    forget_finished(co, bo, nil)
    co, bo = over_capacity()
    if co > 0 or bo > 0 then
      count('refused_full', 1)
      return {'full'}
    end
  end
  local serial = redis.call('HINCRBY', M, 'serial', 1)
  local epoch, seq = frame('$client/' .. to, 'notification', data, key(serial, false))
  if not epoch then return seq end
  for _, t in ipairs(drop) do
    if forget(t) then count('dropped', 1) end
  end
  local expires = now + ttl
  redis.call('HSET', rk(trace), 'stok', TOKEN, 'from', from, 'to', to, 'er', er, 'exp', expires,
    'serial', serial, 'cost', cost, 'nd', data, 'ep', epoch, 'last', seq, 'lastk', 0,
    'aep', epoch, 'all', seq)
  redis.call('ZADD', P .. ':exp', expires, trace)
  redis.call('ZADD', P .. ':t:' .. to, serial, trace)
  redis.call('HINCRBY', P .. ':tb', to, cost)
  redis.call('HINCRBY', P .. ':sc', from, 1)
  redis.call('HINCRBY', P .. ':sb', from, cost)
  count('held', 1)
  count('bytes', cost)
  count('sent', 1)
  return {'ok'}
end

-- The record as a flat list of fields and values, for a status.
local function record(trace)
  return redis.call('HGETALL', rk(trace))
end

-- Whether a record is past its TTL though not purged yet (more expired at
-- once than one step purges): it counts as gone, as once purged.
local function expired(trace)
  local exp = redis.call('HGET', rk(trace), 'exp')
  return exp and num(exp) <= now
end

if OP == 'status' then
  purge(256)
  if expired(ARGV[14]) then return {'ok', {}} end
  return {'ok', record(ARGV[14])}
end

if OP == 'target' then
  return {'ok', redis.call('HGET', rk(ARGV[14]), 'to') or ''}
end

if OP == 'ack' then
  local trace, client = ARGV[14], ARGV[15]
  purge(256)
  if redis.call('HGET', rk(trace), 'to') ~= client or expired(trace) then return {'no'} end
  mark_delivered(trace)
  return {'ok'}
end

if OP == 'reply' then
  local trace, by, cost, data, rtok = ARGV[14], ARGV[15], tonumber(ARGV[16]), ARGV[17], ARGV[18]
  local r = rk(trace)
  local f = redis.call('HMGET', r, 'to', 'exp', 'er', 'rby', 'from', 'serial', 'rtok')
  if not f[1] then return {'notfound'} end
  if f[1] ~= by then return {'nottarget'} end
  -- A reply retried after a broken connection that had gone through.
  if f[4] and f[7] == rtok then return {'ok', record(trace)} end
  if num(f[2]) <= now then return {'expired'} end
  if f[3] ~= '1' then return {'noreply'} end
  if f[4] then return {'replied'} end
  local from = f[5]
  if not sender_has_room(from, 0, cost) then
    count('refused_full', 1)
    return {'full'}
  end
  local over = num(redis.call('HGET', M, 'bytes')) + cost - CAPACITY_BYTES
  if over > 0 then
    forget_finished(0, over, nil)
    if num(redis.call('HGET', M, 'bytes')) + cost > CAPACITY_BYTES then
      count('refused_full', 1)
      return {'full'}
    end
  end
  local epoch, seq = frame('$client/' .. from, 'notification.reply', data, key(num(f[6]), true))
  if not epoch then return seq end
  redis.call('HSET', r, 'rby', by, 'rcost', cost, 'rd', data, 'rtok', rtok, 'rat', wall,
    'rep', epoch, 'rlast', seq, 'rlastk', 0, 'raep', epoch, 'rall', seq)
  count('bytes', cost)
  redis.call('HINCRBY', P .. ':sb', from, cost)
  -- Answering proves it arrived.
  mark_delivered(trace)
  -- In reply order, as a new stream of the sender is sent them.
  redis.call('ZADD', P .. ':ur:' .. from, redis.call('HINCRBY', M, 'rseq', 1), trace)
  return {'ok', record(trace)}
end

-- Where frames of a record went are kept as stream seq and own-frame
-- index: `S.0` for an entry of the stream (the same id on every replica),
-- `S.K` for a copy a replica sent one stream of its own (an id between
-- two entries). Both compare as pairs.
local function at_or_before(epoch, s, k, at_epoch, at_s, at_k)
  if not epoch or epoch ~= at_epoch then return false end
  s, k, at_s, at_k = num(s), num(k), num(at_s), num(at_k)
  return s < at_s or (s == at_s and k <= at_k)
end

if OP == 'connect' then
  -- A stream of `client` opened, subscribed at stream seq `seam` of
  -- `seam_epoch` (what it gets from the stream from there on), resumed
  -- after `seen` and `seen_k` of `seen_epoch` if its client proved what
  -- it received (else `seen` is empty): confirm what that proves, and
  -- answer what this stream must be sent a copy of (every other
  -- unconfirmed notification, every unseen reply, unless one went to
  -- every stream after it subscribed). The replica sends the copies and
  -- records them with `copied` before the stream shows any id.
  local client, seen_epoch, seen, seen_k, seam_epoch, seam =
    ARGV[14], ARGV[15], ARGV[16], ARGV[17], ARGV[18], ARGV[19]
  local proof = seen ~= ''
  purge(256)
  local copies = {}
  for _, trace in ipairs(redis.call('ZRANGE', P .. ':t:' .. client, 0, -1)) do
    local f = redis.call('HMGET', rk(trace), 'dl', 'ep', 'last', 'lastk', 'aep', 'all', 'nd', 'serial')
    if not f[1] and not expired(trace) then
      if proof and at_or_before(f[2], f[3], f[4], seen_epoch, seen, seen_k) then
        mark_delivered(trace)
      elseif not (f[5] == seam_epoch and num(f[6]) > num(seam)) then
        copies[#copies + 1] = {'n', trace, f[7], key(num(f[8]), false)}
      end
    end
  end
  for _, trace in ipairs(redis.call('ZRANGE', P .. ':ur:' .. client, 0, -1)) do
    local f = redis.call('HMGET', rk(trace), 'rep', 'rlast', 'rlastk', 'raep', 'rall', 'rd', 'serial')
    if expired(trace) then
      -- Gone, as once purged.
    elseif proof and at_or_before(f[1], f[2], f[3], seen_epoch, seen, seen_k) then
      mark_reply_seen(trace, client)
    elseif not (f[4] == seam_epoch and num(f[5]) > num(seam)) then
      copies[#copies + 1] = {'r', trace, f[6], key(num(f[7]), true)}
    end
  end
  return {'ok', copies}
end

if OP == 'copied' then
  -- The copies a replica sent one stream, `kind trace epoch s k` each:
  -- each record's newest frame, if this one is newer (or of a newer
  -- epoch: the stream's epoch only changes forwards in time).
  local i = 14
  while ARGV[i] do
    local kind, trace, epoch, s, k = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local r = rk(trace)
    local names = kind == 'n' and {'ep', 'last', 'lastk'} or {'rep', 'rlast', 'rlastk'}
    local f = redis.call('HMGET', r, names[1], names[2], names[3])
    if f[1] and not at_or_before(epoch, s, k, f[1], f[2], f[3]) then
      redis.call('HSET', r, names[1], epoch, names[2], s, names[3], k)
    end
    count('published', 1)
    i = i + 5
  end
  return {'ok'}
end

if OP == 'purge' then
  local n, seen = purge(tonumber(ARGV[14]))
  return {'ok', n, seen}
end

if OP == 'stats' then
  return {'ok', redis.call('HGETALL', M)}
end

return redis.error_reply('unknown mailbox operation ' .. tostring(OP))
