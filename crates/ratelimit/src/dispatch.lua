-- Dispatch the head of the line: take a slot on the best key and pop the next job in fair order,
-- in one step (clock.lua, pool.lua and line.lua are prepended).
--
-- KEYS[1] waiters, KEYS[2] waiters:seen (acquire.lua's line: retries and resumed jobs, which go
-- first), KEYS[3] dispatch counter, KEYS[4] the work queue's ready list, then the line's seven
-- from KEYS[5], KEYS[12] the work queue's scheduled set (apalis-redis parks a pushed task there,
-- scored in seconds, until a fetch moves it to the ready list), then three per pool key from
-- KEYS[13].
-- ARGV: window_ms, lease_ms, grant, waiter_ttl_ms, n, probe, burst, ahead (dispatch only while
-- fewer than this many dispatched jobs wait for a worker; 0 = no bound), promote batch, then two
-- limits per key from ARGV[10], then the n key ids.
--
-- Returns {1, key index, dispatch number, member, tag} dispatched;
-- {0, wait ms} no slot now (-1 = until a release); {2, wait ms} nothing in line (wait ms until
-- the next scheduled job is due, -1 = none); {3, 0} the workers have enough ready work;
-- {-1, wait ms} no healthy key.
local window, lease_ms, grant = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local waiter_ttl, n, probe = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local burst, ahead, batch = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local L, keys_at, args_at = 5, 13, 10

promote_due(L, batch)
local highs, normals = redis.call('ZCARD', KEYS[L]), redis.call('ZCARD', KEYS[L + 1])
if highs + normals == 0 then
  local nxt = redis.call('ZRANGE', KEYS[L + 2], 0, 0, 'WITHSCORES')
  if nxt[2] then return {2, wait_ms(tonumber(nxt[2]))} end
  return {2, -1}
end
if ahead > 0 then
  local waiting = redis.call('LLEN', KEYS[4]) + redis.call('ZCOUNT', KEYS[12], '-inf', math.floor(now / 1000) + 1)
  if waiting >= ahead then return {3, 0} end
end

drop_silent_waiters(KEYS[1], KEYS[2], waiter_ttl)
local waiting = redis.call('ZCARD', KEYS[1])
local best, total_free, healthy, earliest = look_pool(window, n, keys_at, args_at, probe)
if healthy == 0 then return {-1, wait_ms(earliest)} end
if best == 0 or total_free <= waiting then return {0, wait_ms(earliest)} end

-- High first, but never more than `burst` highs in a row while normal work waits.
local streak = tonumber(redis.call('HGET', KEYS[L + 3], 'streak') or 0)
local class = 'normal'
if highs > 0 and (normals == 0 or streak < burst) then class = 'high' end
local popped = redis.call('ZPOPMIN', line_of(L, class))
local member, tag = popped[1], tonumber(popped[2])
redis.call('HSET', KEYS[L + 3], 'vt_' .. class, tag)
if class == 'normal' then
  redis.call('HSET', KEYS[L + 3], 'streak', 0)
elseif normals > 0 then
  redis.call('HINCRBY', KEYS[L + 3], 'streak', 1)
end
local _, _, user, job = parse(member)
-- A user with nothing left in line needs no tag: the virtual time covers their next job.
local tags = tags_of(L, class)
if tonumber(redis.call('HGET', tags, user) or 0) <= tag then redis.call('HDEL', tags, user) end

take_slot(keys_at, best, lease_ms, grant, job)
local dispatched = redis.call('INCR', KEYS[3])
local key_id = ARGV[args_at + 2 * n + best - 1]
local p = '0'
if probe then p = '1' end
redis.call('HSET', KEYS[L + 6], job, table.concat({key_id, grant, dispatched, p, math.floor(now)}, '|'))
return {1, best, dispatched, member, tag}
