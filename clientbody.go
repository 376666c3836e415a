package zmqhttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// This file holds the Transport's streamed bodies: a request body sent in
// chunks by an upload goroutine, and a response body read from its
// recvStream as it arrives.

// roundTripStreamed sends req with its body streamed on cl.
func (t *Transport) roundTripStreamed(req *http.Request, cl *clientLink) (*http.Response, error) {
	ctx := req.Context()
	if limit := t.cfg.limits.maxStreamBytes(); limit > 0 && req.ContentLength > limit {
		req.Body.Close()
		return nil, fmt.Errorf("%w: request body of %d bytes, limit %d", ErrBodyTooLarge, req.ContentLength, limit)
	}
	env, gzipAsked, err := t.buildRequest(req, nil, true)
	if err != nil {
		req.Body.Close()
		return nil, err
	}
	c := &call{id: env.ID, res: make(chan struct{}, 1), streamed: true, stop: make(chan struct{})}
	if dl, ok := ctx.Deadline(); ok {
		if time.Until(dl) <= 0 {
			req.Body.Close()
			return nil, t.ctxError(context.Cause(ctx), context.DeadlineExceeded)
		}
		env.Timeout = timeoutMicros(dl, time.Now())
	}
	head, err := appendEnvelope(getBuf(), env)
	if err != nil {
		req.Body.Close()
		return nil, err
	}
	c.trace = newCallTrace(req, t)
	c.trace.getConn(req)
	t.mu.Lock()
	switch {
	case t.closed:
		err = ErrTransportClosed
	case len(t.pending) >= t.cfg.maxPendingOrDefault():
		err = fmt.Errorf("%w (%d)", ErrTooManyPending, t.cfg.maxPendingOrDefault())
	case !t.usableLocked(cl):
		// It broke or began draining since: nothing was sent.
		err = ErrNotProcessed
	}
	if err != nil {
		t.mu.Unlock()
		req.Body.Close()
		return nil, prefixed(err)
	}
	t.pending[c.id] = c
	t.assignLocked(cl, c)
	s, err := cl.newSendStream(c.id, head, &c.seq)
	if err == nil {
		c.upload, c.ulink = s, cl
	}
	t.mu.Unlock()
	if err != nil {
		// The link died: linkEnded resolves the call.
		req.Body.Close()
		c.trace.wrote(err)
	} else {
		c.trace.wrote(nil) // the head is queued; the body follows
		go t.upload(req, c, s)
	}
	return t.await(req, c, gzipAsked)
}

// upload copies req.Body into s until its end, then sends the trailers.
// It ends early when the call ends (c.stop) or the stream fails; a body
// that fails to read, or whose length is not the declared one, fails the
// call and cancels the request on the server.
func (t *Transport) upload(req *http.Request, c *call, s *sendStream) {
	defer req.Body.Close()
	buf := make([]byte, 32<<10)
	var n int64
	limit := t.cfg.limits.maxStreamBytes()
	for {
		m, rerr := req.Body.Read(buf)
		if m > 0 {
			n += int64(m)
			if req.ContentLength > 0 && n > req.ContentLength {
				t.failUpload(c, s, fmt.Errorf("zmqhttp: ContentLength=%d with a longer Body", req.ContentLength))
				return
			}
			if limit > 0 && n > limit {
				t.failUpload(c, s, fmt.Errorf("%w: request body over %d bytes", ErrBodyTooLarge, limit))
				return
			}
			if _, err := s.write(buf[:m], c.stop, time.Time{}); err != nil {
				return // the call ended, or the link broke: both resolved elsewhere
			}
		}
		switch {
		case rerr == io.EOF:
			if req.ContentLength > 0 && n != req.ContentLength {
				t.failUpload(c, s, fmt.Errorf("zmqhttp: ContentLength=%d with Body length %d", req.ContentLength, n))
				return
			}
			var trailer []string
			if req.ContentLength <= 0 && len(req.Trailer) > 0 {
				trailer = appendHeader(nil, req.Trailer, nil)
			}
			s.finish(trailer)
			return
		case rerr != nil:
			t.failUpload(c, s, wrapErr(rerr, "reading request body"))
			return
		}
	}
}

// failUpload fails call c because its body could not be sent as declared:
// the stream stops, the server is told to cancel, and the caller gets err.
func (t *Transport) failUpload(c *call, s *sendStream, err error) {
	s.abort(err)
	t.mu.Lock()
	cl := c.link
	t.mu.Unlock()
	if cl != nil {
		cl.cancel(c.id)
	}
	t.resolve(cl, c.id, callResult{err: err})
}

// endUpload stops c's streamed body, if it is still being sent: the
// response is complete (the server wants no more of it) or the call
// failed.
func (t *Transport) endUpload(c *call, err error) {
	c.end()
	t.mu.Lock()
	s, cl := c.upload, c.ulink
	t.mu.Unlock()
	if s != nil {
		if err == nil {
			err = errUploadDone
		}
		s.abort(err)
		t.maybeCloseDrained(cl) // it may have been the last thing on a draining link
	}
}

var errUploadDone = errors.New("zmqhttp: the response is complete; the rest of the request body is not sent")

// streamBody is the Body of a response that streams.
type streamBody struct {
	// Set when made, read-only after.
	t       *Transport
	c       *call
	cl      *clientLink
	rs      *recvStream
	ctx     context.Context
	trailer http.Header // resp.Trailer: filled at the end of the body

	once sync.Once
}

// Read returns what has arrived, waiting for more as long as the request's
// context allows.
func (b *streamBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := b.rs.readSome(p)
		if n > 0 {
			return n, nil
		}
		switch {
		case err == io.EOF:
			b.done(nil)
			return 0, io.EOF
		case err != nil:
			b.done(err)
			return 0, err
		}
		select {
		case <-b.rs.notify:
		case <-b.ctx.Done():
			err := context.Cause(b.ctx)
			b.abandon(err)
			return 0, err
		}
	}
}

// WriteTo writes the rest of the body to w as it arrives, handing w the
// received chunks themselves (io.Copy uses it: no copy into a buffer).
func (b *streamBody) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for {
		piece, release, err := b.rs.nextPiece()
		if piece != nil {
			m, werr := w.Write(piece)
			release()
			n += int64(m)
			if werr == nil && m < len(piece) {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				b.abandon(werr)
				return n, werr
			}
			continue
		}
		switch {
		case err == io.EOF:
			b.done(nil)
			return n, nil
		case err != nil:
			b.done(err)
			return n, err
		}
		select {
		case <-b.rs.notify:
		case <-b.ctx.Done():
			err := context.Cause(b.ctx)
			b.abandon(err)
			return n, err
		}
	}
}

// Close abandons the rest of the body: the server is told to stop.
func (b *streamBody) Close() error {
	b.abandon(errBodyClosed)
	return nil
}

var errBodyClosed = errors.New("zmqhttp: read on closed response body")

func (b *streamBody) abandon(err error) {
	if b.rs.finished() {
		b.done(nil)
		return
	}
	b.rs.fail(err)
	b.cl.removeRecv(b.rs)
	b.cl.cancel(b.c.id)
	b.done(err)
}

// done runs once when the body ends: trailers are set on a clean end, the
// request body stops, and a draining link with nothing left closes.
func (b *streamBody) done(err error) {
	b.once.Do(func() {
		if err == nil {
			tr := b.rs.trailers()
			for i := 0; i+1 < len(tr); i += 2 {
				b.trailer[tr[i]] = append(b.trailer[tr[i]], tr[i+1])
			}
		}
		b.t.endUpload(b.c, err)
		b.t.maybeCloseDrained(b.cl)
	})
}

// maybeCloseDrained closes a draining link once nothing is left on it.
func (t *Transport) maybeCloseDrained(cl *clientLink) {
	if !cl.draining.Load() {
		return
	}
	t.mu.Lock()
	idle := cl.inflight == 0
	t.mu.Unlock()
	cl.mu.Lock()
	idle = idle && len(cl.recvs) == 0 && len(cl.sends) == 0
	cl.mu.Unlock()
	if idle {
		cl.close(errDrained)
	}
}
