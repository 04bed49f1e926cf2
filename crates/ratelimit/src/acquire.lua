-- One dispatch decision for the whole fleet, atomically: may this waiter start one upstream
-- request now, and on which key? (pool.lua is prepended.)
--
-- KEYS[1] waiters (zset: waiter -> ticket), KEYS[2] waiters' last sign of life (zset: waiter -> ms),
-- KEYS[3] dispatch counter, then three per pool key (see pool.lua) from KEYS[4].
-- ARGV: window_ms, lease_ms, grant, lease, waiter, ticket, waiter_ttl_ms, n, probe (1 = treat
-- disabled keys as usable: every key is disabled and one request must find out whether fal
-- takes them again), then two per key from ARGV[10].
--
-- Returns {outcome, key index, wait ms, rank, free slots, healthy keys, dispatch number};
-- outcome 1 = granted,
-- 0 = wait (wait ms = when capacity frees by itself, -1 = only a release frees it),
-- -1 = no healthy key.
local window, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local grant, lease, waiter = ARGV[3], ARGV[4], ARGV[5]
local ticket, waiter_ttl, n = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local probe = ARGV[9] == '1'

drop_silent_waiters(KEYS[1], KEYS[2], waiter_ttl)
redis.call('ZADD', KEYS[1], ticket, waiter)
redis.call('ZADD', KEYS[2], now, waiter)
local rank = redis.call('ZRANK', KEYS[1], waiter)

local best, total_free, healthy, earliest = look_pool(window, n, 4, 10, probe)
if healthy == 0 then
  return {-1, 0, math.floor(earliest >= 0 and (earliest - now) or -1), rank, 0, 0}
end
-- Only the first `total_free` waiters in ticket order may start: the line is the line.
if best > 0 and rank < total_free then
  take_slot(4, best, lease_ms, grant, lease)
  redis.call('ZREM', KEYS[1], waiter)
  redis.call('ZREM', KEYS[2], waiter)
  local dispatched = redis.call('INCR', KEYS[3])
  return {1, best, 0, rank, total_free, healthy, dispatched}
end
return {0, 0, wait_ms(earliest), rank, total_free, healthy}
