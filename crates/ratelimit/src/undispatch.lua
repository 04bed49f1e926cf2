-- A dispatched job could not be handed to the workers: it goes back to its place in line and its
-- slot and window entry are given back. KEYS: the line's seven (L = 1), then the key's window and
-- leases. ARGV: member, tag, grant.
local _, class, user, job = parse(ARGV[1])
redis.call('HDEL', KEYS[7], job)
redis.call('ZREM', KEYS[8], ARGV[3])
redis.call('ZREM', KEYS[9], job)
redis.call('ZADD', line_of(1, class), tonumber(ARGV[2]), ARGV[1])
local tags = tags_of(1, class)
if tonumber(redis.call('HGET', tags, user) or 0) < tonumber(ARGV[2]) then
  redis.call('HSET', tags, user, ARGV[2])
end
return 1
