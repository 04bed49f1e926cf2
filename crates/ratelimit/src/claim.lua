-- A worker takes the grant the dispatcher left for a job (clock.lua is prepended).
-- KEYS[1] granted (hash: job -> "key|grant|dispatch|probe|ms"). ARGV: job, key prefix, lease ms.
-- Returns the record and renews the job's slot; nil when there is none or its slot has expired
-- (the job then waits for a slot like a retry).
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local key_id = string.match(rec, '^([^|]*)|')
local leases = ARGV[2] .. ':key:' .. key_id .. ':leases'
local expiry = redis.call('ZSCORE', leases, ARGV[1])
if not expiry or tonumber(expiry) <= now then return false end
redis.call('ZADD', leases, now + tonumber(ARGV[3]), ARGV[1])
return rec
