package zmqhttp

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
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
// Like a keep-alive TCP connection, each connection carries the requests of
// one peer, one after another; its RemoteAddr names that ZeroMQ peer
// ("127.0.0.1:50122" for tcp, "ipc:PATH#N" for ipc). An idle connection
// holds no worker slot.
type Listener struct {
	// Set once by Listen, read-only after.
	cfg        config
	ep         endpoint
	endpoint   string
	ln         net.Listener
	acceptWake chan struct{} // room for one token: acceptQ has a job
	done       chan struct{} // closed by Close
	acceptDone chan struct{} // closed when acceptLoop returns
	stats      listenerCounters
	wg         sync.WaitGroup // accept loop and every peer's goroutines
	peerSeq    atomic.Uint64
	closeOnce  sync.Once

	// hsMu guards hs: the connections whose handshake is in progress,
	// oldest first (the accept loop adds, startPeer removes).
	hsMu sync.Mutex
	hs   list.List

	// closed is set by Close, with mu held, so that code holding mu sees
	// it together with inflight and the queue; hot paths read it without
	// mu.
	closed atomic.Bool
	// closing is set first thing in Close, closeDone last.
	closing   atomic.Bool
	closeDone atomic.Bool

	// mu guards the following fields.
	mu           sync.Mutex
	peers        map[*peer]struct{}
	inflight     int                 // requests received and not yet answered
	running      int                 // requests holding a worker slot
	queue        []*job              // requests waiting for a worker slot, oldest first
	acceptQ      []*job              // requests holding a slot, waiting for Accept
	peersClosing bool                // maybeClosePeers has closed (or scheduled closing) every peer
	drainGiven   bool                // Accept has returned the drain connection
	conns        map[*vconn]struct{} // open connections handed to the server
	held         []*job              // requests awaiting their verdict (holdVerdict)
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
func Listen(endpoint string, opts ...Option) (*Listener, error) {
	ep, err := parseEndpoint(endpoint, true)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen(ep.network, ep.addr)
	if err != nil && ep.scheme == "ipc" && errors.Is(err, syscall.EADDRINUSE) && staleSocket(ep.addr) {
		// Left by a server that was killed: nothing listens on it.
		// libzmq removes such a file too.
		os.Remove(ep.addr)
		ln, err = net.Listen(ep.network, ep.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("zmqhttp: listen %s: %w", endpoint, err)
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
		acceptWake: make(chan struct{}, 1),
		done:       make(chan struct{}),
		peersLeft:  make(chan struct{}),
		acceptDone: make(chan struct{}),
		peers:      make(map[*peer]struct{}),
		conns:      make(map[*vconn]struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
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

// Addr returns the bound address (a *net.TCPAddr or *net.UnixAddr).
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Endpoint returns an endpoint a Transport can dial to reach this
// Listener: for tcp the bound port, with 127.0.0.1 when bound to all
// interfaces.
func (l *Listener) Endpoint() string {
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
// returns once the accept loop has ended; each peer's goroutines end when
// its connection closes: a basic peer's once no request is left
// unanswered, a draining peer's when it leaves (or a heartbeat timeout
// later). Close is idempotent.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closing.Store(true)
		held := l.held
		l.held = nil
		l.mu.Unlock()
		for _, j := range held {
			l.verdict(j, true)
		}
		close(l.done)
		err = l.ln.Close() // a unix listener also removes its socket file
		<-l.acceptDone
		l.mu.Lock()
		l.closed.Store(true)
		queued := append(l.queue, l.acceptQ...)
		l.queue, l.acceptQ = nil, nil
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

// settleMax bounds how long Close waits in settle.
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

// peerGone is told that a peer left; once the Listener is closed and none
// is left, the drain connection ends.
func (l *Listener) peerGone() {
	l.mu.Lock()
	if l.closed.Load() && len(l.peers) == 0 {
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
func (d *drainConn) LocalAddr() net.Addr { return d.l.ln.Addr() }

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
	var delay time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// E.g. EMFILE: keep serving the peers we have, and try
			// again after a while, as net/http does (5 ms, doubling to
			// 1 s), rather than spin.
			l.stats.acceptErrors.Add(1)
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-l.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		e := l.admitHandshake(nc)
		l.wg.Add(1)
		go l.startPeer(nc, e)
	}
}

// maxHandshakes bounds the handshakes in progress on one Listener. A new
// connection past it ends the oldest handshake still running: peers that
// connect and stay silent (or trickle their greeting) cannot lock others
// out, since a real client completes its handshake in a round trip or two.
const maxHandshakes = 1024

// admitHandshake lists nc as handshaking, ending the oldest handshake if
// maxHandshakes are in progress.
func (l *Listener) admitHandshake(nc net.Conn) *list.Element {
	l.hsMu.Lock()
	defer l.hsMu.Unlock()
	if l.hs.Len() >= maxHandshakes {
		oldest := l.hs.Remove(l.hs.Front()).(net.Conn)
		oldest.Close() // its handshake fails and its goroutine ends
		l.stats.hsEvicted.Add(1)
	}
	return l.hs.PushBack(nc)
}

// handshakeDone takes e off the list of handshakes in progress (if the
// accept loop has not evicted it).
func (l *Listener) handshakeDone(e *list.Element) {
	l.hsMu.Lock()
	l.hs.Remove(e) // no-op if evicted already
	l.hsMu.Unlock()
}

// startPeer runs the handshake of a new connection, then serves it until
// it ends.
func (l *Listener) startPeer(raw net.Conn, hs *list.Element) {
	defer l.wg.Done()
	nc := newLiveConn(raw)
	addr := l.peerAddr(nc)
	br, typ, info, err := l.cfg.connSecurity(nc, zmq4.Router, true, addr)
	l.handshakeDone(hs)
	if err == nil && typ != zmq4.Dealer && typ != zmq4.Req {
		err = fmt.Errorf("zmqhttp: peer is a %s socket, want DEALER or REQ", typ)
	}
	if err != nil {
		l.stats.handshakeFail.Add(1)
		nc.Close()
		return
	}
	p := &peer{l: l, addr: addr, info: info}
	interval, timeout := l.cfg.heartbeat()
	p.link = newLink(nc, br, typ, p, linkConfig{
		limits:      l.cfg.limits,
		hbInterval:  interval,
		hbTimeout:   timeout,
		noHeartbeat: l.cfg.noHeartbeat,
		window:      l.cfg.streamWindow(),
		server:      true,
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
	<-p.dead
	p.ended()
	p.wait()
	if p.err == errSlowPeer {
		l.stats.slowPeers.Add(1)
	} else if p.err == errHeartbeatTimeout {
		l.stats.silentPeers.Add(1)
	}
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
