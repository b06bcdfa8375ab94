-- wrk script for bench.py's rate-limiting part: every request carries an X-Device-ID header
-- out of N distinct values, cycling through them in order (request k gets value k mod N), so
-- a rate-limit rule keyed on that header sees N keys, each coming back every N requests.
--
--   wrk -s bench/wrk-device-ids.lua URL -- N [HEADER [START]]
--
-- START (default 0) is where in the cycle the first request falls: a run that goes on where
-- the last one stopped keeps every value coming back at the same pace.
-- N = 0 sends the plain request, without the header (so no rule applies): for warm-ups.
-- The N requests are formatted once in init(), so wrk's cost per request is a
-- table lookup, the same whether or not the gateway limits (cases a, b and c of the bench).
-- Each wrk thread starts at another point of the cycle.

local threads = 0

function setup(thread)
   thread:set("thread_index", threads)
   threads = threads + 1
end

local reqs, n, i = nil, 0, 0

function init(args)
   n = tonumber(args[1]) or 100000
   local name = args[2] or "X-Device-ID"
   local start = tonumber(args[3]) or 0
   if n <= 0 then
      n = 1
      reqs = { wrk.format() }
      return
   end
   reqs = {}
   for k = 1, n do
      reqs[k] = wrk.format(nil, nil, { [name] = "device-" .. (k - 1) })
   end
   i = (start + (thread_index or 0) * 7919) % n
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   return reqs[i]
end
