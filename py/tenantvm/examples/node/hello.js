// node.localhost: an unmodified node answering "Hello World!" through the SDK's tenantvm module.
const { serve } = require("/opt/tenantvm/node/tenantvm.js");

serve(() => ({ status: 200, headers: { "content-type": "text/plain" }, body: "Hello World!" }));
