package zmqhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Proxy is the zmqhttp broker: clients point a Transport at its frontend,
// servers connect to its backend with Listen(">" + backend). Each request
// goes to the connected server, among those serving its Host, with the
// most free worker slots (its WithWorkers less what the proxy has in
// flight there); when none has room it waits in a bounded queue
// (WithQueueSize, default 4096, as a Listener's), then is answered 503 with Retry-After.
// With no server connected, requests wait in the queue until their
// deadline.
//
// A server whose connection breaks (or stays silent for the heartbeat
// timeout) is dropped at once: its requests that did not run, or that are
// safe to run again (GET, HEAD, OPTIONS, TRACE or an Idempotency-Key
// header), go to another server; the others fail at the client with
// ErrConnectionLost. A server that drains (Listener.Close) gets no new
// work and what it returns unprocessed goes elsewhere. See PROTOCOL.md,
// "Broker".
//
// Streamed bodies are relayed chunk by chunk with their credit windows: the
// proxy holds at most one window (WithStreamWindow, 2 MiB) of each body in
// flight, never a whole one. A streamed request is bound to the server it
// went to: if that server dies it fails (ErrConnectionLost, or
// ErrNotProcessed if it provably did not start).
type Proxy struct {
	// Set by NewProxy, read-only after.
	cfg        config
	frontLn    net.Listener
	backLn     net.Listener
	frontEP    endpoint
	done       chan struct{}  // closed by Close
	acceptDone chan struct{}  // closed when both accept loops have returned
	wg         sync.WaitGroup // accept loops, connections, body relays
	stats      proxyCounters
	closeOnce  sync.Once

	// mu guards the following fields, and the fields of frontLinks,
	// backLinks and proxyReqs that their docs say it guards. Lock order:
	// mu, then a link's own lock (link methods are called with mu held;
	// links never call into the proxy with their lock held).
	mu       sync.Mutex
	fronts   map[*frontLink]struct{}
	backs    map[*backLink]struct{} // connected servers, ready or not
	queue    []*proxyReq            // requests waiting for a server with room, oldest first
	known    map[string]bool        // every service a server has announced
	inflight int                    // requests received from clients and not yet answered
	closing  bool                   // Shutdown or Close began: requests are returned unprocessed
	closed   bool                   // Close began: links are closing, nothing is re-sent
	idle     chan struct{}          // closed when closing and inflight is 0 (then nil)
	idleWait chan struct{}          // the idle channel of the first Shutdown, which every Shutdown waits on
}

// proxyCounters are updated atomically.
type proxyCounters struct {
	requests, resent, lost, evictions, overloaded, unrouted, expired, notProcessed, handshakeFail atomic.Uint64
}

// ProxyStats is a snapshot of a Proxy's state and counters.
type ProxyStats struct {
	Clients         int           // client connections on the frontend now
	Servers         []ProxyServer // connected servers now, in no particular order
	Queued          int           // requests waiting for a server with room (queue depth)
	InFlight        int           // requests received from clients and not yet answered
	Requests        uint64        // requests received from clients
	Resent          uint64        // requests sent to another server after theirs died, drained or returned them unprocessed
	Lost            uint64        // requests failed with ErrConnectionLost at the client: not replayable, their server died
	Evictions       uint64        // servers dropped without draining: connection closed, or silent for the heartbeat timeout
	Overloaded      uint64        // answered 503 with Retry-After: every server busy and the queue full
	Unrouted        uint64        // answered 502: no server serves the request's Host
	Expired         uint64        // queued requests answered 504 because their deadline passed
	NotProcessed    uint64        // returned to clients unprocessed (or 503) because the proxy was shutting down
	HandshakeFailed uint64        // connections dropped during the ZMTP handshake, both sides
}

// ProxyServer describes one connected server.
type ProxyServer struct {
	Addr     string   // its address as the proxy sees it
	Workers  int      // the capacity it announced (WithWorkers)
	InFlight int      // requests the proxy has sent it and not seen answered
	Services []string // the hosts it serves (WithServices); none: every host
	Draining bool     // it is shutting down: it gets no new work
	Served   uint64   // responses it returned
}

// frontLink is one client connection on the frontend.
type frontLink struct {
	*link
	p *Proxy
	// Guarded by Proxy.mu.
	reqs      map[uint64]*proxyReq // unanswered requests, by the client's id
	drainSent bool                 // DRAINING was queued
	gone      bool                 // frontEnded ran: take nothing more
}

// backLink is one connected server on the backend.
type backLink struct {
	*link
	p    *Proxy
	addr string // set before the link starts

	drainSeq atomic.Uint64 // DRAINING's watermark: requests numbered above it did not run
	hasMark  atomic.Bool   // drainSeq is valid

	// Guarded by Proxy.mu.
	announced bool                 // its HELLO answer arrived: it may get work
	workers   int                  // announced capacity
	services  []string             // announced hosts, lower case; none: every host
	draining  bool                 // DRAINING or a not-processed answer arrived: no new work
	inflight  int                  // requests sent and not answered
	nextID    uint64               // the last request id used on this link
	reqs      map[uint64]*proxyReq // by the proxy's id on this link
	served    uint64               // responses it returned
	gone      bool                 // backEnded ran: send nothing more
}

// proxyReq is one client request passing through the proxy.
type proxyReq struct {
	// Set when received, read-only after.
	front      *frontLink
	id         uint64   // the client's id
	env        envelope // as received; its strings and body alias the frame, which it keeps
	host       string   // the service it asks for: Host without port, lower case
	replayable bool     // safe to run twice
	deadline   time.Time
	streamed   bool        // its body streams in chunks
	body       *recvStream // its streamed body as the client sends it (front link)

	seq atomic.Uint64 // its number among the requests written on back; 0 until written

	// Guarded by Proxy.mu.
	back     *backLink     // the server it was sent to; nil while queued
	bid      uint64        // its id on back
	queued   bool          // waiting in Proxy.queue
	timer    *time.Timer   // its deadline while queued
	attempts int           // times re-sent after it may have run
	resends  int           // times re-sent after it provably did not run
	stop     chan struct{} // closed to end r's body relays; nil if none runs
	resp     *backLink     // the server whose streamed response is being relayed, after its head
	respID   uint64        // the response's id on resp
}

// Errors that end a proxy's links.
var (
	errProxyClosed = errors.New("zmqhttp: proxy closed")
	errNoHello     = errors.New("zmqhttp: server did not answer HELLO within the handshake timeout")
)

// proxyCaps are the capabilities the proxy offers on both sides.
const proxyCaps = ourCaps

// NewProxy binds the frontend (where clients connect, as to a Listener)
// and the backend (where servers connect with Listen(">"+backend)), and
// starts serving. Endpoints are as for Listen; a leading "@" is allowed.
// Options that apply: WithQueueSize (the requests that may wait for a
// server, default 4096, as a Listener's), WithRetryAfter, WithHeartbeat, WithHandshakeTimeout,
// WithLimits, WithStreamWindow and WithMaxReplays (how often a replayable
// request is re-sent after its server died, default 3).
func NewProxy(frontend, backend string, opts ...Option) (*Proxy, error) {
	fep, err := parseEndpoint(strings.TrimPrefix(frontend, "@"), true)
	if err != nil {
		return nil, err
	}
	bep, err := parseEndpoint(strings.TrimPrefix(backend, "@"), true)
	if err != nil {
		return nil, err
	}
	cfg := newConfig(opts)
	if err := cfg.checkOptions(); err != nil {
		return nil, err
	}
	if cfg.curveServer != nil || cfg.curveClient != nil || cfg.plainServer || cfg.plainClient != nil || cfg.authorizer != nil {
		// Accepting them and running NULL would leave the broker open.
		return nil, errors.New("zmqhttp: NewProxy: the broker does not take security options yet (CURVE, PLAIN, WithAuthorizer): run it on a trusted network")
	}
	fln, err := net.Listen(fep.network, fep.addr)
	if err != nil {
		return nil, fmt.Errorf("zmqhttp: proxy frontend %s: %w", frontend, err)
	}
	bln, err := net.Listen(bep.network, bep.addr)
	if err != nil {
		fln.Close()
		return nil, fmt.Errorf("zmqhttp: proxy backend %s: %w", backend, err)
	}
	p := &Proxy{
		cfg:        cfg,
		frontLn:    fln,
		backLn:     bln,
		frontEP:    fep,
		done:       make(chan struct{}),
		acceptDone: make(chan struct{}),
		fronts:     make(map[*frontLink]struct{}),
		backs:      make(map[*backLink]struct{}),
		known:      make(map[string]bool),
	}
	front := acceptor{ln: fln, handshake: p.handshaker(zmq4.Router, zmq4.Dealer, zmq4.Req),
		failed: &p.stats.handshakeFail, done: p.done, wg: &p.wg, serve: p.serveFront}
	back := acceptor{ln: bln, handshake: p.handshaker(zmq4.Dealer, zmq4.Router),
		failed: &p.stats.handshakeFail, done: p.done, wg: &p.wg, serve: p.serveBack}
	var loops sync.WaitGroup
	loops.Add(2)
	go func() { defer loops.Done(); front.run() }()
	go func() { defer loops.Done(); back.run() }()
	go func() { loops.Wait(); close(p.acceptDone) }()
	return p, nil
}

// FrontendAddr returns the frontend's bound address.
func (p *Proxy) FrontendAddr() net.Addr { return p.frontLn.Addr() }

// BackendAddr returns the backend's bound address.
func (p *Proxy) BackendAddr() net.Addr { return p.backLn.Addr() }

// Stats returns a snapshot of the proxy's state and counters.
func (p *Proxy) Stats() ProxyStats {
	p.mu.Lock()
	s := ProxyStats{Clients: len(p.fronts), Queued: len(p.queue), InFlight: p.inflight}
	for b := range p.backs {
		if b.announced {
			s.Servers = append(s.Servers, ProxyServer{Addr: b.addr, Workers: b.workers, InFlight: b.inflight,
				Services: slices.Clone(b.services), Draining: b.draining, Served: b.served})
		}
	}
	p.mu.Unlock()
	s.Requests = p.stats.requests.Load()
	s.Resent = p.stats.resent.Load()
	s.Lost = p.stats.lost.Load()
	s.Evictions = p.stats.evictions.Load()
	s.Overloaded = p.stats.overloaded.Load()
	s.Unrouted = p.stats.unrouted.Load()
	s.Expired = p.stats.expired.Load()
	s.NotProcessed = p.stats.notProcessed.Load()
	s.HandshakeFailed = p.stats.handshakeFail.Load()
	return s
}

func (p *Proxy) linkConfig() linkConfig {
	interval, timeout := p.cfg.heartbeat()
	return linkConfig{limits: p.cfg.limits, hbInterval: interval, hbTimeout: timeout, offer: proxyCaps,
		window: p.cfg.streamWindow()}
}

// handshaker returns the NULL handshake of the proxy's connections on one
// side: as a socket of type self, with a peer of one of the types accept.
func (p *Proxy) handshaker(self zmq4.SocketType, accept ...zmq4.SocketType) func(*liveConn) (*bufio.Reader, zmq4.SocketType, Peer, error) {
	return func(nc *liveConn) (*bufio.Reader, zmq4.SocketType, Peer, error) {
		br, typ, err := handshakeAs(nc, self, accept, true, p.cfg.handshakeTimeoutOrDefault())
		return br, typ, Peer{Mechanism: "NULL", Addr: nc.RemoteAddr()}, err
	}
}

// serveFront serves one client connection until it ends (its accept
// goroutine).
func (p *Proxy) serveFront(nc *liveConn, br *bufio.Reader, typ zmq4.SocketType, _ Peer) {
	f := &frontLink{p: p, reqs: make(map[uint64]*proxyReq)}
	cfg := p.linkConfig()
	cfg.server = true
	f.link = newLink(nc, br, typ, f, cfg)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		nc.Close()
		return
	}
	p.fronts[f] = struct{}{}
	p.mu.Unlock()
	f.start()
	<-f.dead
	p.frontEnded(f)
	f.wait()
}

// serveBack serves one server connection until it ends (its accept
// goroutine).
func (p *Proxy) serveBack(nc *liveConn, br *bufio.Reader, typ zmq4.SocketType, _ Peer) {
	b := &backLink{p: p, addr: nc.RemoteAddr().String(), reqs: make(map[uint64]*proxyReq)}
	cfg := p.linkConfig()
	cfg.sendHello = true
	b.link = newLink(nc, br, typ, b, cfg)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		nc.Close()
		return
	}
	p.backs[b] = struct{}{}
	p.mu.Unlock()
	b.start()
	select {
	case <-b.ready:
	case <-b.dead:
	case <-time.After(p.cfg.handshakeTimeoutOrDefault()):
		b.close(errNoHello)
	}
	<-b.dead
	// The writer is done before what was written is judged: a request it
	// numbered after dead closed must not look unsent.
	b.wait()
	p.backEnded(b)
}

// handle acts on a client's request or control message (its reader).
func (f *frontLink) handle(_ *link, env *envelope, frame []byte, route [][]byte) {
	p := f.p
	if route != nil {
		return // a device in front of the proxy: not supported (the proxy is the device); dropped
	}
	switch env.Kind {
	case KindRequest:
		p.receive(f, env)
	case KindCancel:
		p.mu.Lock()
		if r := f.reqs[env.ID]; r != nil {
			p.dropLocked(r)
		}
		p.mu.Unlock()
	case KindHello:
		p.mu.Lock()
		if p.closing {
			f.ensureDrainingLocked()
		}
		p.mu.Unlock()
	}
}

// bad answers a client's message that failed to decode, as a server
// would.
func (f *frontLink) bad(_ *link, route [][]byte, err error) {
	if e := answerBad(err); e != nil && route == nil {
		f.sendCtrl(e)
	}
}

// ensureDrainingLocked queues DRAINING once, with the number of requests
// read on the connection so far (see peer.ensureDrainingLocked). p.mu is
// held.
func (f *frontLink) ensureDrainingLocked() {
	if f.drainSent || !f.has(capDrain) {
		return
	}
	f.drainSent = true
	f.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindDraining, Seq: f.reqsRead.Load(), Flags: flagWatermark})
}

// receive takes a client's request: to a server with room, into the
// queue, or answered at once.
func (p *Proxy) receive(f *frontLink, env *envelope) {
	p.stats.requests.Add(1)
	streamed := env.Flags&flagStreamed != 0
	if streamed && !f.has(capStream) {
		f.sendCtrl(simpleResponse(env.ID, http.StatusBadRequest, "Bad Request: zmqhttp: streamed body without the stream capability"))
		return
	}
	r := &proxyReq{front: f, id: env.ID, env: *env, host: serviceName(env.Host),
		replayable: !streamed && replayableEnv(env), streamed: streamed}
	if env.Timeout > 0 {
		left := time.Duration(min(env.Timeout, int64(maxTimeout/time.Microsecond))) * time.Microsecond
		r.deadline = time.Now().Add(left)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if f.gone || f.reqs[env.ID] != nil {
		f.sendCtrl(simpleResponse(env.ID, http.StatusBadRequest, "Bad Request: zmqhttp: request id already in flight"))
		return
	}
	if streamed {
		// Opened now, in the reader, so that the chunks that follow
		// find it.
		r.body = f.newRecvStream(env.ID, p.cfg.limits.maxStreamBytes())
	}
	f.reqs[env.ID] = r
	p.inflight++
	if p.closing {
		f.ensureDrainingLocked()
		p.stats.notProcessed.Add(1)
		p.notProcessedLocked(r, "zmqhttp: proxy shutting down")
		return
	}
	p.routeLocked(r)
}

// serviceName is the service a Host names: without port, lower case.
func serviceName(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(host)
}

// replayableEnv reports whether a request is safe to run twice: an
// idempotent method, or an Idempotency-Key header (its body is whole).
func replayableEnv(e *envelope) bool {
	switch e.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	for i := 0; i+1 < len(e.Header); i += 2 {
		if e.Header[i] == "Idempotency-Key" {
			return true
		}
	}
	return false
}

// serves reports whether b takes requests for host.
func (b *backLink) serves(host string) bool {
	return len(b.services) == 0 || slices.Contains(b.services, host)
}

// routeLocked sends r to the server with the most free slots among those
// serving its host, or queues it, or answers it (no server for its host:
// 502; queue full: 503). p.mu is held.
func (p *Proxy) routeLocked(r *proxyReq) {
	var best *backLink
	free := 0
	for b := range p.backs {
		if n := b.workers - b.inflight; b.takes(r) && n > free {
			best, free = b, n
		}
	}
	if best != nil {
		p.sendLocked(best, r)
		return
	}
	if p.unroutableLocked(r.host) {
		p.unroutedLocked(r)
		return
	}
	if p.closing {
		// Shutdown emptied the queue already: nobody would take it
		// out again.
		p.stats.notProcessed.Add(1)
		p.notProcessedLocked(r, "zmqhttp: proxy shutting down")
		return
	}
	if len(p.queue) >= p.cfg.queueSizeOrDefault() {
		p.stats.overloaded.Add(1)
		p.answerLocked(r, simpleResponse(0, http.StatusServiceUnavailable, "Service Unavailable: zmqhttp proxy: every server is busy",
			"Retry-After", strconv.Itoa(p.cfg.retryAfterSeconds())))
		return
	}
	r.queued = true
	p.queue = append(p.queue, r)
	if !r.deadline.IsZero() {
		// Again each time it is queued: a timer that fired while it was
		// at a server found it not queued and did nothing.
		if r.timer != nil {
			r.timer.Stop()
		}
		r.timer = time.AfterFunc(time.Until(r.deadline), func() { p.expire(r) })
	}
}

// takes reports whether b may get r now, room aside. p.mu is held.
func (b *backLink) takes(r *proxyReq) bool {
	return b.announced && !b.draining && !b.gone && b.serves(r.host) && (!r.streamed || b.has(capStream))
}

// notProcessedLocked answers r as not run: to be sent again (error 503)
// to a client that understands draining, 503 with Retry-After to others.
// p.mu is held.
func (p *Proxy) notProcessedLocked(r *proxyReq, why string) {
	if r.front.has(capDrain) {
		p.answerLocked(r, errorEnvelope(0, errCodeNotProcessed, why))
		return
	}
	p.answerLocked(r, simpleResponse(0, http.StatusServiceUnavailable, why,
		"Retry-After", strconv.Itoa(p.cfg.retryAfterSeconds())))
}

// unroutableLocked reports that no server serves host, nor will soon:
// servers are connected, all of them announced their services, none
// serves host and none ever did. Otherwise a request for it waits (with
// no server connected at all, until its deadline). p.mu is held.
func (p *Proxy) unroutableLocked(host string) bool {
	if len(p.backs) == 0 || p.known[host] {
		return false
	}
	for b := range p.backs {
		if !b.announced || b.serves(host) {
			return false
		}
	}
	return true
}

// unroutedLocked answers r 502, naming its host. p.mu is held.
func (p *Proxy) unroutedLocked(r *proxyReq) {
	p.stats.unrouted.Add(1)
	p.answerLocked(r, simpleResponse(0, http.StatusBadGateway,
		fmt.Sprintf("Bad Gateway: zmqhttp proxy: no server serves host %q", r.env.Host)))
}

// expire answers r 504 if it is still queued when its deadline passes.
func (p *Proxy) expire(r *proxyReq) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !r.queued {
		return
	}
	p.unqueueLocked(r)
	p.stats.expired.Add(1)
	p.answerLocked(r, simpleResponse(0, http.StatusGatewayTimeout, "Gateway Timeout: zmqhttp proxy: no server took the request before its deadline"))
}

// unqueueLocked takes r out of the queue. p.mu is held.
func (p *Proxy) unqueueLocked(r *proxyReq) {
	if i := slices.Index(p.queue, r); i >= 0 {
		p.queue = slices.Delete(p.queue, i, i+1)
	}
	r.queued = false
}

// sendLocked sends r to b under an id of b's. p.mu is held.
func (p *Proxy) sendLocked(b *backLink, r *proxyReq) {
	e := r.env
	if !r.deadline.IsZero() {
		e.Timeout = timeoutMicros(r.deadline, time.Now())
	}
	b.nextID++
	r.back, r.bid = b, b.nextID
	b.reqs[r.bid] = r
	b.inflight++
	e.ID = r.bid
	r.seq.Store(0)
	if r.streamed {
		head, err := appendEnvelope(nil, &e)
		if err != nil {
			return // cannot happen: it decoded
		}
		dst, err := b.newSendStream(r.bid, head, &r.seq)
		if err != nil {
			return // b is dead: backEnded answers r
		}
		r.stop = make(chan struct{})
		p.wg.Add(1)
		go p.relayRequest(r, dst, r.stop)
		return
	}
	m := replyMsg(&e, false)
	m.reqNum = &r.seq
	b.send(m, nil, 0) // never waits: b has at most its Workers of ours in flight
}

// maxClientQueue bounds the replies the proxy holds for one client.
const maxClientQueue = 4 * linkQueueBytes

// answerLocked answers r's client with e (its ID set to the client's) and
// forgets r. p.mu is held.
func (p *Proxy) answerLocked(r *proxyReq, e *envelope) {
	e.ID = r.id
	p.forgetLocked(r)
	if e.Kind == KindResponse {
		// The send must not wait (p.mu is held, and a server's reader
		// is here): a client that lets maxClientQueue bytes of replies
		// pile up does not read, and is disconnected.
		r.front.sendOrDrop(replyMsg(e, false), maxClientQueue)
	} else {
		r.front.sendCtrl(e)
	}
}

// forgetLocked removes r from its client's table and counts it answered;
// its body relays end. p.mu is held.
func (p *Proxy) forgetLocked(r *proxyReq) {
	if r.timer != nil {
		r.timer.Stop()
	}
	if r.stop != nil {
		close(r.stop)
		r.stop = nil
	}
	if r.body != nil {
		r.front.removeRecv(r.body)
		r.body.fail(errUploadDone)
	}
	if r.front.reqs[r.id] != r {
		return
	}
	delete(r.front.reqs, r.id)
	p.inflight--
	if p.closing && p.inflight == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
}

// dropLocked abandons r (its client cancelled or left): out of the queue,
// or CANCEL to its server. p.mu is held.
func (p *Proxy) dropLocked(r *proxyReq) {
	if r.queued {
		p.unqueueLocked(r)
	}
	if b := r.back; b != nil {
		p.detachLocked(r)
		b.cancel(r.bid)
		p.fillLocked(b)
	}
	if b := r.resp; b != nil {
		b.cancel(r.respID)
		b.failRecv(r.respID, errStop)
	}
	p.forgetLocked(r)
}

// detachLocked takes r off its server. p.mu is held.
func (p *Proxy) detachLocked(r *proxyReq) {
	b := r.back
	if b.reqs[r.bid] == r {
		delete(b.reqs, r.bid)
		b.inflight--
	}
	r.back = nil
	if b.draining && b.inflight == 0 {
		b.finish() // it runs nothing of ours: let it go
	}
}

// fillLocked gives b queued requests while it has room. p.mu is held.
func (p *Proxy) fillLocked(b *backLink) {
	for i := 0; i < len(p.queue) && b.inflight < b.workers; {
		r := p.queue[i]
		if !b.takes(r) {
			i++
			continue
		}
		p.queue = slices.Delete(p.queue, i, i+1)
		r.queued = false
		p.sendLocked(b, r)
	}
}

// handle acts on a server's reply or control message (its reader).
func (b *backLink) handle(_ *link, env *envelope, frame []byte, _ [][]byte) {
	p := b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	switch env.Kind {
	case KindHello:
		if b.gone {
			return
		}
		b.hello(env)
		for _, s := range b.services {
			p.known[s] = true
		}
		p.fillLocked(b)
		// What waited for this server's announcement may have nowhere
		// to go now.
		for i := 0; i < len(p.queue); {
			if r := p.queue[i]; p.unroutableLocked(r.host) {
				p.unqueueLocked(r)
				p.unroutedLocked(r)
				continue
			}
			i++
		}
	case KindResponse:
		r := b.reqs[env.ID]
		if r == nil {
			return // cancelled
		}
		b.served++
		p.detachLocked(r)
		if env.Flags&flagStreamed != 0 {
			p.relayResponseLocked(b, r, env)
		} else {
			p.answerLocked(r, env)
		}
		p.fillLocked(b)
	case KindError:
		r := b.reqs[env.ID]
		if r == nil {
			// The server gave up in the middle of a streamed response:
			// the relay passes it on.
			b.failRecv(env.ID, &RemoteError{Code: env.Status, Message: env.Message})
			return
		}
		if env.Status == errCodeNotProcessed {
			b.draining = true // it runs nothing new
		}
		p.detachLocked(r)
		if env.Status == errCodeNotProcessed && r.streamed {
			// Part of its body may have gone to b: the client sends it
			// again, if it can.
			p.notProcessedLocked(r, env.Message)
			return
		}
		if env.Status == errCodeNotProcessed && r.resends < maxResends {
			// It did not run: it goes elsewhere.
			r.resends++
			p.stats.resent.Add(1)
			p.routeLocked(r)
			return
		}
		p.answerLocked(r, env)
		p.fillLocked(b)
	case KindDraining:
		if env.Flags&flagWatermark != 0 {
			b.drainSeq.Store(env.Seq)
			b.hasMark.Store(true)
		}
		b.draining = true
		if b.inflight == 0 {
			b.finish()
		}
	}
}

// hello records a server's capacity and services from its HELLO answer.
// p.mu is held.
func (b *backLink) hello(env *envelope) {
	b.announced = true
	b.workers, b.services = 0, nil
	for i := 0; i+1 < len(env.Header); i += 2 {
		switch env.Header[i] {
		case "Workers":
			if n, err := strconv.Atoi(env.Header[i+1]); err == nil && n > 0 {
				b.workers = n
			}
		case "Service":
			b.services = append(b.services, strings.ToLower(env.Header[i+1]))
		}
	}
	if b.workers == 0 {
		b.workers = (&config{}).workersOrDefault() // announced none: a Listener's default
	}
}

// bad is told of a server's message that failed to decode: a reply whose
// id could be read fails its request with an error.
func (b *backLink) bad(_ *link, _ [][]byte, err error) {
	id := uint64(0)
	var oe *oversizeError
	var ie *idError
	switch {
	case errors.As(err, &oe):
		if _, kind, i, ok := peekHead(oe.head); ok && (kindOf(kind) == KindResponse || kindOf(kind) == KindError) {
			id = i
		}
	case errors.As(err, &ie):
		if ie.kind == KindResponse || ie.kind == KindError {
			id = ie.id
		}
	}
	if id == 0 {
		return
	}
	p := b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := b.reqs[id]; r != nil {
		p.detachLocked(r)
		p.answerLocked(r, errorEnvelope(0, errCodeInternal, "zmqhttp proxy: bad reply from server: "+err.Error()))
		p.fillLocked(b)
	}
}

// frontEnded forgets a client that left; its requests are abandoned.
func (p *Proxy) frontEnded(f *frontLink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.fronts, f)
	f.gone = true
	for _, r := range f.reqs {
		p.dropLocked(r)
	}
}

// backEnded drops a server whose connection ended: what it provably did
// not run, and what is safe to run twice, goes elsewhere; the rest fails
// at the client with the lost signal.
func (p *Proxy) backEnded(b *backLink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.backs, b)
	b.gone = true
	if !b.draining && !p.closed {
		p.stats.evictions.Add(1)
	}
	reqs := make([]*proxyReq, 0, len(b.reqs))
	for _, r := range b.reqs {
		reqs = append(reqs, r)
	}
	slices.SortFunc(reqs, func(x, y *proxyReq) int { return cmpUint64(x.bid, y.bid) })
	maxReplays := p.cfg.maxReplaysOrDefault()
	for _, r := range reqs {
		p.detachLocked(r)
		if p.closed {
			continue
		}
		seq := r.seq.Load()
		notRun := seq == 0 || (b.hasMark.Load() && seq > b.drainSeq.Load())
		switch {
		case r.streamed && notRun:
			p.notProcessedLocked(r, fmt.Sprintf("zmqhttp proxy: connection to server %s lost before it started the request", b.addr))
			continue
		case notRun && !r.streamed && r.resends < maxResends:
			r.resends++
		case r.replayable && r.attempts < maxReplays:
			r.attempts++
		default:
			p.stats.lost.Add(1)
			p.answerLocked(r, errorEnvelope(0, errCodeLost,
				fmt.Sprintf("zmqhttp proxy: connection to server %s lost (%v); the request may have run", b.addr, b.err)))
			continue
		}
		p.stats.resent.Add(1)
		p.routeLocked(r)
	}
}

// Shutdown stops taking requests and waits for those in flight to be
// answered, then closes the proxy. Clients that speak the draining
// protocol are told DRAINING and get back what they send afterwards
// unprocessed (they send it again elsewhere); requests still queued are
// returned to them the same way; others get 503 with Retry-After. If ctx
// ends first, Shutdown returns ctx.Err() and leaves the proxy running
// (call Close).
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	if p.idleWait == nil {
		// One channel for every Shutdown call: closed (and forgotten)
		// once nothing is in flight.
		p.idle = make(chan struct{})
		p.idleWait = p.idle
		if p.inflight == 0 {
			close(p.idle)
			p.idle = nil
		}
	}
	idle := p.idleWait
	for f := range p.fronts {
		f.ensureDrainingLocked()
	}
	queued := p.queue
	p.queue = nil
	for _, r := range queued {
		r.queued = false
		p.stats.notProcessed.Add(1)
		p.notProcessedLocked(r, "zmqhttp: proxy shutting down")
	}
	p.mu.Unlock()
	p.frontLn.Close() // no new clients
	select {
	case <-idle:
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.Close()
}

// Close closes both listening sockets and every connection at once:
// clients see their connection lost (and replay what they may), servers
// see their client gone (and cancel what they run). It waits for the
// proxy's goroutines and is idempotent.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closing, p.closed = true, true
		for _, r := range p.queue {
			if r.timer != nil {
				r.timer.Stop()
			}
		}
		p.queue = nil
		links := make([]*link, 0, len(p.fronts)+len(p.backs))
		for f := range p.fronts {
			links = append(links, f.link)
		}
		for b := range p.backs {
			links = append(links, b.link)
		}
		p.mu.Unlock()
		close(p.done)
		p.frontLn.Close()
		p.backLn.Close()
		<-p.acceptDone
		for _, l := range links {
			l.close(errProxyClosed)
		}
		// Connections that finished their handshake meanwhile see
		// p.closed and close themselves.
		p.wg.Wait()
	})
	return nil
}

// relayResponseLocked passes on the head of a streamed response from b
// for r, and starts relaying its body. The body is opened on b now, in
// its reader, so that the chunks that follow find it. A client that does
// not stream gets the body whole, once it has all arrived. p.mu is held.
func (p *Proxy) relayResponseLocked(b *backLink, r *proxyReq, env *envelope) {
	src := b.newRecvStream(env.ID, p.cfg.limits.maxStreamBytes())
	r.resp, r.respID = b, env.ID
	e := *env
	e.ID = r.id
	if r.stop == nil {
		r.stop = make(chan struct{})
	}
	if !r.front.has(capStream) {
		p.wg.Add(1)
		go p.collectResponse(r, &e, src, r.stop)
		return
	}
	head, err := appendEnvelope(nil, &e)
	if err != nil {
		return // cannot happen: it decoded
	}
	dst, err := r.front.newSendStream(r.id, head, nil)
	if err != nil {
		p.dropLocked(r) // the client is gone
		return
	}
	p.wg.Add(1)
	go p.relayResponse(r, src, dst, r.stop)
}

// relay copies a streamed body from src (on one link) to dst (on
// another), a received piece at a time: src's window bounds what the
// proxy holds, and src grants credit back only as dst's peer takes the
// bytes. It ends dst (finished, or aborted on error) and returns nil at
// the end of the body, errStop if stop closed first, or the error that
// ended src or dst.
func relay(src *recvStream, dst *sendStream, stop <-chan struct{}) error {
	for {
		data, release, err := src.nextPiece()
		switch {
		case err == io.EOF:
			dst.finish(src.trailers())
			return nil
		case err != nil:
			dst.abort(err)
			return err
		case data == nil:
			select {
			case <-src.notify:
			case <-stop:
				dst.abort(errStop)
				return errStop
			}
			continue
		}
		_, err = dst.write(data, stop, time.Time{})
		release()
		if err != nil {
			src.fail(err)
			return err
		}
	}
}

// relayRequest relays r's streamed request body to its server. A broken
// link is left to backEnded or frontEnded; a body the client spoiled
// (over the limit, bad chunks) fails the request.
func (p *Proxy) relayRequest(r *proxyReq, dst *sendStream, stop <-chan struct{}) {
	defer p.wg.Done()
	err := relay(r.body, dst, stop)
	if err == nil || err == errStop || errors.Is(err, errLinkLost) || errors.Is(err, errUploadDone) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.front.reqs[r.id] != r || r.resp != nil {
		return
	}
	status := http.StatusBadRequest
	if errors.Is(err, ErrBodyTooLarge) {
		status = http.StatusRequestEntityTooLarge
	}
	p.dropLocked(r) // CANCEL to its server
	r.front.sendCtrl(simpleResponse(r.id, status, http.StatusText(status)+": "+err.Error()))
}

// relayResponse relays r's streamed response body to its client; when the
// server's side breaks, the client is told with an error envelope (lost,
// or the server's own error).
func (p *Proxy) relayResponse(r *proxyReq, src *recvStream, dst *sendStream, stop <-chan struct{}) {
	defer p.wg.Done()
	err := relay(src, dst, stop)
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.front.reqs[r.id] != r {
		return // cancelled: the client expects nothing more
	}
	if err != nil {
		r.front.sendCtrl(bodyError(r.id, err))
	}
	p.forgetLocked(r)
}

// bodyError is the error envelope that tells a client its streamed
// response broke off: the server's own error, or lost.
func bodyError(id uint64, err error) *envelope {
	var re *RemoteError
	if errors.As(err, &re) {
		return errorEnvelope(id, re.Code, re.Message)
	}
	return errorEnvelope(id, errCodeLost, "zmqhttp proxy: the server's streamed response broke off: "+err.Error())
}

// collectResponse reads a streamed response whole (bounded by
// Limits.MaxBodyBytes) for a client that does not stream, then answers
// with it.
func (p *Proxy) collectResponse(r *proxyReq, e *envelope, src *recvStream, stop <-chan struct{}) {
	defer p.wg.Done()
	var body []byte
	limit := p.cfg.limits.maxBodyBytes()
	var err error
	for err == nil {
		data, release, rerr := src.nextPiece()
		switch {
		case rerr == io.EOF:
			err = io.EOF
		case rerr != nil:
			err = rerr
		case data == nil:
			select {
			case <-src.notify:
			case <-stop:
				err = errStop
			}
		case int64(len(body)+len(data)) > limit:
			release()
			err = fmt.Errorf("%w: response body over %d bytes", ErrBodyTooLarge, limit)
		default:
			body = append(body, data...)
			release()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.front.reqs[r.id] != r {
		return
	}
	if err != io.EOF {
		if b := r.resp; b != nil {
			b.cancel(r.respID)
			b.failRecv(r.respID, err)
		}
		if errors.Is(err, ErrBodyTooLarge) {
			err = &RemoteError{Code: errCodeInternal, Message: err.Error()}
		}
		r.front.sendCtrl(bodyError(r.id, err))
		p.forgetLocked(r)
		return
	}
	e.Flags &^= flagStreamed
	e.Body, e.ContentLength, e.Trailer = body, int64(len(body)), src.trailers()
	p.answerLocked(r, e)
}
