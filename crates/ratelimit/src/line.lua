-- The dispatch line (prepended, after clock.lua, to every script that reads or changes it).
--
-- Two classes, `high` and `normal`, each a sorted set of queued jobs in dispatch order. Within a
-- class the order is start-time fair queuing: a job's score (its tag) is one more than the later
-- of the class's virtual time (the tag of the last job dispatched) and its user's last tag, so
-- every user with queued work gets one dispatch per round and one user's jobs stay FIFO. Equal
-- tags fall back to the member, which begins with the zero-padded submit sequence.
--
-- A member is `seq|class|user|job`. Seven KEYS from `L`: L high line, L+1 normal line,
-- L+2 scheduled (zset: member -> due ms), L+3 state (hash: vt_high, vt_normal, streak),
-- L+4 high tags (hash: user -> last tag), L+5 normal tags, L+6 granted (hash: job -> grant).
local function parse(member)
  return string.match(member, '^(%d+)|(%a+)|([^|]*)|(.+)$')
end

local function line_of(L, class)
  if class == 'high' then return KEYS[L] end
  return KEYS[L + 1]
end

local function tags_of(L, class)
  if class == 'high' then return KEYS[L + 4] end
  return KEYS[L + 5]
end

-- Put a due job in line; a job already in line keeps its place. Returns its tag.
local function place(L, member)
  local _, class, user = parse(member)
  local line = line_of(L, class)
  local held = redis.call('ZSCORE', line, member)
  if held then return tonumber(held) end
  local vt = tonumber(redis.call('HGET', KEYS[L + 3], 'vt_' .. class) or 0)
  local last = tonumber(redis.call('HGET', tags_of(L, class), user) or 0)
  local tag = math.max(vt, last) + 1
  redis.call('HSET', tags_of(L, class), user, tag)
  redis.call('ZADD', line, tag, member)
  return tag
end

-- Scheduled jobs whose time has come join the line (at most `limit` per call).
local function promote_due(L, limit)
  local due = redis.call('ZRANGEBYSCORE', KEYS[L + 2], '-inf', now, 'LIMIT', 0, limit)
  for _, m in ipairs(due) do
    redis.call('ZREM', KEYS[L + 2], m)
    place(L, m)
  end
  return #due
end

-- A job's place in the real dispatch order, `burst` being the highs dispatched in a row while
-- normal work waits, before one normal.
--
-- Dispatch alternates classes deterministically: highs while `streak` < burst, then one normal.
-- So a normal job at rank r (0-based) follows r normals and min(highs, f + burst * r) highs,
-- where f = burst - streak highs still go before the next normal; a high job at rank r follows
-- r highs and every normal slot that comes before it.
-- Returns the 1-based position, 0 scheduled, -1 dispatched (starting), -2 not in line.
local function place_of(L, member, burst)
  local _, class, _, job = parse(member)
  if redis.call('HEXISTS', KEYS[L + 6], job) == 1 then return -1 end
  local r = redis.call('ZRANK', line_of(L, class), member)
  if not r then
    if redis.call('ZSCORE', KEYS[L + 2], member) then return 0 end
    return -2
  end
  local other = KEYS[L + 1]
  if class ~= 'high' then other = KEYS[L] end
  local o = redis.call('ZCARD', other)
  local streak = tonumber(redis.call('HGET', KEYS[L + 3], 'streak') or 0)
  local f = math.max(0, burst - streak)
  if class ~= 'high' then
    return r + math.min(o, f + burst * r) + 1
  end
  local normals = 0
  if o > 0 and r >= f then normals = math.min(o, math.floor((r - f) / burst) + 1) end
  return r + normals + 1
end

-- Put a job in line, or in the scheduled set until `due` (ms; 0 = now), and wake the
-- dispatchers on `channel`. Returns 1 in line, 2 scheduled, 0 already dispatched. Safe to repeat.
local function enqueue(L, member, due, channel)
  local _, _, _, job = parse(member)
  if redis.call('HEXISTS', KEYS[L + 6], job) == 1 then return 0 end
  if due > now then
    redis.call('ZADD', KEYS[L + 2], due, member)
    return 2
  end
  place(L, member)
  redis.call('PUBLISH', channel, 1)
  return 1
end

-- A job's record beside the line (its poll snapshot), kept only if `rev` is not older than the
-- stored one — and, once the record was invalidated (`tomb`), only if it is newer: `data`, and
-- `member` while the job waits in line ('' = none). Returns 1 if written.
-- A written record is announced on `events` (its job id, the key's last part) for live status.
local function write_record(key, rev, data, member, ttl_ms, events)
  local cur = redis.call('HMGET', key, 'rev', 'tomb')
  local held, dead = tonumber(cur[1]), cur[2]
  if held and (held > tonumber(rev) or (dead and held == tonumber(rev))) then return 0 end
  if dead then redis.call('HDEL', key, 'tomb') end
  if member ~= '' then
    redis.call('HSET', key, 'rev', rev, 'data', data, 'member', member)
  else
    redis.call('HSET', key, 'rev', rev, 'data', data)
    redis.call('HDEL', key, 'member')
  end
  redis.call('PEXPIRE', key, ttl_ms)
  if events and events ~= '' then redis.call('PUBLISH', events, string.match(key, '[^:]+$')) end
  return 1
end
