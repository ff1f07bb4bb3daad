-- wrk script for bench/reservations.py: pairs of real requests, POST /v1/reservations for a
-- seeded user picked at random, then POST /v1/reservations/{id}/commit of the id its 201
-- answer gave, each request with its own Idempotency-Key (run, thread, counter). The
-- environment and the summary line are described in bench_wrk.lua.
--
-- Run it with one connection per thread (wrk -tN -cN): a thread's state is then one
-- connection's, so the request after a reservation is its commit. After BENCH_SECONDS a
-- connection still commits the reservation it holds and then sends nothing more, so
-- every reservation answered is committed before wrk's end.

local bench = require("bench_wrk")

setup = bench.setup
local COUNTERS = { "reserved", "committed", "refused" }

function init(args)
  bench.start(COUNTERS)
  pending = nil -- the id of the reservation this connection commits next
end

function delay()
  if pending == nil and bench.stopped() then
    bench.check_drained(false)
    return bench.WAIT_MS
  end
  return 0
end

function request()
  bench.next_key()
  if pending ~= nil then
    local path = "/v1/reservations/" .. pending .. "/commit"
    pending = nil
    return wrk.format("POST", path, headers, "{}")
  end
  return wrk.format("POST", "/v1/reservations", headers, bench.usage_body())
end

function response(status, response_headers, body)
  local ok = true
  if status == 201 then
    pending = string.match(body, '"id"%s*:%s*"([%x%-]+)"')
    ok = pending ~= nil
    reserved = reserved + 1
  elseif status == 200 then
    committed = committed + 1
  elseif status == 402 then
    refused = refused + 1
  else
    ok = false
  end
  bench.answered(ok, status, body, pending ~= nil)
end

function done(summary, latency, requests)
  bench.report(summary, latency, COUNTERS)
end
