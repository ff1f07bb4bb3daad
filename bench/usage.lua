-- wrk script for bench/usage.py: real POST /v1/usage requests, one per seeded user picked
-- at random, each with its own Idempotency-Key (run, thread, counter). The environment
-- and the summary line are described in bench_wrk.lua.

local bench = require("bench_wrk")

setup = bench.setup
delay = bench.delay
local COUNTERS = { "accepted", "refused" }

function init(args)
  bench.start(COUNTERS)
end

function request()
  bench.next_key()
  return wrk.format("POST", "/v1/usage", headers, bench.usage_body())
end

function response(status, response_headers, body)
  if status == 200 then
    accepted = accepted + 1
  elseif status == 402 then
    refused = refused + 1
  end
  bench.answered(status == 200 or status == 402, status, body)
end

function done(summary, latency, requests)
  bench.report(summary, latency, COUNTERS)
end
