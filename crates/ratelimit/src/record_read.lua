-- A job's record and, while it waits, its place in line, in one round trip (clock.lua and
-- line.lua are prepended). KEYS: the line's seven (L = 1), then the job's record. ARGV: burst.
-- Returns false without a record; else {data, place} where place is place_of's answer, or -3
-- when the record names no line member (the job is not waiting).
local v = redis.call('HMGET', KEYS[8], 'data', 'member')
if not v[1] then return false end
local place = -3
if v[2] then place = place_of(1, v[2], tonumber(ARGV[1])) end
return {v[1], place}
