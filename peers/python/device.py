#!/usr/bin/env python3
"""A stock ZeroMQ queue device in front of zmqhttp servers, for the tests.

    device.py BACKEND...

Runs libzmq's zmq_proxy(ROUTER, DEALER), the queue device of the ZeroMQ
guide: the ROUTER frontend binds a random loopback port, the DEALER backend
connects to each BACKEND endpoint (zmqhttp Listeners). Prints
"frontend tcp://127.0.0.1:PORT" once ready, then serves until killed or
until stdin closes. Lines on stdin ask for REQ clients through the device:

    req N PATH    N requests, one REQ socket each in turn, GET PATH;
                  prints "req OK FAIL" then one line per failure
"""
import os
import sys
import threading

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zmqhttp_peer as peer  # noqa: E402


def main():
    ctx = zmq.Context.instance()
    front = ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.LINGER, 0)
    port = front.bind_to_random_port("tcp://127.0.0.1")
    back = ctx.socket(zmq.DEALER)
    back.setsockopt(zmq.LINGER, 0)
    for ep in sys.argv[1:]:
        back.connect(ep)
    threading.Thread(target=zmq.proxy, args=(front, back), daemon=True).start()
    frontend = "tcp://127.0.0.1:%d" % port
    print("frontend", frontend, flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 3 and words[0] == "req":
            ok, fails = 0, []
            for i in range(int(words[1])):
                try:
                    r = peer.request(frontend, uri="%s?i=%d" % (words[2], i), socket_type="req", timeout=5.0)
                    if r["kind"] == peer.KIND_RESPONSE and r["status"] == 200:
                        ok += 1
                    else:
                        fails.append("%d: kind %d status %d" % (i, r["kind"], r["status"]))
                except Exception as e:  # noqa: BLE001 - reported to the test
                    fails.append("%d: %s" % (i, e))
            print("req", ok, len(fails), flush=True)
            for f in fails:
                print("fail", f, flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
