-- wrk reporter: prints one machine-readable line after the run (see benchmarks/run.py).
-- Used alone for GET runs (`wrk -s benchmarks/wrk_report.lua ...`) and loaded by
-- post_order.lua for POST runs. No per-request Lua callback is defined, so wrk builds
-- the request once per thread and the client spends no Lua time per request.
-- $BENCH_AUTHORIZATION, when set, is sent as the Authorization header (benchmarks/run.py
-- sets it to "Bearer <token>", the token it minted for the run).

local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_WRK {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
