-- Add a job to the line, or to the scheduled set until its time (clock.lua and line.lua are
-- prepended). KEYS: the line's seven (L = 1). ARGV: member, due ms (0 = now), wake channel.
-- Returns 1 in line, 2 scheduled, 0 already dispatched. Safe to repeat.
local member, due = ARGV[1], tonumber(ARGV[2])
local _, _, _, job = parse(member)
if redis.call('HEXISTS', KEYS[7], job) == 1 then return 0 end
if due > now then
  redis.call('ZADD', KEYS[3], due, member)
  return 2
end
place(1, member)
redis.call('PUBLISH', ARGV[3], 1)
return 1
