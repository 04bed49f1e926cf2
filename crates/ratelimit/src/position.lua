-- A job's place in the real dispatch order (clock.lua and line.lua are prepended; see place_of).
-- KEYS: the line's seven (L = 1). ARGV: member, burst.
-- Returns the 1-based position, 0 scheduled, -1 dispatched (starting), -2 not in line.
return place_of(1, ARGV[1], tonumber(ARGV[2]))
