// deno.localhost: Hello World! from an unmodified deno, through the SDK's serve (sdk/deno).
import { serve } from "/opt/tenantvm/deno/tenantvm.ts";

serve(() => new Response("Hello World!", { headers: { "content-type": "text/plain" } }));
