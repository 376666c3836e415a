package zmqhttp

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the Listener's side of one connected client (a peer): the
// reader that decodes requests and control messages, the writer that sends
// replies, heartbeats and draining notices.

// peer is one connected client.
type peer struct {
	// Set by startPeer before the goroutines start, read-only after.
	l    *Listener
	nc   *liveConn
	addr net.Addr
	dead chan struct{} // closed by close
	wake chan struct{} // room for one token: the writer should look at the queue

	br *bufio.Reader // readLoop's

	// qmu guards queue and qclosed: messages waiting to be written.
	qmu     sync.Mutex
	queue   []outMsg
	qclosed bool

	// wmu guards bw. The writer goroutine holds it to write; so does a
	// goroutine replying to a heartbeat peer when it finds it free.
	wmu sync.Mutex
	bw  *bufio.Writer

	caps atomic.Uint64 // the client's capabilities, from its HELLO

	once sync.Once
	fin  sync.Once

	// mu guards the following fields.
	mu   sync.Mutex
	jobs map[uint64]*job // requests received and not yet answered, by id, so that a CANCEL can find them
	idle []*vconn        // this peer's connections waiting for its next request
}

func (p *peer) has(capability uint64) bool { return p.caps.Load()&capability != 0 }

func (p *peer) close() {
	p.once.Do(func() {
		close(p.dead)
		p.nc.Close()
		p.qmu.Lock()
		p.qclosed, p.queue = true, nil
		p.qmu.Unlock()
		p.l.mu.Lock()
		delete(p.l.peers, p)
		p.l.mu.Unlock()
		for c := p.popIdle(); c != nil; c = p.popIdle() {
			c.reclaim()
		}
		// Nobody is left to read the replies: as when a TCP client
		// disconnects, running handlers see r.Context() cancelled and
		// queued requests do not run.
		p.mu.Lock()
		var running []*job
		for _, j := range p.jobs {
			j.canceled = true
			if j.conn != nil {
				running = append(running, j)
			}
		}
		p.mu.Unlock()
		for _, j := range running {
			j.conn.abort(j)
		}
	})
}

// addIdle lists c as waiting for this peer's next request. It refuses
// (and c should close) when the peer is gone, the Listener is closed, or
// requests wait in the queue for a worker slot, which c then frees.
func (p *peer) addIdle(c *vconn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.dead:
		return false
	default:
	}
	if len(p.l.jobs) > 0 || p.l.isClosed() {
		return false
	}
	p.idle = append(p.idle, c)
	return true
}

// removeIdle takes c off the idle list; it reports whether c was there.
func (p *peer) removeIdle(c *vconn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, ic := range p.idle {
		if ic == c {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			return true
		}
	}
	return false
}

// popIdle takes the most recently idle connection off the list.
func (p *peer) popIdle() *vconn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		return c
	}
	return nil
}

// closeAfterFlush asks the writer to send what is queued, then close.
func (p *peer) closeAfterFlush() {
	p.fin.Do(func() { p.enqueue(outMsg{op: opFin}) })
}

// reply encodes e and queues it for p's writer. If p's queue is full the
// peer is not reading its replies; it is disconnected rather than allowed
// to hold memory or workers.
func (p *peer) reply(e *envelope) {
	b, err := appendEnvelope(getReplyBuf(), e)
	if err != nil {
		b, _ = appendEnvelope(b[:0], errorEnvelope(e.ID, errCodeInternal, err.Error()))
	}
	p.enqueue(outMsg{op: opEnvelope, b: b})
}

// replyBufs recycles the buffers replies are encoded into: a reply's
// buffer is free again once the writer has passed it to the connection.
var replyBufs sync.Pool

// maxPooledReply bounds the buffers kept for reuse.
const maxPooledReply = 1 << 20

func getReplyBuf() []byte {
	if b, ok := replyBufs.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return nil
}

func putReplyBuf(b []byte) {
	if cap(b) > 0 && cap(b) <= maxPooledReply {
		replyBufs.Put(&b)
	}
}

// enqueue adds m to the send queue. When the connection is not busy and
// the peer answers heartbeats (so writes to it have a deadline), the
// calling goroutine writes the queue itself, saving a hand-off to the
// writer goroutine; otherwise the writer is woken.
func (p *peer) enqueue(m outMsg) { p.enqueueMsg(m, false) }

// post queues e for the writer goroutine only: the caller (Listener.Close,
// going over every peer) must not block on one that stopped reading.
func (p *peer) post(e *envelope) {
	if b, err := appendEnvelope(nil, e); err == nil {
		p.enqueueMsg(outMsg{op: opEnvelope, b: b}, true)
	}
}

func (p *peer) enqueueMsg(m outMsg, async bool) {
	p.qmu.Lock()
	if p.qclosed {
		p.qmu.Unlock()
		return
	}
	if len(p.queue) >= peerSendQueue && m.op != opFin {
		p.qmu.Unlock()
		p.l.stats.slowPeers.Add(1)
		p.close()
		return
	}
	p.queue = append(p.queue, m)
	p.qmu.Unlock()
	if !async && p.has(capHeartbeat) && p.wmu.TryLock() {
		err := p.writeQueued(false)
		p.wmu.Unlock()
		if err != nil {
			p.close()
		}
		return
	}
	select {
	case p.wake <- struct{}{}:
	default:
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

// errPeerFinished ends writeQueued after an opFin.
var errPeerFinished = errors.New("peer finished")

// writeQueued writes the send queue to the connection and flushes. p.wmu
// is held. With yield set (the writer goroutine) it lets handlers that are
// about to reply run once before the flush, so their replies share it.
func (p *peer) writeQueued(yield bool) error {
	yielded := !yield
	var batch []outMsg
	for {
		p.qmu.Lock()
		batch, p.queue = p.queue, batch[:0]
		p.qmu.Unlock()
		if len(batch) == 0 {
			if p.bw.Buffered() == 0 {
				return nil
			}
			if !yielded {
				yielded = true
				runtime.Gosched()
				continue
			}
			return p.bw.Flush()
		}
		for i, m := range batch {
			var err error
			switch m.op {
			case opFin:
				p.bw.Flush()
				return errPeerFinished
			case opPong:
				err = writeCommand(p.bw, "PONG", m.b)
			default:
				err = writeEnvelopeMsg(p.bw, m.b)
				putReplyBuf(m.b) // bufio has copied it, or written it out
			}
			batch[i] = outMsg{}
			if err != nil {
				return err
			}
		}
	}
}

func (p *peer) writeLoop() {
	defer p.l.wg.Done()
	interval, _ := p.l.cfg.heartbeat()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var pingSeq uint64
	for {
		select {
		case <-p.wake:
		case <-ticker.C:
			// A silent client is noticed by the read deadline (see
			// liveConn, armed by HELLO); the PING keeps a live one from
			// seeing us silent.
			if !p.has(capHeartbeat) {
				continue
			}
			pingSeq++
			b, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindPing, ID: pingSeq})
			p.qmu.Lock()
			p.queue = append(p.queue, outMsg{op: opEnvelope, b: b})
			p.qmu.Unlock()
		case <-p.dead:
			return
		}
		p.wmu.Lock()
		err := p.writeQueued(true)
		p.wmu.Unlock()
		if err != nil {
			p.close()
			return
		}
	}
}

// readLoop reads requests and control messages from the peer. Requests
// are queued for workers.
func (p *peer) readLoop() {
	defer p.close()
	l := p.l
	maxFrame := l.cfg.limits.maxFrameBytes()
	pong := func(ctx []byte) { p.enqueue(outMsg{op: opPong, b: ctx}) }
	var frames [][]byte
	for {
		frame, fs, err := readEnvelopeFrame(p.br, maxFrame, frames, pong)
		frames = fs
		var oe *oversizeError
		var pe *ProtocolError
		switch {
		case errors.As(err, &oe):
			p.rejectOversized(oe)
			continue
		case err == errNotEnvelope:
			l.stats.badMessages.Add(1)
			continue
		case isTimeout(err):
			l.stats.silentPeers.Add(1) // armed by HELLO: no byte for the heartbeat timeout
			return
		case errors.As(err, &pe):
			l.stats.badMessages.Add(1)
			return
		case err != nil:
			return
		}
		arrived := time.Now()
		var env envelope
		if err := decodeEnvelope(frame, l.cfg.limits, &env); err != nil {
			p.reject(err)
			continue
		}
		switch env.Kind {
		case KindRequest:
			p.receive(&env, arrived)
		case KindHello:
			p.caps.Store(env.Flags & ourCaps)
			if p.has(capHeartbeat) {
				_, timeout := l.cfg.heartbeat()
				p.nc.arm(timeout)
			}
			p.reply(&envelope{Version: ProtocolVersion, Kind: KindHello, ID: env.ID, Flags: ourCaps,
				Timeout: int64(p.l.heartbeatInterval() / time.Microsecond)})
			if l.isClosed() && p.has(capDrain) {
				p.reply(&envelope{Version: ProtocolVersion, Kind: KindDraining})
			}
		case KindPing:
			p.reply(&envelope{Version: ProtocolVersion, Kind: KindPong, ID: env.ID})
		case KindPong:
			// Its arrival already counted as a sign of life.
		case KindCancel:
			p.cancel(env.ID)
		default:
			l.stats.badMessages.Add(1)
		}
	}
}

// receive queues a request for a worker, or answers it at once when the
// Listener is closed or overloaded.
func (p *peer) receive(env *envelope, arrived time.Time) {
	l := p.l
	l.stats.requests.Add(1)
	l.mu.Lock()
	closed := l.closed.Load()
	if !closed {
		l.inflight++
	}
	l.mu.Unlock()
	if closed {
		p.notProcessed(env.ID, "zmqhttp: server shutting down")
		return
	}
	j := &job{peer: p, env: *env}
	if env.Timeout > 0 {
		// The caller's remaining time, counted from arrival, less an
		// allowance for the message's transit, so that the server gives
		// up no later than the caller.
		left := time.Duration(env.Timeout) * time.Microsecond
		j.deadline = arrived.Add(left - min(transitAllowance, left/4))
	}
	p.mu.Lock()
	if p.jobs == nil {
		p.jobs = make(map[uint64]*job)
	}
	p.jobs[env.ID] = j
	// An idle connection of this peer takes it at once.
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if c.assign(j) {
			p.mu.Unlock()
			return
		}
	}
	p.mu.Unlock()
	// Queue it under l.mu with the closed check, so that Close, which
	// drains the queue after setting closed, cannot miss it.
	l.mu.Lock()
	queued, closed := false, l.closed.Load()
	if !closed {
		select {
		case l.jobs <- j:
			queued = true
		default:
		}
	}
	l.mu.Unlock()
	switch {
	case queued:
		if len(l.slots) == cap(l.slots) {
			// Every worker slot is taken; if some are idle connections
			// of other peers, free one for this request.
			l.reclaimIdle()
		}
	case closed:
		p.forget(j)
		p.notProcessed(env.ID, "zmqhttp: server shutting down")
		l.finished()
	default:
		p.forget(j)
		l.stats.overloaded.Add(1)
		p.reply(simpleResponse(env.ID, 503, "zmqhttp: server overloaded",
			"Retry-After", strconv.Itoa(l.cfg.retryAfterSeconds())))
		l.finished()
	}
}

// transitAllowance is subtracted from a caller's remaining time (at most a
// quarter of it) to allow for the request's time on the wire.
const transitAllowance = time.Millisecond

// notProcessed answers a request the Listener will not run because it is
// closed: a client that understands draining gets it back as not
// processed, to send again elsewhere or after reconnecting; a basic peer
// gets 503 with Retry-After.
func (p *peer) notProcessed(id uint64, why string) {
	p.l.stats.drained.Add(1)
	if p.has(capDrain) {
		p.reply(errorEnvelope(id, errCodeNotProcessed, why))
		return
	}
	p.reply(simpleResponse(id, 503, why, "Retry-After", strconv.Itoa(p.l.cfg.retryAfterSeconds())))
}

// cancel ends request id: a queued request is dropped before it runs; a
// running one has its connection's pending read end, so the http.Server
// cancels the handler's r.Context().
func (p *peer) cancel(id uint64) {
	p.mu.Lock()
	j := p.jobs[id]
	var vc *vconn
	if j != nil {
		j.canceled = true
		vc = j.conn
	}
	p.mu.Unlock()
	if j == nil {
		return // answered already, or unknown
	}
	p.l.stats.canceled.Add(1)
	if vc != nil {
		vc.abort(j)
	}
}

// forget removes j from the peer's table of unanswered requests.
func (p *peer) forget(j *job) {
	p.mu.Lock()
	if p.jobs[j.env.ID] == j {
		delete(p.jobs, j.env.ID)
	}
	p.mu.Unlock()
}

// reject answers a message that failed to decode, when its id could be
// read: a request the server cannot take gets the HTTP answer an HTTP
// server would give (400, 413 or 431) without running the handler; an
// unknown version or kind gets an error envelope, since it may not be a
// request at all. Anything else is dropped and counted.
func (p *peer) reject(err error) {
	var ie *idError
	var pe *ProtocolError
	errors.As(err, &pe)
	unsupported := pe != nil && (pe.Reason == reasonVersion || pe.Reason == reasonKind)
	// Answer what a client sends; never answer a response or an error
	// (a peer that did the same could loop with us forever).
	if !errors.As(err, &ie) || ie.kind == KindResponse || ie.kind == KindError ||
		(ie.kind != KindRequest && !unsupported) {
		p.l.stats.badMessages.Add(1)
		return
	}
	p.l.stats.rejected.Add(1)
	if unsupported {
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
