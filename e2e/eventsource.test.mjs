// Two more EventSource implementations against the demo, besides the
// browser's: Node's own (undici's) and the `eventsource` package from npm,
// the one most Node programs use. Each one, through a proxy that can cut it
// off:
//
// 1. gets three live events in publish order, with the ids /publish answered;
// 2. is cut off (a TCP reset), misses two events published meanwhile, and
//    reconnects by itself after the `retry:` hint, sending `Last-Event-ID`
//    (the last id it saw) on the same URL;
// 3. then gets exactly the two it missed, then the next live one;
// and a new one given an id with the `lastEventId` query parameter gets
// exactly what came after it.
//
//   DEMO_URL=http://127.0.0.1:PORT node --experimental-eventsource eventsource.test.mjs
//
// (`bash e2e/run.sh` runs it after the browser test; Node 22 and later have
// EventSource without the flag.)

import { EventSource as NpmEventSource } from "eventsource";
import { Failure, harness, openSource as open, publishTo, runTest, startProxy } from "./support.mjs";

const DEMO_URL = process.env.DEMO_URL;
const WAIT_MS = 20_000;
const { started, log, check, waitFor } = harness("eventsource", { waitMs: WAIT_MS });

const publish = (n) => publishTo(DEMO_URL, n);
const ids = (messages) => messages.map((m) => m.id);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function scenario(name, Source, proxy) {
  log(`--- ${name}`);
  const url = `http://127.0.0.1:${proxy.port}/events?topic=public`;
  const before = proxy.eventRequests().length;
  const { source, seen } = open(Source, url);
  try {
    await waitFor("the stream to open", () => seen.opens, (n) => n === 1);

    const live = [];
    for (const n of [1, 2, 3]) live.push(await publish(n));
    await waitFor("three live events", () => seen.messages.length, (n) => n >= 3);
    check(same(ids(seen.messages), live), `${name}: live events carry the published ids, in order`, { seen, live });
    check(seen.messages.every((m, i) => m.n === i + 1), `${name}: each carries its own data`, seen.messages);

    const cut = proxy.sever();
    check(cut >= 1, `${name}: its connection is cut`, cut);
    await waitFor("the client to notice the cut", () => seen.errors, (n) => n >= 1);
    const missed = [await publish(4), await publish(5)];
    const reconnect = await waitFor("its own reconnect to /events (held at the proxy)",
      () => proxy.eventRequests().slice(before).find((r) => r.cut), Boolean);
    check(reconnect.headers["last-event-id"] === live[2],
      `${name}: it reconnects by itself with Last-Event-ID = the last id it saw`, reconnect.headers);
    check(reconnect.target === new URL(url).pathname + new URL(url).search,
      `${name}: on the same URL`, reconnect.target);
    proxy.heal();

    await waitFor("the two missed events", () => seen.messages.length, (n) => n >= 5);
    const after = await publish(6);
    await waitFor("the next live event", () => seen.messages.length, (n) => n >= 6);
    check(same(ids(seen.messages), [...live, ...missed, after]),
      `${name}: after the resume it has every event exactly once, in order`, { seen: seen.messages });
    check(seen.resyncs.length === 0, `${name}: and no resync`, seen.resyncs);
    check(seen.opens === 2 && seen.errors === 1, `${name}: one error, two opens`, seen);
    const gets = proxy.eventRequests().slice(before);
    check(gets.length === 2 && !("last-event-id" in gets[0].headers),
      `${name}: two GET /events in all, the first without Last-Event-ID`, gets.map((g) => g.headers));
  } finally {
    source.close();
  }

  // A first connect that resumes with the query parameter (browsers cannot
  // set the header on a first connect).
  const away = [await publish(7), await publish(8)];
  const from = encodeURIComponent(seen.messages.at(-1).id);
  const resumed = open(Source, `${url}&lastEventId=${from}`);
  try {
    await waitFor("the resumed stream's replay", () => resumed.seen.messages.length, (n) => n >= 2);
    const next = await publish(9);
    await waitFor("the next live event", () => resumed.seen.messages.length, (n) => n >= 3);
    check(same(ids(resumed.seen.messages), [...away, next]),
      `${name}: lastEventId replays exactly what came after it, then goes on live`, resumed.seen);
  } finally {
    resumed.source.close();
  }
}

async function main() {
  if (!DEMO_URL) throw new Failure("DEMO_URL is not set (run bash e2e/run.sh)");
  if (typeof EventSource !== "function") {
    throw new Failure("this Node has no EventSource (try --experimental-eventsource)");
  }
  const demo = new URL(DEMO_URL);
  const proxy = await startProxy({ host: demo.hostname, port: Number(demo.port) }, started);
  try {
    await scenario("Node's EventSource (undici)", EventSource, proxy);
    await scenario("npm eventsource", NpmEventSource, proxy);
  } finally {
    await proxy.close();
  }
  log(`PASS in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

runTest("eventsource", main);
