-- wrk script: the mixed workload of the single-node benchmark.
-- 25% deposit, 25% withdraw, 25% move_money between two random accounts, 25% check_account,
-- over the account ids listed one per line in the file named by ACCOUNTS (env).
local ids = {}
local path = os.getenv("ACCOUNTS") or "bench/accounts.txt"
for line in io.lines(path) do
  ids[#ids + 1] = line
end
assert(#ids >= 2, "need at least two account ids in " .. path)

local json = { ["Content-Type"] = "application/json" }

local function pick()
  return ids[math.random(#ids)]
end

function setup(thread)
  thread:set("seed", math.random(1, 1e9))
end

function init(args)
  math.randomseed(seed or os.time())
end

request = function()
  local r = math.random(4)
  if r == 1 then
    return wrk.format("POST", "/deposit_money", json,
      string.format('{"account_id":"%s","amount":%d.%02d}', pick(), math.random(1, 20), math.random(0, 99)))
  elseif r == 2 then
    return wrk.format("POST", "/withdraw_money", json,
      string.format('{"account_id":"%s","amount":0.%02d}', pick(), math.random(1, 99)))
  elseif r == 3 then
    local a, b = pick(), pick()
    while b == a do b = pick() end
    return wrk.format("POST", "/move_money", json,
      string.format('{"source":{"account_id":"%s"},"destination":{"account_id":"%s"},"amount":0.%02d}',
        a, b, math.random(1, 99)))
  else
    return wrk.format("GET", "/check_account?account_id=" .. pick())
  end
end

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  local p = function(q) return latency:percentile(q) / 1000.0 end
  io.write(string.format("requests=%d errors(socket)=%d duration_s=%.1f ops_per_s=%.0f\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, summary.requests / (summary.duration / 1e6)))
  io.write(string.format("latency_ms p50=%.2f p90=%.2f p99=%.2f p99.9=%.2f max=%.2f\n",
    p(50), p(90), p(99), p(99.9), latency.max / 1000.0))
  io.write(string.format("non_2xx=%d\n", summary.errors.status))
end
