-- wrk script for bench/metering.py: real POST /v1/usage requests, one per seeded user
-- picked at random, each with its own Idempotency-Key (run, thread, counter).
--
-- Configured by the environment (bench/metering.py sets it):
--   BENCH_KEY      a Bearer API key with the `usage` scope
--   BENCH_PREFIX   the seeded emails' prefix (bulk.seed_users: <prefix>000123@bulk.example)
--   BENCH_FIRST    the first user's number, BENCH_USERS how many users
--   BENCH_TOKENS   tokens per request
--   BENCH_RUN      makes the idempotency keys unique across runs
--   BENCH_SECONDS  how long requests are sent; wrk's -d is longer, so the requests in
--                  flight at that time are answered and counted (the exactness check
--                  compares the 200s counted here with the tokens used in the database)
--
-- done() prints one line, "BENCH {json}", that bench/metering.py reads.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  key = os.getenv("BENCH_KEY")
  prefix = os.getenv("BENCH_PREFIX") or "user"
  first = tonumber(os.getenv("BENCH_FIRST") or "0")
  users = tonumber(os.getenv("BENCH_USERS") or "1")
  tokens = tonumber(os.getenv("BENCH_TOKENS") or "1")
  run = os.getenv("BENCH_RUN") or "bench"
  seconds = tonumber(os.getenv("BENCH_SECONDS") or "10")
  sent, accepted, refused, other = 0, 0, 0, 0
  started = now()
  cutoff = started + seconds
  last = started
  math.randomseed(tid * 7919 + os.time())
  headers = {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
  }
end

-- Called before each request: after the cutoff a connection waits out the run, so no
-- request is cut off by wrk's end.
function delay()
  if now() >= cutoff then
    return 3600000
  end
  return 0
end

function request()
  sent = sent + 1
  local email = string.format("%s%06d@bulk.example", prefix, first + math.random(0, users - 1))
  headers["Idempotency-Key"] = string.format("%s-%d-%d", run, tid, sent)
  local body = string.format(
    '{"user": "%s", "kind": "inference", "tokens": %d, "model": "bench"}', email, tokens
  )
  return wrk.format("POST", "/v1/usage", headers, body)
end

function response(status, response_headers, body)
  if status == 200 then
    accepted = accepted + 1
  elseif status == 402 then
    refused = refused + 1
  else
    other = other + 1
    if other <= 3 then
      io.stderr:write("unexpected answer " .. status .. ": " .. string.sub(body, 1, 300) .. "\n")
    end
  end
  last = now()
end

function done(summary, latency, requests)
  local totals = { sent = 0, accepted = 0, refused = 0, other = 0 }
  local begin, finish = math.huge, 0
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
    begin = math.min(begin, thread:get("started"))
    finish = math.max(finish, thread:get("last"))
  end
  -- wrk calls request() once on the first thread to check the script, without sending it.
  totals.sent = totals.sent - 1
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"sent": %d, "accepted": %d, "refused": %d, "other": %d, "seconds": %.4f, '
      .. '"p50_us": %d, "p99_us": %d, "max_us": %d, "socket_errors": %d}\n',
    totals.sent, totals.accepted, totals.refused, totals.other, math.max(finish - begin, 1e-9),
    latency:percentile(50), latency:percentile(99), latency.max,
    errors.connect + errors.read + errors.write + errors.timeout
  ))
end
