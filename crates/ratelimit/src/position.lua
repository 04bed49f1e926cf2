-- A job's place in the real dispatch order (clock.lua and line.lua are prepended).
-- KEYS: the line's seven (L = 1). ARGV: member, burst (highs dispatched in a row while normal
-- work waits, before one normal).
--
-- Dispatch alternates classes deterministically: highs while `streak` < burst, then one normal.
-- So a normal job at rank r (0-based) follows r normals and min(highs, f + burst * r) highs,
-- where f = burst - streak highs still go before the next normal; a high job at rank r follows
-- r highs and every normal slot that comes before it.
-- Returns the 1-based position, 0 scheduled, -1 dispatched (starting), -2 not in line.
local member, burst = ARGV[1], tonumber(ARGV[2])
local _, class, _, job = parse(member)
if redis.call('HEXISTS', KEYS[7], job) == 1 then return -1 end
local r = redis.call('ZRANK', line_of(1, class), member)
if not r then
  if redis.call('ZSCORE', KEYS[3], member) then return 0 end
  return -2
end
local other = KEYS[2]
if class ~= 'high' then other = KEYS[1] end
local o = redis.call('ZCARD', other)
local streak = tonumber(redis.call('HGET', KEYS[4], 'streak') or 0)
local f = math.max(0, burst - streak)
if class ~= 'high' then
  return r + math.min(o, f + burst * r) + 1
end
local normals = 0
if o > 0 and r >= f then normals = math.min(o, math.floor((r - f) / burst) + 1) end
return r + normals + 1
