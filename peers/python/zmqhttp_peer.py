#!/usr/bin/python3
"""A zmqhttp peer in Python, written from PROTOCOL.md (version 1).

A basic peer (PROTOCOL.md section 4.1): it implements kinds 1-3 only, never
sends HELLO, and gets no heartbeats, cancels or draining notices.

Needs pyzmq and msgpack (Debian: apt-get install python3-zmq python3-msgpack).

Client: send one request and print the response as JSON:

    zmqhttp_peer.py client --endpoint tcp://127.0.0.1:5555 [--socket dealer|req]
        [--method POST] [--host demo] [-H 'Name: value' ...]
        [--data TEXT | --data-file PATH] [--timeout SECONDS] /path?query

REP worker: answer requests with an echo of what was received, until
--count requests are answered or SIGTERM/SIGINT arrives. The path
/status/NNN answers with status NNN. Once bound or connected it prints
"READY <endpoint>" on stdout (with a tcp port of * or 0, the actual one):

    zmqhttp_peer.py rep --endpoint tcp://127.0.0.1:* [--connect] [--count N]
"""

import argparse
import base64
import itertools
import json
import os
import re
import signal
import sys
import time

import msgpack
import zmq

PROTOCOL_VERSION = 1

KIND_REQUEST = 1
KIND_RESPONSE = 2
KIND_ERROR = 3
# 4 cancel, 5 ping, 6 pong, 7 draining, 10 hello: connection control, not
# implemented by this basic peer (answered 501); 8 chunk, 9 credit: reserved.
IMPLEMENTED_KINDS = (KIND_REQUEST, KIND_RESPONSE, KIND_ERROR)

ERR_BAD_REQUEST = 400
ERR_TOO_LARGE = 413           # body over its limit: HTTP 413 for a request
ERR_HEADER_TOO_LARGE = 431    # header bytes or fields over their limit: HTTP 431 for a request
ERR_INTERNAL = 500
ERR_UNSUPPORTED = 501

FIELDS = ("version", "kind", "id", "method", "uri", "host", "status", "header",
          "body", "trailer", "content_length", "timeout", "message",
          "seq", "flags", "credit")

# Limits (PROTOCOL.md section 7), the defaults of the Go implementation.
MAX_BODY_BYTES = 32 << 20
MAX_HEADER_BYTES = 2 << 20
MAX_HEADER_FIELDS = 8192

# Request fields the envelope carries elsewhere or that belong to one hop.
REQUEST_SKIP = {"Host", "Content-Length", "Transfer-Encoding", "Connection",
                "Keep-Alive", "Proxy-Connection", "Upgrade", "Te", "Trailer"}

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Request Entity Too Large",
    418: "I'm a teapot", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class ProtocolError(Exception):
    """An envelope this peer cannot accept. code is the error code to send."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def canonical_name(name):
    """Canonical header name: Content-Type, X-Request-Id (Go's rule)."""
    if not _TOKEN.match(name):
        return name
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def new_envelope(kind, ident, **fields):
    env = {"version": PROTOCOL_VERSION, "kind": kind, "id": ident,
           "method": "", "uri": "", "host": "", "status": 0, "header": [],
           "body": b"", "trailer": [], "content_length": 0, "timeout": 0,
           "message": "", "seq": 0, "flags": 0, "credit": 0}
    env.update(fields)
    return env


def _text(v):
    if isinstance(v, str):
        return v
    return v.decode("utf-8", "surrogateescape")


def encode(env):
    """Encode an envelope dict as exactly 16 msgpack elements."""
    out = []
    for name in FIELDS:
        v = env[name]
        if name in ("header", "trailer"):
            v = [_text(s) for s in v]  # str, possibly with escaped non-UTF-8 bytes
        elif name == "body":
            v = bytes(v)
        elif name in ("method", "uri", "host", "message"):
            v = _text(v)
        out.append(v)
    return msgpack.packb(out, use_bin_type=True, unicode_errors="surrogateescape")


def peek_head(frame):
    """Return (version, kind, id) if the first three elements are readable."""
    try:
        unp = msgpack.Unpacker(raw=True, max_buffer_size=len(frame) + 1)
        unp.feed(frame)
        n = unp.read_array_header()
        if n < 3:
            return None
        head = [unp.unpack() for _ in range(3)]
    except Exception:
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in head):
        return tuple(head)
    return None


def decode(frame):
    """Decode and validate one envelope frame. Raises ProtocolError."""
    head = peek_head(frame)
    if head is None:
        raise ProtocolError(ERR_BAD_REQUEST, "version, kind and id are not readable")
    version, kind, _ = head
    if version != PROTOCOL_VERSION:
        raise ProtocolError(ERR_UNSUPPORTED, "version %d, this peer speaks %d" % (version, PROTOCOL_VERSION))
    if kind not in IMPLEMENTED_KINDS:
        raise ProtocolError(ERR_UNSUPPORTED, "unsupported kind %d" % kind)
    try:
        arr = msgpack.unpackb(frame, raw=False, unicode_errors="surrogateescape",
                              strict_map_key=False, max_array_len=2 * MAX_HEADER_FIELDS + 16)
    except ValueError as e:  # includes ExtraData and limit errors
        code = ERR_HEADER_TOO_LARGE if "max_array_len" in str(e) else ERR_BAD_REQUEST
        raise ProtocolError(code, "malformed envelope: %s" % e)
    except Exception as e:
        raise ProtocolError(ERR_BAD_REQUEST, "malformed envelope: %s" % e)
    if not isinstance(arr, list) or len(arr) < 16:
        raise ProtocolError(ERR_BAD_REQUEST, "envelope is not an array of 16 elements")
    env = dict(zip(FIELDS, arr[:16]))  # elements past index 15 are ignored
    for name in ("method", "uri", "host", "message"):
        v = env[name]
        if v is None:
            v = ""
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "surrogateescape")
        if not isinstance(v, str):
            raise ProtocolError(ERR_BAD_REQUEST, "field %s is not a string" % name)
        env[name] = v
    for name in ("header", "trailer"):
        v = env[name] or []
        if not isinstance(v, list) or len(v) % 2:
            raise ProtocolError(ERR_BAD_REQUEST, "field %s is not a list of name/value pairs" % name)
        v = [s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s for s in v]
        if not all(isinstance(s, str) for s in v):
            raise ProtocolError(ERR_BAD_REQUEST, "field %s holds a non-string" % name)
        env[name] = v
    body = env["body"]
    if body is None:
        body = b""
    elif isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    if not isinstance(body, bytes):
        raise ProtocolError(ERR_BAD_REQUEST, "body is not bin")
    env["body"] = body
    for name in ("status", "content_length", "timeout", "seq", "flags", "credit"):
        v = env[name]
        if v is None:
            v = 0
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProtocolError(ERR_BAD_REQUEST, "field %s is not an integer" % name)
        env[name] = v
    _validate(env)
    # Receivers treat names case-insensitively: canonicalize them.
    for name in ("header", "trailer"):
        kv = env[name]
        for i in range(0, len(kv), 2):
            kv[i] = canonical_name(kv[i])
    return env


def _validate(env):
    if len(env["body"]) > MAX_BODY_BYTES:
        raise ProtocolError(ERR_TOO_LARGE, "body of %d bytes" % len(env["body"]))
    fields = (len(env["header"]) + len(env["trailer"])) // 2
    if fields > MAX_HEADER_FIELDS:
        raise ProtocolError(ERR_HEADER_TOO_LARGE, "%d header fields" % fields)
    size = sum(len(s.encode("utf-8", "surrogateescape"))
               for s in [env["method"], env["uri"], env["host"]] + env["header"] + env["trailer"])
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(ERR_HEADER_TOO_LARGE, "%d header bytes" % size)
    cl = env["content_length"]
    if cl < -1 or (cl >= 0 and cl != len(env["body"])):
        raise ProtocolError(ERR_BAD_REQUEST, "content_length %d with a body of %d bytes" % (cl, len(env["body"])))
    if env["timeout"] < 0:
        raise ProtocolError(ERR_BAD_REQUEST, "negative timeout")
    if env["kind"] == KIND_REQUEST:
        if not _TOKEN.match(env["method"]):
            raise ProtocolError(ERR_BAD_REQUEST, "invalid method %r" % env["method"])
        if not env["uri"] or any(ord(c) <= 0x20 or ord(c) == 0x7f for c in env["uri"]):
            raise ProtocolError(ERR_BAD_REQUEST, "invalid uri %r" % env["uri"])
    elif env["kind"] == KIND_RESPONSE and not 100 <= env["status"] <= 999:
        raise ProtocolError(ERR_BAD_REQUEST, "invalid status %d" % env["status"])
    for kv in (env["header"], env["trailer"]):
        for i in range(0, len(kv), 2):
            if not _TOKEN.match(kv[i]):
                raise ProtocolError(ERR_BAD_REQUEST, "invalid header name %r" % kv[i])
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7f for c in kv[i + 1]):
                raise ProtocolError(ERR_BAD_REQUEST, "invalid value of header %r" % kv[i])


def flatten(headers):
    """[(name, value), ...] -> [Name, value, ...], canonical names, hop-by-hop dropped."""
    out = []
    for name, value in headers:
        name = canonical_name(name)
        if name in REQUEST_SKIP:
            continue
        out += [name, value]
    return out


def pairs(kv):
    return [[kv[i], kv[i + 1]] for i in range(0, len(kv), 2)]


def _json_text(b):
    return b.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- client

_ids = itertools.count(1)


def request(endpoint, method="GET", uri="/", host="", headers=(), body=b"",
            socket_type="dealer", timeout=10.0):
    """Send one request; return the reply envelope (response or error)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ if socket_type == "req" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        ident = next(_ids)
        env = new_envelope(KIND_REQUEST, ident, method=method, uri=uri, host=host,
                           header=flatten(headers), body=body,
                           content_length=len(body),
                           timeout=int(timeout * 1e6) if timeout else 0)
        frame = encode(env)
        if socket_type == "req":
            sock.send(frame)  # REQ adds the empty delimiter
        else:
            sock.send_multipart([b"", frame])
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                raise TimeoutError("no reply from %s within %.1fs" % (endpoint, timeout))
            if socket_type == "req":
                frames = [b"", sock.recv()]
            else:
                frames = sock.recv_multipart()
            if len(frames) != 2 or frames[0] != b"":
                continue  # not a v1 message: dropped
            try:
                reply = decode(frames[1])
            except ProtocolError as e:
                head = peek_head(frames[1])
                if head and head[2] == ident:
                    raise RuntimeError("bad reply: %s" % e)
                continue
            if reply["id"] != ident or reply["kind"] == KIND_REQUEST:
                continue
            return reply
    finally:
        sock.close()


def reply_json(reply):
    if reply["kind"] == KIND_ERROR:
        return {"id": reply["id"], "error": {"code": reply["status"], "message": reply["message"]}}
    reason = reply["message"] or REASONS.get(reply["status"], "")
    return {
        "id": reply["id"],
        "status": reply["status"],
        "reason": reason,
        "headers": pairs(reply["header"]),
        "trailers": pairs(reply["trailer"]),
        "content_length": reply["content_length"],
        "body": _json_text(reply["body"]),
        "body_base64": base64.b64encode(reply["body"]).decode("ascii"),
    }


# ---------------------------------------------------------------- REP worker

def echo_handler(req):
    """Return (status, header list, body) for a request envelope."""
    status = 200
    path = req["uri"].split("?", 1)[0]
    m = re.match(r"^/status/(\d{3})$", path)
    if m and 100 <= int(m.group(1)) <= 999:
        status = int(m.group(1))
    doc = {
        "method": req["method"],
        "uri": req["uri"],
        "host": req["host"],
        "headers": pairs(req["header"]),
        "trailers": pairs(req["trailer"]),
        "content_length": req["content_length"],
        "timeout_us": req["timeout"],
        "body": _json_text(req["body"]),
    }
    body = json.dumps(doc).encode("utf-8", "surrogateescape")
    header = ["Content-Length", str(len(body)), "Content-Type", "application/json",
              "X-Zmqhttp-Peer", "python"]
    return status, header, body


def reject_response(ident, status, text):
    """The HTTP answer to a v1 request that fails validation (PROTOCOL.md section 5)."""
    body = ("%s: %s\n" % (REASONS.get(status, ""), text)).encode("utf-8", "surrogateescape")
    header = ["Content-Length", str(len(body)), "Content-Type", "text/plain; charset=utf-8",
              "X-Content-Type-Options", "nosniff"]
    return new_envelope(KIND_RESPONSE, ident, status=status, header=header,
                        body=body, content_length=len(body))


def handle(frame, handler=echo_handler):
    """Answer one received envelope frame: the reply envelope to send."""
    try:
        req = decode(frame)
        if req["kind"] != KIND_REQUEST:
            raise ProtocolError(ERR_BAD_REQUEST, "a server accepts only requests")
    except ProtocolError as e:
        head = peek_head(frame)
        ident = head[2] if head else 0  # REP must answer; id 0 if unreadable
        if e.code != ERR_UNSUPPORTED and head and head[0] == PROTOCOL_VERSION and head[1] == KIND_REQUEST:
            return reject_response(ident, e.code, str(e))  # an HTTP 400, 413 or 431
        code = ERR_UNSUPPORTED if e.code == ERR_UNSUPPORTED else ERR_BAD_REQUEST
        return new_envelope(KIND_ERROR, ident, status=code, message=str(e))
    try:
        status, header, body = handler(req)
    except Exception as e:  # the handler failed: no HTTP response
        return new_envelope(KIND_ERROR, req["id"], status=ERR_INTERNAL, message="handler: %s" % e)
    if req["method"] == "HEAD":
        body = b""
    return new_envelope(KIND_RESPONSE, req["id"], status=status, header=header,
                        body=body, content_length=len(body))


def serve_rep(endpoint, bind=True, count=0, handler=echo_handler, out=sys.stdout):
    """Serve requests on a REP socket; return the number answered."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 2000)  # let the last reply go out on close
    if bind:
        sock.bind(endpoint)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    else:
        sock.connect(endpoint)
    print("READY %s" % endpoint, file=out, flush=True)
    answered = 0
    try:
        while not stop and (count <= 0 or answered < count):
            if not sock.poll(100):
                continue
            frame = sock.recv()  # REP strips the delimiter
            sock.send(encode(handle(frame, handler)))
            answered += 1
    finally:
        sock.close()
        if bind and endpoint.startswith("ipc://"):
            try:
                os.unlink(endpoint[len("ipc://"):])
            except OSError:
                pass
    return answered


# ---------------------------------------------------------------- CLI

def main(argv=None):
    ap = argparse.ArgumentParser(description="zmqhttp peer (PROTOCOL.md v1)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("client", help="send one request, print the reply as JSON")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--socket", choices=("dealer", "req"), default="dealer")
    c.add_argument("--method", default="GET")
    c.add_argument("--host", default="")
    c.add_argument("-H", "--header", action="append", default=[], metavar="NAME: VALUE")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--data", help="request body (UTF-8 text)")
    g.add_argument("--data-file", help="request body from a file")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    c.add_argument("uri", nargs="?", default="/")

    r = sub.add_parser("rep", help="answer requests on a REP socket with an echo")
    r.add_argument("--endpoint", required=True)
    r.add_argument("--connect", action="store_true", help="connect instead of bind")
    r.add_argument("--count", type=int, default=0, help="exit after N requests (0: until SIGTERM)")

    a = ap.parse_args(argv)
    if a.cmd == "client":
        headers = []
        for h in a.header:
            name, sep, value = h.partition(":")
            if not sep:
                ap.error("header %r: want 'Name: value'" % h)
            headers.append((name.strip(), value.strip()))
        body = b""
        if a.data is not None:
            body = a.data.encode("utf-8")
        elif a.data_file:
            with open(a.data_file, "rb") as f:
                body = f.read()
        try:
            reply = request(a.endpoint, a.method, a.uri, a.host, headers, body,
                            a.socket, a.timeout)
        except (TimeoutError, RuntimeError) as e:
            print(json.dumps({"error": {"code": 0, "message": str(e)}}))
            return 2
        print(json.dumps(reply_json(reply)))
        return 1 if reply["kind"] == KIND_ERROR else 0
    serve_rep(a.endpoint, bind=not a.connect, count=a.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
