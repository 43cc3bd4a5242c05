-- wrk script for the Envoy benchmark: GET /api/items, a share of the requests
-- carrying the session cookie of a live session, the rest anonymous.
--
--   wrk ... -s bench/load.lua URL -- COOKIE_FILE AUTH_SHARE
--
-- COOKIE_FILE holds one cookie value per line (bench/run.py writes it after logging
-- in); AUTH_SHARE is the share of requests with a cookie (0..1, default 0.5). The
-- same script, file and share drive every configuration, so wrk's own cost and the
-- bytes on the wire are identical whatever Envoy runs. Requests are built once in
-- init(); request() only picks one (deterministically: no random numbers).
-- done() prints one line "BENCHJSON {...}" that bench/run.py parses.

local UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
local PATH = "/api/items"

local thread_ids = 0
function setup(thread)
  thread:set("thread_id", thread_ids)
  thread_ids = thread_ids + 1
end

local anon, authed = nil, {}
local share, acc, next_cookie = 0.5, 0, 1

function init(args)
  local file = args[1]
  share = tonumber(args[2] or "0.5")
  local headers = { ["User-Agent"] = UA, ["Accept"] = "application/json" }
  anon = wrk.format("GET", PATH, headers)
  if file and file ~= "" and share > 0 then
    for line in io.lines(file) do
      if line ~= "" then
        headers["Cookie"] = "theme=dark; session=" .. line
        authed[#authed + 1] = wrk.format("GET", PATH, headers)
      end
    end
  end
  if #authed == 0 then share = 0 end
  -- Threads start at different cookies so they do not walk the list in step.
  local id = tonumber(thread_id) or 0
  if #authed > 0 then next_cookie = (id * 7919) % #authed + 1 end
end

function request()
  acc = acc + share
  if acc >= 1 then
    acc = acc - 1
    local r = authed[next_cookie]
    next_cookie = next_cookie % #authed + 1
    return r
  end
  return anon
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
