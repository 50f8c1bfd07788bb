-- wrk script of loadtest/wrk.py: cycles through prepared requests, one per line of a list file
-- (args[1]): a body file, then "Name: value" headers, tab-separated. Every request is formatted
-- once in init(), so sending costs wrk nothing beyond the socket write. done() prints the
-- summary as one JSON line (WRK_JSON ...), exact numbers instead of wrk's rounded text.
local prepared = {}
local count, next_index = 0, 0

function init(args)
  local list = assert(io.open(args[1], "r"))
  for line in list:lines() do
    local fields = {}
    for field in string.gmatch(line, "[^\t]+") do
      fields[#fields + 1] = field
    end
    local file = assert(io.open(fields[1], "rb"))
    local body = file:read("*all")
    file:close()
    local headers = {}
    for k = 2, #fields do
      local name, value = string.match(fields[k], "^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    count = count + 1
    prepared[count] = wrk.format("POST", nil, headers, body)
  end
  list:close()
  assert(count > 0, "no requests in " .. args[1])
end

function request()
  next_index = next_index % count + 1
  return prepared[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, '
      .. '"read": %d, "write": %d, "status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, '
      .. '"max": %d, "p50": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
