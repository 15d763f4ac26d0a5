// End-to-end: the demo page in headless Debian Chromium, driven by
// playwright-core. The browser's own `EventSource` loses its connection
// and must resume by itself, with `Last-Event-ID`, missing nothing.
//
//   DEMO_URL=http://127.0.0.1:PORT node browser.test.mjs
//
// (`bash e2e/run.sh` builds and starts the demo and sets DEMO_URL.)
//
// The page is loaded through a small TCP proxy that lives in this process,
// so that the test can cut the browser's connections at will without
// touching the demo. While cut, the proxy resets every piped connection and
// holds new ones unanswered; publishing goes straight to the demo, so events
// keep being published while the browser is away.
//
// Environment:
//   DEMO_URL          the running demo (required)
//   CHROMIUM          the browser binary (default /usr/bin/chromium)
//   E2E_ARTIFACTS     where screenshots and the report go (default ./artifacts)
//   E2E_TIMEOUT_MS    the whole test's deadline (default 60000)

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CHROMIUM_ARGS, Failure, harness, startProxy } from "./support.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEMO_URL = process.env.DEMO_URL;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || path.join(HERE, "artifacts"));
const TOTAL_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 60_000);
/// One condition's deadline: well above the demo's 3 s `retry:` hint.
const WAIT_MS = 20_000;
const BEFORE_CUT = 5; // N: published and seen before the cut
const DURING_CUT = 5; // M: published while the browser is cut off
// ...and one more once the resumed stream has caught up: live again.
const TOPIC = "public";
const EVENT_TYPE = "message";

const { started, log, check, waitFor } = harness("e2e", { waitMs: WAIT_MS, describe: summarize });

/// A page view without the event bodies, for failure messages.
function summarize(value) {
  if (!value || !Array.isArray(value.rows)) return value;
  const { rows, ...rest } = value;
  return { ...rest, shown: rows.map((r) => `${r.id} ${r.type}${r.className ? " ." + r.className : ""}`) };
}


// --- the demo, directly ----------------------------------------------------

async function publish(base, seq, phase) {
  const response = await fetch(new URL("/publish", base), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: TOPIC, event: EVENT_TYPE, data: { e2e: seq, phase } }),
    signal: AbortSignal.timeout(5_000),
  });
  const answer = await response.json();
  if (!response.ok || typeof answer.id !== "string") {
    throw new Failure(`POST /publish #${seq}: ${response.status} ${JSON.stringify(answer)}`);
  }
  return { id: answer.id, seq, phase };
}

// --- the page, read from its DOM ---------------------------------------------

/// What the page shows in "Received events", oldest first, and its
/// connection badge; plus the EventSource the page made (`app.source`, a
/// global of demo.js) and what the test's listeners on it recorded.
function readPage(page) {
  return page.evaluate(() => {
    const rows = [...document.querySelectorAll("#events > li")].reverse().map((li) => ({
      id: li.dataset.id,
      type: li.children[1] ? li.children[1].textContent : "",
      className: li.className,
      body: li.querySelector("pre") ? li.querySelector("pre").textContent : "",
    }));
    const source = typeof app === "object" && app ? app.source : null;
    return {
      state: document.getElementById("state").textContent,
      rows,
      readyState: source ? source.readyState : null,
      sameSource: window.__e2e ? window.__e2e.source === source : null,
      probe: window.__e2e ? { opens: window.__e2e.opens, errors: window.__e2e.errors } : null,
      url: source ? source.url : null,
    };
  });
}

const messages = (view) => view.rows.filter((row) => row.type === EVENT_TYPE);

function parseBody(body) {
  try {
    return JSON.parse(body);
  } catch {
    return null;
  }
}

// --- the test ------------------------------------------------------------------

async function main() {
  if (!DEMO_URL) throw new Failure("DEMO_URL is not set (run bash e2e/run.sh)");
  const demo = new URL(DEMO_URL);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const name of fs.readdirSync(ARTIFACTS)) {
    if (name.endsWith(".png") || name === "report.json") fs.rmSync(path.join(ARTIFACTS, name));
  }

  const proxy = await startProxy({ host: demo.hostname, port: Number(demo.port) }, started);
  const pageUrl = `http://127.0.0.1:${proxy.port}/`;
  log(`demo ${demo.origin}, proxy ${pageUrl}`);

  // A fresh, empty profile for this run only.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tower-sse-e2e-profile-"));
  let context;
  let cleaning;
  cleanup = () =>
    (cleaning ??= (async () => {
      if (context) await context.close().catch(() => {});
      await proxy.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    })());
  const report = { demo: demo.origin, proxy: pageUrl, published: [] };
  const writeReport = () => fs.writeFileSync(path.join(ARTIFACTS, "report.json"), JSON.stringify(report, null, 1) + "\n");
  // On failure: what the page showed, a screenshot, every request seen.
  const recordFailure = async (error) => {
    if (report.result) return;
    report.result = "fail";
    report.error = String(error && error.stack ? error.stack : error);
    report.requests = proxy.requests;
    try {
      const page = context && context.pages()[0];
      if (page) {
        report.lastView = await readPage(page);
        await page.screenshot({ path: path.join(ARTIFACTS, "failure.png"), fullPage: true, timeout: 3_000 });
      }
    } catch {
      /* the failure itself is what matters */
    }
    writeReport();
  };
  onDeadline = async () => {
    await recordFailure(new Failure(`over the deadline of ${TOTAL_TIMEOUT_MS} ms`));
    await cleanup();
  };
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1100, height: 1400 },
      timeout: 30_000,
    });
    log(`chromium ${context.browser() ? context.browser().version() : "(persistent context)"}`);
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(WAIT_MS);
    const consoleLines = [];
    page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
    page.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));
    report.console = consoleLines;

    // 1. The page, its stream open and greeted.
    await page.goto(pageUrl, { waitUntil: "load" });
    let view = await waitFor("the stream to open (badge 'open', readyState OPEN, a greeting shown)", () => readPage(page),
      (v) => v.state === "open" && v.readyState === 1 && v.rows.some((r) => r.type === "server.state"));
    check(messages(view).length === 0, "the page starts with no events of its own", view.rows);
    // Watch the EventSource the page made: the same object must come back by
    // itself, the page must never make another.
    await page.evaluate(() => {
      const probe = { source: app.source, opens: [], errors: [] };
      probe.source.addEventListener("open", () => probe.opens.push(probe.source.readyState));
      probe.source.addEventListener("error", () => probe.errors.push(probe.source.readyState));
      window.__e2e = probe;
    });

    // 2. N events, shown in order.
    const before = [];
    for (let i = 1; i <= BEFORE_CUT; i++) before.push(await publish(demo, i, "before cut"));
    report.published.push(...before);
    log(`published ${before.map((e) => e.id).join(", ")}`);
    view = await waitFor(`the page to show the ${BEFORE_CUT} events`, () => readPage(page),
      (v) => messages(v).length >= BEFORE_CUT);
    check(
      JSON.stringify(messages(view).map((r) => r.id)) === JSON.stringify(before.map((e) => e.id)),
      `the page shows the ${BEFORE_CUT} events once each, in order, with their ids`,
      messages(view).map((r) => r.id),
    );
    await page.screenshot({ path: path.join(ARTIFACTS, "1-before-cut.png"), fullPage: true });
    const lastBeforeCut = before[before.length - 1].id;

    // 3. The cut: every connection through the proxy reset, new ones held.
    const severed = proxy.sever();
    log(`cut: ${severed} connection(s) reset`);
    check(severed >= 1, "the cut reset the page's stream connection", severed);
    view = await waitFor("the browser to notice (error event, readyState CONNECTING, badge 'error')", () => readPage(page),
      (v) => v.state === "error" && v.readyState === 0 && v.probe.errors.length >= 1);
    check(view.sameSource, "the page kept its EventSource (no new one made by the page)");

    // 4. M events while the browser is away, straight to the demo.
    const during = [];
    for (let i = BEFORE_CUT + 1; i <= BEFORE_CUT + DURING_CUT; i++) during.push(await publish(demo, i, "during cut"));
    report.published.push(...during);
    log(`published while cut ${during.map((e) => e.id).join(", ")}`);
    view = await readPage(page);
    check(messages(view).length === BEFORE_CUT, "nothing published during the cut has reached the page yet",
      messages(view).map((r) => r.id));

    // 5. The browser reconnects by itself after the `retry:` hint; the
    //    proxy holds that request until it is healed.
    const reconnect = await waitFor("the browser's own reconnect to /events (held at the proxy)",
      () => proxy.eventRequests().filter((r) => r.cut)[0]);
    log(`reconnect held at the proxy: GET ${reconnect.target} Last-Event-ID=${reconnect.headers["last-event-id"]}`);
    await page.screenshot({ path: path.join(ARTIFACTS, "2-cut.png"), fullPage: true });
    const resumed = proxy.heal();
    log(`healed: ${resumed} held connection(s) piped to the demo`);

    // 6. Resumed: the missed events replayed, then live ones again. One
    //    more event, published once all missed ones are shown, is a
    //    barrier: the stream is ordered, so once it is shown, nothing the
    //    server sent before it (a late duplicate, say) is still on its way.
    const missed = [...before, ...during];
    view = await waitFor(`the page to show all ${missed.length} events, stream open again`, () => readPage(page),
      (v) => v.state === "open" && v.readyState === 1 && messages(v).length >= missed.length);
    const live = await publish(demo, missed.length + 1, "after resume");
    report.published.push(live);
    log(`published after the resume ${live.id}`);
    const all = [...missed, live];
    view = await waitFor(`the page to show the live event ${live.id} after the resumed ones`, () => readPage(page),
      (v) => messages(v).some((r) => r.id === live.id));
    await page.screenshot({ path: path.join(ARTIFACTS, "3-after-resume.png"), fullPage: true });
    const shown = messages(view);
    report.shown = view.rows;
    check(
      JSON.stringify(shown.map((r) => r.id)) === JSON.stringify(all.map((e) => e.id)),
      `all ${all.length} events (${BEFORE_CUT} before, ${DURING_CUT} during the cut, 1 after) shown exactly once, in publish order, with the ids /publish answered`,
      { shown: shown.map((r) => r.id), published: all.map((e) => e.id) },
    );
    check(
      shown.every((row, i) => {
        const data = parseBody(row.body);
        return data && data.e2e === all[i].seq && data.phase === all[i].phase;
      }),
      "each shown event carries its own data",
      shown.map((r) => r.body),
    );
    check(!view.rows.some((r) => r.type === "resync" || r.className.includes("resync")),
      "no resync shown", view.rows.filter((r) => r.type === "resync"));
    check(view.sameSource, "still the page's first EventSource: the browser resumed it by itself");
    check(view.probe.errors.length === 1 && view.probe.errors[0] === 0,
      "one error event on it, with readyState CONNECTING (a reconnect, not a close)", view.probe.errors);
    check(view.probe.opens.length === 1, "one open event on it after the cut (the resumed stream)", view.probe.opens);
    const greetings = view.rows.filter((r) => r.type === "server.state");
    check(greetings.length === 2, "two server.state greetings: the first stream's and the resumed one's",
      greetings.map((r) => r.id));

    // 7. What crossed the wire: the first connect carried no header, the
    //    reconnect the id of the last event seen before the cut.
    const streams = proxy.eventRequests();
    report.eventRequests = streams;
    report.requests = proxy.requests;
    check(streams.length === 2, "two GET /events through the proxy: the first connect and one reconnect",
      streams.map((r) => `${r.target} ${JSON.stringify(r.headers["last-event-id"])}`));
    check(streams[0].headers["last-event-id"] === undefined, "the first connect sent no Last-Event-ID header",
      streams[0].headers);
    check(streams[1] === reconnect && streams[1].target === streams[0].target,
      "the reconnect asked for the same URL, as EventSource does", streams.map((r) => r.target));
    check(reconnect.headers["last-event-id"] === lastBeforeCut,
      `the reconnect carried Last-Event-ID: ${lastBeforeCut} (the last event seen before the cut)`,
      reconnect.headers);
    check(reconnect.headers.accept === "text/event-stream", "the reconnect is the EventSource's own (Accept: text/event-stream)",
      reconnect.headers.accept);

    // 8. Who answered each stream (the last response head on its
    //    connection): a request on a fresh connection is
    //    driven by tower_sse::serve's own path (which closes after its one
    //    response); one the browser sent on a connection it kept alive from
    //    loading the page is hyper's. Both must be a 200 event stream, and
    //    the reconnect, always on a fresh connection here (the proxy cut
    //    every connection), must be the stream path's.
    report.responses = proxy.responses;
    const answers = streams.map((stream) => proxy.responses.filter((r) => r.conn === stream.conn).pop());
    for (const [i, answer] of answers.entries()) {
      check(answer && answer.status === 200 && answer.headers["content-type"] === "text/event-stream",
        `GET ${streams[i].target} on connection ${streams[i].conn} was answered 200 text/event-stream` +
          ` (by ${answer && answer.headers.connection === "close" ? "the stream path" : "hyper, on a reused connection"})`,
        answer);
    }
    check(answers[1].headers.connection === "close",
      "the reconnect, on a fresh connection, was driven by the stream path (Connection: close)", answers[1]);

    const pageErrors = consoleLines.filter((line) => line.startsWith("pageerror:"));
    check(pageErrors.length === 0, "no script error in the page", pageErrors);

    report.result = "pass";
    log(`PASS in ${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${ARTIFACTS}`);
  } catch (error) {
    await recordFailure(error);
    throw error;
  } finally {
    writeReport();
    await cleanup();
  }
}

/// Closes the browser and the proxy and removes the profile; every call
/// after the first waits for the same work.
let cleanup = async () => {};
/// Records the failure and cleans up when the deadline passes.
let onDeadline = async () => {};

const deadline = setTimeout(async () => {
  console.error(`[e2e] FAIL: the whole test took over ${TOTAL_TIMEOUT_MS} ms`);
  await Promise.race([onDeadline(), new Promise((resolve) => setTimeout(resolve, 8_000))]);
  process.exit(1);
}, TOTAL_TIMEOUT_MS);
deadline.unref();

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`[e2e] FAIL: ${error instanceof Failure ? error.message : error && error.stack ? error.stack : error}`);
    process.exit(1);
  },
);
