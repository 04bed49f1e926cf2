-- Every script reads Redis's clock, so processes whose clocks disagree still agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
