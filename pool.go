package zmqhttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
)

// This file is the worker side of the Listener. A received request (job)
// goes to an idle connection of its peer if one is waiting, else to the
// bounded queue, until Accept pairs it with a free worker slot and returns
// a new vconn: the net.Conn the http.Server reads requests from and writes
// responses to. A vconn belongs to one peer (its RemoteAddr) and, like a
// keep-alive TCP connection, carries that peer's requests one after
// another; each open vconn holds one worker slot.

// job is a received request, from its arrival until it is answered.
type job struct {
	// Set before the job is queued, read-only after.
	peer     *peer
	env      envelope
	deadline time.Time // the caller's deadline; zero if none

	// Guarded by peer.mu.
	canceled bool   // the client sent CANCEL
	conn     *vconn // the connection carrying it, once assigned

	// Guarded by conn.mu once assigned (owned by the assigner before).
	parts        [][]byte    // request bytes not yet read by the server
	resp         respParser  // the response as the server writes it
	sent         bool        // answered: the reply (or nothing, if aborted) is decided
	aborted      bool        // cancelled or past the caller's deadline
	headLen      int         // length of the request head (request line and header fields)
	read         int         // request bytes the server has read
	headRead     bool        // the server has read the whole head
	closedAtHead bool        // the Listener was closed when the server got the whole head
	timer        *time.Timer // aborts the job at its deadline
}

// vconn is a connection the http.Server sees. For each request the server
// reads it as HTTP/1.1 bytes, then (as over TCP) keeps a one-byte read
// pending while the handler runs; that read ends when the server aborts it
// with a deadline, when the request is cancelled (EOF, so the server
// cancels r.Context()), or when the connection is closed. The response
// bytes the server writes are parsed as they arrive; once complete they are
// sent to the peer. The server's next read waits for the peer's next
// request, as an idle keep-alive connection does.
type vconn struct {
	// Set by newVConn, read-only after.
	l     *Listener
	peer  *peer
	local net.Addr

	// wake has room for one token; it is sent whenever a blocked Read
	// should look again (deadline changed, job assigned or aborted, Close).
	wake chan struct{}

	// mu guards the following fields (lock order: peer.mu before mu).
	mu            sync.Mutex
	cur           *job // the request being served; nil while idle
	readDeadline  time.Time
	writeDeadline time.Time
	reclaimed     bool // asked to close so that its worker slot serves another peer
	ended         bool // a read returned EOF for an aborted request: the server's context for this connection is cancelled, so it must not carry another
	closed        bool
}

func newVConn(l *Listener, j *job) *vconn {
	c := &vconn{l: l, peer: j.peer, wake: make(chan struct{}, 1)}
	c.local = &connAddr{Addr: l.ln.Addr(), c: c}
	c.assign(j)
	return c
}

// assign makes j the connection's current request, unless the connection
// is closed or reclaimed (then it returns false). The caller holds
// j.peer.mu, or owns c exclusively.
func (c *vconn) assign(j *job) bool {
	parts := requestBytes(&j.env)
	c.mu.Lock()
	// Checked and set in one critical section: Close either sees the
	// job (and answers it) or assign sees Close.
	if c.closed || c.reclaimed {
		c.mu.Unlock()
		return false
	}
	j.conn = c
	j.parts = parts
	j.headLen = len(parts[0])
	j.resp = respParser{
		headReq:   j.env.Method == "HEAD",
		maxBody:   c.l.cfg.limits.maxBodyBytes(),
		maxHeader: c.l.cfg.limits.maxHeaderBytes(),
	}
	c.cur = j
	if !j.deadline.IsZero() {
		j.timer = time.AfterFunc(time.Until(j.deadline), func() { c.abort(j) })
	}
	c.mu.Unlock()
	c.signal()
	return true
}

func (c *vconn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Read returns the current request's bytes; then blocks as a read on a
// TCP connection would while the handler runs; and, once the response is
// sent, waits for the peer's next request.
func (c *vconn) Read(p []byte) (int, error) {
	c.mu.Lock()
	j := c.cur
	if j != nil && j.sent && len(j.parts) == 0 {
		// The server is looking for the next request.
		c.finishLocked(j)
		j = nil
	}
	if j == nil {
		return c.readIdle(p) // unlocks
	}
	defer c.mu.Unlock()
	for {
		if c.closed {
			return 0, net.ErrClosed
		}
		if !c.readDeadline.IsZero() && !time.Now().Before(c.readDeadline) {
			return 0, os.ErrDeadlineExceeded
		}
		if len(j.parts) > 0 {
			n := 0
			for n < len(p) && len(j.parts) > 0 {
				m := copy(p[n:], j.parts[0])
				n += m
				j.read += m
				if !j.headRead && j.read >= j.headLen {
					// The server has the whole head now. If the
					// Listener is closed already, the server was
					// shutting down before it: it will close the
					// connection without running the handler.
					j.headRead = true
					j.closedAtHead = c.l.isClosed()
				}
				if m == len(j.parts[0]) {
					j.parts[0] = nil
					j.parts = j.parts[1:]
				} else {
					j.parts[0] = j.parts[0][m:]
				}
			}
			return n, nil
		}
		if j.aborted {
			// The caller gave up: like a client closing its TCP
			// connection, which makes the server cancel r.Context() —
			// and the context of every later request on this
			// connection, so it carries no more.
			c.ended = true
			return 0, io.EOF
		}
		// Once the request is read, the only read http.Server makes
		// while the handler runs is its one-byte background read, which
		// must block. A larger read means the server wants request bytes
		// that do not exist (the request was incomplete): EOF, as from a
		// client that closed, rather than a worker held forever.
		if len(p) > 1 && !j.sent {
			c.ended = true
			return 0, io.EOF
		}
		c.waitLocked()
	}
}

// waitLocked waits, with c.mu released, until signalled or the read
// deadline passes.
func (c *vconn) waitLocked() {
	dl := c.readDeadline
	c.mu.Unlock()
	if dl.IsZero() {
		<-c.wake
	} else if d := time.Until(dl); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-c.wake:
		case <-t.C:
		}
		t.Stop()
	}
	c.mu.Lock()
}

// readIdle waits for the peer's next request, as the server's read on an
// idle keep-alive connection. It is entered with c.mu held and returns
// with it released. It ends the connection (EOF) instead of idling when
// requests of other peers wait for a worker, when the Listener is closed
// or when the peer is gone.
func (c *vconn) readIdle(p []byte) (int, error) {
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if c.ended {
		c.mu.Unlock()
		return 0, io.EOF
	}
	c.mu.Unlock()
	if !c.peer.addIdle(c) {
		return 0, io.EOF
	}
	c.mu.Lock()
	for c.cur == nil {
		switch {
		case c.closed:
			c.mu.Unlock()
			c.peer.removeIdle(c)
			return 0, net.ErrClosed
		case c.reclaimed:
			c.mu.Unlock()
			c.peer.removeIdle(c)
			return 0, io.EOF
		case !c.readDeadline.IsZero() && !time.Now().Before(c.readDeadline):
			c.mu.Unlock()
			if c.peer.removeIdle(c) {
				return 0, os.ErrDeadlineExceeded // e.g. the server's IdleTimeout
			}
			// A request was being assigned to us as the deadline
			// passed: serve it rather than lose it.
			c.mu.Lock()
			for c.cur == nil && !c.closed {
				c.mu.Unlock()
				<-c.wake
				c.mu.Lock()
			}
			continue
		}
		c.waitLocked()
	}
	c.mu.Unlock()
	return c.Read(p)
}

// finishLocked ends j as the current request. c.mu is held.
func (c *vconn) finishLocked(j *job) {
	if j.timer != nil {
		j.timer.Stop()
	}
	if c.cur == j {
		c.cur = nil
	}
}

// Write feeds response bytes to the parser; a complete response is sent
// to the peer at once.
func (c *vconn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if !c.writeDeadline.IsZero() && !time.Now().Before(c.writeDeadline) {
		c.mu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	j := c.cur
	if j == nil || j.sent {
		c.mu.Unlock()
		return len(p), nil // bytes after a complete response: discarded
	}
	if err := j.resp.write(p); err != nil {
		j.sent = true
		gone := j.aborted
		c.mu.Unlock()
		c.l.stats.noResponse.Add(1)
		c.reply(j, gone, errorEnvelope(j.env.ID, errCodeInternal, "handler response: "+err.Error()))
		return 0, err
	}
	var e *envelope
	gone := false
	if j.resp.done() {
		j.sent = true
		gone = j.aborted
		e = j.resp.envelope(j.env.ID)
		if j.timer != nil {
			j.timer.Stop() // answered: the deadline no longer matters
		}
	}
	c.mu.Unlock()
	if e != nil {
		c.reply(j, gone, e)
	}
	return len(p), nil
}

// reply queues e to the peer and marks j answered. A request whose caller
// gave up (cancelled, or its deadline passed) is answered with nothing, as
// over TCP where the response goes to a closed connection: a reply racing
// the caller's own timer must not turn its timeout into a response.
//
// A response completed at or after the job's deadline is dropped too: that
// deadline is the caller's less a transit allowance, so the caller is about
// to give up, and a handler that stopped because its context ended must not
// beat the caller's own timer with a half-done answer.
func (c *vconn) reply(j *job, gone bool, e *envelope) {
	c.peer.forget(j)
	late := !j.deadline.IsZero() && !time.Now().Before(j.deadline)
	if !gone && !late {
		c.peer.reply(e)
	}
	c.l.finished()
	c.signal()
}

// abort ends j's pending and future reads, so that the http.Server cancels
// the handler's context, if j is still the connection's request.
func (c *vconn) abort(j *job) {
	c.mu.Lock()
	if c.cur == j && !j.sent { // once answered, there is nothing to abort
		j.aborted = true
	}
	c.mu.Unlock()
	c.signal()
}

// reclaim asks an idle connection to end, so that its worker slot can
// serve a request of another peer.
func (c *vconn) reclaim() {
	c.mu.Lock()
	c.reclaimed = true
	c.mu.Unlock()
	c.signal()
}

// connAddr is a vconn's LocalAddr: the Listener's address, which also
// lets CallerDeadline find the connection from a request's context.
type connAddr struct {
	net.Addr
	c *vconn
}

// CallerDeadline wraps h so that each request's context carries the
// deadline its caller set, and r.Context().Deadline() reports it:
//
//	srv := &http.Server{Handler: zmqhttp.CallerDeadline(router)}
//
// Without it the handler's context is still cancelled at the caller's
// deadline (and when the caller cancels), but Deadline() reports none,
// since a net.Listener cannot set it. Requests that did not come through a
// zmqhttp Listener, or have no deadline, pass through unchanged.
func CallerDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := r.Context().Value(http.LocalAddrContextKey).(*connAddr)
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		a.c.mu.Lock()
		var dl time.Time
		if a.c.cur != nil {
			dl = a.c.cur.deadline
		}
		a.c.mu.Unlock()
		if dl.IsZero() {
			h.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithDeadline(r.Context(), dl)
		defer cancel()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// Close sends the current response if it is complete (one that runs until
// the connection closes), or an error envelope if it is not, and frees the
// worker slot.
func (c *vconn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	j := c.cur
	var e *envelope
	gone, notRun := false, false
	if j != nil {
		c.finishLocked(j)
		if !j.sent {
			j.sent = true
			gone = j.aborted
			switch {
			case j.resp.finish():
				e = j.resp.envelope(j.env.ID)
			case j.read == 0,
				j.resp.written == 0 && j.closedAtHead,
				j.resp.written == 0 && j.headRead && c.l.isClosed() && closedBySkippedRequest():
				// The server never read the request, or it read the
				// head while shutting down and closed the connection
				// without running the handler: not processed. Anything
				// else may have run, and gets an error rather than a
				// second run.
				notRun = true
			default:
				c.l.stats.noResponse.Add(1)
				e = errorEnvelope(j.env.ID, errCodeInternal, "the server closed the connection without a complete response")
			}
		}
	}
	c.mu.Unlock()
	if notRun {
		c.peer.forget(j)
		if !gone {
			c.peer.notProcessed(j.env.ID, "zmqhttp: server shutting down")
		}
		c.l.finished()
	} else if e != nil {
		c.reply(j, gone, e)
	}
	c.peer.removeIdle(c)
	c.signal()
	<-c.l.slots
	return nil
}

// closedBySkippedRequest reports whether the connection is being closed by
// http.Server's own connection loop outside any panic: what it does when,
// right after reading a request, it finds itself shutting down (it checks
// just after the read, and Shutdown marks the server before it closes our
// Listener, so the head can arrive in between). The other ways a read
// request ends without a response — Server.Close from another goroutine,
// a handler's panic — do not match, and their requests are not resent. It
// reads the goroutine's stack, so it is used only in that narrow case; if
// net/http changes, it errs on the side of an error, never of a second run.
func closedBySkippedRequest() bool {
	buf := make([]byte, 16<<10)
	stack := string(buf[:runtime.Stack(buf, false)])
	return strings.Contains(stack, "net/http.(*conn).serve(") &&
		!strings.Contains(stack, "panic(") &&
		!strings.Contains(stack, "net/http.(*Server).Close(")
}

// LocalAddr returns the Listener's address.
func (c *vconn) LocalAddr() net.Addr { return c.local }

// RemoteAddr names the ZeroMQ peer whose requests the connection carries.
func (c *vconn) RemoteAddr() net.Addr { return c.peer.addr }

// SetDeadline sets both deadlines.
func (c *vconn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline bounds the current and future Reads; a blocked Read
// returns os.ErrDeadlineExceeded when it passes.
func (c *vconn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline = t
	c.mu.Unlock()
	c.signal()
	return nil
}

// SetWriteDeadline bounds future Writes. Writes never block (the response
// is buffered), so a Write fails only when it starts after the deadline.
func (c *vconn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.writeDeadline = t
	c.mu.Unlock()
	return nil
}
