package zmqhttp

import (
	"bufio"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// This file is the connection type both ends share: one established ZeroMQ
// connection after its handshake, with exactly one goroutine reading it and
// one writing it. The reader decodes envelopes and acts on the
// connection-level ones (HELLO, PING, PONG, CHUNK, CREDIT) itself; the rest
// go to the linkHandler (the Transport's client side or the Listener's
// peer). The writer drains a send queue bounded in bytes: control messages
// first, then whole messages in order, then one chunk of each streamed body
// that has data and credit, in turn, so that a large body never holds up the
// others.

// Capabilities a peer announces in its HELLO (Flags field).
const (
	capHeartbeat = 1 << 0 // answers PING with PONG, sends PINGs
	capCancel    = 1 << 1 // acts on CANCEL
	capDrain     = 1 << 2 // sends DRAINING and returns unprocessed requests as not-processed errors
	capStream    = 1 << 3 // streams bodies in CHUNK envelopes with CREDIT flow control
	// capRouted, in a server's answer only: the HELLO came through a
	// device (routing frames) and was answered by one of the servers
	// behind it; the connection-level capabilities (heartbeat, drain,
	// stream) do not apply.
	capRouted = 1 << 4
	// capAck: a client takes ACCEPTED envelopes; in a routed answer, the
	// server sends one for each request it takes.
	capAck    = 1 << 5
	ourCaps   = capHeartbeat | capCancel | capDrain | capStream | capAck
	knownCaps = ourCaps | capRouted
)

// Stream parameters.
const (
	// defaultStreamWindow is the window this package grants each stream
	// it receives, unless WithStreamWindow says otherwise.
	defaultStreamWindow = 2 << 20
	// protocolWindow is the window of a peer that announced none (a HELLO
	// credit of 0), as PROTOCOL.md says.
	protocolWindow = 256 << 10
	// maxChunk bounds the body bytes of one CHUNK envelope; the writer
	// takes at most this much of one stream before turning to the next.
	maxChunk = 512 << 10
	// wholeBodyMax is the largest body sent in one message to a peer that
	// streams; larger bodies, and bodies of unknown length, are streamed.
	wholeBodyMax = 64 << 10
	// linkQueueBytes bounds the whole messages queued on one connection:
	// a sender waits for room beyond it. A single larger message is
	// admitted when the queue is empty.
	linkQueueBytes = 1 << 20
	// maxCtrlQueue bounds the control messages queued on one connection;
	// a peer that lets more pile up is not reading and is disconnected.
	maxCtrlQueue = 16384
)

// linkHandler receives what a link's reader does not handle itself. Its
// methods are called by the reader goroutine, one at a time.
type linkHandler interface {
	// handle acts on a decoded envelope of a kind other than CHUNK,
	// CREDIT, PING and PONG (HELLO included, after the link recorded it).
	// frame is the bytes env was decoded from (its strings and body
	// alias it).
	// route is the message's routing frames (see readEnvelopeFrame):
	// none from a direct peer.
	handle(l *link, env *envelope, frame []byte, route [][]byte)
	// bad is told of a message that was dropped: an *oversizeError,
	// errNotEnvelope, or an error from decodeEnvelope; route as for
	// handle, when it could be read.
	bad(l *link, route [][]byte, err error)
}

// linkConfig is what a link needs to know of its owner's settings.
type linkConfig struct {
	limits      Limits
	hbInterval  time.Duration
	hbTimeout   time.Duration
	window      int64    // the receive window per stream this side grants
	sendHello   bool     // client side facing a ROUTER: offer capabilities first
	server      bool     // answer HELLO (server side)
	offer       uint64   // the capabilities this side offers; 0 means ourCaps
	hello       []string // properties the HELLO answer carries in its Header (server side)
	noHeartbeat bool     // WithoutHeartbeats: announce no heartbeat, send no PING, never time the peer out
}

// caps is what this side announces of want: only what it offers, and no
// heartbeat if they are off.
func (c *linkConfig) caps(want uint64) uint64 {
	want &= c.offer | capRouted
	if c.noHeartbeat {
		return want &^ capHeartbeat
	}
	return want
}

// Errors that end a link.
var (
	errHeartbeatTimeout = errors.New("nothing from the peer within the heartbeat timeout")
	errDrained          = errors.New("the server is draining and every call on the connection is answered")
	errSlowPeer         = errors.New("the peer does not read what is sent to it")
	errLinkFinished     = errors.New("connection closed after its last message")
)

// link is one established connection.
type link struct {
	// Set by newLink, read-only after.
	nc         *liveConn
	br         *bufio.Reader // the reader goroutine's (which replaces it with a larger one once traffic flows)
	fw         frameWriter   // the writer goroutine's
	peerType   zmq4.SocketType
	h          linkHandler
	cfg        linkConfig
	dead       chan struct{} // closed by close
	writerDone chan struct{} // closed when the writer goroutine returns
	ready      chan struct{} // closed once the peer's capabilities are known
	wg         sync.WaitGroup

	caps       atomic.Uint64 // the peer's capabilities, from its HELLO; 0 until then
	peerWindow atomic.Int64  // the credit the peer grants each stream we send
	readyOnce  sync.Once
	once       sync.Once
	err        error // why the link died; set once, before dead is closed

	renv        envelope      // the reader goroutine's: the message being handled
	heard       atomic.Bool   // the reader has read a message
	sendWaits   atomic.Int32  // senders waiting in send for room in the queue
	reqsRead    atomic.Uint64 // written by the reader goroutine: request envelopes read
	reqsWritten uint64        // the writer goroutine's: request envelopes written
	// The writer goroutine's scratch, reused each round: buffers to give
	// back to their pools once written.
	recycle, recycleBodies [][]byte

	// mu guards the following fields, and the fields of the link's
	// sendStreams that their docs say it guards.
	mu    sync.Mutex
	wake  chan struct{} // room for one token: the writer has work
	space chan struct{} // closed and replaced when queued bytes fall, if spaceWanted
	// spaceWanted: a waiter took space (see spaceLocked), so it is
	// closed and replaced when queued bytes fall; otherwise it is left
	// as it is (no channel made per writer round).
	spaceWanted bool
	ctrl        []outMsg      // control messages, written first
	msgs        []outMsg      // whole messages, in order
	queued      int64         // bytes in msgs
	active      []*sendStream // streams with something to send, in turn
	sends       map[uint64]*sendStream
	recvs       map[uint64]*recvStream
	fin         bool // write what is queued, then close
	copyBlocks  int  // sendBlocks held by the link's streams (copied writes not yet written)
	// earlyCancels: until ready is closed (under mu, by markReady),
	// cancel keeps the ids it is given here (at most maxEarlyCancels),
	// sent by markReady if the peer then turns out to act on CANCEL.
	earlyCancels []uint64
}

// maxEarlyCancels bounds the CANCELs a link keeps for a peer whose HELLO
// answer has not come yet (one per call given up on meanwhile).
const maxEarlyCancels = 4096

// outMsg is one queued message.
type outMsg struct {
	b          []byte         // an encoded envelope, or a PONG's context
	body       []byte         // if not nil, b was encoded with a nil body and this goes in its place
	pooledBody bool           // body goes back to the body pool once written
	pong       bool           // b is the context of a ZMTP PONG command
	reqNum     *atomic.Uint64 // a request: set to its number among the requests written on the link
	pooled     bool           // b goes back to the buffer pool once written
	route      [][]byte       // routing frames written before the delimiter: the request's, in a reply through a device
}

func newLink(nc *liveConn, br *bufio.Reader, peerType zmq4.SocketType, h linkHandler, cfg linkConfig) *link {
	if cfg.window <= 0 {
		cfg.window = defaultStreamWindow
	}
	if cfg.offer == 0 {
		cfg.offer = ourCaps
	}
	l := &link{
		nc:         nc,
		br:         br,
		peerType:   peerType,
		h:          h,
		cfg:        cfg,
		dead:       make(chan struct{}),
		writerDone: make(chan struct{}),
		ready:      make(chan struct{}),
		wake:       make(chan struct{}, 1),
		space:      make(chan struct{}),
		sends:      make(map[uint64]*sendStream),
		recvs:      make(map[uint64]*recvStream),
	}
	l.fw.nc = nc
	l.peerWindow.Store(protocolWindow)
	if !cfg.sendHello {
		l.markReady() // a REP peer, or the server side: nothing to wait for
	}
	return l
}

// start runs the reader and the writer.
func (l *link) start() {
	l.wg.Add(2)
	go l.readLoop()
	go l.writeLoop()
}

// wait waits for both goroutines to end (after close).
func (l *link) wait() { l.wg.Wait() }

// markReady records that the peer's capabilities are known (caps is set
// first) and sends the CANCELs asked for before, if the peer acts on them.
func (l *link) markReady() {
	l.readyOnce.Do(func() {
		l.mu.Lock()
		close(l.ready)
		early := l.earlyCancels
		l.earlyCancels = nil
		l.mu.Unlock()
		if l.has(capCancel) {
			for _, id := range early {
				l.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindCancel, ID: id})
			}
		}
	})
}

func (l *link) has(capability uint64) bool { return l.caps.Load()&capability != 0 }

func (l *link) isDead() bool { return isClosed(l.dead) }

// isClosed reports whether ch, which is only ever closed, is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// close ends the link: the connection is closed, every stream on it fails
// with err and senders waiting for room return.
func (l *link) close(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.dead)
		l.nc.Close()
		l.markReady()
		l.mu.Lock()
		sends, recvs := l.sends, l.recvs
		l.sends, l.recvs = map[uint64]*sendStream{}, map[uint64]*recvStream{}
		l.ctrl, l.msgs, l.active, l.queued = nil, nil, nil, 0
		for _, s := range sends {
			s.failLocked(errLinkLost)
		}
		close(l.space)
		l.space = make(chan struct{})
		l.mu.Unlock()
		for _, r := range recvs {
			r.fail(errLinkLost)
		}
	})
}

// errLinkLost fails the streams of a link that broke.
var errLinkLost = errors.New("zmqhttp: connection lost in the middle of a streamed body")

func (l *link) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// sendCtrl encodes e and queues it ahead of whole messages and streams.
// It never waits; a peer that lets maxCtrlQueue control messages pile up
// is disconnected.
func (l *link) sendCtrl(e *envelope) {
	b, err := appendEnvelope(getBuf(), e)
	if err != nil {
		return
	}
	l.queueCtrl(outMsg{b: b, pooled: true})
}

func (l *link) queueCtrl(m outMsg) {
	l.mu.Lock()
	if l.isDead() {
		l.mu.Unlock()
		return
	}
	if len(l.ctrl) >= maxCtrlQueue {
		l.mu.Unlock()
		l.close(errSlowPeer)
		return
	}
	l.ctrl = append(l.ctrl, m)
	l.mu.Unlock()
	l.signal()
}

// send queues a whole message, waiting while the queue holds
// linkQueueBytes or more, until stop is closed (then it returns errStop)
// or the link dies. With stop nil it does not wait: the Transport's
// resends (from its reader or connection loop, which must not block) and
// the calls that waited for a connection go in at once; their callers hold
// their memory anyway. With stall > 0, a queue that makes no progress for
// that long means the peer does not read: the link is closed
// (errSlowPeer), so that a client that stops reading holds no handler.
func (l *link) send(m outMsg, stop <-chan struct{}, stall time.Duration) error {
	l.mu.Lock()
	var timer *time.Timer
	for stop != nil && l.queued > 0 && l.queued+int64(len(m.b)+len(m.body)) > linkQueueBytes {
		space := l.spaceLocked()
		l.mu.Unlock()
		var stalled <-chan time.Time
		if stall > 0 {
			if timer == nil {
				timer = time.NewTimer(stall)
				defer timer.Stop()
			} else {
				timer.Reset(stall)
			}
			stalled = timer.C
		}
		var err error
		l.sendWaits.Add(1)
		select {
		case <-space:
		case <-stop:
			err = errStop
		case <-l.dead:
			err = l.err
		case <-stalled:
			err = errSlowPeer
			l.close(errSlowPeer)
		}
		l.sendWaits.Add(-1)
		if err != nil {
			return err
		}
		l.mu.Lock()
	}
	if l.isDead() {
		l.mu.Unlock()
		return l.err
	}
	l.msgs = append(l.msgs, m)
	l.queued += int64(len(m.b) + len(m.body))
	l.mu.Unlock()
	l.signal()
	return nil
}

// sendOrDrop queues a whole message without waiting, unless the queue
// already holds max bytes or more: then the peer, which does not read,
// is disconnected (errSlowPeer). For a sender that must not block (the
// proxy's replies to a client).
func (l *link) sendOrDrop(m outMsg, max int64) error {
	l.mu.Lock()
	over := l.queued > 0 && l.queued+int64(len(m.b)+len(m.body)) > max
	l.mu.Unlock()
	if over {
		l.close(errSlowPeer)
		return errSlowPeer
	}
	return l.send(m, nil, 0)
}

// awaitRoom holds the reader goroutine while senders wait for room in the
// queue (server side: replies the peer does not read as fast as it sends
// requests), until they get it or the link dies (a queue that makes no
// progress closes it, see send). The peer's requests then stay in its
// socket, as over a TCP connection whose server is busy, rather than in
// memory: a peer that never reads holds the replies that fill its queue
// and the handlers waiting to add theirs, no more.
func (l *link) awaitRoom() {
	for l.sendWaits.Load() > 0 {
		l.mu.Lock()
		space := l.spaceLocked()
		l.mu.Unlock()
		select {
		case <-space:
		case <-l.dead:
			return
		}
	}
}

// spaceLocked returns the channel closed when queued bytes next fall, for
// a waiter. l.mu is held.
func (l *link) spaceLocked() chan struct{} {
	l.spaceWanted = true
	return l.space
}

// errStop is returned by a wait that its stop channel ended.
var errStop = errors.New("stopped")

// finish asks the writer to write what is queued, then close the link.
func (l *link) finish() {
	l.mu.Lock()
	l.fin = true
	l.mu.Unlock()
	l.signal()
}

// writeItem is what one writer round took from the queue.
type writeItem struct {
	m      outMsg
	s      *sendStream // a stream's head and/or chunk
	head   []byte
	reqNum *atomic.Uint64
	data   [][]byte // the chunk's body, in the producer's pieces
	n      int      // its length
	seq    uint64
	chunk  bool // a CHUNK envelope is due (data, possibly empty, with last)
	last   bool
	trl    []string
}

func (l *link) writeLoop() {
	defer l.wg.Done()
	defer close(l.writerDone)
	ticker := time.NewTicker(l.cfg.hbInterval)
	defer ticker.Stop()
	if l.cfg.sendHello {
		hello := envelope{Version: ProtocolVersion, Kind: KindHello, Flags: l.cfg.caps(ourCaps),
			Timeout: int64(l.cfg.hbInterval / time.Microsecond), Credit: uint64(l.cfg.window)}
		b, _ := appendEnvelope(nil, &hello)
		l.fw.envelopeMsg(b)
		if err := l.fw.flush(); err != nil {
			l.close(err)
			return
		}
	}
	var items []writeItem
	var pingSeq uint64
	for {
		l.mu.Lock()
		for len(l.ctrl) == 0 && len(l.msgs) == 0 && len(l.active) == 0 && !l.fin {
			l.mu.Unlock()
			select {
			case <-l.wake:
			case <-ticker.C:
				// A dead peer is noticed by the read deadline (see
				// liveConn); the PING keeps a live one from seeing us
				// silent.
				if l.has(capHeartbeat) && !l.cfg.noHeartbeat {
					pingSeq++
					l.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindPing, ID: pingSeq})
				}
			case <-l.dead:
				return
			}
			l.mu.Lock()
		}
		if l.isDead() {
			l.mu.Unlock()
			return
		}
		items = l.takeLocked(items[:0])
		fin := l.fin && len(l.ctrl) == 0 && len(l.msgs) == 0 && len(l.active) == 0
		l.mu.Unlock()
		err := l.writeItems(items)
		clear(items)
		if err != nil {
			if isTimeout(err) {
				err = errHeartbeatTimeout
			}
			l.close(err)
			return
		}
		if fin {
			l.close(errLinkFinished)
			return
		}
	}
}

// takeLocked takes one round of work: every control message, whole
// messages up to linkQueueBytes, and one piece of each active stream.
// l.mu is held.
func (l *link) takeLocked(items []writeItem) []writeItem {
	for _, m := range l.ctrl {
		items = append(items, writeItem{m: m})
	}
	clear(l.ctrl)
	l.ctrl = l.ctrl[:0]
	var took int64
	n := 0
	for n < len(l.msgs) && (n == 0 || took+int64(len(l.msgs[n].b)+len(l.msgs[n].body)) <= linkQueueBytes) {
		items = append(items, writeItem{m: l.msgs[n]})
		took += int64(len(l.msgs[n].b) + len(l.msgs[n].body))
		n++
	}
	if n > 0 {
		clear(l.msgs[:n])
		if n < len(l.msgs) {
			l.msgs = l.msgs[n:]
		} else if l.msgs = l.msgs[:0]; cap(l.msgs) > 1024 {
			// Emptied: its backing array serves again, unless a burst
			// made it large.
			l.msgs = nil
		}
		l.queued -= took
		if l.spaceWanted {
			close(l.space)
			l.space = make(chan struct{})
			l.spaceWanted = false
		}
	}
	turn := len(l.active)
	for i := 0; i < turn; i++ {
		s := l.active[0]
		l.active = l.active[1:]
		items = append(items, s.takeLocked())
		if s.hasWorkLocked() {
			l.active = append(l.active, s)
		} else {
			s.isActive = false
		}
	}
	if len(l.active) == 0 {
		l.active = nil
	}
	return items
}

// writeItems writes one round with one vectored write (or a few, for a
// large round). Buffers go back to the pool once written.
func (l *link) writeItems(items []writeItem) error {
	w := &l.fw
	recycle, recycleBodies := l.recycle[:0], l.recycleBodies[:0]
	defer func() {
		clear(recycle)
		clear(recycleBodies)
		l.recycle, l.recycleBodies = recycle[:0], recycleBodies[:0]
	}()
	done := 0 // items before this one are written once flush returns
	flush := func(upto int) error {
		err := w.flush()
		for _, b := range recycle {
			putBuf(b)
		}
		clear(recycle)
		recycle = recycle[:0]
		if err == nil {
			for _, b := range recycleBodies {
				wholeBodies.put(b)
			}
		}
		clear(recycleBodies)
		recycleBodies = recycleBodies[:0]
		if err == nil {
			// The producers may have their bytes back.
			l.mu.Lock()
			for _, it := range items[done:upto] {
				if it.s != nil && it.n > 0 {
					it.s.wroteLocked(it.n)
				}
			}
			l.mu.Unlock()
			done = upto
		}
		return err
	}
	for i := range items {
		it := &items[i]
		switch {
		case it.s != nil:
			if it.head != nil {
				w.envelopeMsg(it.head)
				l.countRequest(it.reqNum)
				recycle = append(recycle, it.head)
			}
			if it.chunk {
				e := envelope{Version: ProtocolVersion, Kind: KindChunk, ID: it.s.id, Seq: it.seq, Trailer: it.trl}
				if it.last {
					e.Flags = flagLast
				}
				b, err := appendEnvelope(getBuf(), &e)
				if err != nil {
					return err
				}
				w.frame(flagMore, nil)
				w.splice(b, it.data, it.n)
				recycle = append(recycle, b)
			}
		case it.m.pong:
			w.command("PONG", it.m.b)
		default:
			for _, r := range it.m.route {
				w.frame(flagMore, r)
			}
			if it.m.body != nil {
				w.frame(flagMore, nil)
				w.splice(it.m.b, [][]byte{it.m.body}, len(it.m.body))
			} else {
				w.envelopeMsg(it.m.b)
			}
			l.countRequest(it.m.reqNum)
			if it.m.pooled {
				recycle = append(recycle, it.m.b)
			}
			if it.m.pooledBody {
				recycleBodies = append(recycleBodies, it.m.body)
			}
		}
		if w.n >= 4<<20 {
			if err := flush(i + 1); err != nil {
				return err
			}
		}
	}
	return flush(len(items))
}

// splice adds an envelope frame: env, encoded with a nil body, with the n
// bytes of body (in pieces) in the body's place, referenced, not copied.
func (w *frameWriter) splice(env []byte, body [][]byte, n int) {
	at := bodyOffset(env)
	var bin [5]byte
	hdr := appendBinHeader(bin[:0], n)
	w.header(0, len(env)-1+len(hdr)+n)
	w.copy(env[:at])
	w.copy(hdr)
	for _, d := range body {
		w.ref(d)
	}
	w.copy(env[at+1:])
}

// bodyOffset returns the offset of the body field (index 8) in an
// envelope encoded with a nil body (one byte, c0).
func bodyOffset(b []byte) int {
	p := 3 // dc 00 10: an array of 16
	for i := 0; i < 8; i++ {
		n, _ := walk(b[p:], 1, 1<<30)
		p += n
	}
	return p
}

// appendBinHeader appends the msgpack bin header for n bytes.
func appendBinHeader(dst []byte, n int) []byte {
	switch {
	case n < 1<<8:
		return append(dst, 0xc4, byte(n))
	case n < 1<<16:
		return append(dst, 0xc5, byte(n>>8), byte(n))
	}
	return append(dst, 0xc6, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// countRequest numbers a request just written, for DRAINING's watermark.
func (l *link) countRequest(seq *atomic.Uint64) {
	if seq != nil {
		l.reqsWritten++
		seq.Store(l.reqsWritten)
	}
}

// readLoop reads messages until the connection ends.
func (l *link) readLoop() {
	defer l.wg.Done()
	// Chunks are at most maxChunk bytes whatever the body limit; a whole
	// body over the limit is still refused by decodeEnvelope.
	maxFrame := max(l.cfg.limits.maxFrameBytes(), maxChunk+4096)
	pong := func(ctx []byte) {
		if len(ctx) > 16 { // RFC 37: a PING's context is at most 16 bytes
			ctx = ctx[:16]
		}
		l.queueCtrl(outMsg{pong: true, b: append([]byte(nil), ctx...)})
	}
	// A client fails the call an oversized reply belongs to as soon as
	// the reply's head is read, not once the rest of it has been read and
	// discarded (a server could announce a large frame and send nothing).
	var early func(*oversizeError)
	var earlyDone bool // early reported the oversized message being discarded
	if !l.cfg.server {
		early = func(oe *oversizeError) {
			l.h.bad(l, nil, oe)
			earlyDone = true
		}
	}
	var frames [][]byte
	busy, grown := false, false // messages other than HELLO, PING, PONG came; l.br has busyReadBufSize
	for {
		if busy && !grown && l.br.Buffered() == 0 {
			// Traffic flows: a larger buffer from now on. Idle peers
			// (HELLO and heartbeats only) keep the handshake's small one.
			l.br = bufio.NewReaderSize(l.nc, busyReadBufSize)
			grown = true
		}
		earlyDone = false
		frame, route, fs, err := readEnvelopeFrame(l.br, maxFrame, frames, pong, early)
		frames = fs
		if len(route) > 0 && !l.cfg.server {
			// Replies come straight from the server: dropped, whatever
			// else is wrong with it.
			var oe *oversizeError
			if err == nil || errors.As(err, &oe) {
				err = errNotEnvelope
			}
			route = nil
		}
		if err != nil {
			if l.readFailed(err, route, earlyDone) {
				return
			}
			continue
		}
		// One envelope per link, reused: handlers copy what they keep
		// (so none is allocated per message).
		env := &l.renv
		*env = envelope{}
		if err := decodeEnvelope(frame, l.cfg.limits, env); err != nil {
			l.badEnvelope(err, route)
			continue
		}
		if env.Kind == KindRequest {
			l.reqsRead.Add(1)
		}
		if env.Kind != KindHello && env.Kind != KindPing && env.Kind != KindPong {
			busy = true
		}
		if route != nil {
			l.routed(env, frame, route)
			continue
		}
		switch env.Kind {
		case KindChunk:
			l.recvChunk(env, frame)
		case KindCredit:
			l.addCredit(env.ID, env.Credit)
		case KindPing:
			l.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindPong, ID: env.ID})
		case KindPong:
			// Its arrival already counted as a sign of life.
		case KindHello:
			l.gotHello(env)
			l.h.handle(l, env, frame, nil)
		default:
			l.h.handle(l, env, frame, nil)
		}
		if !l.heard.Load() {
			l.heard.Store(true) // after HELLO's capabilities are recorded
		}
	}
}

// routed acts on a message that came through a device (server side). The
// connection's own messages (HELLO, PING, CHUNK, CREDIT) mean nothing for
// one route: a PING is answered on its route, HELLO goes to the handler
// (which answers it for that route only), and chunks and credit are dropped
// (no stream is ever opened through a route).
func (l *link) routed(env *envelope, frame []byte, route [][]byte) {
	switch env.Kind {
	case KindPing:
		b, err := appendEnvelope(getBuf(), &envelope{Version: ProtocolVersion, Kind: KindPong, ID: env.ID})
		if err == nil {
			l.queueCtrl(outMsg{b: b, pooled: true, route: route})
		}
	case KindPong:
	case KindChunk, KindCredit:
		l.h.bad(l, route, errUnknownStream)
	default:
		l.h.handle(l, env, frame, route)
	}
}

// readFailed handles an error from reading a message: a message dropped
// (over the size limit, or not an envelope) is reported to the handler
// (unless reported already) and the reader goes on; anything else ends
// the link, and readFailed reports true.
func (l *link) readFailed(err error, route [][]byte, reported bool) bool {
	var oe *oversizeError
	switch {
	case errors.As(err, &oe):
		var kind Kind // 0: unknown
		_, k, id, ok := peekHead(oe.head)
		if ok {
			kind = kindOf(k)
		}
		// reported: the handler was told as its head arrived.
		l.dropped(kind, id, route, err, !reported)
		return false
	case err == errNotEnvelope:
		l.h.bad(l, route, err)
		return false
	case isTimeout(err):
		l.close(errHeartbeatTimeout)
	default:
		l.close(err)
	}
	return true
}

// badEnvelope reports a message that did not decode to the handler.
func (l *link) badEnvelope(err error, route [][]byte) {
	var kind Kind // 0: unknown
	var id uint64
	if ie := (*idError)(nil); errors.As(err, &ie) {
		kind, id = ie.kind, ie.id
	}
	l.dropped(kind, id, route, err, true)
}

// dropped accounts for a message of the given kind (0 if unknown) that
// was dropped: a request still counts for DRAINING's watermark, a chunk
// fails its stream; the handler is told if report.
func (l *link) dropped(kind Kind, id uint64, route [][]byte, err error, report bool) {
	switch {
	case kind == KindRequest:
		l.reqsRead.Add(1)
	case kind == KindChunk && route == nil:
		l.failRecv(id, err)
	}
	if report {
		l.h.bad(l, route, err)
	}
}

// testHookClientHello, if set, runs when a client link's reader is about
// to take the server's HELLO answer.
var testHookClientHello atomic.Pointer[func()]

// gotHello records the peer's capabilities and window; the server side
// answers with its own.
func (l *link) gotHello(env *envelope) {
	if hook := testHookClientHello.Load(); hook != nil && !l.cfg.server {
		(*hook)()
	}
	caps := env.Flags & (l.cfg.offer | capRouted) // what both sides offer (and whether it came through a device)
	l.caps.Store(caps)
	if env.Credit > 0 {
		l.peerWindow.Store(int64(min(env.Credit, 1<<30)))
	}
	if caps&capHeartbeat != 0 && !l.cfg.noHeartbeat {
		// The peer sends something at least every interval: a read or
		// a write that makes no progress for the timeout means it is
		// dead or stuck.
		l.nc.arm(l.cfg.hbTimeout)
	}
	if l.cfg.server {
		l.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindHello, ID: env.ID, Flags: l.cfg.caps(ourCaps &^ capAck),
			Timeout: int64(l.cfg.hbInterval / time.Microsecond), Credit: uint64(l.cfg.window), Header: l.cfg.hello})
	}
	l.markReady()
}

// recvChunk hands a CHUNK to its stream; one for no stream (cancelled,
// answered) is dropped.
func (l *link) recvChunk(env *envelope, frame []byte) {
	l.mu.Lock()
	r := l.recvs[env.ID]
	l.mu.Unlock()
	if r == nil {
		l.h.bad(l, nil, errUnknownStream)
		return
	}
	if err := r.push(env, frame); err != nil {
		// Over its window or out of order: the stream is broken, the
		// connection and the other streams are not.
		l.removeRecv(r)
		r.fail(err)
		l.h.bad(l, nil, err)
		return
	}
	if env.Flags&flagLast != 0 {
		l.removeRecv(r)
	}
}

// cancel tells the server that the caller gave up on request id, if it
// acts on CANCEL (client side). Before the server's HELLO answer says
// whether it does, the id is kept and the CANCEL sent once it has come:
// the first requests on a new connection are written before that answer.
func (l *link) cancel(id uint64) {
	l.mu.Lock()
	if !isClosed(l.ready) {
		if len(l.earlyCancels) < maxEarlyCancels {
			l.earlyCancels = append(l.earlyCancels, id)
		}
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	if l.has(capCancel) {
		l.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindCancel, ID: id})
	}
}

// errUnknownStream counts a CHUNK or CREDIT for no stream.
var errUnknownStream = errors.New("zmqhttp: chunk or credit for no open stream")

func (l *link) addCredit(id uint64, n uint64) {
	l.mu.Lock()
	s := l.sends[id]
	if s != nil {
		s.credit += int64(min(n, 1<<40))
		s.activateLocked()
	}
	l.mu.Unlock()
	if s != nil {
		l.signal()
	}
}

// newSendStream opens the sending half of a streamed body for id. head is
// the encoded head envelope (flagStreamed set), written before any chunk;
// reqNum, if not nil, is set to the head's request number when written.
func (l *link) newSendStream(id uint64, head []byte, reqNum *atomic.Uint64) (*sendStream, error) {
	s := &sendStream{l: l, id: id, head: head, reqNum: reqNum, credit: l.peerWindow.Load(),
		space: make(chan struct{}, 1)}
	l.mu.Lock()
	if l.isDead() {
		l.mu.Unlock()
		return nil, l.err
	}
	if old := l.sends[id]; old != nil {
		old.failLocked(errStreamReplaced)
	}
	l.sends[id] = s
	s.activateLocked()
	l.mu.Unlock()
	l.signal()
	return s, nil
}

var errStreamReplaced = errors.New("zmqhttp: stream replaced by another with the same id")

// newRecvStream opens the receiving half of a streamed body for id. limit
// bounds its bytes (0: none).
func (l *link) newRecvStream(id uint64, limit int64) *recvStream {
	r := &recvStream{l: l, id: id, window: l.cfg.window, limit: limit, notify: make(chan struct{}, 1)}
	l.mu.Lock()
	if l.isDead() {
		l.mu.Unlock()
		r.fail(errLinkLost)
		return r
	}
	old := l.recvs[id]
	l.recvs[id] = r
	l.mu.Unlock()
	if old != nil {
		old.fail(errStreamReplaced)
	}
	return r
}

// failRecv fails the receiving stream id, if open.
func (l *link) failRecv(id uint64, err error) {
	l.mu.Lock()
	r := l.recvs[id]
	delete(l.recvs, id)
	l.mu.Unlock()
	if r != nil {
		r.fail(err)
	}
}

func (l *link) removeRecv(r *recvStream) {
	l.mu.Lock()
	if l.recvs[r.id] == r {
		delete(l.recvs, r.id)
	}
	l.mu.Unlock()
}

// writeEnvelopeMsg writes one REQ/REP-style message: an empty delimiter
// frame, then the envelope frame.
func writeEnvelopeMsg(w *bufio.Writer, env []byte) error {
	if err := writeFrame(w, nil, true); err != nil {
		return err
	}
	return writeFrame(w, env, false)
}
