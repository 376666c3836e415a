package zmqhttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the direct path: Serve runs the handler of the user's
// http.Server on the Listener's requests without rendering them as
// HTTP/1.1 bytes for the server to parse (and its response back). A fixed
// pool of worker goroutines takes the requests that hold a worker slot
// (Listener.start hands them over instead of giving them to Accept);
// directreq.go builds each *http.Request from its envelope, directresp.go
// is the ResponseWriter that turns what the handler writes into the reply
// envelopes the standard path would send.

// Serve runs srv's Handler on the requests l receives, without feeding
// them through a net.Conn: the opt-in direct path. Clients cannot tell
// it from the standard one,
//
//	srv := &http.Server{Handler: h}
//	go srv.Serve(l)
//
// which remains the default; it answers the same requests with the same
// responses (the same status, headers as net/http writes them — Date,
// Content-Length for a short body, sniffed Content-Type, chunked framing
// and trailers — and the same error responses for requests net/http
// refuses), and keeps every rule of the Listener: WithWorkers handlers at
// once, the queue, 503 when both are full, not-processed answers after
// Close, the caller's deadline and cancellation. It costs much less CPU
// per request.
//
// What Serve honours of srv: Handler (nil: http.DefaultServeMux),
// ErrorLog (a handler's panic and misuse of the ResponseWriter are
// logged there, as net/http does; with none they go to the Listener's
// WithLogger, never to the global logger), BaseContext (called once, with
// l), ConnContext (called for each request, with a net.Conn that stands
// for the request's peer), ReadTimeout (reading the request body),
// WriteTimeout (writing the response), MaxHeaderBytes (a larger request
// head is answered 431 like net/http does), DisableGeneralOptionsHandler,
// Shutdown, Close and RegisterOnShutdown.
//
// Serve blocks like srv.Serve and returns http.ErrServerClosed after
// srv.Shutdown or srv.Close, or an error wrapping net.ErrClosed once l is
// closed by itself. srv.Shutdown closes l (see Listener.Close: queued and
// later requests go back to their clients as not processed) and waits,
// within its context, for the handlers that run and for draining clients
// to leave, as with the standard path; srv.Close closes l and fails the
// requests whose handlers still run (their clients get an error, their
// contexts are cancelled). To do this Serve runs srv.Serve on an internal
// listener with one internal connection, which srv's ConnContext and
// ConnState see (StateNew, StateActive, then StateClosed once drained; its
// RemoteAddr is "drain"); no request of a client ever goes through it,
// and no Handler sees it.
//
// Differences a handler can see (none reaches the client):
//   - r.Context().Deadline() reports the caller's deadline, as with
//     CallerDeadline, and r.Context().Err() is
//     context.DeadlineExceeded once it passed;
//   - the ResponseWriter implements http.Flusher and the methods
//     http.ResponseController uses (Flush, SetReadDeadline,
//     SetWriteDeadline, EnableFullDuplex), but not http.Hijacker
//     (ResponseController.Hijack returns http.ErrNotSupported) nor the
//     deprecated http.CloseNotifier;
//   - srv.IdleTimeout, ReadHeaderTimeout, ConnState (for clients' requests),
//     TLSConfig and the HTTP/2 settings do not apply: there is no
//     connection per client to time out or to upgrade.
//
// Serve starts WithWorkers worker goroutines, which take the requests that
// hold a worker slot one after another (no goroutine per request) and end
// once the Listener is closed and their handlers have returned.
//
// A Listener is served by Serve or by an http.Server's Serve, never both;
// Serve fails if l is served by Serve already, or if l or srv is nil.
func Serve(l *Listener, srv *http.Server) error {
	if l == nil || srv == nil {
		return errors.New("zmqhttp: Serve: nil Listener or http.Server")
	}
	d := &directServer{
		l:       l,
		srv:     srv,
		drained: make(chan struct{}),
		ready:   make(chan struct{}),
	}
	n := l.cfg.workersOrDefault()
	d.jobs = make(chan *job, n)
	base := context.Background()
	if srv.BaseContext != nil {
		base = srv.BaseContext(l)
		if base == nil {
			panic("zmqhttp: Serve: BaseContext returned a nil context")
		}
	}
	d.base = context.WithValue(base, http.ServerContextKey, srv)

	l.mu.Lock()
	if !l.direct.CompareAndSwap(nil, d) {
		l.mu.Unlock()
		return errors.New("zmqhttp: Serve: the Listener is served by Serve already")
	}
	// Requests that were waiting for Accept are the workers' now.
	waiting := l.acceptQ
	l.acceptQ = nil
	l.mu.Unlock()

	d.workers = make([]*directWorker, n)
	d.wg.Add(n)
	for i := range d.workers {
		w := &directWorker{d: d}
		d.workers[i] = w
		go w.loop()
	}
	for _, j := range waiting {
		d.enqueue(j)
	}
	ln := &directListener{d: d, closed: make(chan struct{})}
	go d.closer(ln)
	return srv.Serve(ln)
}

// directServer is one Serve call's state.
type directServer struct {
	// Set by Serve before the workers start, read-only after.
	l         *Listener
	srv       *http.Server
	base      context.Context // srv.BaseContext's, with http.ServerContextKey
	jobs      chan *job       // started jobs for the workers; room for every worker slot
	workers   []*directWorker
	drained   chan struct{} // closed once l is closed, every worker has ended and every peer has left
	ready     chan struct{} // closed once srv waits for the drain connection (or l is closing): no handler runs before
	readyOnce sync.Once

	wg sync.WaitGroup // the workers

	killed atomic.Bool // srv.Close closed the drain connection: running requests fail

	// mu guards stopped, and sending on jobs (closed once stopped).
	mu      sync.Mutex
	stopped bool
}

// enqueue hands j, which holds a worker slot, to a worker. Once the
// workers are stopped (the Listener is closed) j goes back to its client
// as not processed: no handler took it.
func (d *directServer) enqueue(j *job) {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		d.l.verdict(j, true)
		return
	}
	// Never blocks: jobs has room for every worker slot and a job holds
	// one from before it is sent until after a worker took it.
	d.jobs <- j
	d.mu.Unlock()
}

// closer waits for srv to close the internal listener (Shutdown, Close,
// or Serve returning) or for the Listener to be closed by itself; then
// closes the Listener, stops the workers once their handlers have
// returned, and waits for the peers to leave before it ends the internal
// connection's request, which is what srv.Shutdown waits for.
func (d *directServer) closer(ln *directListener) {
	select {
	case <-ln.closed:
	case <-d.l.done:
	}
	d.l.Close()  // returns once done, whoever called it first: no job is started after
	d.setReady() // jobs left go back unprocessed (closing)
	d.mu.Lock()
	d.stopped = true
	close(d.jobs)
	d.mu.Unlock()
	d.wg.Wait()
	<-d.l.peersLeft
	close(d.drained)
}

// setReady lets the workers run handlers.
func (d *directServer) setReady() { d.readyOnce.Do(func() { close(d.ready) }) }

// kill fails the requests whose handlers run: srv.Close closed the
// internal connection.
func (d *directServer) kill() {
	d.killed.Store(true) // a handler starting now is failed by its worker
	for _, w := range d.workers {
		w.mu.Lock()
		c := w.cur
		w.mu.Unlock()
		if c != nil {
			c.kill()
		}
	}
}

// logf logs as net/http's server does, to srv.ErrorLog, else to the
// Listener's logger (never to the global one).
func (d *directServer) logf(format string, args ...any) {
	if d.srv.ErrorLog != nil {
		d.srv.ErrorLog.Printf(format, args...)
		return
	}
	d.l.cfg.logWarn("zmqhttp: " + fmt.Sprintf(format, args...))
}

// directWorker is one long-lived worker goroutine of a Serve, with the
// buffers it reuses from request to request.
type directWorker struct {
	d *directServer

	// mu guards cur: kill reads it from another goroutine.
	mu  sync.Mutex
	cur *directCall

	// Owned by the worker goroutine.
	lastPeer *peer
	peerCtx  context.Context // d.base with the LocalAddrContextKey of lastPeer
	tmpl     http.Request    // built in place, then copied by WithContext
	body     []byte          // response body buffer, reused while under refMin
	kv       []string        // response header fields, reused
	keys     []string        // sorting scratch
	sniff    []byte          // the first body bytes, when a write commits the header
	env      envelope        // the reply envelope, reused (peer.reply encodes it at once)
	dateSec  int64
	date     string
	now      time.Time
}

func (w *directWorker) loop() {
	defer w.d.wg.Done()
	<-w.d.ready
	for j := range w.d.jobs {
		w.run(j)
	}
}

// run serves one job: not at all if its caller gave up or the Listener
// is closing (then it goes back as not processed: no handler saw it).
func (w *directWorker) run(j *job) {
	l := w.d.l
	if j.canceled() {
		if !j.deadline.IsZero() && !time.Now().Before(j.deadline) {
			l.stats.expired.Add(1)
		}
		l.finished(j)
		return
	}
	if l.closing.Load() {
		// Like http.Server dropping a request it reads after Shutdown
		// began: the handler never ran.
		l.verdict(j, true)
		return
	}
	w.now = time.Now()
	c := &directCall{w: w, j: j, contentLength: -1}
	c.serve()
	w.mu.Lock()
	w.cur = nil
	w.mu.Unlock()
}

// httpDate returns now in http.TimeFormat, formatted once a second.
func (w *directWorker) httpDate() string {
	now := time.Now()
	if s := now.Unix(); s != w.dateSec || w.date == "" {
		w.dateSec = s
		w.date = now.UTC().Format(http.TimeFormat)
	}
	return w.date
}

// ctxFor returns the context of p's requests before their own
// cancellation: the base with LocalAddrContextKey, and ConnContext's.
func (w *directWorker) ctxFor(p *peer) context.Context {
	if p != w.lastPeer || w.peerCtx == nil {
		w.lastPeer = p
		w.peerCtx = context.WithValue(w.d.base, http.LocalAddrContextKey, &connAddr{Addr: w.d.l.Addr(), p: p})
	}
	ctx := w.peerCtx
	if cc := w.d.srv.ConnContext; cc != nil {
		ctx = cc(ctx, &peerConn{p: p, local: w.d.l.Addr()})
		if ctx == nil {
			panic("zmqhttp: Serve: ConnContext returned nil")
		}
	}
	return ctx
}

// peerConn is the net.Conn srv.ConnContext gets on the direct path: it
// names the request's peer; nothing can be read or written on it.
type peerConn struct {
	p     *peer
	local net.Addr
}

func (c *peerConn) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (c *peerConn) Write([]byte) (int, error)        { return 0, net.ErrClosed }
func (c *peerConn) Close() error                     { return nil }
func (c *peerConn) LocalAddr() net.Addr              { return c.local }
func (c *peerConn) RemoteAddr() net.Addr             { return c.p.addr }
func (c *peerConn) SetDeadline(time.Time) error      { return nil }
func (c *peerConn) SetReadDeadline(time.Time) error  { return nil }
func (c *peerConn) SetWriteDeadline(time.Time) error { return nil }

// panicked handles a handler's panic as net/http does: logged (unless
// http.ErrAbortHandler), and the response ends where its bytes stood, as
// when a connection closes under it.
func (c *directCall) panicked(v any) {
	if v != http.ErrAbortHandler {
		const size = 64 << 10
		buf := make([]byte, size)
		buf = buf[:runtime.Stack(buf, false)]
		c.w.d.logf("http: panic serving %v: %v\n%s", c.j.peer.addr, v, buf)
	}
	c.cancelCtx()
	if c.body != nil {
		c.body.Close()
	}
	c.abandon()
}

// directListener is the net.Listener Serve gives srv.Serve: it returns one
// connection (directDrainConn), then blocks until closed.
type directListener struct {
	d      *directServer
	gave   atomic.Bool
	once   sync.Once
	closed chan struct{}
}

// Accept returns the drain connection once, then waits until the
// listener or the Listener is closed.
func (ln *directListener) Accept() (net.Conn, error) {
	if ln.gave.CompareAndSwap(false, true) {
		return &directDrainConn{d: ln.d, closed: make(chan struct{})}, nil
	}
	select {
	case <-ln.closed:
	case <-ln.d.l.done:
	}
	return nil, ErrListenerClosed
}

// Close closes the Listener, as srv.Close and srv.Shutdown do on the
// standard path before they return (the endpoint can be bound again at
// once), and makes the Serve's closer stop the workers. http.Server calls
// it with its lock held: Listener.Close never calls into srv.
func (ln *directListener) Close() error {
	ln.once.Do(func() { close(ln.closed) })
	ln.d.l.Close()
	return nil
}

// Addr returns the Listener's address.
func (ln *directListener) Addr() net.Addr { return ln.d.l.Addr() }

// drainHead is what the drain connection gives srv to read: a malformed
// request head, which net/http answers "400 Bad Request" itself (no
// Handler sees it, whatever srv's settings) after it marked the
// connection active. The drain connection's Write of that answer
// returns once the Serve is drained: until then srv.Shutdown waits for
// the connection. (A connection that stays new, or goes idle, is closed
// by Shutdown after at most 5 s.)
const drainHead = "zmqhttp-drain\r\n\r\n"

// directDrainConn is the one connection srv serves for a Serve; see
// drainHead.
type directDrainConn struct {
	d      *directServer
	once   sync.Once
	closed chan struct{}

	// mu guards sent.
	mu   sync.Mutex
	sent int // bytes of drainHead given
}

// Read gives drainHead, then waits for the drain or the connection's
// Close, then returns EOF.
func (c *directDrainConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.sent < len(drainHead) {
		n := copy(p, drainHead[c.sent:])
		c.sent += n
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	case <-c.d.drained:
		return 0, io.EOF
	}
}

// Write takes srv's answer to drainHead: the connection is active, so
// srv.Shutdown will wait for it; requests may run now. It returns once
// the Serve is drained (or the connection closed by srv.Close).
func (c *directDrainConn) Write(p []byte) (int, error) {
	c.d.setReady()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	case <-c.d.drained:
		return len(p), nil
	}
}

// Close is srv.Close (or the end of the drain): requests still running
// are failed.
func (c *directDrainConn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		select {
		case <-c.d.drained:
		default:
			c.d.kill()
		}
	})
	return nil
}

// LocalAddr returns the Listener's address.
func (c *directDrainConn) LocalAddr() net.Addr { return c.d.l.Addr() }

// RemoteAddr names the connection.
func (c *directDrainConn) RemoteAddr() net.Addr { return peerAddr{network: "zmq", addr: "drain"} }

// SetDeadline is ignored: the drain must outlast srv's timeouts.
func (c *directDrainConn) SetDeadline(t time.Time) error { return nil }

// SetReadDeadline is ignored: the drain must outlast srv's timeouts.
func (c *directDrainConn) SetReadDeadline(t time.Time) error { return nil }

// SetWriteDeadline is ignored: the drain must outlast srv's timeouts.
func (c *directDrainConn) SetWriteDeadline(time.Time) error { return nil }
