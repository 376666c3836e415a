// Package zmqhttp carries net/http over ZeroMQ: an http.RoundTripper on the
// client side and a net.Listener on the server side, so that existing
// handlers and clients move from TCP to ZeroMQ by changing one field.
//
// The server is a standard http.Server (or any mux: http.ServeMux,
// gorilla/mux) whose listener is a zmqhttp Listener; Shutdown, timeouts,
// r.Context() and ConnState work as over TCP:
//
//	l, err := zmqhttp.Listen("tcp://*:5555")
//	if err != nil { ... }
//	srv := &http.Server{Handler: mux}
//	go srv.Serve(l)
//
// Serve is the opt-in direct path: it runs the same http.Server's Handler
// on the Listener's requests without an HTTP/1.1 round through a
// net.Conn, for less CPU per request and the same answers:
//
//	go zmqhttp.Serve(l, srv)
//
// The client is an http.Client whose Transport is a zmqhttp Transport: every
// request goes to the endpoint over one shared, multiplexed ZeroMQ connection
// per server, whatever the URL's host (which still reaches the handler as
// r.Host):
//
//	t, err := zmqhttp.NewTransport("tcp://api.internal:5555")
//	if err != nil { ... }
//	defer t.Close()
//	c := &http.Client{Transport: t}
//	resp, err := c.Get("http://api/users/42")
//
// Bodies of any size stream both ways with flow control (SSE, uploads,
// downloads); a request a server never started is sent again, and a
// replayable one (GET, or with an Idempotency-Key) survives a lost
// connection; a Transport balances over several servers
// ("tcp://a:5555,tcp://b:5555", or a host name with several addresses);
// servers may sit behind a ZeroMQ device such as libzmq's zmq_proxy; CURVE
// encrypts and authenticates (WithCurveServer, WithCurveClient,
// WithAuthorizer, PeerFromContext), and PLAIN authenticates. The wire
// format, which peers in other languages implement, is in PROTOCOL.md;
// README.md covers the behaviour to know (errors, limits, replays,
// draining) and the benchmark.
package zmqhttp
