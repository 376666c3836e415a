#!/usr/bin/env python3
"""libzmq CURVE peers for the interoperability tests.

    curve_peer.py keypair
        prints "PUBLIC SECRET" made by zmq.curve_keypair()
    curve_peer.py client ENDPOINT SERVER_PUBLIC PUBLIC SECRET [HEARTBEAT]
        a DEALER with CURVE sends one GET /curve to ENDPOINT and prints the
        reply as JSON (zmqhttp_peer.reply_json), or "error: ..." on stderr
        and exit 2 when nothing comes back within 5 s. With HEARTBEAT set,
        the socket sends ZMTP PINGs every 100 ms and waits 1 s before its
        request (so that PINGs and PONGs cross the encrypted session).
    curve_peer.py plain-client ENDPOINT USER PASSWORD
        the same GET with PLAIN credentials
    curve_peer.py plain-rep ENDPOINT USER PASSWORD
        a REP worker with PLAIN whose ZAP handler (zmq.auth) accepts only
        USER/PASSWORD; prints "READY ENDPOINT"
    curve_peer.py rep ENDPOINT SECRET
        a REP worker with CURVE binds ENDPOINT, prints "READY ENDPOINT" and
        answers requests (the echo handler) until killed.
"""
import json
import os
import sys
import time

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zmqhttp_peer as peer  # noqa: E402


def main():
    ctx = zmq.Context.instance()
    cmd = sys.argv[1]
    if cmd == "keypair":
        pub, sec = zmq.curve_keypair()
        print(pub.decode(), sec.decode())
        return 0
    if cmd in ("client", "plain-client"):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if cmd == "client":
            endpoint, server_pub, pub, sec = sys.argv[2:6]
            sock.curve_serverkey = server_pub.encode()
            sock.curve_publickey = pub.encode()
            sock.curve_secretkey = sec.encode()
        else:
            endpoint, user, password = sys.argv[2:5]
            sock.plain_username = user.encode()
            sock.plain_password = password.encode()
        if cmd == "client" and len(sys.argv) > 6:
            sock.setsockopt(zmq.HEARTBEAT_IVL, 100)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 400)
        sock.connect(endpoint)
        if cmd == "client" and len(sys.argv) > 6:
            time.sleep(1)
        env = peer.new_envelope(peer.KIND_REQUEST, 7, method="GET", uri="/curve", host="py",
                                header=[], body=b"", content_length=0, timeout=5000000)
        sock.send_multipart([b"", peer.encode(env)])
        if not sock.poll(5000):
            print("error: no reply within 5s", file=sys.stderr)
            return 2
        frames = sock.recv_multipart()
        print(json.dumps(peer.reply_json(peer.decode(frames[-1]))))
        return 0
    if cmd in ("rep", "plain-rep"):
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        if cmd == "rep":
            endpoint, sec = sys.argv[2:4]
            sock.curve_server = True
            sock.curve_secretkey = sec.encode()
        else:
            from zmq.auth.thread import ThreadAuthenticator
            endpoint, user, password = sys.argv[2:5]
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_plain(domain="*", passwords={user: password})
            sock.plain_server = True
        sock.bind(endpoint)
        print("READY", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
        while True:
            frame = sock.recv()
            sock.send(peer.encode(peer.handle(frame)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
