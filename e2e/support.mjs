// What the end-to-end tests share: a log with elapsed time, checks that
// say what they checked, polling with a deadline, and a TCP proxy that can
// cut a client's connections to the demo and let its reconnects through.

import net from "node:net";

/// Headless Chromium's flags here (playwright adds --headless): no sandbox
/// (CI runs as root), no GPU, and nothing that tries to reach hosts on the
/// closed network of the CI machines. The profile is a fresh empty
/// directory.
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/// A failed expectation: reported with its message alone, no stack.
export class Failure extends Error {}

/// The helpers of one test, whose log lines start with `[tag +SECONDS]`.
/// `describe` shortens what `waitFor` last saw for a failure message.
export function harness(tag, { waitMs = 20_000, describe = (value) => value } = {}) {
  const started = Date.now();
  const elapsed = () => ((Date.now() - started) / 1000).toFixed(2);
  const log = (...args) => console.log(`[${tag} +${elapsed()}s]`, ...args);

  function check(condition, message, detail) {
    if (condition) {
      log("ok:", message);
      return;
    }
    throw new Failure(message + (detail === undefined ? "" : "\n  got: " + JSON.stringify(detail, null, 1)));
  }

  /// Polls `probe` until `ready` holds for what it returns (returned), or
  /// fails with `what` and the last value seen after `timeoutMs`.
  async function waitFor(what, probe, ready = Boolean, timeoutMs = waitMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const last = await probe();
      if (ready(last)) return last;
      if (Date.now() > deadline) {
        throw new Failure(`timed out after ${timeoutMs} ms waiting for ${what}` +
          `\n  last seen: ${JSON.stringify(describe(last))}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  return { started, elapsed, log, check, waitFor };
}

/// A TCP proxy to `upstream` (host, port) on a free loopback port that
/// records every HTTP request head a client sends, and can be cut
/// (every piped connection reset, new ones held unanswered) and healed.
export function startProxy(upstream, started = Date.now()) {
  const proxy = {
    cut: false,
    live: new Set(), // { client, server } pairs being piped
    held: [], // connections accepted while cut: resumed on heal
    requests: [], // { conn, at, method, target, headers, cut }
    responses: [], // { conn, status, headers }: response heads, in order
    accepted: 0,
    server: null,
    port: 0,
  };

  // Splits HTTP/1.1 heads out of one direction of a connection, skipping
  // Content-Length bodies, and hands each to `onHead(firstLine, headers)`,
  // which returns false to stop (a chunked event stream never ends here).
  function headSniffer(onHead) {
    let buffer = "";
    let skip = 0;
    let done = false;
    return (chunk) => {
      if (done) return;
      buffer += chunk.toString("latin1");
      for (;;) {
        if (skip > 0) {
          const n = Math.min(skip, buffer.length);
          buffer = buffer.slice(n);
          skip -= n;
          if (skip > 0) return;
        }
        const end = buffer.indexOf("\r\n\r\n");
        if (end < 0) return;
        const lines = buffer.slice(0, end).split("\r\n");
        buffer = buffer.slice(end + 4);
        const headers = {};
        for (const line of lines.slice(1)) {
          const colon = line.indexOf(":");
          if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        if (onHead(lines[0], headers) === false) {
          done = true;
          return;
        }
        skip = Number(headers["content-length"] || 0);
      }
    };
  }

  // The request heads the client sends (GETs, but a body is skipped anyway).
  function sniffer(conn) {
    return headSniffer((line, headers) => {
      const [method, target] = line.split(" ");
      proxy.requests.push({ conn, at: Date.now() - started, method, target, headers, cut: proxy.cut });
    });
  }

  // The response heads on a connection up to the first chunked one:
  // enough to tell which of the server's paths answered each request.
  function responseSniffer(conn) {
    return headSniffer((line, headers) => {
      proxy.responses.push({ conn, status: Number(line.split(" ")[1]), headers });
      return !(headers["transfer-encoding"] || "").includes("chunked");
    });
  }

  function pipe(pair) {
    const { client, pending } = pair;
    const server = net.connect(upstream.port, upstream.host);
    pair.server = server;
    proxy.live.add(pair);
    server.on("connect", () => {
      for (const chunk of pending.splice(0)) server.write(chunk);
    });
    const sniffResponse = responseSniffer(pair.conn);
    server.on("data", (chunk) => {
      sniffResponse(chunk);
      client.write(chunk);
    });
    const close = () => {
      proxy.live.delete(pair);
      client.destroy();
      server.destroy();
    };
    server.on("end", close);
    server.on("close", close);
    server.on("error", close);
    client.on("end", close);
    client.on("close", close);
  }

  proxy.server = net.createServer((client) => {
    const conn = ++proxy.accepted;
    const pair = { conn, client, server: null, pending: [] };
    const sniff = sniffer(conn);
    client.on("error", () => {});
    client.on("data", (chunk) => {
      sniff(chunk);
      if (pair.server && pair.server.readyState === "open") pair.server.write(chunk);
      else pair.pending.push(chunk);
    });
    if (proxy.cut) {
      // Accepted but unanswered until heal: the request (and its
      // Last-Event-ID) is recorded, the client waits.
      proxy.held.push(pair);
      client.on("close", () => {
        proxy.held = proxy.held.filter((p) => p !== pair);
      });
    } else {
      pipe(pair);
    }
  });

  proxy.listen = () =>
    new Promise((resolve, reject) => {
      proxy.server.once("error", reject);
      proxy.server.listen(0, "127.0.0.1", () => {
        proxy.port = proxy.server.address().port;
        resolve(proxy);
      });
    });

  /// Cuts every connection piped through the proxy (a TCP reset towards
  /// the client, a close towards the demo) and holds new ones.
  proxy.sever = () => {
    proxy.cut = true;
    const pairs = [...proxy.live];
    proxy.live.clear();
    for (const { client, server } of pairs) {
      if (typeof client.resetAndDestroy === "function") client.resetAndDestroy();
      else client.destroy();
      server.destroy();
    }
    return pairs.length;
  };

  /// Connects the held connections to the demo and pipes new ones again.
  proxy.heal = () => {
    proxy.cut = false;
    const held = proxy.held.splice(0);
    for (const pair of held) if (!pair.client.destroyed) pipe(pair);
    return held.length;
  };

  proxy.close = () => {
    proxy.sever();
    for (const { client } of proxy.held) client.destroy();
    return new Promise((resolve) => proxy.server.close(() => resolve()));
  };

  proxy.eventRequests = () => proxy.requests.filter((r) => r.method === "GET" && r.target.startsWith("/events"));
  return proxy.listen();
}

/// Publishes `{n}` as a `message` on the public topic through the demo at
/// `base` (its `POST /publish`), returning the id it answered.
export async function publishTo(base, n) {
  const response = await fetch(new URL("/publish", base), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "public", event: "message", data: { n } }),
    signal: AbortSignal.timeout(5_000),
  });
  const answer = await response.json();
  if (!response.ok || typeof answer.id !== "string") {
    throw new Failure(`POST ${base}/publish ${n}: ${response.status} ${JSON.stringify(answer)}`);
  }
  return answer.id;
}

/// Opens an EventSource of class `Source` on `url` and records what it
/// does: opens, errors, messages (`{id, n}`), notifications (`{id,
/// trace}`) and resync frames.
export function openSource(Source, url) {
  const source = new Source(url);
  const seen = { opens: 0, errors: 0, messages: [], notifications: [], resyncs: [] };
  source.addEventListener("notification", (event) => {
    seen.notifications.push({ id: event.lastEventId, trace: JSON.parse(event.data).trace });
  });
  source.addEventListener("open", () => seen.opens++);
  source.addEventListener("error", () => seen.errors++);
  source.addEventListener("message", (event) => {
    seen.messages.push({ id: event.lastEventId, n: JSON.parse(event.data).n });
  });
  source.addEventListener("resync", (event) => seen.resyncs.push(event.data));
  return { source, seen };
}

/// Runs `main` as a test tagged `tag`: exit 0 when it resolves, 1 with a
/// FAIL line when it throws or takes over `limitMs`.
export function runTest(tag, main, limitMs = 60_000) {
  const deadline = setTimeout(() => {
    console.error(`[${tag}] FAIL: took over ${limitMs / 1000} s`);
    process.exit(1);
  }, limitMs);
  deadline.unref();
  main().then(
    () => process.exit(0),
    (error) => {
      console.error(`[${tag}] FAIL: ${error instanceof Failure ? error.message : error && error.stack ? error.stack : error}`);
      process.exit(1);
    },
  );
}
