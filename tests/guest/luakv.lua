-- A test tenant for the Lua binding's key-value calls (tests/test_lang_lua.py), run by lua5.4.
--   /incr     kv_incr("n"): the count
--   /set      kv_set("v", body, ttl from the query (ms, default none)): "ok"
--   /get      kv_get("v"): the value, or "<nil>"
--   /delete   kv_delete("v"): "true" or "false"
--   /error?K  the error object of a failing call K (badincr: incr of a non-integer, longkey,
--             bigvalue, ops: more calls than a request may make): "code errno unavailable call"
--   /raise    kv_incr("n") without handling its error (a store down answers 503)
local tenantvm = require("tenantvm")

local failing = {
	badincr = function() tenantvm.kv_set("v", "not a number"); tenantvm.kv_incr("v") end,
	longkey = function() tenantvm.kv_get(string.rep("k", 513)) end,
	bigvalue = function() tenantvm.kv_set("v", string.rep("x", 65537)) end,
	ops = function() for _ = 1, 100 do tenantvm.kv_get("n") end end,
	negttl = function() tenantvm.kv_set("v", "x", -1) end,
}

tenantvm.serve(function(req)
	local body
	if req.path == "/incr" then
		body = tostring(tenantvm.kv_incr("n"))
	elseif req.path == "/set" then
		tenantvm.kv_set("v", req.body, tonumber(req.query) or 0)
		body = "ok"
	elseif req.path == "/get" then
		body = tenantvm.kv_get("v") or "<nil>"
	elseif req.path == "/delete" then
		body = tostring(tenantvm.kv_delete("v"))
	elseif req.path == "/error" then
		local ok, e = pcall(failing[req.query])
		if ok then
			body = "no error"
		elseif tenantvm.is_kv_error(e) then
			body = table.concat({ e.code, e.errno, tostring(e.unavailable), e.call, tostring(e) }, " ")
		else
			body = "other: " .. tostring(e)
		end
	elseif req.path == "/raise" then
		body = tostring(tenantvm.kv_incr("n", 10))
	else
		return 404, nil, ""
	end
	return 200, { ["content-type"] = "application/octet-stream" }, body
end)
