-- `just bench-gateway`: POST /api/ai/edit as one user (limits off), the body a client sends.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.body = '{"image_url":"https://cdn.example.com/rings/solitaire.jpg","prompt":"enhance lighting"}'

done = function(summary, latency, requests)
  io.write(string.format("BENCH status_errors=%d\n", summary.errors.status))
end
