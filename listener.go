package zmqhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Listener is a net.Listener that receives HTTP requests over ZeroMQ (the
// server end of a DEALER/REQ ↔ ROUTER pair) and hands each one to the
// http.Server that calls Accept as a connection of its own, so the server's
// handler, timeouts, limits, ConnState, ConnContext and Shutdown all apply.
//
// Concurrency is bounded like the REP worker pool of the ZeroMQ guide: at
// most WithWorkers requests are handed to the server at once (a request's
// slot is free again once its reply is queued); received requests wait in
// a queue of WithQueueSize; when both are full the Listener answers 503
// Service Unavailable with Retry-After itself, without running the handler.
//
// A Listener made with a ">" endpoint connects instead of binding (to a
// Proxy's backend, see NewProxy) and serves that connection the same way;
// WithWorkers is then also the capacity it announces to the Proxy.
//
// Like a keep-alive TCP connection, each connection carries the requests of
// one peer, one after another; its RemoteAddr names that ZeroMQ peer
// ("127.0.0.1:50122" for tcp, "ipc:PATH#N" for ipc). An idle connection
// holds no worker slot.
type Listener struct {
	// Set once by Listen, read-only after.
	cfg        config
	ep         endpoint
	endpoint   string
	ln         net.Listener  // nil for a connecting Listener
	connect    bool          // the endpoint began with ">": dial it instead of binding
	acceptWake chan struct{} // room for one token: acceptQ has a job
	done       chan struct{} // closed by Close
	acceptDone chan struct{} // closed when the accept (or connect) loop returns
	stats      listenerCounters
	wg         sync.WaitGroup // accept or connect loop and every peer's goroutines
	peerSeq    atomic.Uint64
	closeOnce  sync.Once

	// direct is set once, with mu held, by Serve: started requests go to
	// its workers instead of Accept. Read without mu on the hot path.
	direct atomic.Pointer[directServer]

	// closed is set by Close, with mu held, so that code holding mu sees
	// it together with inflight and the queue; hot paths read it without
	// mu.
	closed atomic.Bool
	// closing is set first thing in Close (with mu held, and closingAt),
	// closeDone last.
	closing   atomic.Bool
	closeDone atomic.Bool

	// mu guards the following fields.
	mu           sync.Mutex
	peers        map[*peer]struct{}
	handshaking  int                 // accepted connections in their handshake (counted before Accept is called again)
	inflight     int                 // requests received and not yet answered
	running      int                 // requests holding a worker slot
	queue        []*job              // requests waiting for a worker slot, oldest first
	queuedBytes  int                 // the sizes of the jobs in queue
	acceptQ      []*job              // requests holding a slot, waiting for Accept
	peersClosing bool                // maybeClosePeers has closed (or scheduled closing) every peer
	drainGiven   bool                // Accept has returned the drain connection
	conns        map[*vconn]struct{} // open connections handed to the server
	held         map[*job]time.Time  // requests awaiting their verdict, by when their connection closed (holdVerdict)
	closingAt    time.Time           // when Close began; set with closing, read-only after
	peersLeft    chan struct{}       // closed when the Listener is closed and every peer has gone
}

// listenerCounters are updated atomically.
type listenerCounters struct {
	requests      atomic.Uint64
	overloaded    atomic.Uint64
	rejected      atomic.Uint64
	badMessages   atomic.Uint64
	handshakeFail atomic.Uint64
	hsEvicted     atomic.Uint64
	acceptErrors  atomic.Uint64
	slowPeers     atomic.Uint64
	noResponse    atomic.Uint64
	drained       atomic.Uint64
	silentPeers   atomic.Uint64
	canceled      atomic.Uint64
	expired       atomic.Uint64
}

// ListenerStats is a snapshot of a Listener's counters.
type ListenerStats struct {
	Requests          uint64 // request envelopes received and decoded
	Overloaded        uint64 // answered 503 because workers and queue were full
	Rejected          uint64 // not run: answered 400/413/431 (invalid or over a limit) or with an error envelope (unknown version or kind)
	BadMessages       uint64 // dropped: not even an id could be read, or bad framing
	HandshakeFailed   uint64 // connections dropped during the ZMTP handshake
	HandshakesEvicted uint64 // handshakes ended to make room for a new connection (maxHandshakes in progress); also counted in HandshakeFailed
	AcceptErrors      uint64 // failed accepts (e.g. out of file descriptors), each followed by a pause
	SlowPeers         uint64 // connections dropped because they did not read their replies
	NoResponse        uint64 // requests the server closed without a complete response
	ClosedUnanswered  uint64 // requests returned unprocessed (or 503) because the Listener was closed
	SilentPeers       uint64 // connections closed because the peer sent nothing within the heartbeat timeout
	Canceled          uint64 // requests the client cancelled
	Expired           uint64 // queued requests dropped unrun because the caller's deadline had passed
	Peers             int    // connected peers now
	InFlight          int    // requests received and not yet answered
}

// Stats returns a snapshot of the Listener's counters.
func (l *Listener) Stats() ListenerStats {
	l.mu.Lock()
	peers, inflight := len(l.peers), l.inflight
	l.mu.Unlock()
	return ListenerStats{
		Requests:          l.stats.requests.Load(),
		Overloaded:        l.stats.overloaded.Load(),
		Rejected:          l.stats.rejected.Load(),
		BadMessages:       l.stats.badMessages.Load(),
		HandshakeFailed:   l.stats.handshakeFail.Load(),
		HandshakesEvicted: l.stats.hsEvicted.Load(),
		AcceptErrors:      l.stats.acceptErrors.Load(),
		SlowPeers:         l.stats.slowPeers.Load(),
		NoResponse:        l.stats.noResponse.Load(),
		ClosedUnanswered:  l.stats.drained.Load(),
		SilentPeers:       l.stats.silentPeers.Load(),
		Canceled:          l.stats.canceled.Load(),
		Expired:           l.stats.expired.Load(),
		Peers:             peers,
		InFlight:          inflight,
	}
}

// Listen binds a Listener at endpoint: "tcp://host:port" ("*" for all
// interfaces; port 0 or "*" for an ephemeral port) or "ipc:///path".
//
// As in CZMQ, a leading "@" binds (the same as no prefix) and a leading
// ">" connects: Listen(">tcp://broker:5556") dials a Proxy's backend (or
// any DEALER that binds) and serves the requests that come over that
// connection exactly like those of an accepted one. It returns at once,
// without waiting for the broker, and reconnects for its whole life with
// WithReconnectBackoff's waits (50 ms doubling up to 2 s by default), until
// Close.
func Listen(endpoint string, opts ...Option) (*Listener, error) {
	connect := strings.HasPrefix(endpoint, ">")
	ep, err := parseEndpoint(strings.TrimLeft(endpoint, "@>"), !connect)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(endpoint, "@>") || strings.HasPrefix(endpoint, ">@") ||
		strings.HasPrefix(endpoint, ">>") || strings.HasPrefix(endpoint, "@@") {
		return nil, fmt.Errorf("zmqhttp: endpoint %q: one prefix at most, @ or >", endpoint)
	}
	var ln net.Listener
	if !connect {
		ln, err = net.Listen(ep.network, ep.addr)
		if err != nil && ep.scheme == "ipc" && errors.Is(err, syscall.EADDRINUSE) && staleSocket(ep.addr) {
			// Left by a server that was killed: nothing listens on it.
			// libzmq removes such a file too.
			os.Remove(ep.addr)
			ln, err = net.Listen(ep.network, ep.addr)
		}
		if err != nil {
			return nil, fmt.Errorf("zmqhttp: listen %s: %w", endpoint, err)
		}
	}
	cfg := newConfig(opts)
	if err := cfg.checkSecurity(true); err != nil {
		ln.Close()
		return nil, err
	}
	l := &Listener{
		cfg:        cfg,
		ep:         ep,
		endpoint:   endpoint,
		ln:         ln,
		connect:    connect,
		acceptWake: make(chan struct{}, 1),
		done:       make(chan struct{}),
		peersLeft:  make(chan struct{}),
		acceptDone: make(chan struct{}),
		peers:      make(map[*peer]struct{}),
		conns:      make(map[*vconn]struct{}),
	}
	l.wg.Add(1)
	if connect {
		go l.connectLoop()
	} else {
		go l.acceptLoop()
	}
	return l, nil
}

// staleSocket reports whether the unix socket file at path is one nothing
// listens on (connecting is refused).
func staleSocket(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// Addr returns the bound address (a *net.TCPAddr or *net.UnixAddr); for a
// connecting Listener, the address it dials (network "tcp" or "unix").
func (l *Listener) Addr() net.Addr {
	if l.connect {
		return peerAddr{network: l.ep.network, addr: l.ep.addr}
	}
	return l.ln.Addr()
}

// Endpoint returns an endpoint a Transport can dial to reach this
// Listener: for tcp the bound port, with 127.0.0.1 when bound to all
// interfaces. A connecting Listener returns the endpoint it was given
// (">tcp://broker:5556"): clients reach it through the broker.
func (l *Listener) Endpoint() string {
	if l.connect {
		return l.endpoint
	}
	if l.ep.scheme == "ipc" {
		return "ipc://" + l.ep.addr
	}
	a := l.ln.Addr().(*net.TCPAddr)
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "127.0.0.1" // a wildcard listener takes IPv4 loopback too
	}
	return "tcp://" + net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// Accept waits for a received request that holds a worker slot and is
// not taken by an idle connection of its peer, and returns a connection
// carrying it. After Close it returns, once, a connection that stays open
// until every client that was told to drain has left (so that
// http.Server.Shutdown waits for them, within its context, and a process
// that exits after Shutdown does not reset them mid-request), then an error
// wrapping net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closing.Load() {
			give := !l.drainGiven
			l.drainGiven = true
			l.mu.Unlock()
			if give {
				return &drainConn{l: l, done: make(chan struct{})}, nil
			}
			return nil, ErrListenerClosed
		}
		if len(l.acceptQ) > 0 {
			j := l.acceptQ[0]
			l.acceptQ[0] = nil
			l.acceptQ = l.acceptQ[1:]
			more := len(l.acceptQ) > 0
			l.mu.Unlock()
			if more {
				select {
				case l.acceptWake <- struct{}{}:
				default:
				}
			}
			return newVConn(l, j), nil
		}
		l.mu.Unlock()
		select {
		case <-l.acceptWake:
		case <-l.done:
		}
	}
}

// Close stops accepting connections and requests, and tells connected
// clients that speak the draining protocol to send no more (with the
// number of their requests it took, so they know which of the others
// never ran). Requests still waiting in the queue, and any arriving later,
// are returned to such clients as not processed (they send them again
// after reconnecting) and answered 503 with Retry-After to other clients;
// requests already handed to the server are answered when the server
// finishes them (this is what http.Server.Shutdown waits for). Close
// returns once the accept loop has ended; a connection then in its
// handshake finishes it (within WithHandshakeTimeout) and is served as a
// draining peer, as the drain waits for it; each peer's goroutines end when
// its connection closes: a basic peer's once no request is left
// unanswered, a draining peer's when it leaves (or a heartbeat timeout
// later). Close is idempotent.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closing.Store(true)
		l.closingAt = time.Now()
		held := l.held
		l.held = nil
		l.mu.Unlock()
		for j, closedAt := range held {
			l.verdict(j, l.closingAt.Sub(closedAt) <= verdictWait)
		}
		close(l.done)
		if l.ln != nil {
			err = l.ln.Close() // a unix listener also removes its socket file
		}
		<-l.acceptDone
		l.mu.Lock()
		l.closed.Store(true)
		queued := append(l.queue, l.acceptQ...)
		l.queue, l.acceptQ, l.queuedBytes = nil, nil, 0
		peers := make([]*peer, 0, len(l.peers))
		for p := range l.peers {
			peers = append(peers, p)
		}
		l.mu.Unlock()
		for _, p := range peers {
			p.mu.Lock()
			p.ensureDrainingLocked()
			idle := p.idle
			p.idle = nil
			p.mu.Unlock()
			for _, c := range idle {
				c.reclaim()
			}
		}
		for _, j := range queued {
			l.verdict(j, true)
		}
		l.settle()
		l.closeDone.Store(true)
		l.maybeClosePeers()
		l.peerGone()
	})
	return err
}

// settleMax bounds how long Close waits in settle. It covers only
// scheduling: a server goroutine going from reading a head to closing its
// connection. Measured under load (2 cores, load average 5–8, -race), such
// connections closed at most 25 ms after Close began.
const settleMax = 500 * time.Millisecond

// settle waits, briefly, for every connection whose request head the
// server has read but not yet acted on (no read or write since) to show
// what it does with it. http.Server marks itself shutting down before it
// closes its listeners (this Close), and drops unanswered a request whose
// head it finishes reading after that: such a connection closes within
// microseconds, while Close is still here, and its request goes back to
// the client as not processed (notRunLocked). A connection that reads or
// writes ran its handler. One still silent when settle returns is taken
// to be running a handler that has not touched its request yet: if it
// later closes without a response, that request may have run and gets an
// error.
func (l *Listener) settle() {
	deadline := time.Now().Add(settleMax)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		conns := make([]*vconn, 0, len(l.conns))
		for c := range l.conns {
			conns = append(conns, c)
		}
		l.mu.Unlock()
		waiting := false
		for _, c := range conns {
			if c.undecided() {
				waiting = true
				break
			}
		}
		if !waiting {
			return
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func (l *Listener) isClosed() bool { return l.closed.Load() }

// maybeClosePeers closes every peer connection once the Listener is closed
// and no request is left to answer. A peer that was told it is draining
// closes the connection itself once its last call is answered (requests
// it wrote before it read DRAINING still arrive meanwhile, and go back to
// it unprocessed); it gets a heartbeat timeout's grace before the server
// closes it anyway.
func (l *Listener) maybeClosePeers() {
	l.mu.Lock()
	if !l.closed.Load() || l.inflight > 0 || l.peersClosing {
		l.mu.Unlock()
		return
	}
	l.peersClosing = true
	ps := make([]*peer, 0, len(l.peers))
	for p := range l.peers {
		ps = append(ps, p)
	}
	l.mu.Unlock()
	for _, p := range ps {
		l.finishPeer(p)
	}
}

// finishPeer closes p's connection once its replies are written: a
// client that was told to drain gets a heartbeat timeout to leave by
// itself first, and so does one not heard from yet (its HELLO may be on
// its way).
func (l *Listener) finishPeer(p *peer) {
	if !p.has(capDrain) && p.heard.Load() {
		p.finish()
		return
	}
	_, grace := l.cfg.heartbeat()
	time.AfterFunc(grace, p.finish)
}

// handshakeEnded is told that an accepted connection's handshake ended:
// it failed, or its peer is registered.
func (l *Listener) handshakeEnded() {
	l.mu.Lock()
	l.handshaking--
	l.mu.Unlock()
	l.peerGone()
}

// peerGone is told that a peer left; once the Listener is closed and none
// is left (nor any connection in its handshake), the drain connection
// ends.
func (l *Listener) peerGone() {
	l.mu.Lock()
	if l.closed.Load() && len(l.peers) == 0 && l.handshaking == 0 {
		select {
		case <-l.peersLeft:
		default:
			close(l.peersLeft)
		}
	}
	l.mu.Unlock()
}

// drainConn is the connection Accept returns once after Close: its Read
// ends (EOF) when every peer has left, so that http.Server.Shutdown, which
// waits for its connections, waits for draining clients to leave (for at
// most about 5 s: the server counts a connection that never sent a byte as
// idle after that).
type drainConn struct {
	l    *Listener
	once sync.Once
	done chan struct{}
}

// Read waits until every peer has left or the connection is closed.
func (d *drainConn) Read([]byte) (int, error) {
	select {
	case <-d.l.peersLeft:
		return 0, io.EOF
	case <-d.done:
		return 0, net.ErrClosed
	}
}

// Write discards nothing: no request ever comes on this connection.
func (d *drainConn) Write([]byte) (int, error) { return 0, net.ErrClosed }

// Close ends a pending Read.
func (d *drainConn) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}

// LocalAddr returns the Listener's address.
func (d *drainConn) LocalAddr() net.Addr { return d.l.Addr() }

// RemoteAddr names the connection.
func (d *drainConn) RemoteAddr() net.Addr { return peerAddr{network: "zmq", addr: "drain"} }

// SetDeadline is ignored.
func (d *drainConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline is ignored.
func (d *drainConn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline is ignored.
func (d *drainConn) SetWriteDeadline(time.Time) error { return nil }

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	defer close(l.acceptDone)
	a := acceptor{
		ln:        l.ln,
		handshake: l.handshake,
		failed:    &l.stats.handshakeFail,
		evicted:   &l.stats.hsEvicted,
		errs:      &l.stats.acceptErrors,
		done:      l.done,
		wg:        &l.wg,
		serve: func(nc *liveConn, br *bufio.Reader, typ zmq4.SocketType, info Peer) {
			p := l.startPeer(nc, br, typ, info)
			l.handshakeEnded()
			l.runPeer(p)
		},
		// A client whose handshake is under way when Close begins may
		// have finished its side and written requests already: ending
		// the connection would lose them (the client cannot tell that
		// they never ran). It is served as a draining peer instead, and
		// the drain waits for it.
		finish:   true,
		admitted: func() { l.mu.Lock(); l.handshaking++; l.mu.Unlock() },
		failedHS: l.handshakeEnded,
	}
	a.run()
}

// connectLoop is a connecting Listener's: it dials the endpoint, greets as
// ROUTER (it is the server side of the protocol on the client side of
// TCP), serves the connection as an accepted one until it ends, and dials
// again with backoff, until Close.
func (l *Listener) connectLoop() {
	defer l.wg.Done()
	defer close(l.acceptDone)
	b := newBackoff(&l.cfg)
	for {
		p, err := l.dial()
		if err != nil {
			if !b.wait(l.done) {
				return
			}
			continue
		}
		b.reset()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.runPeer(p)
		}()
		select {
		case <-p.dead:
		case <-l.done:
			return // the peer drains as an accepted one does
		}
		if !b.wait(l.done) { // a broker that drops us at once is not hammered
			return
		}
	}
}

// dial connects and handshakes once; the connection is served as a peer.
func (l *Listener) dial() (*peer, error) {
	ctx, cancel := context.WithCancel(context.Background()) // ends when Close starts
	defer cancel()
	go func() {
		select {
		case <-l.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	d := net.Dialer{Timeout: l.cfg.dialTimeoutOrDefault()}
	raw, err := d.DialContext(ctx, l.ep.network, l.ep.addr)
	if err != nil {
		return nil, err
	}
	nc := newLiveConn(raw)
	stop := context.AfterFunc(ctx, func() { raw.Close() }) // Close need not wait for the handshake (nc's Conn may change in it)
	br, typ, info, err := l.handshake(nc)
	if !stop() && err == nil {
		err = ErrListenerClosed
	}
	if err != nil {
		l.stats.handshakeFail.Add(1)
		nc.Close()
		return nil, err
	}
	return l.startPeer(nc, br, typ, info), nil
}

// handshake runs a new connection's handshake, accepted or dialled, with
// the Listener's security settings (the server side of the mechanism
// either way), and checks the peer's socket type.
func (l *Listener) handshake(nc *liveConn) (*bufio.Reader, zmq4.SocketType, Peer, error) {
	br, typ, info, err := l.cfg.connSecurity(nc, zmq4.Router, true, l.peerAddr(nc))
	if err == nil && typ != zmq4.Dealer && (typ != zmq4.Req || l.connect) {
		err = fmt.Errorf("zmqhttp: peer is a %s socket, want DEALER or REQ", typ)
	}
	if err != nil {
		l.cfg.logWarn("zmqhttp: handshake failed", "addr", nc.RemoteAddr().String(), "err", bare(err))
	} else {
		l.cfg.logInfo("zmqhttp: peer connected", "addr", info.Addr.String(), "mechanism", info.Mechanism)
	}
	return br, typ, info, err
}

// startPeer makes a peer of an established connection and starts its
// link.
func (l *Listener) startPeer(nc *liveConn, br *bufio.Reader, typ zmq4.SocketType, info Peer) *peer {
	p := &peer{l: l, addr: info.Addr, info: info}
	interval, timeout := l.cfg.heartbeat()
	p.link = newLink(nc, br, typ, p, linkConfig{
		limits:      l.cfg.limits,
		hbInterval:  interval,
		hbTimeout:   timeout,
		noHeartbeat: l.cfg.noHeartbeat,
		window:      l.cfg.streamWindow(),
		server:      true,
		hello:       l.helloProps(),
	})
	// A peer that arrives while the Listener closes is served as a
	// draining one: told so (after its HELLO), its requests returned
	// unprocessed; closing its connection at once would lose what it
	// sent already.
	l.mu.Lock()
	l.peers[p] = struct{}{}
	late := l.peersClosing
	l.mu.Unlock()
	p.start()
	if late {
		l.finishPeer(p)
	}
	return p
}

// runPeer waits for p's connection to end and cleans up after it.
func (l *Listener) runPeer(p *peer) {
	<-p.dead
	p.ended()
	p.wait()
	if p.err == errSlowPeer {
		l.stats.slowPeers.Add(1)
	} else if p.err == errHeartbeatTimeout {
		l.stats.silentPeers.Add(1)
	}
	l.cfg.logInfo("zmqhttp: peer left", "addr", p.addr.String(), "why", bare(p.err))
}

// helloProps are the properties the Listener's HELLO answer carries in its
// Header field: its capacity (WithWorkers) and the hosts it serves
// (WithServices), for a Proxy to balance and route on.
func (l *Listener) helloProps() []string {
	props := []string{"Workers", strconv.Itoa(l.cfg.workersOrDefault())}
	for _, h := range l.cfg.services {
		props = append(props, "Service", h)
	}
	return props
}

func (l *Listener) peerAddr(nc net.Conn) net.Addr {
	if l.ep.scheme == "ipc" {
		return peerAddr{network: "zmq+ipc", addr: "ipc:" + l.ep.addr + "#" + strconv.FormatUint(l.peerSeq.Add(1), 10)}
	}
	return peerAddr{network: "zmq+tcp", addr: nc.RemoteAddr().String()}
}

// peerAddr is the RemoteAddr of a Listener's connections.
type peerAddr struct{ network, addr string }

func (a peerAddr) Network() string { return a.network }
func (a peerAddr) String() string  { return a.addr }
