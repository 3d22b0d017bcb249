// Hello function for the deno peer.
// Run: deno run --no-config --no-prompt --allow-net=127.0.0.1 --allow-env=PORT hello.ts
const port = Number(Deno.env.get("PORT") ?? "8080");

Deno.serve(
  { port, hostname: "127.0.0.1", onListen() {} },
  (request: Request): Response => {
    const name = new URL(request.url).searchParams.get("name");
    return new Response(JSON.stringify("Hello, " + name), {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  },
);
