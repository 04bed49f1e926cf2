-- Keep a job's record if it is not older than the stored one (line.lua is prepended).
-- KEYS[1] the record. ARGV: rev, data, member ('' = none), ttl ms, events channel. Returns 1 if
-- written.
return write_record(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
