-- One generation's duration into its minute's sum and count (clock.lua is prepended), and the
-- minutes older than the window dropped. KEYS[1] the hash (s:<minute> sum, n:<minute> count).
-- ARGV: window ms, seconds.
local minute = math.floor(now / 60000)
local oldest = minute - math.ceil(tonumber(ARGV[1]) / 60000)
redis.call('HINCRBYFLOAT', KEYS[1], 's:' .. minute, ARGV[2])
redis.call('HINCRBY', KEYS[1], 'n:' .. minute, 1)
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local m = tonumber(string.sub(f, 3))
  if m and m < oldest then redis.call('HDEL', KEYS[1], f) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
