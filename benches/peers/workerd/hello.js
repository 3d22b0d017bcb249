// Hello function for the workerd peer (ES module worker).
export default {
  async fetch(request) {
    const name = new URL(request.url).searchParams.get("name");
    return new Response(JSON.stringify("Hello, " + name), {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  },
};
