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
