package zmqhttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// This file is the Transport's connection management: connecting and
// reconnecting, handing calls to the live link, matching replies to
// callers, and resolving the calls of a link that ended (replay, resend of
// what was provably not processed, or ErrConnectionLost).

// call is one request in flight.
type call struct {
	// Set before the call is registered, read-only after.
	id         uint64
	res        chan struct{} // buffered 1; receives exactly once, from whoever removed the call from pending, after result is set (see deliver)
	replayable bool          // may be sent again after a lost connection (idempotent method or Idempotency-Key, body in memory)
	streamed   bool          // the body streams: the call is bound to the link it was opened on
	stop       chan struct{} // closed by end: the caller is done with the call; nil for a whole-body call whose context has a Done channel (nobody waits on it)

	// Owned by whoever queues the call (RoundTrip, then the Transport
	// under mu when it requeues).
	msg       []byte    // the encoded request envelope (a streamed head, or with body spliced in)
	body      []byte    // a whole body, sent in msg's nil body field; nil if none
	reqEnv    envelope  // RoundTrip's, while it encodes msg (here, not allocated on its own); zero after
	deadline  time.Time // the caller's; zero if none
	encodedAt time.Time // when msg's Timeout field was last set (with a deadline)
	trace     callTrace // the caller's httptrace hooks, fired by RoundTrip's goroutine

	// result is written once, by whoever removed the call from pending,
	// before its send on res; read by the caller after its receive.
	result callResult

	seq     atomic.Uint64 // its number among the requests written on its link; 0 until written
	endOnce sync.Once

	// Guarded by Transport.mu.
	link        *clientLink // the link it was queued on; nil while waiting for one
	ulink       *clientLink // the link its streamed body goes on
	attempts    int         // times it was replayed (it may have run)
	resends     int         // times it was sent again after it provably did not run
	upload      *sendStream // a streamed body's sending half
	acked       bool        // through a device: a server said it took the call (ACCEPTED)
	shared      bool        // a copy of msg and body may still be queued or being written (sent again while unacknowledged): neither is reused
	resendTimer *time.Timer // through a device: sends the call again after a pause (a draining server returned it)
	ackMisses   int         // through a device: watchAcks rounds that found it written and not acknowledged
}

// deliver resolves c with r: r goes in result (one channel of empty
// values, not one of callResults, is one allocation less per call). Only
// whoever removed c from pending calls it, once.
func (c *call) deliver(r callResult) {
	c.result = r
	c.res <- struct{}{}
}

// end closes stop once.
func (c *call) end() {
	c.endOnce.Do(func() {
		if c.stop != nil {
			close(c.stop)
		}
	})
}

// refreshTimeout brings the Timeout field of c's message up to date if c
// has a deadline and waited long enough for it to overstate the time
// left. Only that field is rewritten, not the whole envelope.
func (c *call) refreshTimeout() {
	if c.deadline.IsZero() {
		return
	}
	now := time.Now()
	if now.Sub(c.encodedAt) < staleAfter {
		return
	}
	// A copy written earlier may still be in a writer's hands: the
	// message is rewritten in place only when it is not.
	if msg, ok := setTimeout(c.msg, timeoutMicros(c.deadline, now), !c.shared); ok {
		c.msg, c.encodedAt = msg, now
	}
}

// maxResends bounds how many times one request that servers returned
// unprocessed (they were draining) is sent again: it never ran, so this is
// no replay, but a server that keeps refusing must not hold it for ever.
const maxResends = 16

// staleAfter is how long an encoded request may wait for a connection
// before its Timeout field is brought up to date.
const staleAfter = time.Millisecond

type callResult struct {
	env   envelope
	frame []byte      // a pooled frame env lies in (whole responses), or nil
	body  *recvStream // a streamed response body; nil for a whole one
	link  *clientLink // the link the response came on
	err   error
}

// clientLink is one established connection of a Transport.
type clientLink struct {
	// Set by connect, read-only after.
	*link
	t *Transport
	m *member // the server address it connects to

	draining atomic.Bool   // the peer said it is draining, or its address left its host name's answers: send nothing new
	drainSeq atomic.Uint64 // with watermark: requests numbered above it were not run
	hasMark  atomic.Bool   // drainSeq is valid

	inflight int       // guarded by Transport.mu: calls queued on this link, unresolved
	ackWatch sync.Once // starts watchAcks, on a link through a device
}

// connectLoop connects to m, serves the connection until it breaks, and
// reconnects with backoff, until Close or until m is removed.
func (t *Transport) connectLoop(m *member) {
	defer t.wg.Done()
	defer t.memberEnded(m)
	b := newBackoff(&t.cfg)
	for m.ctx.Err() == nil {
		cl, err := t.connect(m)
		if err != nil {
			if m.ctx.Err() != nil {
				return // closed or removed meanwhile: not a failure
			}
			t.stats.dialFailures.Add(1)
			t.cfg.logWarn("zmqhttp: connect failed", "server", m.name, "err", bare(err))
			t.mu.Lock()
			t.lastErr = err
			var refused []*call
			m.refused = isRefusal(err)
			if m.refused && t.allRefusedLocked() {
				// Every server refuses, and will refuse the next attempt
				// too: the calls waiting for a connection fail now, not
				// at their deadlines.
				refused, t.waiting = t.waiting, nil
				for _, c := range refused {
					delete(t.pending, c.id)
				}
			}
			t.mu.Unlock()
			for _, c := range refused {
				c.end()
				c.deliver(callResult{err: err})
			}
			if m.kick != nil {
				select { // its host name may resolve elsewhere now
				case m.kick <- struct{}{}:
				default:
				}
			}
			if !b.wait(m.ctx.Done()) {
				return
			}
			continue
		}
		b.reset()
		t.mu.Lock()
		m.refused = false
		t.mu.Unlock()
		t.stats.connects.Add(1)
		t.cfg.logInfo("zmqhttp: connected", "server", m.name, "addr", cl.nc.RemoteAddr().String())
		t.serve(cl)
		if cl.err == errDrained {
			// The server asked us to go; don't knock again at once.
			if !b.wait(m.ctx.Done()) {
				return
			}
			b.reset()
		}
	}
}

// requeueLocked queues c, to be sent again, on the link a new call would
// get, and returns that link for the caller to send on once t.mu is
// released; with none up, c waits first in line and the result is nil.
// t.mu is held.
func (t *Transport) requeueLocked(c *call) *clientLink {
	c.refreshTimeout()
	nl := t.pickLocked()
	if nl == nil {
		t.waiting = append([]*call{c}, t.waiting...)
		return nil
	}
	t.assignLocked(nl, c)
	return nl
}

// allRefusedLocked reports whether every server's last connect attempt
// was refused. t.mu is held.
func (t *Transport) allRefusedLocked() bool {
	for _, m := range t.members {
		if !m.refused {
			return false
		}
	}
	return true
}

// connect dials m and handshakes once.
func (t *Transport) connect(m *member) (*clientLink, error) {
	raw, err := t.dialer.DialContext(m.ctx, m.network, m.addr)
	if err != nil {
		return nil, wrapErr(err, "dial %s", m.name)
	}
	nc := newLiveConn(raw)
	stop := context.AfterFunc(m.ctx, func() { raw.Close() }) // Close need not wait for the handshake (nc's Conn may change in it)
	br, peer, _, err := t.cfg.connSecurity(nc, zmq4.Dealer, false, raw.RemoteAddr())
	if !stop() && err == nil {
		err = ErrTransportClosed
	}
	if err != nil {
		nc.Close()
		return nil, wrapErr(err, "connect %s", m.name)
	}
	if peer != zmq4.Router && peer != zmq4.Rep {
		nc.Close()
		return nil, fmt.Errorf("zmqhttp: connect %s: peer is a %s socket, want ROUTER or REP", m.name, peer)
	}
	interval, timeout := t.cfg.heartbeat()
	cl := &clientLink{t: t, m: m}
	cl.link = newLink(nc, br, peer, cl, linkConfig{
		limits:      t.cfg.limits,
		hbInterval:  interval,
		hbTimeout:   timeout,
		noHeartbeat: t.cfg.noHeartbeat,
		window:      t.cfg.streamWindow(),
		sendHello:   peer == zmq4.Router,
	})
	return cl, nil
}

// serve runs one connection until it ends, then resolves every call that
// was queued on it.
func (t *Transport) serve(cl *clientLink) {
	t.mu.Lock()
	if t.closed || cl.m.removed {
		t.mu.Unlock()
		cl.nc.Close()
		return
	}
	cl.start()
	cl.m.cur = cl
	close(t.linkUp)
	t.linkUp = make(chan struct{})
	// Calls that waited for a connection go first, in order.
	out := t.dispatchLocked(nil)
	t.mu.Unlock()
	t.sendQueued(out)
	if cl.peerType == zmq4.Router {
		// A server that ignores HELLO never answers it: stop waiting
		// for its capabilities after a while (it is basic).
		select {
		case <-cl.ready:
		case <-cl.dead:
		case <-time.After(t.cfg.handshakeTimeoutOrDefault()):
			cl.markReady()
		}
	}
	<-cl.dead
	cl.wait()
	t.linkEnded(cl)
}

// linkEnded resolves the calls queued on cl, which ended: a call never
// written, or provably not run (numbered above DRAINING's watermark), is
// queued again; a replayable one is replayed; the others fail with
// ErrConnectionLost. What is queued again goes to another live link at
// once, if there is one.
func (t *Transport) linkEnded(cl *clientLink) {
	t.mu.Lock()
	if cl.m.cur == cl {
		cl.m.cur = nil
	}
	if !t.closed && cl.err != errDrained {
		t.stats.connectionsLost.Add(1)
		t.lastErr = wrapErr(cl.err, "connection to %s lost", cl.m.name)
		t.cfg.logWarn("zmqhttp: connection lost", "server", cl.m.name, "err", bare(cl.err))
	}
	var again []*call
	maxReplays := t.cfg.maxReplaysOrDefault()
	for id, c := range t.pending {
		if c.link != cl {
			continue
		}
		c.link = nil
		seq := c.seq.Load()
		notRun := seq == 0 || (cl.hasMark.Load() && seq > cl.drainSeq.Load())
		var err error
		switch {
		case c.streamed && notRun:
			err = fmt.Errorf("%w (connection lost before the server started it: %s)", ErrNotProcessed, bare(cl.err))
		case c.streamed:
			err = fmt.Errorf("%w (%s)", ErrConnectionLost, bare(cl.err))
		case seq == 0:
			again = append(again, c) // never written: not a resend
			continue
		case notRun && c.resends < maxResends:
			c.resends++
			t.stats.replays.Add(1)
			again = append(again, c)
			continue
		case c.replayable && c.attempts < maxReplays:
			c.attempts++
			t.stats.replays.Add(1)
			again = append(again, c)
			continue
		case notRun:
			err = ErrNotProcessed
		default:
			err = fmt.Errorf("%w (%s)", ErrConnectionLost, bare(cl.err))
		}
		delete(t.pending, id)
		c.end()
		c.deliver(callResult{err: err})
	}
	for _, c := range again {
		c.seq.Store(0) // not written on the next link yet
	}
	// Sent again first, in the order they were first sent.
	slices.SortFunc(again, func(a, b *call) int { return cmpUint64(a.id, b.id) })
	t.waiting = append(again, t.waiting...)
	out := t.dispatchLocked(nil)
	t.mu.Unlock()
	t.sendQueued(out)
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// isTimeout reports a read or write deadline passing: on a link armed for
// heartbeats, no byte moved for the heartbeat timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// assignLocked queues c on cl. t.mu is held.
func (t *Transport) assignLocked(cl *clientLink, c *call) {
	c.link = cl
	c.acked, c.ackMisses = false, 0
	cl.inflight++
}

// sendOn hands c's message to cl's writer. The caller's own send waits
// for room in the queue until stop (its context) ends; a resend (stop nil,
// from the reader or the connection loop, which must not wait) is queued
// at once. If cl dies meanwhile, linkEnded takes care of c.
func (t *Transport) sendOn(cl *clientLink, c *call, stop <-chan struct{}) {
	cl.send(outMsg{b: c.msg, body: c.body, reqNum: &c.seq}, stop, 0)
}

// enqueue registers c and queues it on the live link, or keeps it until
// one is up.
func (t *Transport) enqueue(c *call, stop <-chan struct{}) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrTransportClosed
	}
	if len(t.pending) >= t.cfg.maxPendingOrDefault() {
		t.mu.Unlock()
		return fmt.Errorf("%w (%d)", ErrTooManyPending, t.cfg.maxPendingOrDefault())
	}
	t.pending[c.id] = c
	cl := t.pickLocked()
	if cl == nil {
		t.waiting = append(t.waiting, c)
		t.mu.Unlock()
		return nil
	}
	t.assignLocked(cl, c)
	t.mu.Unlock()
	t.sendOn(cl, c, stop)
	return nil
}

// handle acts on one decoded message from the server (reader goroutine).
func (cl *clientLink) handle(_ *link, env *envelope, frame []byte, _ [][]byte) {
	t := cl.t
	switch env.Kind {
	case KindResponse:
		t.gotResponse(cl, env, frame)
	case KindError:
		switch {
		case env.ID == 0:
			// Our HELLO was refused by a basic peer: stay basic.
			cl.markReady()
		case env.Status == errCodeNotProcessed:
			t.sendAgain(cl, env.ID)
		default:
			var rerr error = &RemoteError{Code: env.Status, Message: env.Message}
			if env.Status == errCodeLost {
				rerr = fmt.Errorf("%w (%s)", ErrConnectionLost, env.Message)
			}
			cl.mu.Lock()
			rs := cl.recvs[env.ID]
			cl.mu.Unlock()
			if rs != nil {
				// The server gave up in the middle of a streamed
				// response.
				cl.removeRecv(rs)
				rs.fail(rerr)
				return
			}
			t.resolve(cl, env.ID, callResult{err: rerr})
		}
	case KindHello:
		// Recorded by the link.
		if cl.has(capRouted) && cl.has(capAck) {
			cl.ackWatch.Do(func() {
				t.wg.Add(1)
				go t.watchAcks(cl)
			})
		}
	case KindAccepted:
		t.accepted(cl, env.ID)
	case KindDraining:
		if env.Flags&flagWatermark != 0 {
			cl.drainSeq.Store(env.Seq)
			cl.hasMark.Store(true)
		}
		cl.draining.Store(true)
		t.cfg.logInfo("zmqhttp: server draining", "server", cl.m.name)
		t.maybeCloseDrained(cl)
	default:
		t.stats.badReplies.Add(1)
	}
}

// flagWatermark marks a DRAINING whose Seq is the number of requests the
// server took on the connection before it began draining.
const flagWatermark = 1 << 0

// bad is told of a message the reader dropped.
func (cl *clientLink) bad(_ *link, _ [][]byte, err error) {
	t := cl.t
	t.stats.badReplies.Add(1)
	var oe *oversizeError
	var ie *idError
	switch {
	case errors.As(err, &oe):
		if _, kind, id, ok := peekHead(oe.head); ok && (kindOf(kind) == KindResponse || kindOf(kind) == KindError) {
			t.resolve(cl, id, callResult{err: fmt.Errorf("%w: %s", ErrBodyTooLarge, bare(oe))})
		}
	case errors.As(err, &ie):
		if ie.id != 0 && (ie.kind == KindResponse || ie.kind == KindError) {
			t.resolve(cl, ie.id, callResult{err: wrapErr(err, "bad reply from %s", cl.m.name)})
		}
	}
}

// gotResponse delivers a response. A streamed one gets its body stream
// now, in the reader goroutine, so that the chunks that follow find it.
func (t *Transport) gotResponse(cl *clientLink, env *envelope, frame []byte) {
	r := callResult{env: *env, link: cl}
	if cap(frame) == wholeFrames.size && env.Flags&flagStreamed == 0 {
		r.frame = frame
	}
	t.mu.Lock()
	c, ok := t.pending[env.ID]
	if ok {
		if env.Flags&flagStreamed != 0 {
			limit := t.cfg.limits.maxStreamBytes()
			if limit > 0 && env.ContentLength > limit {
				// Declared over the limit: fail now, as a whole one
				// would.
				r = callResult{err: fmt.Errorf("%w: response body of %d bytes, limit %d", ErrBodyTooLarge, env.ContentLength, limit)}
			} else {
				// Open before the call leaves the link, so that a
				// draining link is not closed under the body.
				r.body = cl.newRecvStream(env.ID, limit)
			}
		}
		delete(t.pending, env.ID)
		t.unlinkLocked(c)
	}
	t.mu.Unlock()
	if (!ok || r.err != nil) && env.Flags&flagStreamed != 0 {
		cl.cancel(env.ID)
	}
	if !ok {
		t.stats.lateReplies.Add(1)
	} else {
		c.deliver(r)
	}
	t.maybeCloseDrained(cl)
}

// resolve delivers r to the caller waiting for id, if it is still waiting.
func (t *Transport) resolve(cl *clientLink, id uint64, r callResult) {
	t.mu.Lock()
	c, ok := t.pending[id]
	if ok {
		delete(t.pending, id)
		t.unlinkLocked(c)
	}
	t.mu.Unlock()
	if cl != nil {
		t.maybeCloseDrained(cl)
	}
	if !ok {
		t.stats.lateReplies.Add(1)
		return
	}
	c.end()
	c.deliver(r)
}

// unlinkLocked detaches c from its link. t.mu is held; the caller then
// calls maybeCloseDrained for that link (outside t.mu).
func (t *Transport) unlinkLocked(c *call) {
	cl := c.link
	if cl == nil {
		return
	}
	c.link = nil
	cl.inflight--
}

// sendAgain queues call id again: the server returned it unprocessed, so
// it is safe to send whatever its method, though not on that link.
func (t *Transport) sendAgain(cl *clientLink, id uint64) {
	t.mu.Lock()
	c, ok := t.pending[id]
	if !ok || c.link != cl {
		t.mu.Unlock()
		t.stats.lateReplies.Add(1)
		return
	}
	if !cl.has(capRouted) {
		// The server will not run anything more sent on this link.
		// (Through a device, only one of the servers behind it is
		// draining: the call goes back through the device.)
		cl.draining.Store(true)
	}
	t.unlinkLocked(c)
	var err error
	switch {
	case c.streamed:
		err = ErrNotProcessed // its body is gone; RoundTrip may start over with GetBody
	case c.resends >= maxResends:
		err = ErrNotProcessed
	default:
		c.resends++
		t.stats.replays.Add(1)
		c.seq.Store(0)
		if cl.has(capRouted) {
			// The device may hand it to the same draining server again:
			// pause, longer each time, before sending it again.
			c.resendTimer = time.AfterFunc(routedResendDelay(c.resends), func() { t.resendRouted(c) })
			t.mu.Unlock()
			return
		}
		nl := t.requeueLocked(c)
		t.mu.Unlock()
		if nl != nil {
			t.sendOn(nl, c, nil)
		}
		t.maybeCloseDrained(cl)
		return
	}
	delete(t.pending, id)
	t.mu.Unlock()
	c.end()
	c.deliver(callResult{err: err})
	t.maybeCloseDrained(cl)
}
