-- lua.localhost: Debian's lua5.4 answering "Hello World!" through the SDK's tenantvm module.
local tenantvm = require("tenantvm")

tenantvm.serve(function(req)
	return 200, { ["content-type"] = "text/plain" }, "Hello World!"
end)
