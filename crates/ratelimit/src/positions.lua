-- Many jobs' places in one look (clock.lua and line.lua are prepended; see place_of): what the
-- console's view of the line's head reads, in one round trip however many jobs it shows.
-- KEYS: the line's seven (L = 1). ARGV: burst, then the members.
-- Returns each member's place as position.lua does, in ARGV's order.
local burst = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = place_of(1, ARGV[i], burst)
end
return out
