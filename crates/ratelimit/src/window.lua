-- A sliding-window counter: may one more event happen under `limit` per `window_ms`?
-- KEYS[1] the log (zset: member -> ms). ARGV: limit, window_ms, member.
-- Returns {allowed (1/0), remaining after this one, ms until the oldest event leaves the window}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local allowed = 0
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window))
  n = n + 1
  allowed = 1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then reset = math.max(0, tonumber(oldest[2]) + window - now) end
return {allowed, math.max(0, limit - n), math.ceil(reset)}
