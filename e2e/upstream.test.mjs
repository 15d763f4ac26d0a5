// The `upstream` example (topics fed from Redis pub/sub through the hub)
// behind a TCP proxy that can cut connections, with two EventSource
// implementations (Node's own and npm's `eventsource`) as the clients and
// `PUBLISH` written to Redis as the only publisher. Each one:
//
// 1. connects to `/events?topic=T` with nine more of its kind: Redis
//    counts one subscription of T (`PUBSUB NUMSUB`), and three messages
//    published on Redis arrive, in order, with increasing ids;
// 2. is cut off; two more are published on Redis while it is away (within
//    the linger, so the server still holds the subscription);
// 3. reconnects by itself with Last-Event-ID and gets exactly the two it
//    missed, then the next live one, with no resync, and Redis still
//    counts one subscription.
//
//   UPSTREAM_URL=http://127.0.0.1:PORT REDIS_PORT=PORT node upstream.test.mjs
//
// (`bash e2e/run.sh` starts a redis-server and the example for it.)

import net from "node:net";

import { EventSource as NpmEventSource } from "eventsource";
import { Failure, harness, openSource as open, runTest, startProxy } from "./support.mjs";

const UPSTREAM_URL = process.env.UPSTREAM_URL;
const REDIS_PORT = Number(process.env.REDIS_PORT);
const { started, log, check, waitFor } = harness("upstream");

/// One Redis command over a connection of its own; resolves to the reply's
/// last integer (`:N`), which is what PUBLISH and PUBSUB NUMSUB answer.
function redis(...args) {
  const command = `*${args.length}\r\n` +
    args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("");
  return new Promise((resolve, reject) => {
    const socket = net.connect(REDIS_PORT, "127.0.0.1", () => socket.write(command));
    let reply = "";
    socket.setTimeout(5_000, () => socket.destroy(new Failure(`redis ${args.join(" ")}: no answer`)));
    socket.on("data", (chunk) => {
      reply += chunk;
      const integers = [...reply.matchAll(/:(-?\d+)\r\n/g)];
      const complete = args[0] === "PUBSUB" ? integers.length >= 1 : integers.length === 1;
      if (reply.startsWith("-")) {
        socket.destroy();
        reject(new Failure(`redis ${args.join(" ")}: ${reply.trim()}`));
      } else if (complete) {
        socket.end();
        resolve(Number(integers[integers.length - 1][1]));
      }
    });
    socket.on("error", reject);
  });
}

const numsub = (topic) => redis("PUBSUB", "NUMSUB", topic);

/// Publishes `{"n": n}` on `topic`'s channel; checks it reached the
/// server's one subscription.
async function publish(topic, n) {
  const reached = await redis("PUBLISH", topic, JSON.stringify({ n }));
  if (reached !== 1) throw new Failure(`PUBLISH ${topic} reached ${reached} subscribers, not 1`);
}

const ns = (messages) => messages.map((m) => m.n);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const increasing = (messages) => messages.every((m, i) => {
  if (!m.id) return false;
  if (i === 0) return true;
  const [e0, s0] = messages[i - 1].id.split("-").map(BigInt);
  const [e1, s1] = m.id.split("-").map(BigInt);
  return e0 === e1 && s1 > s0;
});

async function scenario(name, Source, proxy, topic) {
  log(`--- ${name} on ${topic}`);
  const url = `http://127.0.0.1:${proxy.port}/events?topic=${encodeURIComponent(topic)}`;
  const before = proxy.eventRequests().length;
  const { source, seen } = open(Source, url);
  const others = Array.from({ length: 9 }, () => open(Source, url));
  try {
    await waitFor("ten streams open", () => [seen, ...others.map((o) => o.seen)]
      .every((s) => s.opens === 1), Boolean);
    await waitFor("the server's subscription", () => numsub(topic), (n) => n === 1);
    for (const n of [1, 2, 3]) await publish(topic, n);
    await waitFor("three live messages", () => seen.messages.length, (n) => n >= 3);
    check(same(ns(seen.messages), [1, 2, 3]) && increasing(seen.messages),
      `${name}: messages published on Redis arrive in order, with increasing ids`, seen.messages);
    await waitFor("the nine others to have them too",
      () => others.every((o) => o.seen.messages.length >= 3), Boolean);
    check(others.every((o) => same(o.seen.messages, seen.messages)),
      `${name}: every stream of the topic got the same messages under the same ids`);
    check(await numsub(topic) === 1, `${name}: ten streams, one Redis subscription`);

    proxy.sever();
    await waitFor("the client to notice the cut", () => seen.errors, (n) => n >= 1);
    for (const n of [4, 5]) await publish(topic, n);
    const reconnect = await waitFor("its own reconnect (held at the proxy)",
      () => proxy.eventRequests().slice(before).find((r) => r.cut), Boolean);
    check(reconnect.headers["last-event-id"] === seen.messages[2].id,
      `${name}: it reconnects with Last-Event-ID = the last id it got`, reconnect.headers);
    proxy.heal();

    await waitFor("the two missed messages", () => seen.messages.length, (n) => n >= 5);
    await publish(topic, 6);
    await waitFor("the next live message", () => seen.messages.length, (n) => n >= 6);
    check(same(ns(seen.messages), [1, 2, 3, 4, 5, 6]) && increasing(seen.messages),
      `${name}: resumed, it has every message exactly once, in order`, seen.messages);
    check(seen.resyncs.length === 0, `${name}: and no resync`, seen.resyncs);
    check(await numsub(topic) === 1, `${name}: still one Redis subscription`);
  } finally {
    source.close();
    for (const other of others) other.source.close();
  }
}

async function main() {
  if (!UPSTREAM_URL || !REDIS_PORT) {
    throw new Failure("UPSTREAM_URL and REDIS_PORT are not set (run bash e2e/run.sh)");
  }
  if (typeof EventSource !== "function") {
    throw new Failure("this Node has no EventSource (try --experimental-eventsource)");
  }
  const target = new URL(UPSTREAM_URL);
  const proxy = await startProxy({ host: target.hostname, port: Number(target.port) }, started);
  try {
    await scenario("Node's EventSource (undici)", EventSource, proxy, "room:node");
    await scenario("npm eventsource", NpmEventSource, proxy, "room:npm");
  } finally {
    await proxy.close();
  }
  const health = await (await fetch(new URL("/health", UPSTREAM_URL))).json();
  check(health.hub && health.hub.opens === 2 && health.hub.failures === 0,
    "two topics, each subscribed on Redis once, through every cut and reconnect", health.hub);
  log(`PASS in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

runTest("upstream", main);
