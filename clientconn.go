package zmqhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// This file is the Transport's connection layer: connecting and
// reconnecting, the writer that sends queued calls, the reader that hands
// replies to callers, heartbeats, replay after a lost connection, and
// draining.

// call is one RoundTrip in flight.
type call struct {
	id         uint64
	msg        []byte          // the encoded request envelope; read-only once queued
	res        chan callResult // buffered 1; receives exactly once, from whoever removed the call from pending
	replayable bool            // may be sent again after a lost connection (idempotent method or Idempotency-Key)

	// For a call with a deadline: its envelope and when msg was encoded,
	// so that a call that waited for a connection, or is sent again, is
	// re-encoded with the time it has left. Used by the writer only.
	env       *envelope
	deadline  time.Time
	encodedAt time.Time

	// Guarded by Transport.mu.
	link     *clientLink // the connection it was written on; nil while queued
	attempts int         // times it was sent again
}

// staleAfter is how long an encoded request may wait before its Timeout
// field is brought up to date when it is written.
const staleAfter = time.Millisecond

// refreshTimeout re-encodes c if it has a deadline and has waited (for a
// connection, or to be sent again) long enough for its Timeout field to
// overstate the time left.
func (c *call) refreshTimeout() {
	if c.env == nil {
		return
	}
	now := time.Now()
	if now.Sub(c.encodedAt) < staleAfter {
		return
	}
	c.env.Timeout = timeoutMicros(c.deadline, now)
	if msg, err := appendEnvelope(c.msg[:0], c.env); err == nil {
		c.msg, c.encodedAt = msg, now
	}
}

type callResult struct {
	env envelope
	err error
}

// Capabilities a peer announces in its HELLO (Flags field).
const (
	capHeartbeat = 1 << 0 // answers PING with PONG, sends PINGs
	capCancel    = 1 << 1 // acts on CANCEL
	capDrain     = 1 << 2 // sends DRAINING and returns unprocessed requests as not-processed errors
	ourCaps      = capHeartbeat | capCancel | capDrain
)

// Errors that end a connection (kept in clientLink.err, wrapped in what
// callers see).
var (
	errHeartbeatTimeout = errors.New("nothing from the peer within the heartbeat timeout")
	errDrained          = errors.New("the server is draining and every call on the connection is answered")
)

// clientLink is one established connection of a Transport.
type clientLink struct {
	// Set before the goroutines start, read-only after.
	nc       *liveConn
	peerType zmq4.SocketType
	dead     chan struct{} // closed by close
	ctrl     chan ctrlMsg  // control messages for the writer; sends never block (dropped when full)

	br *bufio.Reader // the reader goroutine's

	// wmu guards bw and batch. The writer goroutine holds it to write;
	// so does a caller that finds it free (see Transport.enqueue), which
	// saves a goroutine hand-off when the connection is not busy.
	wmu   sync.Mutex
	bw    *bufio.Writer
	batch []*call

	caps     atomic.Uint64 // the peer's capabilities, from its HELLO; 0 until then
	draining atomic.Bool   // the peer said it is draining: send nothing new

	once sync.Once
	err  error // why the link died; set once, before dead is closed

	inflight int // guarded by Transport.mu: calls written on this link, unresolved
}

// ctrlMsg is a control message for a link's writer: an encoded envelope,
// or a ZMTP PONG command.
type ctrlMsg struct {
	pong bool
	b    []byte
}

func (l *clientLink) close(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.dead)
		l.nc.Close()
	})
}

// sendCtrl queues a control envelope; it is dropped if the queue is full
// (each kind of control message tolerates loss: a heartbeat or a cancel
// missed is covered by the next one or by the deadline).
func (l *clientLink) sendCtrl(e *envelope) {
	b, err := appendEnvelope(nil, e)
	if err != nil {
		return
	}
	select {
	case l.ctrl <- ctrlMsg{b: b}:
	default:
	}
}

func (l *clientLink) isDead() bool {
	select {
	case <-l.dead:
		return true
	default:
		return false
	}
}

func (l *clientLink) has(capability uint64) bool { return l.caps.Load()&capability != 0 }

// connectLoop connects, serves the connection until it breaks, and
// reconnects with backoff, until Close.
func (t *Transport) connectLoop() {
	defer t.wg.Done()
	lo, hi := t.cfg.backoff()
	wait := lo
	for t.ctx.Err() == nil {
		l, err := t.connect()
		if err != nil {
			t.stats.dialFailures.Add(1)
			t.mu.Lock()
			t.lastErr = err
			t.mu.Unlock()
			select {
			case <-time.After(wait):
			case <-t.ctx.Done():
				return
			}
			wait = min(wait*2, hi)
			continue
		}
		wait = lo
		t.stats.connects.Add(1)
		t.serve(l)
		if l.err == errDrained {
			// The server asked us to go; don't knock again at once.
			select {
			case <-time.After(lo):
			case <-t.ctx.Done():
				return
			}
		}
	}
}

// connect dials and handshakes once.
func (t *Transport) connect() (*clientLink, error) {
	raw, err := t.dialer.DialContext(t.ctx, t.ep.network, t.ep.addr)
	if err != nil {
		return nil, fmt.Errorf("zmqhttp: dial %s: %w", t.endpoint, err)
	}
	nc := newLiveConn(raw)
	stop := context.AfterFunc(t.ctx, func() { nc.Close() }) // Close need not wait for the handshake
	br, peer, err := handshake(nc, zmq4.Dealer, false, t.cfg.handshakeTimeoutOrDefault())
	if !stop() && err == nil {
		err = ErrTransportClosed
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("zmqhttp: connect %s: %w", t.endpoint, err)
	}
	if peer != zmq4.Router && peer != zmq4.Rep {
		nc.Close()
		return nil, fmt.Errorf("zmqhttp: connect %s: peer is a %s socket, want ROUTER or REP", t.endpoint, peer)
	}
	l := &clientLink{
		nc:       nc,
		peerType: peer,
		br:       br,
		bw:       bufio.NewWriterSize(nc, 64<<10),
		ctrl:     make(chan ctrlMsg, 1024),
		dead:     make(chan struct{}),
	}
	return l, nil
}

// serve runs one connection: its reader in a goroutine, its writer here.
// When either fails, every call written on it is resolved: sent again if
// it may be, failed with ErrConnectionLost if not.
func (t *Transport) serve(l *clientLink) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		l.close(ErrTransportClosed)
		return
	}
	t.cur = l
	t.mu.Unlock()

	t.wg.Add(1)
	go t.readLoop(l)
	t.writeLoop(l)
	<-l.dead

	t.mu.Lock()
	t.cur = nil
	if !t.closed && l.err != errDrained {
		t.stats.connectionsLost.Add(1)
		t.lastErr = fmt.Errorf("zmqhttp: connection to %s lost: %w", t.endpoint, l.err)
	}
	var again []*call
	maxReplays := t.cfg.maxReplaysOrDefault()
	for id, c := range t.pending {
		if c.link != l {
			continue
		}
		c.link = nil
		if c.replayable && c.attempts < maxReplays {
			c.attempts++
			again = append(again, c)
			continue
		}
		delete(t.pending, id)
		c.res <- callResult{err: fmt.Errorf("%w (%v)", ErrConnectionLost, l.err)}
	}
	if len(again) > 0 {
		// Sent again first, in the order they were first sent.
		slices.SortFunc(again, func(a, b *call) int { return cmpUint64(a.id, b.id) })
		t.queue = append(again, t.queue...)
		t.stats.replays.Add(uint64(len(again)))
	}
	t.mu.Unlock()
}

// isTimeout reports a read or write deadline passing: on a link armed for
// heartbeats, no byte moved for the heartbeat timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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

// writeLoop writes queued calls and control messages to l until l dies.
// Calls waiting together are written with one flush, so under load many
// requests share a syscall.
func (t *Transport) writeLoop(l *clientLink) {
	interval, _ := t.cfg.heartbeat()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	// write runs f with the writer lock held; a failure ends the link.
	write := func(f func() error) bool {
		l.wmu.Lock()
		err := f()
		l.wmu.Unlock()
		if err != nil {
			l.close(err)
		}
		return err == nil
	}
	if l.peerType == zmq4.Router {
		// Offer our capabilities. A basic peer answers with an error
		// envelope for id 0 and the link stays basic: no heartbeats,
		// cancels or draining.
		hello := envelope{Version: ProtocolVersion, Kind: KindHello, Flags: ourCaps, Timeout: int64(interval / time.Microsecond)}
		if !write(func() error { return t.writeEnvelope(l, &hello) }) {
			return
		}
	}
	var pingSeq uint64
	for {
		if !write(func() error { return t.writeQueued(l, true) }) {
			return
		}
		select {
		case <-t.wake:
		case m := <-l.ctrl:
			if !write(func() error { return t.writeCtrl(l, m) }) {
				return
			}
		case <-ticker.C:
			// A dead peer is noticed by the link's read deadline (see
			// liveConn); the PING keeps a live one from seeing us silent.
			if !l.has(capHeartbeat) {
				continue
			}
			pingSeq++
			ping := envelope{Version: ProtocolVersion, Kind: KindPing, ID: pingSeq}
			if !write(func() error { return t.writeEnvelope(l, &ping) }) {
				return
			}
		case <-l.dead:
			return
		}
	}
}

// writeQueued writes every queued call to l, in batches, and flushes.
// l.wmu is held. With yield set (the writer goroutine, which runs when
// the connection is busy), it lets callers that are about to queue run
// once before each flush, so that their requests share the write.
func (t *Transport) writeQueued(l *clientLink, yield bool) error {
	yielded := !yield
	for {
		b := t.takeBatch(l)
		if len(b) == 0 {
			if l.bw.Buffered() > 0 {
				return l.bw.Flush()
			}
			return nil
		}
		if err := t.writeCalls(l, b); err != nil {
			return err
		}
		if !yielded {
			yielded = true
			runtime.Gosched()
			continue
		}
		yielded = !yield
		if err := l.bw.Flush(); err != nil {
			return err
		}
	}
}

// writeBatch writes one batch of queued calls to l and flushes; it
// reports whether more calls are queued. l.wmu is held.
func (t *Transport) writeBatch(l *clientLink) (more bool, err error) {
	if b := t.takeBatch(l); len(b) > 0 {
		if err := t.writeCalls(l, b); err != nil {
			return false, err
		}
	}
	if l.bw.Buffered() > 0 {
		if err := l.bw.Flush(); err != nil {
			return false, err
		}
	}
	t.mu.Lock()
	more = len(t.queue) > 0
	t.mu.Unlock()
	return more, nil
}

// takeBatch takes up to a batch of queued calls for l, marking them as
// written on it. l.wmu is held.
func (t *Transport) takeBatch(l *clientLink) []*call {
	maxBatch := writeBatch
	b := l.batch[:0]
	t.mu.Lock()
	// A dead or draining link takes nothing: a dead one's calls may
	// already have been resolved by serve, which would not see a call
	// assigned now.
	if !l.draining.Load() && !l.isDead() {
		n := 0
		for n < len(t.queue) && len(b) < maxBatch {
			c := t.queue[n]
			n++
			if t.pending[c.id] == c { // skip calls abandoned by their caller
				c.link = l
				l.inflight++
				b = append(b, c)
			}
		}
		clear(t.queue[:n])
		t.queue = t.queue[n:]
		if len(t.queue) == 0 {
			t.queue = nil
		}
	}
	t.mu.Unlock()
	l.batch = b
	return b
}

// writeCalls writes b to l's buffer. If a write fails, the calls after
// the failing one were never written: they go back to the head of the
// queue for the next connection, instead of being failed as maybe sent.
// l.wmu is held.
func (t *Transport) writeCalls(l *clientLink, b []*call) error {
	for i, c := range b {
		c.refreshTimeout()
		if err := writeEnvelopeMsg(l.bw, c.msg); err != nil {
			t.mu.Lock()
			var back []*call
			for _, u := range b[i+1:] {
				if t.pending[u.id] == u && u.link == l {
					u.link = nil
					l.inflight--
					back = append(back, u)
				}
			}
			t.queue = append(back, t.queue...)
			t.mu.Unlock()
			clear(b)
			return err
		}
	}
	clear(b) // the calls are not ours to keep alive
	return nil
}

// writeCtrl writes m and any other queued control messages, then flushes.
func (t *Transport) writeCtrl(l *clientLink, m ctrlMsg) error {
	for {
		var err error
		if m.pong {
			err = writeCommand(l.bw, "PONG", m.b)
		} else {
			err = writeEnvelopeMsg(l.bw, m.b)
		}
		if err != nil {
			return err
		}
		select {
		case m = <-l.ctrl:
			continue
		default:
		}
		return l.bw.Flush()
	}
}

func (t *Transport) writeEnvelope(l *clientLink, e *envelope) error {
	b, err := appendEnvelope(nil, e)
	if err != nil {
		return err
	}
	if err := writeEnvelopeMsg(l.bw, b); err != nil {
		return err
	}
	return l.bw.Flush()
}

// writeEnvelopeMsg writes one REQ/REP-style message: an empty delimiter
// frame, then the envelope frame.
func writeEnvelopeMsg(w *bufio.Writer, env []byte) error {
	if err := writeFrame(w, nil, true); err != nil {
		return err
	}
	return writeFrame(w, env, false)
}

// readLoop reads messages from l: replies go to their callers, control
// messages are acted on.
func (t *Transport) readLoop(l *clientLink) {
	defer t.wg.Done()
	maxFrame := t.cfg.limits.maxFrameBytes()
	pong := func(ctx []byte) {
		select {
		case l.ctrl <- ctrlMsg{pong: true, b: ctx}:
		default:
		}
	}
	var frames [][]byte
	for {
		frame, fs, err := readEnvelopeFrame(l.br, maxFrame, frames, pong)
		frames = fs
		var oe *oversizeError
		switch {
		case errors.As(err, &oe):
			t.stats.badReplies.Add(1)
			if _, kind, id, ok := peekHead(oe.head); ok && Kind(kind) != KindRequest {
				t.resolve(id, callResult{err: fmt.Errorf("%w: %v", ErrBodyTooLarge, oe)})
			}
			continue
		case err == errNotEnvelope:
			t.stats.badReplies.Add(1)
			continue
		case isTimeout(err):
			l.close(errHeartbeatTimeout)
			return
		case err != nil:
			l.close(err)
			return
		}
		var env envelope
		err = decodeEnvelope(frame, t.cfg.limits, &env)
		if err != nil {
			var ie *idError
			if errors.As(err, &ie) && ie.id != 0 && (ie.kind == KindResponse || ie.kind == KindError) {
				t.resolve(ie.id, callResult{err: fmt.Errorf("zmqhttp: bad reply from %s: %w", t.endpoint, err)})
			}
			t.stats.badReplies.Add(1)
			continue
		}
		t.handle(l, &env)
	}
}

// handle acts on one decoded message from the server.
func (t *Transport) handle(l *clientLink, env *envelope) {
	switch env.Kind {
	case KindResponse:
		t.resolve(env.ID, callResult{env: *env})
	case KindError:
		switch {
		case env.ID == 0:
			// Our HELLO was refused by a basic peer: stay basic.
		case env.Status == errCodeNotProcessed:
			t.sendAgain(l, env.ID)
		default:
			t.resolve(env.ID, callResult{err: &RemoteError{Code: env.Status, Message: env.Message}})
		}
	case KindHello:
		l.caps.Store(env.Flags & ourCaps)
		if l.has(capHeartbeat) {
			// The peer sends something at least every interval: a read
			// or write that makes no progress for the timeout means it
			// is dead or stuck, even while our writes are blocked.
			_, timeout := t.cfg.heartbeat()
			l.nc.arm(timeout)
		}
	case KindPing:
		l.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindPong, ID: env.ID})
	case KindPong:
		// Its arrival already counted as a sign of life.
	case KindDraining:
		l.draining.Store(true)
		t.mu.Lock()
		idle := l.inflight == 0
		t.mu.Unlock()
		if idle {
			l.close(errDrained)
		}
	default:
		t.stats.badReplies.Add(1)
	}
}

// resolve delivers r to the caller waiting for id, if it is still waiting.
func (t *Transport) resolve(id uint64, r callResult) {
	t.mu.Lock()
	c, ok := t.pending[id]
	var drained *clientLink
	if ok {
		delete(t.pending, id)
		drained = t.unlink(c)
	}
	t.mu.Unlock()
	if drained != nil {
		drained.close(errDrained)
	}
	if !ok {
		t.stats.lateReplies.Add(1)
		return
	}
	c.res <- r
}

// unlink detaches c from the link it was sent on. It returns that link if
// the link is draining and c was its last call: the caller closes it
// (outside t.mu), and the Transport reconnects. t.mu must be held.
func (t *Transport) unlink(c *call) *clientLink {
	l := c.link
	if l == nil {
		return nil
	}
	c.link = nil
	l.inflight--
	if l.inflight == 0 && l.draining.Load() {
		return l
	}
	return nil
}

// sendAgain queues call id again: the server returned it unprocessed
// (it was draining), so it is safe to send whatever its method.
func (t *Transport) sendAgain(l *clientLink, id uint64) {
	t.mu.Lock()
	c, ok := t.pending[id]
	if !ok || c.link != l {
		// Gone, or already queued again because l died meanwhile.
		t.mu.Unlock()
		t.stats.lateReplies.Add(1)
		return
	}
	drained := t.unlink(c)
	if c.attempts >= t.cfg.maxReplaysOrDefault() {
		delete(t.pending, id)
		t.mu.Unlock()
		c.res <- callResult{err: ErrNotProcessed}
	} else {
		c.attempts++
		t.stats.replays.Add(1)
		t.queue = append([]*call{c}, t.queue...)
		t.mu.Unlock()
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	if drained != nil {
		drained.close(errDrained)
	}
}
