-- A submitted job, in one round trip (clock.lua and line.lua are prepended): into the line (or
-- scheduled), its record written beside it, and its place read.
-- KEYS: the line's seven (L = 1), then the job's record. ARGV: member, due ms (0 = now), wake
-- channel, burst, rev, data, record ttl ms, events channel.
-- Returns {enqueue's answer, place_of's answer}.
local member = ARGV[1]
local queued = enqueue(1, member, tonumber(ARGV[2]), ARGV[3])
write_record(KEYS[8], ARGV[5], ARGV[6], member, ARGV[7], ARGV[8])
return {queued, place_of(1, member, tonumber(ARGV[4]))}
