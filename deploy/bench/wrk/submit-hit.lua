-- `just bench-gateway`: POST /api/ai/edit of an upload whose result is cached (issue I): every
-- submit is a hit, completed in the submit itself (BENCH_IMAGE is the upload's URL).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.body = '{"image_url":"' .. os.getenv("BENCH_IMAGE") .. '","prompt":"enhance lighting"}'

done = function(summary, latency, requests)
  io.write(string.format("BENCH status_errors=%d\n", summary.errors.status))
end
