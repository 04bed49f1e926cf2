-- Add a job to the line, or to the scheduled set until its time (clock.lua and line.lua are
-- prepended). KEYS: the line's seven (L = 1). ARGV: member, due ms (0 = now), wake channel.
-- Returns 1 in line, 2 scheduled, 0 already dispatched. Safe to repeat.
return enqueue(1, ARGV[1], tonumber(ARGV[2]), ARGV[3])
