// A second, independent EventSource implementation against the demo:
// Node's own (undici's), straight to the demo's events route, which
// `tower_sse::serve` drives on its stream path. Live events arrive in
// publish order with the ids /publish answered; a new EventSource that
// resumes from an id with `lastEventId` gets exactly what came after it.
//
//   DEMO_URL=http://127.0.0.1:PORT node --experimental-eventsource undici.test.mjs
//
// (`bash e2e/run.sh` runs it after the browser test.)

const DEMO_URL = process.env.DEMO_URL;
const WAIT_MS = 20_000;
const started = Date.now();
const log = (...args) => console.log(`[undici +${((Date.now() - started) / 1000).toFixed(2)}s]`, ...args);

class Failure extends Error {}

function check(condition, message, detail) {
  if (condition) {
    log("ok:", message);
    return;
  }
  throw new Failure(message + (detail === undefined ? "" : "\n  got: " + JSON.stringify(detail)));
}

async function publish(n) {
  const response = await fetch(new URL("/publish", DEMO_URL), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "public", event: "message", data: { n } }),
  });
  const answer = await response.json();
  if (!response.ok || typeof answer.id !== "string") {
    throw new Failure(`POST /publish ${n}: ${response.status} ${JSON.stringify(answer)}`);
  }
  return answer.id;
}

/// Opens an EventSource and collects its `message` events.
function open(url) {
  const source = new EventSource(url);
  const received = [];
  let wake = () => {};
  source.addEventListener("message", (event) => {
    received.push({ id: event.lastEventId, data: JSON.parse(event.data) });
    wake();
  });
  const opened = new Promise((resolve, reject) => {
    source.onopen = () => resolve();
    source.onerror = () => reject(new Failure(`EventSource error on ${url} (readyState ${source.readyState})`));
  });
  const until = (count) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Failure(`only ${received.length} of ${count} events within ${WAIT_MS} ms`)),
        WAIT_MS,
      );
      wake = () => {
        if (received.length >= count) {
          clearTimeout(timer);
          resolve();
        }
      };
      wake();
    });
  return { source, received, opened, until };
}

async function main() {
  if (!DEMO_URL) throw new Failure("DEMO_URL is not set");
  if (typeof EventSource !== "function") throw new Failure("this Node has no EventSource (try --experimental-eventsource)");
  const url = new URL("/events?topic=public", DEMO_URL).toString();

  // Live: three events, in order, with the ids /publish answered.
  const live = open(url);
  await live.opened;
  const ids = [];
  for (const n of [1, 2, 3]) ids.push(await publish(n));
  await live.until(3);
  check(
    JSON.stringify(live.received.map((e) => e.id)) === JSON.stringify(ids),
    "live events carry the published ids, in order",
    { received: live.received, ids },
  );
  check(live.received.every((e, i) => e.data.n === i + 1), "each carries its own data", live.received);
  live.source.close();

  // Resume: two more published while no one listens; a new EventSource
  // given the last id seen gets those two, then live ones, nothing else.
  const missed = [await publish(4), await publish(5)];
  const resumed = open(`${url}&lastEventId=${encodeURIComponent(ids[2])}`);
  await resumed.opened;
  await resumed.until(2);
  const after = await publish(6);
  await resumed.until(3);
  check(
    JSON.stringify(resumed.received.map((e) => e.id)) === JSON.stringify([...missed, after]),
    "a resume from the last id seen replays exactly what came after it, then goes on live",
    { received: resumed.received, expected: [...missed, after] },
  );
  resumed.source.close();
  log(`PASS in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

const deadline = setTimeout(() => {
  console.error("[undici] FAIL: took over 60 s");
  process.exit(1);
}, 60_000);
deadline.unref();

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`[undici] FAIL: ${error instanceof Failure ? error.message : error && error.stack ? error.stack : error}`);
    process.exit(1);
  },
);
