-- Shared by acquire.lua and dispatch.lua (prepended to each, after clock.lua): one look at every
-- key of the pool.
--
-- Per key i, three KEYS from `keys_at`: window (zset: grant -> start ms), leases (zset: lease ->
-- expiry ms), state (hash: cool_until, disabled_until); two ARGV from `args_at`: max_per_minute,
-- max_concurrent (0 = unlimited).
-- Returns the key with the most free slots (0 = none), the free slots over every key, how many
-- keys are healthy, and when capacity frees by itself (-1 = only a release frees it).
local function look_pool(window, n, keys_at, args_at, probe)
  local best, best_free, total_free, healthy, earliest = 0, 0, 0, 0, -1
  local function sooner(at)
    if earliest < 0 or at < earliest then earliest = at end
  end
  for i = 1, n do
    local k = keys_at + 3 * (i - 1)
    local win, leases, state = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local a = args_at + 2 * (i - 1)
    local max_pm, max_c = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
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
  return best, total_free, healthy, earliest
end

-- Count one start on key `i` and hold its in-flight slot until now + lease_ms.
local function take_slot(keys_at, i, lease_ms, grant, lease)
  local k = keys_at + 3 * (i - 1)
  redis.call('ZADD', KEYS[k], now, grant)
  redis.call('ZADD', KEYS[k + 1], now + lease_ms, lease)
end

-- Waiters that stopped asking (a killed worker) leave the line by themselves.
local function drop_silent_waiters(waiters, seen, ttl)
  local dead = redis.call('ZRANGEBYSCORE', seen, '-inf', now - ttl)
  for _, w in ipairs(dead) do
    redis.call('ZREM', waiters, w)
    redis.call('ZREM', seen, w)
  end
end

local function wait_ms(earliest)
  if earliest < 0 then return -1 end
  return math.max(1, math.ceil(earliest - now))
end
