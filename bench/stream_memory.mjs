// Opens N event streams on the server at URL: over h2c, 200 per connection
// (hyper's limit of concurrent streams), or over HTTP/1.1, one connection
// each. Prints "ready" once every stream got its first bytes, and holds
// them until stdin closes. Used by bench/stream_memory.sh.
import http from "node:http";
import http2 from "node:http2";

const [url, n, mode] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const PER_H2_CONNECTION = 200;
let ready = 0;
const opened = () => {
  if (++ready === n) console.log("ready");
};
const fail = (what) => (error) => {
  console.error(`${what}: ${error.message}`);
  process.exit(1);
};

if (mode === "h2") {
  let session;
  for (let i = 0; i < n; i++) {
    if (i % PER_H2_CONNECTION === 0) {
      session = http2.connect(url);
      session.on("error", fail("connection"));
    }
    const stream = session.request({ ":path": "/events", accept: "text/event-stream" });
    stream.once("data", opened);
    stream.on("error", fail("stream"));
  }
} else {
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  for (let i = 0; i < n; i++) {
    http
      .get(`${url}/events`, { agent, headers: { accept: "text/event-stream" } }, (res) =>
        res.once("data", opened),
      )
      .on("error", fail("request"));
  }
}
process.stdin.resume();
process.stdin.on("end", () => process.exit(0));
