package zmqhttp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/go-zeromq/zmq4"
)

// Listener is a net.Listener that receives HTTP requests over ZeroMQ (the
// server end of a DEALER/REQ ↔ ROUTER pair) and hands each one to the
// http.Server that calls Accept as a connection of its own, so the server's
// handler, timeouts, limits, ConnState, ConnContext and Shutdown all apply.
//
// Concurrency is bounded like the REP worker pool of the ZeroMQ guide: at
// most WithWorkers connections are open at once; received requests wait in
// a queue of WithQueueSize; when both are full the Listener answers 503
// Service Unavailable with Retry-After itself, without running the handler.
//
// Each connection carries exactly one request. Its RemoteAddr names the
// ZeroMQ peer ("127.0.0.1:50122" for tcp, "ipc:PATH#N" for ipc).
type Listener struct {
	// Set once by Listen, read-only after.
	cfg      config
	ep       endpoint
	endpoint string
	ln       net.Listener
	jobs     chan *job     // received requests waiting for a worker; cap queueSize
	slots    chan struct{} // one token per open connection; cap workers
	done     chan struct{} // closed by Close
	stats    listenerCounters
	wg       sync.WaitGroup // accept loop and every peer's goroutines
	hsSlots  chan struct{}  // bounds handshakes in progress
	peerSeq  atomic.Uint64
	closeMu  sync.Once

	// mu guards the following fields.
	mu       sync.Mutex
	peers    map[*peer]struct{}
	inflight int  // requests received and not yet answered
	closed   bool // Close has run
}

// listenerCounters are updated atomically.
type listenerCounters struct {
	requests      atomic.Uint64
	overloaded    atomic.Uint64
	rejected      atomic.Uint64
	badMessages   atomic.Uint64
	handshakeFail atomic.Uint64
	slowPeers     atomic.Uint64
	noResponse    atomic.Uint64
	drained       atomic.Uint64
}

// ListenerStats is a snapshot of a Listener's counters.
type ListenerStats struct {
	Requests         uint64 // request envelopes received and decoded
	Overloaded       uint64 // answered 503 because workers and queue were full
	Rejected         uint64 // answered with an error envelope: undecodable, over a limit, unknown kind or version
	BadMessages      uint64 // dropped: not even an id could be read, or bad framing
	HandshakeFailed  uint64 // connections dropped during the ZMTP handshake
	SlowPeers        uint64 // connections dropped because they did not read their replies
	NoResponse       uint64 // requests the server closed without a complete response
	ClosedUnanswered uint64 // requests answered 503 because the Listener was closed
	Peers            int    // connected peers now
	InFlight         int    // requests received and not yet answered
}

// Stats returns a snapshot of the Listener's counters.
func (l *Listener) Stats() ListenerStats {
	l.mu.Lock()
	peers, inflight := len(l.peers), l.inflight
	l.mu.Unlock()
	return ListenerStats{
		Requests:         l.stats.requests.Load(),
		Overloaded:       l.stats.overloaded.Load(),
		Rejected:         l.stats.rejected.Load(),
		BadMessages:      l.stats.badMessages.Load(),
		HandshakeFailed:  l.stats.handshakeFail.Load(),
		SlowPeers:        l.stats.slowPeers.Load(),
		NoResponse:       l.stats.noResponse.Load(),
		ClosedUnanswered: l.stats.drained.Load(),
		Peers:            peers,
		InFlight:         inflight,
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
	if err != nil {
		return nil, fmt.Errorf("zmqhttp: listen %s: %w", endpoint, err)
	}
	cfg := newConfig(opts)
	l := &Listener{
		cfg:      cfg,
		ep:       ep,
		endpoint: endpoint,
		ln:       ln,
		jobs:     make(chan *job, cfg.queueSizeOrDefault()),
		slots:    make(chan struct{}, cfg.workersOrDefault()),
		done:     make(chan struct{}),
		hsSlots:  make(chan struct{}, 64),
		peers:    make(map[*peer]struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
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
		host = "127.0.0.1"
		if a.IP.To4() == nil && len(a.IP) == net.IPv6len {
			host = "::1"
		}
	}
	return "tcp://" + net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// Accept waits for a free worker and a received request, and returns a
// connection carrying that request. After Close it returns an error
// wrapping net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, ErrListenerClosed
	}
	select {
	case j := <-l.jobs:
		return newVConn(l, j), nil
	case <-l.done:
		<-l.slots
		return nil, ErrListenerClosed
	}
}

// Close stops accepting connections and requests. Requests still waiting
// in the queue are answered 503 with Retry-After; requests already handed
// to the server are answered when the server finishes them (this is what
// http.Server.Shutdown waits for). Peer connections are closed once no
// request on them is left unanswered. Close is idempotent.
func (l *Listener) Close() error {
	var err error
	l.closeMu.Do(func() {
		close(l.done)
		err = l.ln.Close()
		if l.ep.scheme == "ipc" {
			os.Remove(l.ep.addr)
		}
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		for {
			select {
			case j := <-l.jobs:
				l.stats.drained.Add(1)
				j.peer.reply(simpleResponse(j.env.ID, 503, "zmqhttp: server shutting down",
					"Retry-After", strconv.Itoa(l.cfg.retryAfterSeconds())))
				l.finished()
				continue
			default:
			}
			break
		}
		l.maybeClosePeers()
	})
	return err
}

// finished records that a received request has been answered.
func (l *Listener) finished() {
	l.mu.Lock()
	l.inflight--
	l.mu.Unlock()
	l.maybeClosePeers()
}

// maybeClosePeers closes every peer connection once the Listener is closed
// and no request is left to answer.
func (l *Listener) maybeClosePeers() {
	l.mu.Lock()
	if !l.closed || l.inflight > 0 {
		l.mu.Unlock()
		return
	}
	ps := make([]*peer, 0, len(l.peers))
	for p := range l.peers {
		ps = append(ps, p)
	}
	l.mu.Unlock()
	for _, p := range ps {
		p.closeAfterFlush()
	}
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			select {
			case <-l.done:
				return
			default:
				continue // e.g. EMFILE: keep serving the peers we have
			}
		}
		select {
		case l.hsSlots <- struct{}{}:
		default:
			l.stats.handshakeFail.Add(1)
			nc.Close() // too many handshakes in progress
			continue
		}
		l.wg.Add(1)
		go l.startPeer(nc)
	}
}

// startPeer runs the handshake of a new connection, then its reader.
func (l *Listener) startPeer(nc net.Conn) {
	defer l.wg.Done()
	br, typ, err := handshake(nc, zmq4.Router, true, l.cfg.handshakeTimeoutOrDefault())
	<-l.hsSlots
	if err == nil && typ != zmq4.Dealer && typ != zmq4.Req {
		err = fmt.Errorf("zmqhttp: peer is a %s socket, want DEALER or REQ", typ)
	}
	if err != nil {
		l.stats.handshakeFail.Add(1)
		nc.Close()
		return
	}
	p := &peer{
		l:    l,
		nc:   nc,
		br:   br,
		bw:   bufio.NewWriterSize(nc, 64<<10),
		out:  make(chan outMsg, l.cfg.peerSendQueueOrDefault()),
		dead: make(chan struct{}),
		addr: l.peerAddr(nc),
	}
	l.mu.Lock()
	if l.closed && l.inflight == 0 {
		l.mu.Unlock()
		nc.Close()
		return
	}
	l.peers[p] = struct{}{}
	l.mu.Unlock()
	l.wg.Add(1)
	go p.writeLoop()
	p.readLoop()
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

// peer is one connected client. br is used by readLoop only, bw by
// writeLoop only.
type peer struct {
	l    *Listener
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	addr net.Addr
	out  chan outMsg   // messages for writeLoop
	dead chan struct{} // closed by close
	once sync.Once
	fin  sync.Once
}

func (p *peer) close() {
	p.once.Do(func() {
		close(p.dead)
		p.nc.Close()
		p.l.mu.Lock()
		delete(p.l.peers, p)
		p.l.mu.Unlock()
	})
}

// closeAfterFlush asks the writer to send what is queued, then close.
func (p *peer) closeAfterFlush() {
	p.fin.Do(func() {
		select {
		case p.out <- outMsg{op: opFin}:
		default:
			p.close()
		}
	})
}

// reply encodes e and queues it for p's writer. If p's queue is full the
// peer is not reading its replies; it is disconnected rather than allowed
// to hold memory or workers.
func (p *peer) reply(e *envelope) {
	b, err := appendEnvelope(nil, e)
	if err != nil {
		b, _ = appendEnvelope(nil, errorEnvelope(e.ID, errCodeInternal, err.Error()))
	}
	select {
	case <-p.dead:
	case p.out <- outMsg{op: opEnvelope, b: b}:
	default:
		p.l.stats.slowPeers.Add(1)
		p.close()
	}
}

// outMsg is one item of a peer's send queue.
type outMsg struct {
	op byte   // opEnvelope, opPong or opFin
	b  []byte // the encoded envelope, or the PONG's context
}

const (
	opEnvelope = iota
	opPong
	opFin // flush what is queued, then close the connection
)

func errorEnvelope(id uint64, code int, msg string) *envelope {
	return &envelope{Version: ProtocolVersion, Kind: KindError, ID: id, Status: code, Message: msg}
}

func (p *peer) writeLoop() {
	defer p.l.wg.Done()
	for {
		var m outMsg
		select {
		case m = <-p.out:
		case <-p.dead:
			return
		}
		yielded := false
		for more := true; more; {
			var err error
			switch m.op {
			case opFin:
				p.bw.Flush()
				p.close()
				return
			case opPong:
				err = writeCommand(p.bw, "PONG", m.b)
			default:
				err = writeEnvelopeMsg(p.bw, m.b)
			}
			if err != nil {
				p.close()
				return
			}
			select {
			case m = <-p.out:
				continue
			default:
			}
			if yielded {
				break
			}
			// Before the syscall, let handlers that are about to reply
			// run once, so that their replies share this write.
			yielded = true
			runtime.Gosched()
			select {
			case m = <-p.out:
			default:
				more = false
			}
		}
		if err := p.bw.Flush(); err != nil {
			p.close()
			return
		}
	}
}

// readLoop reads requests from the peer and queues them for workers.
func (p *peer) readLoop() {
	defer p.close()
	l := p.l
	maxFrame := l.cfg.limits.maxFrameBytes()
	var frames [][]byte
	for {
		var isCmd bool
		var err error
		frames, isCmd, err = readMessage(p.br, maxFrame, frames)
		var oe *oversizeError
		if errors.As(err, &oe) {
			p.rejectOversized(oe)
			continue
		}
		if err != nil {
			var pe *ProtocolError
			if errors.As(err, &pe) {
				l.stats.badMessages.Add(1)
			}
			return
		}
		if isCmd {
			if commandName(frames[0]) == "PING" {
				// Answer a libzmq heartbeat; the writer owns bw, so the
				// PONG goes through it as a raw command.
				p.sendPong(pongBody(frames[0]))
			}
			continue
		}
		if len(frames) != 2 || len(frames[0]) != 0 {
			l.stats.badMessages.Add(1)
			continue
		}
		var env envelope
		if err := decodeEnvelope(frames[1], l.cfg.limits, &env); err != nil {
			p.reject(err)
			continue
		}
		if env.Kind != KindRequest {
			l.stats.badMessages.Add(1)
			continue
		}
		l.stats.requests.Add(1)
		l.mu.Lock()
		closed := l.closed
		if !closed {
			l.inflight++
		}
		l.mu.Unlock()
		if closed {
			l.stats.drained.Add(1)
			p.reply(simpleResponse(env.ID, 503, "zmqhttp: server shutting down",
				"Retry-After", strconv.Itoa(l.cfg.retryAfterSeconds())))
			continue
		}
		select {
		case l.jobs <- &job{peer: p, env: env}:
		default:
			l.stats.overloaded.Add(1)
			p.reply(simpleResponse(env.ID, 503, "zmqhttp: server overloaded",
				"Retry-After", strconv.Itoa(l.cfg.retryAfterSeconds())))
			l.finished()
		}
	}
}

// sendPong queues the answer to a ZMTP PING (sent by libzmq peers with
// heartbeats enabled). It is dropped if the queue is full: the peer will
// time out and reconnect, which is what its heartbeat is for.
func (p *peer) sendPong(ctx []byte) {
	select {
	case p.out <- outMsg{op: opPong, b: ctx}:
	default:
	}
}

// reject answers a message that failed to decode, when its id could be
// read: a request the server cannot take gets the HTTP answer an HTTP
// server would give (400, 413 or 431) without running the handler; an
// unknown version or kind gets an error envelope, since it may not be a
// request at all. Anything else is dropped and counted.
func (p *peer) reject(err error) {
	var ie *idError
	if !errors.As(err, &ie) || (ie.kind != KindRequest && ie.kind.supported()) {
		p.l.stats.badMessages.Add(1)
		return
	}
	p.l.stats.rejected.Add(1)
	var pe *ProtocolError
	errors.As(err, &pe)
	if ie.kind != KindRequest || pe != nil && (pe.Reason == reasonVersion || pe.Reason == reasonKind) {
		p.reply(errorEnvelope(ie.id, errCodeUnsupported, err.Error()))
		return
	}
	status := http.StatusBadRequest
	if pe != nil {
		switch pe.Reason {
		case reasonHeaderLarge:
			status = http.StatusRequestHeaderFieldsTooLarge
		case reasonBodyLarge:
			status = http.StatusRequestEntityTooLarge
		}
	}
	p.reply(simpleResponse(ie.id, status, http.StatusText(status)+": "+err.Error()))
}

// rejectOversized answers a request whose message was over the frame
// limit (and was discarded unread) with 413, if its id can be read.
func (p *peer) rejectOversized(oe *oversizeError) {
	ver, kind, id, ok := peekHead(oe.head)
	if !ok || ver != ProtocolVersion || Kind(kind) != KindRequest {
		p.l.stats.badMessages.Add(1)
		return
	}
	p.l.stats.rejected.Add(1)
	p.reply(simpleResponse(id, http.StatusRequestEntityTooLarge, "Request Entity Too Large: "+oe.Error()))
}
