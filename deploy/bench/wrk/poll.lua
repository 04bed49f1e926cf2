-- `just bench-gateway`: GET /api/jobs/{id}, each request a job picked at random from the file
-- BENCH_IDS names (open jobs of the user BENCH_KEY belongs to).
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do
  ids[#ids + 1] = line
end
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")

request = function()
  return wrk.format("GET", "/api/jobs/" .. ids[math.random(#ids)])
end

done = function(summary, latency, requests)
  io.write(string.format("BENCH status_errors=%d\n", summary.errors.status))
end
