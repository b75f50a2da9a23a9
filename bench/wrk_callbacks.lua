-- wrk script: POST pre-made callbacks in turn, count answers by status, print one JSON line.
-- wrk -s wrk_callbacks.lua URL -- TARGETS   (TARGETS: one "<path>\t<JSON body>" per line)

local threads = {}
local requests = {}
local next_index = 1
statuses = {}

function setup(thread)
   thread:set("thread_number", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "r"))
   for line in file:lines() do
      local path, body = line:match("^([^\t]+)\t(.*)$")
      if path then
         local headers = { ["Content-Type"] = "application/json" }
         requests[#requests + 1] = wrk.format("POST", path, headers, body)
      end
   end
   file:close()
   assert(#requests > 0, "no targets in " .. args[1])
   -- Threads start at different places, so no two post the same callback at once.
   next_index = (thread_number * 7919) % #requests + 1
end

function request()
   local chosen = requests[next_index]
   next_index = next_index % #requests + 1
   return chosen
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests_done)
   local counts = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(counts) do
      parts[#parts + 1] = string.format('"%d":%d', status, count)
   end
   local errors = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests":%d,"duration_us":%d,"statuses":{%s},' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
      summary.requests, summary.duration, table.concat(parts, ","),
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
