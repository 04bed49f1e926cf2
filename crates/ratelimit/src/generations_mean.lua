-- The generations recorded within the window (clock.lua is prepended): {count, sum as text}.
-- KEYS[1] the hash of generations_add.lua. ARGV: window ms. O(minutes in the window).
local oldest = math.floor(now / 60000) - math.ceil(tonumber(ARGV[1]) / 60000)
local all = redis.call('HGETALL', KEYS[1])
local sum, n = 0, 0
for i = 1, #all, 2 do
  local kind, m = string.sub(all[i], 1, 1), tonumber(string.sub(all[i], 3))
  if m and m >= oldest then
    if kind == 's' then sum = sum + tonumber(all[i + 1]) else n = n + tonumber(all[i + 1]) end
  end
end
return {n, tostring(sum)}
