// End-to-end: twelve EventSources in one headless Chromium tab, all to one
// origin, over HTTPS with HTTP/2 and over plain HTTP/1.1.
//
// 1. HTTPS (the demo with `--tls`, its certificate self-signed): the demo
//    page loads over h2 and its own stream opens; the page then closes it
//    and opens 12 EventSources. All 12 open (the Chrome DevTools Protocol
//    reports `h2` for each response, `/metrics` counts 12 streams open),
//    and every one receives each event the page then publishes
//    (`POST /publish`, over h2 too), live, in order, with its id.
// 2. The TLS demo is sent SIGTERM with the 12 open: each of them gets the
//    `shutdown` event, and the demo prints `stopped` without having to
//    give up on a connection (its HTTP/2 connection ended).
// 3. Plain HTTP/1.1 (the demo `run.sh` started for the other tests): the
//    same 12 EventSources. Chromium opens at most six connections to an
//    origin, and an event stream never gives its connection back: the
//    first six open and receive every event, the seventh to twelfth stay
//    CONNECTING, unanswered. Closing them frees the origin.
//
//   DEMO_URL=http://127.0.0.1:PORT TLS_URL=https://127.0.0.1:PORT \
//   TLS_PID=PID TLS_LOG=path/to/its.log node http2.test.mjs
//
// (`bash e2e/run.sh` starts both demos and sets these.)
//
// Environment:
//   DEMO_URL         the plain demo (required)
//   TLS_URL          the demo started with --tls (required)
//   TLS_PID          its pid, to stop it (required)
//   TLS_LOG          its output, where it says it stopped (required)
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
//   E2E_ARTIFACTS    where a failure's screenshot goes (default ./artifacts)
//   E2E_TIMEOUT_MS   the whole test's deadline (default 60000)

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CHROMIUM_ARGS, Failure, harness, publishTo, runTest } from "./support.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEMO_URL = process.env.DEMO_URL;
const TLS_URL = process.env.TLS_URL;
const TLS_PID = Number(process.env.TLS_PID);
const TLS_LOG = process.env.TLS_LOG;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || path.join(HERE, "artifacts"));
const TOTAL_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 60_000);
const WAIT_MS = 20_000;
/// EventSources opened on each origin: twice Chromium's six HTTP/1.1
/// connections per origin.
const SOURCES = 12;
/// Chromium's limit of HTTP/1.1 connections to one origin.
const H1_CONNECTIONS = 6;
/// Events published to each set of sources.
const EVENTS = 3;
/// How long the seventh to twelfth HTTP/1.1 sources must stay unopened
/// after the first six got every event. A stall cannot be observed
/// happening, only lasting: this is the one wait in the test whose passing
/// is the assertion. Everything it waits behind (the six open, the events
/// delivered) already happened, so a source that could open would have.
const STALL_MS = 2_000;

// The usual flags, and accept the TLS demo's self-signed certificate.
const CHROMIUM_FLAGS = [...CHROMIUM_ARGS, "--ignore-certificate-errors"];

const { log, check, waitFor } = harness("http2", { waitMs: WAIT_MS });
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- in the page -------------------------------------------------------------

/// Loads the demo page at `base`, waits for its own stream to open (the
/// whole demo works on that origin), then closes that stream: the test's
/// sources are then the only ones of the page.
async function loadDemo(page, base) {
  await page.goto(new URL("/", base).href, { waitUntil: "load" });
  await waitFor(`the demo page at ${base} to open its own stream`,
    () => page.evaluate(() => ({ badge: document.getElementById("state").textContent, readyState: app.source && app.source.readyState })),
    (v) => v.badge === "open" && v.readyState === 1);
  await page.evaluate(() => app.source.close());
  return page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
}

/// Opens `count` EventSources on the page's origin, each recording its
/// opens, errors, messages (`{id, n}`) and `shutdown` events. Each URL is
/// told apart by `e2e=INDEX` (a query parameter the demo ignores).
function openSources(page, count) {
  return page.evaluate((count) => {
    window.__sources = Array.from({ length: count }, (_, i) => {
      const source = new EventSource(`/events?topic=public&e2e=${i + 1}`);
      const seen = { opens: 0, errors: 0, messages: [], shutdowns: 0 };
      source.addEventListener("open", () => seen.opens++);
      source.addEventListener("error", () => seen.errors++);
      source.addEventListener("message", (e) => seen.messages.push({ id: e.lastEventId, n: JSON.parse(e.data).n }));
      source.addEventListener("shutdown", () => seen.shutdowns++);
      return { source, seen };
    });
  }, count);
}

/// What each source of `openSources` did so far, in opening order.
function readSources(page) {
  return page.evaluate(() => window.__sources.map(({ source, seen }) => ({ readyState: source.readyState, ...seen })));
}

function closeSources(page) {
  return page.evaluate(() => {
    for (const { source } of window.__sources) source.close();
    return window.__sources.map(({ source }) => source.readyState);
  });
}

/// `POST /publish` from the page itself: the only client that can, the
/// certificate being self-signed, and so over the page's own connection.
async function publishFromPage(page, n) {
  const answer = await page.evaluate(async (n) => {
    const response = await fetch("/publish", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ topic: "public", event: "message", data: { n } }),
    });
    return { status: response.status, body: await response.json() };
  }, n);
  if (answer.status !== 200 || typeof answer.body.id !== "string") {
    throw new Failure(`POST /publish ${n} from the page: ${answer.status} ${JSON.stringify(answer.body)}`);
  }
  return answer.body.id;
}

/// The protocol each `/events?...&e2e=` request of the page was answered
/// with, as the browser's network stack reports it (`h2`, `http/1.1`):
/// per request, `{url, protocol?, status?}`; no protocol while unanswered.
async function watchEventRequests(context, page) {
  const cdp = await context.newCDPSession(page);
  const requests = new Map();
  cdp.on("Network.requestWillBeSent", ({ requestId, request }) => {
    if (request.url.includes("/events?") && request.url.includes("e2e=")) requests.set(requestId, { url: request.url });
  });
  cdp.on("Network.responseReceived", ({ requestId, response }) => {
    const entry = requests.get(requestId);
    if (entry) Object.assign(entry, { protocol: response.protocol, status: response.status });
  });
  await cdp.send("Network.enable");
  return () => [...requests.values()];
}

// --- the test ------------------------------------------------------------------

async function overHttp2(context, page) {
  log(`--- HTTPS, ${TLS_URL}`);
  const requests = await watchEventRequests(context, page);
  const protocol = await loadDemo(page, TLS_URL);
  check(protocol === "h2", "the demo page was loaded over HTTP/2 (ALPN h2 on the self-signed TLS)", protocol);

  await openSources(page, SOURCES);
  let sources = await waitFor(`all ${SOURCES} EventSources to open`, () => readSources(page),
    (all) => all.every((s) => s.readyState === 1 && s.opens === 1));
  check(sources.every((s) => s.errors === 0), `all ${SOURCES} opened with no error`, sources);
  const answered = await waitFor(`the browser to report the ${SOURCES} responses`, requests,
    (all) => all.length === SOURCES && all.every((r) => r.protocol));
  check(answered.every((r) => r.protocol === "h2" && r.status === 200),
    `each of the ${SOURCES} event streams was answered 200 over h2`, answered);

  // The server's side: its streams gauge, from the Prometheus exporter.
  const metrics = await waitFor(`/metrics to count ${SOURCES} streams open`,
    () => page.evaluate(async () => {
      const response = await fetch("/metrics", { cache: "no-store" });
      return { status: response.status, type: response.headers.get("content-type"), body: await response.text() };
    }),
    (m) => new RegExp(`^tower_sse_streams_open ${SOURCES}$`, "m").test(m.body));
  check(metrics.status === 200 && metrics.type === "text/plain; version=0.0.4",
    `GET /metrics: 200, ${metrics.type}, tower_sse_streams_open ${SOURCES}`, { status: metrics.status, type: metrics.type });

  const published = [];
  for (let n = 1; n <= EVENTS; n++) published.push(await publishFromPage(page, n));
  log(`published from the page ${published.join(", ")}`);
  sources = await waitFor(`every one of the ${SOURCES} to receive the ${EVENTS} events`, () => readSources(page),
    (all) => all.every((s) => s.messages.length >= EVENTS));
  check(sources.every((s) => same(s.messages, published.map((id, i) => ({ id, n: i + 1 })))),
    `every one of the ${SOURCES} got the ${EVENTS} events live, once each, in order, with the ids /publish answered`,
    sources.map((s) => s.messages));
  const publishes = await page.evaluate(() =>
    performance.getEntriesByType("resource").filter((e) => new URL(e.name).pathname === "/publish").map((e) => e.nextHopProtocol));
  check(publishes.length === EVENTS && publishes.every((p) => p === "h2"), "the page's POST /publish went over h2 too", publishes);

  // Graceful shutdown with the 12 open on one HTTP/2 connection.
  process.kill(TLS_PID, "SIGTERM");
  log(`SIGTERM to the TLS demo (pid ${TLS_PID})`);
  sources = await waitFor(`each of the ${SOURCES} to get the shutdown event`, () => readSources(page),
    (all) => all.every((s) => s.shutdowns === 1));
  check(true, `each of the ${SOURCES} streams got event: shutdown`);
  const output = await waitFor("the TLS demo to print `stopped`", () => fs.readFileSync(TLS_LOG, "utf8"),
    (text) => /^stopped$/m.test(text));
  check(!output.includes("still open"), "the TLS demo stopped with every connection ended (no drain deadline)",
    output.split("\n").slice(-4));
  await closeSources(page);
}

async function overHttp1(context, page) {
  log(`--- plain HTTP/1.1, ${DEMO_URL}`);
  const requests = await watchEventRequests(context, page);
  const protocol = await loadDemo(page, DEMO_URL);
  check(protocol === "http/1.1", "the demo page was loaded over HTTP/1.1", protocol);

  await openSources(page, SOURCES);
  let sources = await waitFor(`the first ${H1_CONNECTIONS} EventSources to open`, () => readSources(page),
    (all) => all.slice(0, H1_CONNECTIONS).every((s) => s.readyState === 1 && s.opens === 1));

  const published = [];
  for (let n = 1; n <= EVENTS; n++) published.push(await publishTo(DEMO_URL, n));
  log(`published ${published.join(", ")}`);
  const expected = published.map((id, i) => ({ id, n: i + 1 }));
  sources = await waitFor(`the first ${H1_CONNECTIONS} to receive the ${EVENTS} events`, () => readSources(page),
    (all) => all.slice(0, H1_CONNECTIONS).every((s) => s.messages.length >= EVENTS));

  // The bounded wait that is the assertion (see STALL_MS).
  await sleep(STALL_MS);
  sources = await readSources(page);
  const opened = sources.slice(0, H1_CONNECTIONS);
  const stalled = sources.slice(H1_CONNECTIONS);
  check(opened.every((s) => s.readyState === 1 && s.opens === 1 && s.errors === 0 && same(s.messages, expected)),
    `the first ${H1_CONNECTIONS} are open and got the ${EVENTS} events live, in order, with their ids`,
    opened);
  check(stalled.every((s) => s.readyState === 0 && s.opens === 0 && s.errors === 0 && s.messages.length === 0),
    `the ${H1_CONNECTIONS + 1}th to ${SOURCES}th stay CONNECTING (never opened, no error, no event) ${STALL_MS} ms after the first ${H1_CONNECTIONS} got everything`,
    stalled);
  const seen = requests();
  const answered = seen.filter((r) => r.protocol);
  check(seen.length === SOURCES && answered.length === H1_CONNECTIONS &&
      answered.every((r) => r.protocol === "http/1.1" && r.status === 200),
    `the browser made ${SOURCES} requests and had ${H1_CONNECTIONS} answers, 200 over http/1.1; the rest unanswered`, seen);

  const states = await closeSources(page);
  check(states.every((state) => state === 2), `all ${SOURCES} closed`, states);
  // Closing gave the origin's connections back: a request goes through again.
  const health = await page.evaluate(async () => (await fetch("/health", { cache: "no-store" })).status);
  check(health === 200, "with them closed, the page reaches the origin again (GET /health 200)", health);
}

async function main() {
  for (const [name, value] of Object.entries({ DEMO_URL, TLS_URL, TLS_LOG })) {
    if (!value) throw new Failure(`${name} is not set (run bash e2e/run.sh)`);
  }
  if (!(TLS_PID > 0)) throw new Failure("TLS_PID is not set (run bash e2e/run.sh)");
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  // A fresh, empty profile for this run only, removed however the test ends.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tower-sse-e2e-http2-profile-"));
  process.on("exit", () => fs.rmSync(profile, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    timeout: 30_000,
  });
  let page;
  try {
    page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(WAIT_MS);
    await overHttp2(context, page);
    // A new tab: the HTTP/1.1 origin's connections start from none.
    await page.close();
    page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    await overHttp1(context, page);
    log("PASS");
  } catch (error) {
    await page?.screenshot({ path: path.join(ARTIFACTS, "http2-failure.png"), timeout: 3_000 }).catch(() => {});
    throw error;
  } finally {
    await context.close().catch(() => {});
  }
}

runTest("http2", main, TOTAL_TIMEOUT_MS);
