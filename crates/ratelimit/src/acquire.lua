-- One dispatch decision for the whole fleet, atomically: may this waiter start one upstream
-- request now, and on which key?
--
-- KEYS[1] waiters (zset: waiter -> ticket), KEYS[2] waiters' last sign of life (zset: waiter -> ms),
-- KEYS[3] dispatch counter, then for every pool key i: KEYS[3i+1] window (zset: grant -> start
-- ms), KEYS[3i+2] leases (zset: lease -> expiry ms), KEYS[3i+3] state (hash: cool_until,
-- disabled_until).
-- ARGV: window_ms, lease_ms, grant, lease, waiter, ticket, waiter_ttl_ms, n, probe (1 = treat
-- disabled keys as usable: every key is disabled and one request must find out whether fal
-- takes them again), then per key max_per_minute, max_concurrent (0 = unlimited).
--
-- Returns {outcome, key index, wait ms, rank, free slots, healthy keys, dispatch number};
-- outcome 1 = granted,
-- 0 = wait (wait ms = when capacity frees by itself, -1 = only a release frees it),
-- -1 = no healthy key.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local grant, lease, waiter = ARGV[3], ARGV[4], ARGV[5]
local ticket, waiter_ttl, n = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local probe = ARGV[9] == '1'

-- Waiters that stopped asking (a killed worker) leave the line by themselves.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - waiter_ttl)
for _, w in ipairs(dead) do
  redis.call('ZREM', KEYS[1], w)
  redis.call('ZREM', KEYS[2], w)
end
redis.call('ZADD', KEYS[1], ticket, waiter)
redis.call('ZADD', KEYS[2], now, waiter)
local rank = redis.call('ZRANK', KEYS[1], waiter)

local best, best_free, total_free, healthy, earliest = 0, 0, 0, 0, -1
local function sooner(at)
  if earliest < 0 or at < earliest then earliest = at end
end
for i = 1, n do
  local win, leases, state = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local max_pm, max_c = tonumber(ARGV[8 + 2 * i]), tonumber(ARGV[9 + 2 * i])
  local st = redis.call('HMGET', state, 'cool_until', 'disabled_until')
  local cool, disabled = tonumber(st[1] or 0) or 0, tonumber(st[2] or 0) or 0
  if disabled > now and not probe then
    sooner(disabled)
  else
    healthy = healthy + 1
    if cool > now then
      sooner(cool)
    else
      -- The upstream forgets a start once it is a full window old; so do we.
      redis.call('ZREMRANGEBYSCORE', win, '-inf', now - window)
      redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
      local free = 1000000
      if max_pm > 0 then
        local f = max_pm - redis.call('ZCARD', win)
        if f <= 0 then
          local oldest = redis.call('ZRANGE', win, 0, 0, 'WITHSCORES')
          sooner(tonumber(oldest[2]) + window)
        end
        free = math.min(free, f)
      end
      if max_c > 0 then
        local f = max_c - redis.call('ZCARD', leases)
        if f <= 0 then
          local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
          sooner(tonumber(first[2]))
        end
        free = math.min(free, f)
      end
      if free > 0 then
        total_free = total_free + free
        if free > best_free then best, best_free = i, free end
      end
    end
  end
end

if healthy == 0 then
  return {-1, 0, math.floor(earliest >= 0 and (earliest - now) or -1), rank, 0, 0}
end
-- Only the first `total_free` waiters in ticket order may start: the line is the line.
if best > 0 and rank < total_free then
  redis.call('ZADD', KEYS[3 * best + 1], now, grant)
  redis.call('ZADD', KEYS[3 * best + 2], now + lease_ms, lease)
  redis.call('ZREM', KEYS[1], waiter)
  redis.call('ZREM', KEYS[2], waiter)
  local dispatched = redis.call('INCR', KEYS[3])
  return {1, best, 0, rank, total_free, healthy, dispatched}
end
local wait = -1
if earliest >= 0 then wait = math.max(1, math.ceil(earliest - now)) end
return {0, 0, wait, rank, total_free, healthy}
