-- wrk script for bench/batch.py: real POST /v1/usage/batch requests of BENCH_EVENTS events
-- (1,000 unless told), each event for a seeded user picked at random, each with its own
-- idempotency_key (run, thread, request counter, event number). The body is made here,
-- per request. The environment and the summary line are described in bench_wrk.lua.
--
-- Counted from the answers: the batches answered 200 and the events they accepted and
-- refused, read from the answer's top-level "accepted" and "refused" counts.

local bench = require("bench_wrk")

setup = bench.setup
delay = bench.delay
local COUNTERS = { "batches", "accepted", "refused" }

function init(args)
  bench.start(COUNTERS)
  events = tonumber(os.getenv("BENCH_EVENTS") or "1000")
end

function request()
  local key = bench.next_key()
  local parts = {}
  for index = 1, events do
    parts[index] = string.format(
      '{"user":"%s","kind":"inference","tokens":%d,"idempotency_key":"%s-%d","model":"bench"}',
      bench.random_email(), tokens, key, index
    )
  end
  local body = '{"events":[' .. table.concat(parts, ",") .. "]}"
  return wrk.format("POST", "/v1/usage/batch", headers, body)
end

function response(status, response_headers, body)
  local ok = status == 200
  if ok then
    -- The first "accepted" with a number is the batch's count (each result's is a boolean).
    local accepted_here = tonumber(string.match(body, '"accepted"%s*:%s*(%d+)'))
    local refused_here = tonumber(string.match(body, '"refused"%s*:%s*(%d+)'))
    ok = accepted_here ~= nil and refused_here ~= nil
    if ok then
      batches = batches + 1
      accepted = accepted + accepted_here
      refused = refused + refused_here
    end
  end
  bench.answered(ok, status, body)
end

function done(summary, latency, requests)
  bench.report(summary, latency, COUNTERS)
end
