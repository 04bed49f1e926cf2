-- Which of these jobs does Redis hold nowhere? For the reconciler (clock.lua and line.lua are
-- prepended). KEYS: the line's seven (L = 1), then the work queue's ready list, its scheduled set
-- and its workers set (each member is a worker's name; its in-flight set is the in-flight prefix,
-- ':', and the name).
-- ARGV: lease ms, the in-flight prefix, then members. Returns the 1-based indexes of the members found neither in
-- line, nor scheduled, nor dispatched, nor anywhere in the work queue. A dispatch record older
-- than a slot lease (its dispatcher died before the handoff) no longer counts, and is removed.
local inflight = redis.call('ZRANGE', KEYS[10], 0, -1)
local lease_ms, inflight_prefix = tonumber(ARGV[1]), ARGV[2]
local absent = {}
for i = 3, #ARGV do
  local member = ARGV[i]
  local _, class, _, job = parse(member)
  local dispatched = false
  local rec = redis.call('HGET', KEYS[7], job)
  if rec then
    local at = tonumber(string.match(rec, '|(%d+)$') or 0)
    if at + lease_ms > now then
      dispatched = true
    else
      redis.call('HDEL', KEYS[7], job)
    end
  end
  local held = dispatched
    or redis.call('ZSCORE', line_of(1, class), member)
    or redis.call('ZSCORE', KEYS[3], member)
    or redis.call('ZSCORE', KEYS[9], job)
    or redis.call('LPOS', KEYS[8], job)
  if not held then
    for _, set in ipairs(inflight) do
      if redis.call('SISMEMBER', inflight_prefix .. ':' .. set, job) == 1 then held = true break end
    end
  end
  if not held then absent[#absent + 1] = i - 2 end
end
return absent
