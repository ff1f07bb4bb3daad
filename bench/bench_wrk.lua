-- What the wrk scripts of bench/ share (usage.lua, batch.lua, reservations.lua): the clock,
-- the thread registry, the cutoff after which a connection stops sending, a random seeded
-- user, and the one "BENCH {json}" line that bench/load.py reads. bench/load.py puts this
-- folder on LUA_PATH, so a script says `local bench = require("bench_wrk")`.
--
-- Configured by the environment (bench/load.py sets it):
--   BENCH_KEY      a Bearer API key with the `usage` scope
--   BENCH_PREFIX   the seeded emails' prefix (bulk.seed_users: <prefix>000123@bulk.example)
--   BENCH_FIRST    the first user's number, BENCH_USERS how many users
--   BENCH_TOKENS   tokens per request (per event in a batch)
--   BENCH_RUN      makes the idempotency keys unique across runs
--   BENCH_SECONDS  how long requests are sent; wrk's -d is longer (by wrk's --timeout, the
--                  longest a request may take), so the requests in flight at that time are
--                  answered and counted (the exactness checks compare what is counted here
--                  with the tokens in the database). A thread whose every request is answered
--                  after that time writes "BENCH-DRAINED <thread>" on stderr: once every
--                  thread has, bench/load.py stops wrk (SIGINT) instead of waiting out -d.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local bench = {}
local threads = {}

-- A delay long enough to outlast any run: the connection sends nothing more.
bench.WAIT_MS = 3600000

function bench.now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

function bench.setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

-- Called from each script's init(): the settings and the counters every script has, as
-- globals of the thread (done() reads them with thread:get).
function bench.start(counters)
  key = os.getenv("BENCH_KEY")
  prefix = os.getenv("BENCH_PREFIX") or "user"
  first = tonumber(os.getenv("BENCH_FIRST") or "0")
  users = tonumber(os.getenv("BENCH_USERS") or "1")
  tokens = tonumber(os.getenv("BENCH_TOKENS") or "1")
  run = os.getenv("BENCH_RUN") or "bench"
  for _, name in ipairs(counters) do
    _G[name] = 0
  end
  sent, other, answers = 0, 0, 0
  drained = false
  started = bench.now()
  cutoff = started + tonumber(os.getenv("BENCH_SECONDS") or "10")
  last = started
  math.randomseed(tid * 7919 + os.time())
  headers = {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
  }
end

function bench.stopped()
  return bench.now() >= cutoff
end

-- Once, when past the cutoff every request this thread sent is answered and `more` (the
-- script has a request still to send, such as a commit) is not true: "BENCH-DRAINED".
-- (wrk calls request() once on the first thread to check the script, without sending it.)
function bench.check_drained(more)
  local owed = sent - answers - (tid == 1 and 1 or 0)
  if not drained and not more and owed <= 0 and bench.stopped() then
    drained = true
    io.stderr:write(string.format("BENCH-DRAINED %d\n", tid))
    io.stderr:flush()
  end
end

-- delay() for scripts without pending work: after the cutoff a connection waits out the
-- run, so no request is cut off by wrk's end.
function bench.delay()
  if bench.stopped() then
    bench.check_drained(false)
    return bench.WAIT_MS
  end
  return 0
end

-- The next request's own Idempotency-Key: run, thread, counter.
function bench.next_key()
  sent = sent + 1
  local key = string.format("%s-%d-%d", run, tid, sent)
  headers["Idempotency-Key"] = key
  return key
end

function bench.random_email()
  return string.format("%s%06d@bulk.example", prefix, first + math.random(0, users - 1))
end

-- The body of a usage or a reservation: a random seeded user, BENCH_TOKENS inference tokens.
function bench.usage_body()
  return string.format(
    '{"user": "%s", "kind": "inference", "tokens": %d, "model": "bench"}',
    bench.random_email(), tokens
  )
end

-- Every answer: when it came, and the first few unexpected ones on stderr. `more`: this
-- connection has another request to send (see check_drained).
function bench.answered(expected, status, body, more)
  last = bench.now()
  answers = answers + 1
  if not expected then
    other = other + 1
    if other <= 3 then
      io.stderr:write("unexpected answer " .. status .. ": " .. string.sub(body, 1, 300) .. "\n")
    end
  end
  bench.check_drained(more)
end

-- done(): the counters summed over threads, the time from the first start to the last
-- answer, wrk's latencies and its errors, as one line. wrk counts a "timeout" for every
-- connection whose last request is older than --timeout at each of its 2-second checks,
-- idle ones included: the requests sent and not answered are `sent` less the answers.
function bench.report(summary, latency, counters)
  local names = { "sent", "other" }
  for _, name in ipairs(counters) do
    table.insert(names, name)
  end
  local totals = {}
  local begin, finish = math.huge, 0
  for _, name in ipairs(names) do
    totals[name] = 0
  end
  for _, thread in ipairs(threads) do
    for _, name in ipairs(names) do
      totals[name] = totals[name] + thread:get(name)
    end
    begin = math.min(begin, thread:get("started"))
    finish = math.max(finish, thread:get("last"))
  end
  -- The request() wrk called on the first thread to check the script was not sent.
  totals.sent = totals.sent - 1
  local errors = summary.errors
  local fields = {}
  for _, name in ipairs(names) do
    table.insert(fields, string.format('"%s": %d', name, totals[name]))
  end
  io.write(string.format(
    'BENCH {%s, "seconds": %.4f, "p50_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"socket_errors": %d, "timeouts": %d}\n',
    table.concat(fields, ", "), math.max(finish - begin, 1e-9),
    latency:percentile(50), latency:percentile(99), latency.max,
    errors.connect + errors.read + errors.write, errors.timeout
  ))
end

return bench
