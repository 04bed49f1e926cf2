-- Which of these jobs does Redis hold nowhere? For the reconciler (clock.lua and line.lua are
-- prepended). KEYS: the line's seven (L = 1), then the work queue's ready list, its scheduled set
-- and its workers set (whose members name each worker's in-flight set).
-- ARGV: members. Returns the 1-based indexes of the members found neither in line, nor
-- scheduled, nor dispatched, nor anywhere in the work queue.
local inflight = redis.call('ZRANGE', KEYS[10], 0, -1)
local absent = {}
for i, member in ipairs(ARGV) do
  local _, class, _, job = parse(member)
  local held = redis.call('ZSCORE', line_of(1, class), member)
    or redis.call('ZSCORE', KEYS[3], member)
    or redis.call('HEXISTS', KEYS[7], job) == 1
    or redis.call('ZSCORE', KEYS[9], job)
    or redis.call('LPOS', KEYS[8], job)
  if not held then
    for _, set in ipairs(inflight) do
      if redis.call('SISMEMBER', set, job) == 1 then held = true break end
    end
  end
  if not held then absent[#absent + 1] = i end
end
return absent
