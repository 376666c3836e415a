package zmqhttp

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the worker side of the Listener. A received request (job)
// takes a worker slot when one is free (else it waits in the bounded queue)
// and is then handed to an idle connection of its peer, or to Accept, which
// returns a new vconn: the net.Conn the http.Server reads requests from and
// writes responses to. Slots follow requests: a job's slot is free again
// once its reply is queued; idle connections hold none. A vconn belongs to
// one peer (its RemoteAddr) and, like a keep-alive TCP connection, carries
// that peer's requests one after another.

// job is a received request, from its arrival until it is answered.
type job struct {
	// Set before the job is dispatched, read-only after.
	peer     *peer
	route    *route // where the reply goes through a device; nil from a direct client
	env      envelope
	deadline time.Time     // the caller's deadline; zero if none
	body     *recvStream   // a streamed request body; nil if whole
	frame    []byte        // a pooled frame env lies in: back to the pool once the server has read the request
	abort    chan struct{} // closed by cancel: the caller is gone or late
	timer    *time.Timer   // cancels the job at its deadline

	cancelOnce sync.Once
	finOnce    sync.Once
	conn       atomic.Pointer[vconn] // the connection carrying it, once assigned

	started bool // guarded by Listener.mu: holds a worker slot
	size    int  // set before dispatch: the bytes of its envelope frame, counted in Listener.queuedBytes while queued and in peer.unread until read

	unreadDone atomic.Bool // doneUnread ran

	// call is the direct path's state of the job once a worker runs it
	// (see Serve): cancel ends its handler's context. Nil on the
	// standard path.
	call atomic.Pointer[directCall]

	handoffs int // owned by whoever assigns the job: new connections (from Accept) it was given to

	// Guarded by conn.mu once assigned (owned by the assigner before).
	parts        [][]byte   // request bytes not yet read: the head, then a whole body (in partsBuf)
	partsBuf     [3][]byte  // owned by the assigner: parts' backing array
	head         []byte     // the whole head (parts[0] as assigned): back to the buffer pool once read
	pendIn       []byte     // chunk framing of a streamed body, not yet read
	headLen      int        // length of the request head
	read         int        // request bytes the server has read
	headDone     bool       // the server has read the whole head
	closedAtHead bool       // the Listener was closed when the server got the whole head
	entered      bool       // the server read or wrote after the head: the handler ran (or runs)
	chunkedIn    bool       // the streamed body is rendered chunked
	bodyLeft     int64      // of a streamed body with a length: bytes not yet delivered
	bodyDone     bool       // the whole request was delivered
	resp         respParser // the response as the server writes it
	out          *sendStream
	sent         bool // the reply is decided (sent, or suppressed)
	aborted      bool // cancelled or past the caller's deadline
}

// streams reports whether j's bodies may stream: its client announced
// the capability on a direct connection.
func (j *job) streams() bool { return j.route == nil && j.peer.has(capStream) }

func (j *job) canceled() bool {
	select {
	case <-j.abort:
		return true
	default:
		return false
	}
}

// cancel ends the job: queued, it will not run; running, its connection's
// reads end (the server cancels r.Context()) and its writes fail.
func (j *job) cancel() {
	j.cancelOnce.Do(func() {
		close(j.abort)
		if dc := j.call.Load(); dc != nil {
			dc.abortCtx()
		}
		if j.body != nil {
			j.body.fail(errRequestCanceled)
		}
		if c := j.conn.Load(); c != nil {
			c.abort(j)
		}
		j.peer.l.dropQueued(j)
	})
}

// dropQueued takes j out of the queue if it waits there: a request its
// caller gave up on (or whose deadline passed) holds no place, no queued
// bytes and none of its peer's unread budget.
func (l *Listener) dropQueued(j *job) {
	l.mu.Lock()
	i := -1
	if !j.started {
		i = slices.Index(l.queue, j)
	}
	if i < 0 {
		l.mu.Unlock()
		return
	}
	l.queue = slices.Delete(l.queue, i, i+1)
	l.queuedBytes -= j.size
	l.mu.Unlock()
	if !j.deadline.IsZero() && !time.Now().Before(j.deadline) {
		l.stats.expired.Add(1)
	}
	if j.frame != nil { // nobody else has it: it left the queue unassigned
		wholeFrames.put(j.frame)
		j.frame = nil
	}
	l.finished(j)
}

var errRequestCanceled = errors.New("zmqhttp: request cancelled by the client or past its deadline")

// maxQueueBytes bounds the request bytes (envelope frames) waiting in a
// Listener's queue: past it a request is answered 503 as when the queue is
// full, so that peers that send faster than the handlers run (or never
// read their replies) hold a bounded amount of memory. One request is
// queued whatever its size when the queue is empty.
const maxQueueBytes = 4 << 20

// dispatch gives j a worker slot and starts it, or queues it, or answers
// 503 when the queue is full (in requests or in bytes).
func (l *Listener) dispatch(j *job) {
	l.mu.Lock()
	if l.closed.Load() {
		l.mu.Unlock()
		j.peer.forget(j)
		if j.timer != nil {
			j.timer.Stop()
		}
		j.peer.notProcessed(j.route, j.env.ID, "zmqhttp: server shutting down")
		return
	}
	l.inflight++
	if l.running < l.cfg.workersOrDefault() {
		l.running++
		j.started = true
		l.mu.Unlock()
		l.start(j)
		return
	}
	if len(l.queue) < l.cfg.queueSizeOrDefault() && (len(l.queue) == 0 || l.queuedBytes+j.size <= maxQueueBytes) {
		l.queue = append(l.queue, j)
		l.queuedBytes += j.size
		l.mu.Unlock()
		return
	}
	l.inflight--
	l.mu.Unlock()
	j.peer.forget(j)
	if j.timer != nil {
		j.timer.Stop()
	}
	l.stats.overloaded.Add(1)
	j.peer.replyCtrl(j.route, simpleResponse(j.env.ID, 503, "zmqhttp: server overloaded",
		"Retry-After", strconv.Itoa(l.cfg.retryAfterSeconds())))
}

// start hands j, which holds a worker slot, to an idle connection of its
// peer or to Accept.
func (l *Listener) start(j *job) {
	if j.canceled() {
		if !j.deadline.IsZero() && !time.Now().Before(j.deadline) {
			l.stats.expired.Add(1)
		}
		l.finished(j)
		return
	}
	if d := l.direct.Load(); d != nil {
		d.enqueue(j)
		return
	}
	if j.peer.assignIdle(j) {
		return
	}
	l.mu.Lock()
	if l.closed.Load() {
		l.mu.Unlock()
		l.verdict(j, true)
		return
	}
	if d := l.direct.Load(); d != nil { // Serve began since the check above
		l.mu.Unlock()
		d.enqueue(j)
		return
	}
	l.acceptQ = append(l.acceptQ, j)
	l.mu.Unlock()
	select {
	case l.acceptWake <- struct{}{}:
	default:
	}
}

// finished records that j is answered (or dropped): its worker slot goes
// to the next queued request. It runs once per job.
func (l *Listener) finished(j *job) {
	j.finOnce.Do(func() {
		if j.timer != nil {
			j.timer.Stop()
		}
		j.peer.forget(j)
		var next []*job
		l.mu.Lock()
		l.inflight--
		if j.started {
			l.running--
			for l.running < l.cfg.workersOrDefault() && len(l.queue) > 0 {
				nj := l.queue[0]
				l.queue[0] = nil
				l.queue = l.queue[1:]
				l.queuedBytes -= nj.size
				l.running++
				nj.started = true
				next = append(next, nj)
			}
			if len(l.queue) == 0 {
				l.queue = nil
			}
		}
		l.mu.Unlock()
		for _, nj := range next {
			l.start(nj)
		}
		l.maybeClosePeers()
	})
}

// vconn is a connection the http.Server sees. For each request the server
// reads it as HTTP/1.1 bytes, then (as over TCP) keeps a one-byte read
// pending while the handler runs; that read ends when the server aborts it
// with a deadline, when the request is cancelled (EOF, so the server
// cancels r.Context()), or when the connection is closed. The response
// bytes the server writes are parsed as they arrive and sent on: whole
// when the response is small and complete, else streamed. The server's
// next read waits for the peer's next request, as an idle keep-alive
// connection does.
type vconn struct {
	// Set by newVConn, read-only after.
	l     *Listener
	peer  *peer
	local net.Addr

	idleSince time.Time // guarded by peer.mu: when it was listed idle (addIdle)

	// wake has room for one token; it is sent whenever a blocked Read
	// should look again (deadline changed, job assigned or aborted, Close).
	wake chan struct{}

	// mu guards the following fields (lock order: peer.mu before mu).
	mu            sync.Mutex
	cur           *job // the request being served; nil while idle
	readDeadline  time.Time
	writeDeadline time.Time
	reclaimed     bool // asked to end: the peer left or the Listener closed
	ended         bool // a read returned EOF for an aborted request: the server's context for this connection is cancelled, so it must not carry another
	closed        bool
}

func newVConn(l *Listener, j *job) *vconn {
	c := &vconn{l: l, peer: j.peer, wake: make(chan struct{}, 1)}
	c.local = &connAddr{Addr: l.Addr(), c: c, p: j.peer}
	j.handoffs++
	c.assign(j)
	l.mu.Lock()
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	return c
}

// undecided reports whether the server has read c's request head and
// done nothing since (see Listener.settle).
func (c *vconn) undecided() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	j := c.cur
	return !c.closed && j != nil && !j.sent && j.headDone && !j.entered
}

// assign makes j the connection's current request, unless the connection
// is closed or reclaimed (then it returns false). The caller holds
// j.peer.mu, or owns c exclusively.
func (c *vconn) assign(j *job) bool {
	parts, chunked := requestBytes(&j.env, j.partsBuf[:0])
	c.mu.Lock()
	// Checked and set in one critical section: Close either sees the
	// job (and answers it) or assign sees Close.
	if c.closed || c.reclaimed || c.ended {
		c.mu.Unlock()
		return false
	}
	j.conn.Store(c)
	// A job given back by a connection that closed before it took it
	// starts afresh.
	j.pendIn, j.read, j.headDone, j.closedAtHead, j.entered, j.bodyDone, j.out, j.sent = nil, 0, false, false, false, false, nil, false
	j.parts = parts
	j.head = parts[0]
	j.headLen = len(parts[0])
	j.chunkedIn = chunked && j.body != nil
	if j.body != nil && !chunked {
		j.bodyLeft = j.env.ContentLength
	}
	maxBody := c.l.cfg.limits.maxBodyBytes()
	if j.streams() {
		if maxBody = c.l.cfg.limits.maxStreamBytes(); maxBody == 0 {
			maxBody = math.MaxInt64
		}
	}
	j.resp = respParser{
		headReq:   j.env.Method == "HEAD",
		maxBody:   maxBody,
		maxHeader: c.l.cfg.limits.maxHeaderBytes(),
	}
	j.aborted = j.canceled()
	c.cur = j
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

// Read returns the current request's bytes (its head alone first, then its
// body, streamed as it arrives); then blocks as a read on a TCP connection
// would while the handler runs; and, once the response is sent, waits for
// the peer's next request.
func (c *vconn) Read(p []byte) (int, error) {
	c.mu.Lock()
	for {
		j := c.cur
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if j == nil {
			return c.readIdle(p) // unlocks
		}
		if j.sent && j.body != nil && !j.bodyDone {
			// Answered without reading the whole streamed body: the
			// rest is not coming (as a client that stops sending).
			c.ended = true
			c.mu.Unlock()
			return 0, io.EOF
		}
		if j.sent && len(j.parts) == 0 && j.bodyDone {
			// The server is looking for the next request: it has read
			// all of this one, which is answered (and forgotten).
			c.cur = nil
			if j.frame != nil {
				wholeFrames.put(j.frame)
				j.frame = nil
			}
			continue
		}
		if j.headDone {
			// Only the handler's reads, net/http's reads of the body
			// after it, and the background read it starts right before
			// calling it come after the head; a handler that ends (or
			// panics) makes net/http wait for that read first.
			j.entered = true
		}
		if !c.readDeadline.IsZero() && !time.Now().Before(c.readDeadline) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		if len(j.parts) > 0 {
			n := c.copyParts(j, p)
			c.mu.Unlock()
			return n, nil
		}
		if j.aborted {
			// The caller gave up: like a client closing its TCP
			// connection, which makes the server cancel r.Context() —
			// and the context of every later request on this
			// connection, so it carries no more.
			c.ended = true
			c.mu.Unlock()
			return 0, io.EOF
		}
		if !j.bodyDone {
			n, err := c.readBody(j, p)
			if n > 0 || err != nil {
				c.mu.Unlock()
				return n, err
			}
			if !j.bodyDone {
				c.waitBody(j)
				continue
			}
		}
		// Once the request is read, the only read http.Server makes
		// while the handler runs is its one-byte background read, which
		// must block. A larger read means the server wants request bytes
		// that do not exist (the request was incomplete): EOF, as from a
		// client that closed, rather than a worker held forever.
		if len(p) > 1 && !j.sent {
			c.ended = true
			c.mu.Unlock()
			return 0, io.EOF
		}
		c.waitLocked(nil)
	}
}

// copyParts copies request bytes into p: the head alone (so that the
// server's read of the head never takes body bytes with it), then the
// segments of a whole body. c.mu is held.
func (c *vconn) copyParts(j *job, p []byte) int {
	n := 0
	for n < len(p) && len(j.parts) > 0 {
		m := copy(p[n:], j.parts[0])
		n += m
		j.read += m
		if m == len(j.parts[0]) {
			j.parts[0] = nil
			j.parts = j.parts[1:]
		} else {
			j.parts[0] = j.parts[0][m:]
		}
		if !j.headDone && j.read >= j.headLen {
			// The server has the whole head now. If the Listener is
			// closed already, the server was shutting down before it:
			// it will close the connection without running the handler.
			j.headDone = true
			j.closedAtHead = c.l.closing.Load()
			break
		}
	}
	if len(j.parts) == 0 && j.body == nil {
		j.bodyDone = true
	}
	if len(j.parts) == 0 && j.headDone {
		j.release()
	}
	return n
}

// doneUnread takes j's bytes off its peer's unread count, once: the
// server has read the request, or it ended unread.
func (j *job) doneUnread() {
	if j.unreadDone.CompareAndSwap(false, true) {
		j.peer.unread.Add(-int64(j.size))
	}
}

// release lets go of the request's frame once the server has read all of
// the request the frame holds (head and whole body): a handler that runs
// long, or whose reply waits for a peer that does not read, holds no
// request bytes. Only the id and the numbers of env stay valid. c.mu is
// held; nothing reassigns a job whose head was read.
func (j *job) release() {
	j.doneUnread()
	j.env.Method, j.env.URI, j.env.Host, j.env.Message = "", "", "", ""
	j.env.Header, j.env.Trailer, j.env.Body = nil, nil, nil
	if j.head != nil {
		putBuf(j.head)
		j.head = nil
	}
	if j.frame != nil {
		wholeFrames.put(j.frame)
		j.frame = nil
	}
}

// readBody copies what has arrived of a streamed body into p, in chunked
// framing when the request is chunked. It returns 0, nil when nothing has
// arrived yet. c.mu is held.
func (c *vconn) readBody(j *job, p []byte) (int, error) {
	if len(j.pendIn) > 0 {
		n := copy(p, j.pendIn)
		j.pendIn = j.pendIn[n:]
		if len(j.pendIn) == 0 && j.body.finished() && !j.body.available() {
			j.bodyDone = true
		}
		return n, nil
	}
	if !j.chunkedIn {
		if j.bodyLeft == 0 {
			j.bodyDone = true
			return 0, nil
		}
		q := p
		if int64(len(q)) > j.bodyLeft {
			q = q[:j.bodyLeft]
		}
		n, err := j.body.readSome(q)
		j.bodyLeft -= int64(n)
		if err == io.EOF {
			// Shorter than declared: the client will not send more.
			c.ended = true
			return 0, io.ErrUnexpectedEOF
		}
		return n, err
	}
	// Chunked: "size\r\n" data "\r\n", and "0\r\n" trailers "\r\n" at
	// the end.
	const frame = 20
	if len(p) < 2*frame {
		buf := make([]byte, 4096)
		n, err := c.readBody(j, buf)
		if n > 0 {
			m := copy(p, buf[:n])
			j.pendIn = append(j.pendIn, buf[m:n]...)
			return m, nil
		}
		return 0, err
	}
	n, err := j.body.readSome(p[frame : len(p)-2])
	switch {
	case n > 0:
		size := strconv.FormatInt(int64(n), 16)
		hdr := len(size) + 2
		copy(p[frame-hdr:], size)
		copy(p[frame-2:], "\r\n")
		copy(p[frame+n:], "\r\n")
		copy(p, p[frame-hdr:frame+n+2])
		return hdr + n + 2, nil
	case err == io.EOF:
		end := []byte("0\r\n")
		tr := j.body.trailers()
		for i := 0; i+1 < len(tr); i += 2 {
			end = append(end, tr[i]...)
			end = append(end, ": "...)
			end = append(end, tr[i+1]...)
			end = append(end, "\r\n"...)
		}
		end = append(end, "\r\n"...)
		m := copy(p, end)
		j.pendIn = end[m:]
		if len(j.pendIn) == 0 {
			j.bodyDone = true
		}
		return m, nil
	}
	return 0, err
}

// waitBody waits, with c.mu released, for more of j's body, a signal or
// the read deadline.
func (c *vconn) waitBody(j *job) { c.waitLocked(j.body.notify) }

// waitLocked waits, with c.mu released, until signalled (or extra is), or
// the read deadline passes.
func (c *vconn) waitLocked(extra <-chan struct{}) {
	dl := c.readDeadline
	c.mu.Unlock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			c.mu.Lock()
			return
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-c.wake:
	case <-extra:
	case <-timeout:
	}
	c.mu.Lock()
}

// readIdle waits for the peer's next request, as the server's read on an
// idle keep-alive connection. It is entered with c.mu held and returns
// with it released. It ends the connection (EOF) instead of idling when
// the Listener is closed, the peer is gone, or it has enough idle ones.
func (c *vconn) readIdle(p []byte) (int, error) {
	if c.ended || c.reclaimed {
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
		case c.closed, c.reclaimed,
			!c.readDeadline.IsZero() && !time.Now().Before(c.readDeadline): // e.g. the server's IdleTimeout
			err := error(io.EOF)
			if c.closed {
				err = net.ErrClosed
			} else if !c.reclaimed {
				err = os.ErrDeadlineExceeded
			}
			c.mu.Unlock()
			if c.peer.removeIdle(c) {
				return 0, err
			}
			// assignIdle took it off the list and gave it a request
			// (both under peer.mu): serve it rather than lose it.
			c.mu.Lock()
			if c.cur == nil {
				c.mu.Unlock()
				return 0, err // the assignment was refused (closed): nothing lost
			}
			continue
		}
		c.waitLocked(nil)
	}
	c.mu.Unlock()
	return c.Read(p)
}

// errAborted is what a handler's write gets once its caller has gone.
var errAborted = errors.New("zmqhttp: the client cancelled the request or its deadline passed")

// Write feeds response bytes to the parser. A small response is sent whole
// once complete; a large or open-ended one (chunked, flushed, SSE) to a
// peer that streams is sent as it is written, waiting for the peer's
// credit as a TCP write waits for the window.
func (c *vconn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	j := c.cur
	if j != nil && !j.sent {
		j.entered = true // a write, even one that fails, means the handler ran
	}
	if !c.writeDeadline.IsZero() && !time.Now().Before(c.writeDeadline) {
		c.mu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	if j == nil || j.sent {
		c.mu.Unlock()
		return len(p), nil // bytes after a complete response: discarded
	}
	if j.aborted {
		c.mu.Unlock()
		return 0, errAborted
	}
	if err := j.resp.write(p); err != nil {
		j.sent = true
		out := j.out
		c.mu.Unlock()
		c.l.stats.noResponse.Add(1)
		if out != nil {
			out.abort(err)
		}
		code := errCodeInternal
		if errors.Is(err, ErrBodyTooLarge) {
			code = errCodeTooLarge
		}
		c.replyError(j, errorEnvelope(j.env.ID, code, "handler response: "+bare(err)))
		return 0, err
	}
	r := &j.resp
	if !r.headDone() {
		c.mu.Unlock()
		return len(p), nil
	}
	var whole *envelope
	var data [][]byte
	var head []byte
	finish, open, pooled := false, false, false
	switch {
	case j.out != nil:
		data, r.out = r.out, nil
		finish = r.done()
	case r.done():
		whole = r.envelope(j.env.ID)
		pooled = r.pooledBody()
		r.body = nil // the reply has it now
	case j.streams() && (r.chunked || r.state == psUntilClose || r.declared > wholeBodyMax || len(r.body) > wholeBodyMax):
		open = true
		r.streaming = true
		head, _ = appendEnvelope(getBuf(), r.headEnvelope(j.env.ID))
		if len(r.body) > 0 {
			data = [][]byte{r.body}
		}
		r.body = nil
	}
	if whole != nil || finish {
		j.sent = true
	}
	c.mu.Unlock()
	if whole != nil {
		c.reply(j, whole, pooled)
		return len(p), nil
	}
	if open {
		s, err := c.peer.newSendStream(j.env.ID, head, nil)
		if err != nil {
			return 0, err
		}
		c.mu.Lock()
		if j.aborted || c.closed || c.cur != j {
			// Cancelled, or answered by Close meanwhile.
			c.mu.Unlock()
			s.abort(errAborted)
			return 0, errAborted
		}
		j.out = s
		c.mu.Unlock()
	}
	if j.out == nil {
		return len(p), nil // buffering a small response
	}
	c.mu.Lock()
	deadline := c.writeDeadline
	c.mu.Unlock()
	var err error
	for _, d := range data {
		if _, err = j.out.write(d, j.abort, deadline); err != nil {
			break
		}
	}
	if err == nil && finish {
		// Complete: what was copied is sent before the worker is free
		// again (so that a peer that does not read holds no more than
		// its running handlers' writes).
		err = j.out.drain(j.abort, deadline)
	}
	if err != nil {
		c.mu.Lock()
		aborted := j.aborted
		c.mu.Unlock()
		if finish {
			// The response was complete (sent is set): nobody else
			// will end the job. Its body is cut short.
			j.out.abort(err)
			c.replyError(j, errorEnvelope(j.env.ID, errCodeInternal, "the response could not be written: "+bare(err)))
		}
		switch {
		case err == errStop && !aborted:
			return 0, os.ErrDeadlineExceeded
		case aborted:
			return 0, errAborted
		}
		return 0, err
	}
	if finish {
		j.out.finish(r.trailerList())
		c.l.finished(j)
	}
	return len(p), nil
}

// reply queues a whole response for j and frees its worker slot. A request
// whose caller gave up (cancelled, or past its deadline) is answered with
// nothing, as over TCP where the response goes to a closed connection; a
// response completed at or after the job's deadline (the caller's, less a
// transit allowance) is dropped too, so a handler that stopped because its
// context ended never beats the caller's own timer with a half-done answer.
// With pooled set, e.Body came from wholeBodies. e is j's response parser's
// (its body is the parser's own copy): a small body, copied into the
// reply's encoding, goes to the buffer pool.
func (c *vconn) reply(j *job, e *envelope, pooled bool) {
	late := !j.deadline.IsZero() && !time.Now().Before(j.deadline)
	if !j.canceled() && !late {
		c.peer.reply(j.route, e, pooled)
	}
	if !pooled && len(e.Body) > 0 && len(e.Body) < refMin {
		putBuf(e.Body)
		e.Body = nil
	}
	c.l.finished(j)
	c.signal()
}

// replyError sends an error envelope for j (unless its caller is gone) and
// frees its worker slot.
func (c *vconn) replyError(j *job, e *envelope) {
	if !j.canceled() {
		c.peer.replyCtrl(j.route, e)
	}
	c.l.finished(j)
	c.signal()
}

// abort ends j's pending and future reads and fails its writes, so that
// the http.Server cancels the handler's context, if j is still the
// connection's request.
func (c *vconn) abort(j *job) {
	c.mu.Lock()
	var out *sendStream
	if c.cur == j && !j.sent {
		j.aborted = true
		out = j.out
	}
	c.mu.Unlock()
	if out != nil {
		out.abort(errAborted)
	}
	c.signal()
}

// reclaim asks an idle connection to end (the peer left, or the Listener
// closed).
func (c *vconn) reclaim() {
	c.mu.Lock()
	c.reclaimed = true
	c.mu.Unlock()
	c.signal()
}

// connAddr is a vconn's LocalAddr: the Listener's address, which also
// lets CallerDeadline find the connection from a request's context, and
// PeerFromContext the peer. On the direct path (Serve) c is nil: the
// request's context carries the caller's deadline itself.
type connAddr struct {
	net.Addr
	c *vconn
	p *peer
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
		if !ok || a.c == nil {
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

// Close ends the connection. An unanswered request gets what the server
// left: a response that runs until the connection closes is complete now;
// a request the server provably never started goes back to the client as
// not processed (see notRunLocked); anything else gets an error envelope
// (it may have run). The rest of a response that ends with the
// connection is written before Close returns, or, once the Listener is
// closing, by a goroutine of its own that ends when the client has it,
// cancels or leaves (http.Server.Close must not wait for a client that
// does not read).
func (c *vconn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	// Where the Listener's Close stood at this close, read here, under
	// mu, once (see notRunLocked), closing first: a Close that runs
	// between this close and the verdict must not change it.
	closing, closeDone := c.l.closing.Load(), c.l.closeDone.Load()
	closedAt := time.Now()
	j := c.cur
	c.cur = nil
	var whole *envelope
	var out *sendStream
	finish, notRun, hold, noResponse := false, false, false, false
	if j != nil && !j.sent {
		j.sent = true
		out = j.out
		switch {
		case j.aborted:
			if out != nil {
				out.abort(errAborted)
				out = nil
			}
		case j.resp.finish():
			if out != nil {
				finish = true
			} else {
				whole = j.resp.envelope(j.env.ID)
				j.resp.body = nil // the reply has it now
			}
		case notRunLocked(j, closing, closeDone):
			notRun = true
		case j.headDone && !j.entered && out == nil && !closing:
			hold = true
		default:
			noResponse = true
			if out != nil {
				out.abort(errAborted)
			}
		}
	}
	c.mu.Unlock()
	switch {
	case j == nil:
	case hold:
		if testHookHold != nil {
			testHookHold()
		}
		c.l.holdVerdict(j, closedAt)
	case finish:
		end := func() {
			for _, d := range j.resp.out {
				out.write(d, j.abort, time.Time{})
			}
			// Sent before the request counts as finished, as a
			// finished handler's response is.
			out.drain(j.abort, time.Time{})
			out.finish(j.resp.trailerList())
			c.l.finished(j)
		}
		if closing {
			// http.Server.Close (the Listener closes first) must not
			// wait for a client that does not read: the rest is sent
			// meanwhile, until the client has it, cancels, or leaves.
			go end()
		} else {
			end()
		}
	case whole != nil:
		c.reply(j, whole, false)
	case notRun && !c.l.closing.Load() && j.handoffs < maxHandoffs:
		// The server closed this connection for its own reasons (idle
		// timeout, Connection: close) before it took the request: give
		// the request to another connection; it holds its slot still.
		j.conn.Store(nil)
		c.l.start(j)
	case notRun, noResponse:
		c.l.verdict(j, notRun)
	default:
		c.l.finished(j) // answered before, or aborted
	}
	c.peer.removeIdle(c)
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	c.signal()
	return nil
}

// notRunLocked reports whether the server provably never ran j's handler,
// so that the client may send it again whatever its method:
//   - the server never read all of its head; or
//   - it read the whole head and did nothing more (no read, no write)
//     before closing, and the server was shutting down when it read the
//     head: http.Server marks itself shutting down before it closes its
//     listeners (Listener.Close) and drops a request whose head it reads
//     after that. That is the case when the head was read after Close
//     began, or when the connection closes while Close runs (the
//     server's own connection loop closes it at once; the server closes
//     connections itself only after Close returns); holdVerdict covers a
//     close just before Close.
//
// closing and closeDone are the Listener's, read in that order when the
// connection closed. A connection that closes after closeDone with its
// head read before Close began and nothing done since is one settle gave
// up on. Everything else may have run and gets an error, never a second
// run. The connection's mu is held.
func notRunLocked(j *job, closing, closeDone bool) bool {
	switch {
	case !j.headDone:
		return true
	case j.entered:
		return false
	}
	return j.closedAtHead || (closing && !closeDone)
}

// maxHandoffs bounds the new connections (from Accept) one request is
// given to: a server that keeps closing them unread (a listener wrapper
// that drops connections, an http.Server without HTTP/1) gets it back as
// not processed rather than for ever. Idle keep-alive connections that
// close as a request reaches them (an idle timeout, Connection: close)
// do not count: each closes once, and only served requests make them.
const maxHandoffs = 3

// verdictWait is how long before the Listener's Close began a connection
// may have closed, right after the server read its request's head and
// with nothing done since, for that request to count as dropped by a
// server shutting down (see holdVerdict). It covers only scheduling: the
// server's Shutdown goroutine going from marking itself shutting down to
// closing the Listener. Measured under load (2 cores, load average 5–8,
// -race), Close began at most 15 ms after such a close.
const verdictWait = 250 * time.Millisecond

// testHookHold, if set, runs between a connection's close and
// holdVerdict.
var testHookHold func()

// holdVerdict answers j, whose connection the server closed at closedAt,
// before the Listener's Close began, after reading its head and doing
// nothing more, once it is known why: http.Server marks itself shutting
// down a moment before it closes the Listener, and drops a request whose
// head it reads in between; if Close begins within verdictWait of closedAt,
// that is what happened and j goes back as not processed. Otherwise the
// handler may have run (it panicked, or the server was closed, before it
// touched the request) and j gets an error. Close may have begun, or even
// returned, by the time this runs: only when it began counts.
func (l *Listener) holdVerdict(j *job, closedAt time.Time) {
	l.mu.Lock()
	if l.closing.Load() {
		notRun := l.closingAt.Sub(closedAt) <= verdictWait
		l.mu.Unlock()
		l.verdict(j, notRun)
		return
	}
	if l.held == nil {
		l.held = make(map[*job]time.Time)
	}
	l.held[j] = closedAt
	l.mu.Unlock()
	time.AfterFunc(verdictWait-time.Since(closedAt), func() {
		l.mu.Lock()
		_, ok := l.held[j]
		delete(l.held, j)
		l.mu.Unlock()
		if ok { // Close has not begun: it took j otherwise
			l.verdict(j, false)
		}
	})
}

// verdict answers j, which the server will not answer: as not processed,
// or with an error (it may have run).
func (l *Listener) verdict(j *job, notRun bool) {
	if !notRun {
		l.stats.noResponse.Add(1)
	}
	switch {
	case j.canceled():
	case notRun:
		j.peer.notProcessed(j.route, j.env.ID, "zmqhttp: server shutting down")
	default:
		j.peer.replyCtrl(j.route, errorEnvelope(j.env.ID, errCodeInternal, "the server closed the connection without a complete response"))
	}
	l.finished(j)
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

// SetWriteDeadline bounds future Writes: one that starts after it fails,
// and one waiting for a streaming peer's credit fails when it passes.
func (c *vconn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.writeDeadline = t
	c.mu.Unlock()
	return nil
}
