"""Python's SSE clients against the demo.

Three libraries from PyPI, each the way its documentation uses it:

- requests-sse: an EventSource that reconnects by itself. Through a proxy
  that cuts it off (a TCP reset), it misses two events, reconnects after the
  demo's `retry:` hint with `Last-Event-Id` set to the last id it saw, and
  then has every event exactly once, in order, with no resync.
- sseclient-py (over requests) and httpx-sse (over httpx): parsers that never
  reconnect. Each gets three live events in publish order with the ids
  /publish answered, and a second connection that sends `Last-Event-ID`
  itself gets exactly the events published in between, then live ones.

    DEMO_URL=http://127.0.0.1:PORT python e2e/python_clients.py

(`bash e2e/run.sh` installs e2e/requirements.txt into e2e/.venv and runs it.)
"""

import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.request

DEMO_URL = os.environ.get("DEMO_URL", "")
WAIT = 20.0  # seconds: one condition's deadline, well above the 3 s retry hint
STARTED = time.monotonic()


class Failure(Exception):
    pass


def log(*args):
    print(f"[python +{time.monotonic() - STARTED:.2f}s]", *args, flush=True)


def check(condition, message, detail=None):
    if not condition:
        raise Failure(message + ("" if detail is None else f"\n  got: {detail!r}"))
    log("ok:", message)


def wait_for(what, probe, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def publish(n):
    request = urllib.request.Request(
        DEMO_URL + "/publish",
        method="POST",
        data=json.dumps({"topic": "public", "event": "message", "data": {"n": n}}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    if not isinstance(answer.get("id"), str):
        raise Failure(f"POST /publish {n}: {answer!r}")
    return answer["id"]


class Proxy:
    """A TCP proxy to the demo that records request heads and can cut every
    connection (a reset towards the client) and hold new ones until healed."""

    def __init__(self, host, port):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.live = []  # (client, server) pairs being piped
        self.healed = threading.Event()
        self.healed.set()
        self.requests = []  # (head text, accepted while cut)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        cut = not self.healed.is_set()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        with self.lock:
            self.requests.append((head.split(b"\r\n\r\n")[0].decode("latin1"), cut))
        self.healed.wait()
        server = socket.create_connection(self.upstream)
        server.sendall(head)
        with self.lock:
            self.live.append((client, server))
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
        self._pump(server, client)

    @staticmethod
    def _pump(source, sink):
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.close()
            except OSError:
                pass

    def sever(self):
        self.healed.clear()
        with self.lock:
            pairs, self.live = self.live, []
        for client, server in pairs:
            try:
                # SO_LINGER 0: the last close sends a reset, as a dropped
                # network would. A close alone would wait for the pumps
                # blocked reading these sockets; the shutdowns wake them.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.shutdown(socket.SHUT_RD)
                server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(pairs)

    def heal(self):
        self.healed.set()

    def event_requests(self):
        with self.lock:
            return [(head, cut) for head, cut in self.requests if head.startswith("GET /events")]


def header(head, name):
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def requests_sse_resumes_by_itself(proxy):
    from requests_sse import EventSource

    name = "requests-sse"
    log(f"--- {name}")
    url = f"http://127.0.0.1:{proxy.port}/events?topic=public"
    before = len(proxy.event_requests())
    seen = {"messages": [], "types": [], "errors": 0}

    def on_error():
        seen["errors"] += 1

    def read():
        with EventSource(url, timeout=30, on_error=on_error) as source:
            for event in source:
                seen["types"].append(event.type)
                if event.type == "message":
                    seen["messages"].append((event.last_event_id, json.loads(event.data)["n"]))
                if len(seen["messages"]) == 6:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for("the stream to open (its greeting)", lambda: "server.state" in seen["types"])
    live = [publish(n) for n in (1, 2, 3)]
    wait_for("three live events", lambda: len(seen["messages"]) >= 3)
    check([i for i, _ in seen["messages"]] == live, f"{name}: live events carry the published ids, in order", seen)
    check([n for _, n in seen["messages"]] == [1, 2, 3], f"{name}: each carries its own data", seen)

    check(proxy.sever() >= 1, f"{name}: its connection is cut")
    missed = [publish(4), publish(5)]
    reconnect = wait_for(
        "its own reconnect to /events (held at the proxy)",
        lambda: next((head for head, cut in proxy.event_requests()[before:] if cut), None),
    )
    check(header(reconnect, "Last-Event-ID") == live[2],
          f"{name}: it reconnects by itself with Last-Event-ID = the last id it saw", reconnect)
    proxy.heal()
    wait_for("the two missed events", lambda: len(seen["messages"]) >= 5)
    after = publish(6)
    reader.join(WAIT)
    check(not reader.is_alive(), f"{name}: the next live event arrives", seen)
    check([i for i, _ in seen["messages"]] == live + missed + [after],
          f"{name}: after the resume it has every event exactly once, in order", seen)
    check("resync" not in seen["types"], f"{name}: and no resync", seen["types"])
    check(seen["errors"] == 1, f"{name}: one error", seen["errors"])


def sseclient_py(url, last_event_id):
    import requests
    import sseclient

    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    with requests.get(url, stream=True, headers=headers, timeout=30) as response:
        if response.status_code != 200:
            raise Failure(f"sseclient-py: status {response.status_code}")
        for event in sseclient.SSEClient(response).events():
            yield event.event, event.id, event.data


def httpx_sse(url, last_event_id):
    import httpx
    from httpx_sse import connect_sse

    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with httpx.Client(timeout=30) as client:
        with connect_sse(client, "GET", url, headers=headers) as source:
            source.response.raise_for_status()
            for event in source.iter_sse():
                yield event.event, event.id, event.data


def parser_live_and_resume(name, events):
    """`events(url, last_event_id)` yields (type, id, data) of one connection."""
    log(f"--- {name}")
    url = f"{DEMO_URL}/events?topic=public"

    def collect(last_event_id, count, on_open):
        got = []
        opened = threading.Event()

        def read():
            for kind, event_id, data in events(url, last_event_id):
                if kind == "server.state":
                    opened.set()
                elif kind == "message":
                    got.append(event_id)
                else:
                    got.append(f"{kind}: {data}")
                if len(got) == count:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if not opened.wait(WAIT):
            raise Failure(f"{name}: the stream did not open")
        published = on_open()
        reader.join(WAIT)
        if reader.is_alive():
            raise Failure(f"{name}: only {got!r} within {WAIT} s")
        return got, published

    got, live = collect(None, 3, lambda: [publish(n) for n in (1, 2, 3)])
    check(got == live, f"{name}: live events carry the published ids, in order", (got, live))
    missed = [publish(4), publish(5)]
    got, after = collect(live[-1], 3, lambda: [publish(6)])
    check(got == missed + after,
          f"{name}: Last-Event-ID replays exactly what came after it, then goes on live", (got, missed + after))


def main():
    if not DEMO_URL:
        raise Failure("DEMO_URL is not set (run bash e2e/run.sh)")
    host, _, port = DEMO_URL.removeprefix("http://").partition(":")
    proxy = Proxy(host, int(port.rstrip("/")))
    requests_sse_resumes_by_itself(proxy)
    parser_live_and_resume("sseclient-py", sseclient_py)
    parser_live_and_resume("httpx-sse", httpx_sse)
    log(f"PASS in {time.monotonic() - STARTED:.1f} s")


if __name__ == "__main__":
    # Daemon threads and per-wait deadlines bound every step; this bounds the whole.
    watchdog = threading.Timer(90, lambda: (print("[python] FAIL: took over 90 s", flush=True), os._exit(1)))
    watchdog.daemon = True
    watchdog.start()
    try:
        main()
    except Failure as failure:
        print(f"[python] FAIL: {failure}", flush=True)
        sys.exit(1)
