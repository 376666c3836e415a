package zmqhttp

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// This file is the worker side of the Listener: a received request (job)
// waits in the bounded queue until Accept pairs it with a free worker slot
// and returns it as a vconn, the net.Conn the http.Server reads the request
// from and writes the response to.

// job is a received request, from its arrival until it is answered.
type job struct {
	// Set before the job is queued, read-only after.
	peer     *peer
	env      envelope
	deadline time.Time // the caller's deadline; zero if none

	// Guarded by peer.mu.
	canceled bool   // the client sent CANCEL
	conn     *vconn // set when a worker took the job
}

// vconn is the connection the http.Server sees for one request. The server
// reads the request as HTTP/1.1 bytes, then (as over TCP) keeps a read
// pending while the handler runs; that read ends when the server aborts it
// with a deadline, or when the connection is closed. The response bytes
// the server writes are parsed as they arrive; once complete they are sent
// to the peer as a response envelope, and the next read returns io.EOF, so
// the server closes the connection and the worker slot is freed.
type vconn struct {
	l     *Listener
	peer  *peer
	job   *job
	id    uint64
	local net.Addr

	// parts is the request bytes still to be read. Read only, by the
	// server's reading goroutine (http.Server never reads concurrently).
	parts [][]byte

	// wake has room for one token; it is sent whenever a blocked Read
	// should look again (deadline changed, response done, Close).
	wake chan struct{}

	// mu guards the following fields.
	mu            sync.Mutex
	readDeadline  time.Time
	writeDeadline time.Time
	resp          respParser
	sent          bool // the reply (response or error) was queued to the peer
	closed        bool
	aborted       bool               // cancelled or past the caller's deadline: pending reads end
	deadline      time.Time          // the caller's deadline, zero if none
	timer         *time.Timer        // aborts at deadline
	ctxCancel     context.CancelFunc // set by ConnContext; called by Close
}

func newVConn(l *Listener, j *job) *vconn {
	c := &vconn{
		l:     l,
		peer:  j.peer,
		job:   j,
		id:    j.env.ID,
		local: l.ln.Addr(),
		parts: requestBytes(&j.env),
		wake:  make(chan struct{}, 1),
	}
	c.resp.headReq = j.env.Method == "HEAD"
	c.resp.maxBody = l.cfg.limits.maxBodyBytes()
	c.resp.maxHeader = l.cfg.limits.maxHeaderBytes()
	return c
}

func (c *vconn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Read returns the request bytes, then blocks as an idle TCP read would.
func (c *vconn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if !c.readDeadline.IsZero() && !time.Now().Before(c.readDeadline) {
		c.mu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	// A read that starts after the response was sent is the server
	// looking for a next request: there is none on this connection.
	//
	// Before that, once the request bytes are all read, the only read
	// http.Server makes is its one-byte background read, which must
	// block while the handler runs, as on an idle TCP connection. A
	// larger read means the server wants request bytes that do not
	// exist (the request was incomplete): EOF, as from a client that
	// closed, rather than a worker held forever.
	if len(c.parts) == 0 && (c.sent || len(p) > 1) {
		c.mu.Unlock()
		return 0, io.EOF
	}
	c.mu.Unlock()
	if len(c.parts) > 0 {
		n := 0
		for n < len(p) && len(c.parts) > 0 {
			m := copy(p[n:], c.parts[0])
			n += m
			if m == len(c.parts[0]) {
				c.parts[0] = nil
				c.parts = c.parts[1:]
			} else {
				c.parts[0] = c.parts[0][m:]
			}
		}
		return n, nil
	}
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if c.aborted {
			// The caller gave up: like a client closing its TCP
			// connection, which makes the server cancel r.Context().
			c.mu.Unlock()
			return 0, io.EOF
		}
		dl := c.readDeadline
		c.mu.Unlock()
		var timer <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			timer = t.C
			select {
			case <-c.wake:
				t.Stop()
				continue
			case <-timer:
				continue
			}
		}
		<-c.wake
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
	if c.sent {
		c.mu.Unlock()
		return len(p), nil // bytes after a complete response: discarded
	}
	if err := c.resp.write(p); err != nil {
		c.sent = true
		c.mu.Unlock()
		c.l.stats.noResponse.Add(1)
		c.reply(errorEnvelope(c.id, errCodeInternal, "handler response: "+err.Error()))
		return 0, err
	}
	var e *envelope
	if c.resp.done() {
		c.sent = true
		e = c.resp.envelope(c.id)
	}
	c.mu.Unlock()
	if e != nil {
		c.reply(e)
	}
	return len(p), nil
}

// reply queues e to the peer and marks the request answered. A request
// whose caller gave up (cancelled, or its deadline passed) is answered with
// nothing, as over TCP where the response goes to a closed connection: a
// reply racing the caller's own timer must not turn its timeout into a
// half-finished response.
func (c *vconn) reply(e *envelope) {
	c.mu.Lock()
	gone := c.aborted
	c.mu.Unlock()
	c.peer.forget(c.job)
	if !gone {
		c.peer.reply(e)
	}
	c.l.finished()
	c.signal()
}

// abort ends the pending and future reads of the connection (after the
// request bytes), so that the http.Server cancels the handler's context.
func (c *vconn) abort() {
	c.mu.Lock()
	c.aborted = true
	c.mu.Unlock()
	c.signal()
}

// armDeadline makes the connection abort at the caller's deadline.
func (c *vconn) armDeadline(dl time.Time) {
	if dl.IsZero() {
		return
	}
	c.mu.Lock()
	c.deadline = dl
	if !c.closed {
		c.timer = time.AfterFunc(time.Until(dl), c.abort)
	}
	c.mu.Unlock()
}

// ConnContext, set as http.Server.ConnContext, gives each request's
// context the deadline of its caller, so r.Context().Deadline() reports
// it:
//
//	srv := &http.Server{Handler: h, ConnContext: zmqhttp.ConnContext}
//
// Without it the handler's context is still cancelled at the caller's
// deadline (and when the caller cancels), but Deadline() reports none,
// since a net.Listener cannot set it. Connections that do not come from a
// zmqhttp Listener, or requests without a deadline, are left unchanged.
func ConnContext(ctx context.Context, nc net.Conn) context.Context {
	c, ok := nc.(*vconn)
	if !ok {
		return ctx
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deadline.IsZero() || c.closed {
		return ctx
	}
	ctx, c.ctxCancel = context.WithDeadline(ctx, c.deadline)
	return ctx
}

// Close sends the response if it is complete (a response that runs until
// the connection closes), or an error envelope if it is not, and frees the
// worker slot.
func (c *vconn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.ctxCancel != nil {
		c.ctxCancel()
	}
	var e *envelope
	if !c.sent {
		c.sent = true
		if c.resp.finish() {
			e = c.resp.envelope(c.id)
		} else {
			c.l.stats.noResponse.Add(1)
			e = errorEnvelope(c.id, errCodeInternal, "the server closed the connection without a complete response")
		}
	}
	c.mu.Unlock()
	if e != nil {
		c.reply(e)
	}
	c.signal()
	<-c.l.slots
	return nil
}

// LocalAddr returns the Listener's address.
func (c *vconn) LocalAddr() net.Addr { return c.local }

// RemoteAddr names the ZeroMQ peer that sent the request.
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
