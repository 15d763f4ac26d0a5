// Two replicas of the demo on one Redis, behind a TCP "load balancer" that
// sends each new connection to the replica it currently points at, and two
// EventSource implementations (Node's own and npm's `eventsource`) as the
// clients. Each one:
//
// 1. connects through the balancer to replica A and gets three live events,
//    published on A and B alternately, in publish order, with the ids
//    /publish answered (the same on both replicas);
// 2. is cut off; the balancer now points at B; two events are published
//    (on A) while it is away;
// 3. reconnects by itself with Last-Event-ID, lands on B, and gets exactly
//    the two it missed, then the next live one, with no resync.
//
// Then the mailbox, kept in Redis by both replicas, with each client as
// `?as=NAME` on A: a notification sent on B reaches it live on A; cut off
// and pointed at B, it misses one sent on A, reconnects to B with the id A
// gave it, and gets exactly the one it missed (the first, proven by that
// id, is not sent again); the status on A says the first is delivered.
//
//   A_URL=http://127.0.0.1:PORT B_URL=http://127.0.0.1:PORT node replicas.test.mjs
//
// (`bash e2e/run.sh` starts a redis-server and the two replicas for it.)

import { EventSource as NpmEventSource } from "eventsource";
import { Failure, harness, openSource as open, publishTo, runTest, startProxy } from "./support.mjs";

const A_URL = process.env.A_URL;
const B_URL = process.env.B_URL;
const { started, log, check, waitFor } = harness("replicas");

const ids = (messages) => messages.map((m) => m.id);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function scenario(name, Source, proxy, upstream, a, b, n0) {
  log(`--- ${name}`);
  upstream.port = Number(a.port);
  const url = `http://127.0.0.1:${proxy.port}/events?topic=public`;
  const before = proxy.eventRequests().length;
  const { source, seen } = open(Source, url);
  try {
    await waitFor("the stream to open on A", () => seen.opens, (n) => n === 1);
    const live = [];
    for (const [i, on] of [a, b, a].entries()) live.push(await publishTo(on, n0 + i));
    await waitFor("three live events", () => seen.messages.length, (n) => n >= 3);
    check(same(ids(seen.messages), live),
      `${name}: events published on either replica reach it on A, with the ids /publish answered, in order`,
      { seen: seen.messages, live });

    proxy.sever();
    upstream.port = Number(b.port);
    await waitFor("the client to notice the cut", () => seen.errors, (n) => n >= 1);
    const missed = [await publishTo(a, n0 + 3), await publishTo(a, n0 + 4)];
    const reconnect = await waitFor("its own reconnect (held at the balancer)",
      () => proxy.eventRequests().slice(before).find((r) => r.cut), Boolean);
    check(reconnect.headers["last-event-id"] === live[2],
      `${name}: it reconnects with Last-Event-ID = the last id A gave it`, reconnect.headers);
    proxy.heal();

    await waitFor("the two missed events, from B", () => seen.messages.length, (n) => n >= 5);
    const after = await publishTo(b, n0 + 5);
    await waitFor("the next live event", () => seen.messages.length, (n) => n >= 6);
    check(same(ids(seen.messages), [...live, ...missed, after]),
      `${name}: resumed on B with A's id, it has every event exactly once, in order`, seen.messages);
    check(seen.resyncs.length === 0, `${name}: and no resync`, seen.resyncs);
    check(seen.opens === 2, `${name}: two opens`, seen);
  } finally {
    source.close();
  }
}

async function notifyVia(base, from, to, n) {
  const response = await fetch(new URL(`/notify?as=${from}`, base), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ to, payload: { n } }),
    signal: AbortSignal.timeout(5_000),
  });
  const answer = await response.json();
  if (!response.ok || typeof answer.trace !== "string") {
    throw new Failure(`POST ${base}/notify: ${response.status} ${JSON.stringify(answer)}`);
  }
  return answer.trace;
}

async function statusVia(base, as, trace) {
  const response = await fetch(new URL(`/notifications/${trace}?as=${as}`, base), {
    signal: AbortSignal.timeout(5_000),
  });
  if (!response.ok) throw new Failure(`GET status ${trace}: ${response.status}`);
  return response.json();
}

async function mailboxScenario(name, Source, proxy, upstream, a, b, who) {
  log(`--- ${name}: the mailbox across replicas`);
  upstream.port = Number(a.port);
  const before = proxy.eventRequests().length;
  const { source, seen } = open(Source, `http://127.0.0.1:${proxy.port}/events?as=${who}`);
  try {
    await waitFor("the stream to open on A", () => seen.opens, (n) => n === 1);
    const first = await notifyVia(b, "alice", who, 1);
    await waitFor("the notification sent on B", () => seen.notifications.length, (n) => n >= 1);
    check(seen.notifications[0].trace === first,
      `${name}: a notification sent on B reaches it live on A`, seen.notifications);

    proxy.sever();
    upstream.port = Number(b.port);
    await waitFor("the client to notice the cut", () => seen.errors, (n) => n >= 1);
    const second = await notifyVia(a, "alice", who, 2);
    const reconnect = await waitFor("its own reconnect (held at the balancer)",
      () => proxy.eventRequests().slice(before).find((r) => r.cut), Boolean);
    check(reconnect.headers["last-event-id"] === seen.notifications[0].id,
      `${name}: it reconnects with Last-Event-ID = the notification's id on A`, reconnect.headers);
    proxy.heal();

    await waitFor("the one it missed, from B", () => seen.notifications.length, (n) => n >= 2);
    const second_status = await statusVia(a, "alice", second);
    const first_status = await statusVia(a, "alice", first);
    check(same(seen.notifications.map((m) => m.trace), [first, second]),
      `${name}: on B it gets exactly the one sent while away, not the first again`, seen.notifications);
    check(first_status.delivered === true && second_status.delivered === false,
      `${name}: the id A gave proved the first on B; the second awaits proof`,
      { first_status, second_status });
  } finally {
    source.close();
  }
}

async function main() {
  if (!A_URL || !B_URL) throw new Failure("A_URL and B_URL are not set (run bash e2e/run.sh)");
  if (typeof EventSource !== "function") {
    throw new Failure("this Node has no EventSource (try --experimental-eventsource)");
  }
  const a = new URL(A_URL);
  const b = new URL(B_URL);
  const upstream = { host: a.hostname, port: Number(a.port) };
  const proxy = await startProxy(upstream, started);
  try {
    await scenario("Node's EventSource (undici)", EventSource, proxy, upstream, a, b, 100);
    await scenario("npm eventsource", NpmEventSource, proxy, upstream, a, b, 200);
    await mailboxScenario("Node's EventSource (undici)", EventSource, proxy, upstream, a, b, "bob");
    await mailboxScenario("npm eventsource", NpmEventSource, proxy, upstream, a, b, "carol");
  } finally {
    await proxy.close();
  }
  log(`PASS in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

runTest("replicas", main);
