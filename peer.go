package zmqhttp

import (
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the Listener's side of one connected client (a peer): it
// receives the requests and control messages its link's reader hands over
// and answers the ones that never reach a handler.

// peer is one connected client.
type peer struct {
	*link
	// Set by startPeer before the link starts, read-only after.
	l    *Listener
	addr net.Addr
	info Peer // who the client is, as its handshake established

	closeOnce sync.Once

	// unread is the bytes of its requests (envelope frames) received and
	// not yet read by the server (see admit).
	unread atomic.Int64

	// mu guards the following fields (lock order: peer.mu, then vconn.mu,
	// then Listener.mu).
	mu        sync.Mutex
	jobs      map[jobKey]*job // requests received and not yet answered
	idle      []*vconn        // this peer's connections waiting for its next request
	drainSent bool            // DRAINING was queued
	gone      bool            // the link ended
	trimArmed bool            // a trimIdle timer is pending (idle holds more than maxIdlePerPeer)
}

// jobKey identifies a request on a connection: ids are chosen by each
// client, so through a device they are unique per route only.
type jobKey struct {
	route string // route.key; "" from a direct client
	id    uint64
}

// route is where a request that came through a device (libzmq's
// zmq_proxy, a ROUTER-DEALER queue) goes back to: the routing frames the
// device put before the empty delimiter, returned with the reply as a
// REP socket does. A server treats each route as a client of its own: the
// connection's DRAINING, heartbeats and streams belong to the device, not
// to the clients behind it (PROTOCOL.md, "Routed messages").
type route struct {
	frames [][]byte
	key    string // the frames, each after its length
	caps   uint64 // what the request's client takes (capAck, capDrain), from the request's flags
}

// maxIdlePerPeer is how many keep-alive connections a peer keeps waiting
// for its next request however long they wait. Beyond it, up to the
// Listener's worker count, a connection waits at most idleTrim (trimmed
// as others go idle, or by a timer when the peer sends nothing more): a
// peer that has many requests in
// flight keeps the connections that carry them (with a fixed bound of
// 64, a peer with 256 requests in flight had every other one served by a
// new connection: a new http.Server connection goroutine and buffers
// each time), and gives back those of a burst that has passed.
const maxIdlePerPeer = 64

// idleTrim is how long a connection beyond maxIdlePerPeer may wait idle.
const idleTrim = 10 * time.Second

// testIdleTrim, if not 0, replaces idleTrim (nanoseconds; set by tests).
var testIdleTrim atomic.Int64

// idleTrimFor returns idleTrim, or the tests' replacement.
func idleTrimFor() time.Duration {
	if d := testIdleTrim.Load(); d > 0 {
		return time.Duration(d)
	}
	return idleTrim
}

// routeFor returns the route of a message's routing frames, or nil for a
// direct message.
func routeFor(frames [][]byte) *route {
	if len(frames) == 0 {
		return nil
	}
	var key []byte
	for _, f := range frames {
		key = binary.AppendUvarint(key, uint64(len(f)))
		key = append(key, f...)
	}
	return &route{frames: frames, key: string(key)}
}

// routedHello answers a HELLO that came through a device, for its route
// only: capRouted says the connection-level capabilities, but for
// heartbeats (a PONG through the device shows the path alive), do not
// apply; the server acts on CANCEL, and, when the client asks (capAck,
// capDrain), acknowledges the requests it takes and returns unprocessed
// ones as not-processed errors. Nothing is recorded: the device hands the
// HELLO to one server only, so each request carries what its client takes
// (flagAckWanted, flagNotProcessedOK).
func (p *peer) routedHello(rt *route, env *envelope) {
	interval, _ := p.l.cfg.heartbeat()
	p.replyCtrl(rt, &envelope{Version: ProtocolVersion, Kind: KindHello, ID: env.ID,
		Flags:   p.cfg.caps(capRouted | capCancel | capHeartbeat | env.Flags&(capDrain|capAck)),
		Timeout: int64(interval / time.Microsecond)})
}

// handle acts on a request or control message (link reader goroutine).
func (p *peer) handle(_ *link, env *envelope, frame []byte, frames [][]byte) {
	l := p.l
	rt := routeFor(frames)
	switch env.Kind {
	case KindRequest:
		if rt != nil {
			if env.Flags&flagAckWanted != 0 {
				rt.caps |= capAck
			}
			if env.Flags&flagNotProcessedOK != 0 {
				rt.caps |= capDrain
			}
		}
		if !p.admit() {
			// The server is behind with this peer: answered at once, as
			// when the queue is full, so that the reader goes on reading
			// (a CANCEL or CREDIT behind it may be what the server waits
			// for).
			l.stats.overloaded.Add(1)
			p.replyCtrl(rt, simpleResponse(env.ID, 503, "zmqhttp: server overloaded",
				"Retry-After", strconv.Itoa(l.cfg.retryAfterSeconds())))
			return
		}
		p.receive(env, frame, time.Now(), rt)
	case KindHello:
		if rt != nil {
			p.routedHello(rt, env)
		} else if l.isClosed() {
			p.mu.Lock()
			p.ensureDrainingLocked()
			p.mu.Unlock()
		}
	case KindCancel:
		p.cancel(jobKey{rt.keyOrEmpty(), env.ID})
	default:
		l.stats.badMessages.Add(1)
	}
}

// ended is run once the link is gone: nobody is left to read the
// replies. As when a TCP client disconnects, running handlers see
// r.Context() cancelled, queued requests do not run, idle connections end.
func (p *peer) ended() {
	p.closeOnce.Do(func() {
		p.l.mu.Lock()
		delete(p.l.peers, p)
		p.l.mu.Unlock()
		p.mu.Lock()
		p.gone = true
		idle := p.idle
		p.idle = nil
		var jobs []*job
		for _, j := range p.jobs {
			jobs = append(jobs, j)
		}
		p.mu.Unlock()
		for _, c := range idle {
			c.reclaim()
		}
		for _, j := range jobs {
			j.cancel()
		}
		p.l.peerGone()
	})
}

// ensureDrainingLocked queues DRAINING once, with the number of requests
// read so far on the connection: the client knows that any later request
// it wrote on it will not run (receive checks the Listener's closed flag
// under p.mu, after the reader counted the request). p.mu is held.
func (p *peer) ensureDrainingLocked() {
	if p.drainSent || !p.has(capDrain) {
		return
	}
	p.drainSent = true
	p.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindDraining, Seq: p.reqsRead.Load(), Flags: flagWatermark})
}

// reply queues a whole reply, waiting for room in the link's queue (the
// peer reads too slowly) until the link dies.
// With pooled set, e.Body came from wholeBodies and goes back to the pool
// once written.
func (p *peer) reply(rt *route, e *envelope, pooled bool) {
	m := replyMsg(e, pooled)
	m.route = rt.framesOrNil()
	p.send(m, p.dead, p.cfg.hbTimeout)
}

// replyMsg encodes a whole reply for a link's queue; a large body is
// spliced in by the writer rather than copied into the encoding. With
// pooled set, e.Body came from wholeBodies and goes back to the pool once
// written.
func replyMsg(e *envelope, pooled bool) outMsg {
	var body []byte
	if len(e.Body) >= refMin {
		body, e.Body = e.Body, nil
	}
	b, err := appendEnvelope(getBuf(), e)
	if err != nil {
		b, _ = appendEnvelope(b[:0], errorEnvelope(e.ID, errCodeInternal, err.Error()))
		body = nil
	}
	return outMsg{b: b, body: body, pooled: true, pooledBody: pooled && body != nil}
}

// replyCtrl queues a small reply that must not wait (the reader
// goroutine's answers, not-processed answers) to rt (nil: the direct
// client).
func (p *peer) replyCtrl(rt *route, e *envelope) {
	b, err := appendEnvelope(getBuf(), e)
	if err != nil {
		return
	}
	p.queueCtrl(outMsg{b: b, pooled: true, route: rt.framesOrNil()})
}

// framesOrNil returns the routing frames of rt, nil for a direct client.
func (rt *route) framesOrNil() [][]byte {
	if rt == nil {
		return nil
	}
	return rt.frames
}

// keyOrEmpty returns rt's key, "" for a direct client.
func (rt *route) keyOrEmpty() string {
	if rt == nil {
		return ""
	}
	return rt.key
}

func errorEnvelope(id uint64, code int, msg string) *envelope {
	return &envelope{Version: ProtocolVersion, Kind: KindError, ID: id, Status: code, Message: msg}
}

// receive takes a request: it runs when a worker is free, or waits in the
// queue, or is answered at once when the Listener is closed or overloaded.
func (p *peer) receive(env *envelope, frame []byte, arrived time.Time, rt *route) {
	l := p.l
	l.stats.requests.Add(1)
	j := &job{peer: p, route: rt, env: *env, abort: make(chan struct{}), size: cap(frame)}
	key := jobKey{rt.keyOrEmpty(), env.ID}
	if cap(frame) == wholeFrames.size {
		j.frame = frame // env's strings and body lie in it
	}
	if env.Timeout > 0 {
		// The caller's remaining time, counted from arrival, less an
		// allowance for the message's transit, so that the server gives
		// up no later than the caller.
		left := time.Duration(min(env.Timeout, int64(maxTimeout/time.Microsecond))) * time.Microsecond
		j.deadline = arrived.Add(left - min(transitAllowance, left/4))
	}
	p.mu.Lock()
	if l.isClosed() {
		if rt == nil {
			p.ensureDrainingLocked()
		}
		p.mu.Unlock()
		p.notProcessed(rt, env.ID, "zmqhttp: server shutting down")
		return
	}
	if p.jobs[key] != nil {
		p.mu.Unlock()
		if rt != nil {
			// Through a device, a copy sent again because its
			// ACCEPTED was lost: the first one's reply answers the
			// call; acknowledge again.
			l.stats.badMessages.Add(1)
			if rt.caps&capAck != 0 {
				p.replyCtrl(rt, &envelope{Version: ProtocolVersion, Kind: KindAccepted, ID: env.ID})
			}
			return
		}
		l.stats.rejected.Add(1)
		p.replyCtrl(rt, simpleResponse(env.ID, http.StatusBadRequest, "Bad Request: zmqhttp: request id already in flight"))
		return
	}
	if env.Flags&flagStreamed != 0 {
		if j.streams() {
			j.body = p.newRecvStream(env.ID, l.cfg.limits.maxStreamBytes())
		} else {
			p.mu.Unlock()
			l.stats.rejected.Add(1)
			p.replyCtrl(rt, simpleResponse(env.ID, http.StatusBadRequest, "Bad Request: zmqhttp: streamed body without the stream capability"))
			return
		}
	}
	if p.jobs == nil {
		p.jobs = make(map[jobKey]*job)
	}
	p.jobs[key] = j
	p.unread.Add(int64(j.size))
	p.mu.Unlock()
	if rt != nil && rt.caps&capAck != 0 {
		// Taken: through a device, the client has no other way to
		// know that its request reached a server (see PROTOCOL.md).
		p.replyCtrl(rt, &envelope{Version: ProtocolVersion, Kind: KindAccepted, ID: env.ID})
	}
	if !j.deadline.IsZero() {
		j.timer = time.AfterFunc(time.Until(j.deadline), j.cancel)
	}
	l.dispatch(j)
}

// maxTimeout bounds a request's Timeout field (about 292 years would
// overflow time.Duration).
const maxTimeout = 100 * 24 * time.Hour

// transitAllowance is subtracted from a caller's remaining time (at most a
// quarter of it) to allow for the request's time on the wire.
const transitAllowance = time.Millisecond

// notProcessed answers a request the Listener will not run: a client that
// understands draining gets it back as not processed, to send again
// elsewhere; a basic peer gets 503 with Retry-After.
func (p *peer) notProcessed(rt *route, id uint64, why string) {
	p.l.stats.drained.Add(1)
	// Through a device there is no DRAINING (the connection is the
	// device's): the client sends it again through the device.
	drains := rt == nil && p.has(capDrain)
	if drains && p.l.closing.Load() {
		p.mu.Lock()
		p.ensureDrainingLocked() // DRAINING first: the client sends nothing more here
		p.mu.Unlock()
	}
	if drains || (rt != nil && rt.caps&capDrain != 0) {
		p.replyCtrl(rt, errorEnvelope(id, errCodeNotProcessed, why))
		return
	}
	p.replyCtrl(rt, simpleResponse(id, 503, why, "Retry-After", strconv.Itoa(p.l.cfg.retryAfterSeconds())))
}

// cancel ends request id: a queued request is dropped before it runs; a
// running one has its connection's reads end, so the http.Server cancels
// the handler's r.Context().
func (p *peer) cancel(key jobKey) {
	p.mu.Lock()
	j := p.jobs[key]
	p.mu.Unlock()
	if j == nil {
		return // answered already, or unknown
	}
	p.l.stats.canceled.Add(1)
	j.cancel()
}

// maxUnreadPerPeer bounds the request bytes a peer may have received and
// not yet read by the server (queued, handed to a handler that has not
// read it yet): past it its next request is answered 503. It bounds how
// far the server reads ahead of its handlers for one peer (each request
// read may become a running handler holding its reply), while leaving
// room for one large request (headers up to 2 MiB by default) beside
// small ones.
const maxUnreadPerPeer = 2 << 20

// admit holds the reader goroutine while the peer's replies wait for room
// (see link.awaitRoom: a peer that does not read them is closed after the
// stall timeout), then reports whether the server takes another request
// from the peer: not while maxUnreadPerPeer bytes of its earlier requests
// wait to be read by the server. The reader never waits on the server's
// progress: what the server waits for (a CANCEL, a stream's CREDIT or
// chunks) may be right behind the request in the socket.
func (p *peer) admit() bool {
	p.awaitRoom()
	return p.unread.Load() <= maxUnreadPerPeer
}

// forget removes j from the peer's table of unanswered requests, and its
// request body stream from the link.
func (p *peer) forget(j *job) {
	key := jobKey{j.route.keyOrEmpty(), j.env.ID}
	p.mu.Lock()
	if p.jobs[key] == j {
		delete(p.jobs, key)
	}
	p.mu.Unlock()
	j.doneUnread()
	if j.body != nil {
		p.removeRecv(j.body)
	}
}

// bad answers a message that failed to decode, when its id could be read
// (see answerBad); anything else is dropped and counted.
func (p *peer) bad(_ *link, frames [][]byte, err error) {
	p.l.cfg.logWarn("zmqhttp: message refused or dropped", "addr", p.addr.String(), "err", bare(err))
	e := answerBad(err)
	if e == nil {
		p.l.stats.badMessages.Add(1)
		return
	}
	p.l.stats.rejected.Add(1)
	p.replyCtrl(routeFor(frames), e)
}

// answerBad returns the answer to a message from a client that failed to
// decode, or nil if it is to be dropped: a request the server cannot take
// gets the HTTP answer an HTTP server would give (400, 413 or 431) without
// running the handler; an unknown version or kind gets an error envelope,
// since it may not be a request at all.
func answerBad(err error) *envelope {
	var oe *oversizeError
	if errors.As(err, &oe) {
		// Over the frame limit and discarded unread: 413, if its id can
		// be read.
		ver, kind, id, ok := peekHead(oe.head)
		if !ok || ver != ProtocolVersion || kindOf(kind) != KindRequest {
			return nil
		}
		return simpleResponse(id, http.StatusRequestEntityTooLarge, "Request Entity Too Large: "+oe.Error())
	}
	var ie *idError
	var pe *ProtocolError
	errors.As(err, &pe)
	unsupported := pe != nil && (pe.Reason == reasonVersion || pe.Reason == reasonKind)
	// Answer what a client sends; never answer a response or an error
	// (a peer that did the same could loop with us forever).
	if !errors.As(err, &ie) || ie.kind == KindResponse || ie.kind == KindError ||
		(ie.kind != KindRequest && !unsupported) {
		return nil
	}
	if unsupported {
		return errorEnvelope(ie.id, errCodeUnsupported, err.Error())
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
	return simpleResponse(ie.id, status, http.StatusText(status)+": "+err.Error())
}

// popIdleLocked takes the most recently idle connection off the list.
// p.mu is held.
func (p *peer) popIdleLocked() *vconn {
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		return c
	}
	return nil
}

// addIdle lists c as waiting for this peer's next request. It refuses
// (and c should end) when the peer is gone, the Listener is closed, or
// the peer has as many waiting as the Listener has workers. Connections
// beyond maxIdlePerPeer that waited longer than idleTrim are asked to
// end, now or by trimIdle's timer.
func (p *peer) addIdle(c *vconn) bool {
	now := time.Now()
	p.mu.Lock()
	if p.gone || p.l.isClosed() || len(p.idle) >= max(maxIdlePerPeer, p.l.cfg.workersOrDefault()) {
		p.mu.Unlock()
		return false
	}
	stale := p.takeStaleLocked(maxIdlePerPeer-1, now) // room for c
	c.idleSince = now
	p.idle = append(p.idle, c)
	p.armTrimLocked(now)
	p.mu.Unlock()
	for _, sc := range stale {
		sc.reclaim()
	}
	return true
}

// armTrimLocked starts a timer that trims the idle list when it holds
// more than maxIdlePerPeer, so that the connections of a burst end once
// they waited idleTrim even if the peer sends nothing more (addIdle trims
// only as connections go idle). p.mu is held.
func (p *peer) armTrimLocked(now time.Time) {
	if p.trimArmed || p.gone || len(p.idle) <= maxIdlePerPeer {
		return
	}
	p.trimArmed = true
	wait := idleTrimFor() - now.Sub(p.idle[0].idleSince) + time.Millisecond
	time.AfterFunc(max(wait, time.Millisecond), p.trimIdle)
}

// trimIdle asks the idle connections beyond maxIdlePerPeer that waited
// longer than idleTrim to end (armTrimLocked's timer).
// takeStaleLocked takes off the idle list (oldest first; popIdleLocked
// takes the newest) the connections idle longer than idleTrimFor, while it
// holds more than keep; the caller reclaims them once p.mu is released.
func (p *peer) takeStaleLocked(keep int, now time.Time) []*vconn {
	var stale []*vconn
	for len(p.idle) > keep && now.Sub(p.idle[0].idleSince) > idleTrimFor() {
		stale = append(stale, p.idle[0])
		p.idle[0] = nil
		p.idle = p.idle[1:]
	}
	return stale
}

func (p *peer) trimIdle() {
	now := time.Now()
	p.mu.Lock()
	p.trimArmed = false
	stale := p.takeStaleLocked(maxIdlePerPeer, now)
	p.armTrimLocked(now)
	p.mu.Unlock()
	for _, sc := range stale {
		sc.reclaim()
	}
}

// removeIdle takes c off the idle list; it reports whether c was there.
// A connection not there was taken by assignIdle, which has given it a
// request already (both hold p.mu).
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

// assignIdle gives j to one of the peer's idle connections; it reports
// false if none took it.
func (p *peer) assignIdle(j *job) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := p.popIdleLocked(); c != nil; c = p.popIdleLocked() {
		if c.assign(j) {
			return true
		}
	}
	return false
}
