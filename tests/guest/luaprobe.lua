-- A test tenant for the Lua binding (tests/test_lang_lua.py), run by Debian's lua5.4.
--   /echo    "method|path|query|body|x-a=<req:header('X-A')>|<n headers>" and the request's
--            headers back as x-echo-<name> (from the array form), status 201
--   /state   the global counter and cache it found ("count=N cache=K"), then bumps both
--   /random  math.random values and the request's own entropy, hex
--   /error   raises; /badheaders returns a header value that is not a string
--   /loop    never ends; /oom allocates until memory runs out
local tenantvm = require("tenantvm")

count = 0
local cache = {}
local seeded_at_init = math.random(1 << 40)

local function hex(s)
	return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

tenantvm.serve(function(req)
	if req.path == "/echo" then
		local out = { { "content-type", "text/plain" } }
		for _, h in ipairs(req.headers) do
			out[#out + 1] = { "x-echo-" .. h[1]:lower(), h[2] }
		end
		local body = table.concat({ req.method, req.path, req.query, req.body, "x-a=" .. tostring(req:header("X-A")),
			tostring(#req.headers) }, "|")
		return 201, out, body
	elseif req.path == "/state" then
		local n = 0
		for _ in pairs(cache) do n = n + 1 end
		local seen = "count=" .. count .. " cache=" .. n
		count = count + 1
		cache[req.body] = true
		return 200, { ["content-type"] = "text/plain" }, seen
	elseif req.path == "/random" then
		return 200, {}, string.format("%d %d %d %s", math.random(1 << 40), math.random(1 << 40), seeded_at_init,
			hex(req.random))
	elseif req.path == "/error" then
		error("the probe raised")
	elseif req.path == "/badheaders" then
		return 200, { ["x-bad"] = {} }, "never"
	elseif req.path == "/loop" then
		while true do end
	elseif req.path == "/oom" then
		local hog = {}
		while true do hog[#hog + 1] = string.rep("x", 1 << 20) .. #hog end
	end
	return 404, { ["content-type"] = "text/plain" }, "not found"
end)
