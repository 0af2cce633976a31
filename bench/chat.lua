-- wrk script: POST a small chat completion (BODY_STREAM=1 for streaming)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
if os.getenv("BENCH_STREAM") == "1" then
  wrk.body = '{"model":"' .. os.getenv("BENCH_MODEL") .. '","stream":true,"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
else
  wrk.body = '{"model":"' .. os.getenv("BENCH_MODEL") .. '","messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
end
done = function(summary, latency, requests)
  io.write(string.format("BENCHJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"errors\": %d, \"non2xx\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.errors.status))
end
