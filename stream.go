package zmqhttp

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds the two halves of a streamed body (PROTOCOL.md 4.6). The
// sender's bytes wait in its sendStream until the link's writer takes them,
// a chunk at a time and only as far as the receiver's credit allows; the
// receiver's recvStream holds at most its window and grants credit back as
// its reader consumes. So a stream's memory is bounded on both sides, and a
// reader that stops reading stops only its own stream.

// sendStream is the sending half of a streamed body. Its producer (a
// caller's upload goroutine, or a handler's writes) calls write, drain,
// finish and abort; the link's writer takes from it. A large write's bytes
// are not copied: write hands them over and returns once the writer has
// written them to the connection. A small one (copyWriteMax or less: an
// io.Copy's 32 KiB, an event) is copied into the stream's blocks and
// write returns at once, unless sendBufMax copied bytes are still
// unwritten, as a TCP write returns once its bytes are in the socket's
// send buffer: a producer of small writes does not wait for the writer
// goroutine at every write, and the writer sends them in larger chunks.
type sendStream struct {
	// Set by newSendStream, read-only after.
	l     *link
	id    uint64
	space chan struct{} // room for one token: bytes were written, or the stream ended

	// Guarded by l.mu.
	head     []byte         // the encoded head envelope, until written
	reqNum   *atomic.Uint64 // set to the head's request number when written
	pieces   [][]byte       // the producer's bytes not yet taken
	pending  int            // bytes in pieces
	handed   int64          // bytes the producer handed over, in all
	taken    int64          // bytes the writer took
	written  int64          // bytes the writer has written to the connection
	waitEnd  int64          // the producer's write waits until written reaches this
	waiters  int            // goroutines in await: the handler's Write and vconn.Close's drain may wait at once
	blocks   []sendBlock    // the blocks small writes are copied into, oldest first; the last may have room
	credit   int64          // bytes the receiver allows beyond what was taken
	seq      uint64         // chunks taken
	closed   bool           // the producer is done: the last chunk follows
	trailer  []string       // sent with the last chunk
	lastSent bool
	err      error // the stream failed or was abandoned
	isActive bool  // in l.active
}

// Copied writes (see sendStream).
const (
	// copyWriteMax is the largest write that is copied: io.Copy's
	// 32 KiB. (Copying a larger one costs about what waiting for the
	// writer does.)
	copyWriteMax = 32 << 10
	// sendBufMax bounds the copied bytes of a stream not yet written: a
	// write waits beyond it.
	sendBufMax = 256 << 10
	// maxLinkCopyBlocks bounds the blocks of copied bytes all the
	// streams of one connection hold (4 MiB): past it a small write is
	// referenced and waits, as a large one does, so that a peer that
	// grants no credit to many running handlers holds no more than their
	// own buffers.
	maxLinkCopyBlocks = 64
)

// sendBlock is a buffer from wholeBodies that small writes are copied
// into; it goes back to the pool once its bytes are written.
type sendBlock struct {
	b   []byte // the copied bytes (its capacity is the block's)
	end int64  // the stream offset (in handed bytes) its last byte ends at
}

// copyLocked copies p into the stream's blocks and queues the copies.
// l.mu is held.
func (s *sendStream) copyLocked(p []byte) {
	for len(p) > 0 {
		n := len(s.blocks)
		if n == 0 || len(s.blocks[n-1].b) == cap(s.blocks[n-1].b) {
			s.blocks = append(s.blocks, sendBlock{b: wholeBodies.get()[:0]})
			s.l.copyBlocks++
			n++
		}
		blk := &s.blocks[n-1]
		at := len(blk.b)
		m := min(len(p), cap(blk.b)-at)
		blk.b = append(blk.b, p[:m]...) // within its capacity: bytes the writer may be reading do not move
		s.pieces = append(s.pieces, blk.b[at:at+m:at+m])
		s.pending += m
		s.handed += int64(m)
		blk.end = s.handed
		p = p[m:]
	}
}

func (s *sendStream) hasWorkLocked() bool {
	if s.err != nil || s.lastSent {
		return false
	}
	return s.head != nil || (s.pending > 0 && s.credit > 0) || (s.closed && s.pending == 0)
}

func (s *sendStream) activateLocked() {
	if !s.isActive && s.hasWorkLocked() {
		s.isActive = true
		s.l.active = append(s.l.active, s)
	}
}

// takeLocked takes the head (if not yet written) and one chunk, as far as
// credit allows. l.mu is held.
func (s *sendStream) takeLocked() writeItem {
	it := writeItem{s: s, head: s.head, reqNum: s.reqNum}
	s.head, s.reqNum = nil, nil
	n := min(s.pending, maxChunk, int(max(s.credit, 0)))
	if n == 0 && !(s.closed && s.pending == 0) {
		return it
	}
	it.chunk = true
	for left := n; left > 0; {
		p := s.pieces[0]
		if len(p) <= left {
			it.data = append(it.data, p)
			left -= len(p)
			s.pieces[0] = nil
			s.pieces = s.pieces[1:]
			continue
		}
		it.data = append(it.data, p[:left:left])
		s.pieces[0] = p[left:]
		left = 0
	}
	if len(s.pieces) == 0 {
		s.pieces = nil
	}
	it.n = n
	s.pending -= n
	s.taken += int64(n)
	s.credit -= int64(n)
	s.seq++
	it.seq = s.seq
	if s.closed && s.pending == 0 {
		it.last, it.trl = true, s.trailer
		s.lastSent = true
		delete(s.l.sends, s.id)
	}
	return it
}

// wroteLocked records that the writer has written n more bytes of the
// stream. The producer is woken once its write is all written (a 16 MiB
// write goes out in many chunks: one wake-up, not one per chunk), or at
// once after a failure (it waits for the writer to let go of its bytes).
// l.mu is held.
func (s *sendStream) wroteLocked(n int) {
	s.written += int64(n)
	for len(s.blocks) > 0 && s.blocks[0].end <= s.written {
		// Written: nothing refers to the block any more.
		wholeBodies.put(s.blocks[0].b)
		s.l.copyBlocks--
		s.blocks[0] = sendBlock{}
		s.blocks = s.blocks[1:]
	}
	if len(s.blocks) == 0 {
		s.blocks = nil
	}
	if s.written >= s.waitEnd || s.err != nil {
		s.wake()
	}
}

func (s *sendStream) wake() {
	select {
	case s.space <- struct{}{}:
	default:
	}
}

// write hands p to the writer: a large p is referenced, and write waits
// until it is written; a small one is copied, and write waits only while
// more than sendBufMax copied bytes are unwritten. It also returns when
// stop is closed or the deadline (if not zero) passes (errStop: the
// stream fails), or when the stream fails. It never returns while the
// writer may still read p.
func (s *sendStream) write(p []byte, stop <-chan struct{}, deadline time.Time) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.l.mu.Lock()
	switch {
	case s.err != nil:
		err := s.err
		s.l.mu.Unlock()
		return 0, err
	case s.closed:
		s.l.mu.Unlock()
		return 0, errors.New("zmqhttp: write after the end of a streamed body")
	}
	start := s.handed
	copied := len(p) <= copyWriteMax && s.l.copyBlocks < maxLinkCopyBlocks
	var target int64 // write returns once written reaches it
	if copied {
		s.copyLocked(p)
		target = s.handed - sendBufMax
	} else {
		s.pieces = append(s.pieces, p)
		s.pending += len(p)
		s.handed += int64(len(p))
		target = s.handed
	}
	s.waitEnd = target
	s.activateLocked()
	done := s.written >= target
	s.l.mu.Unlock()
	s.l.signal()
	if done {
		return len(p), nil
	}
	return s.await(start, target, len(p), !copied, stop, deadline)
}

// drain waits until every byte written so far is written to the
// connection, as write does (stop and deadline alike): what a finished
// handler hands over is sent before its worker is free again.
func (s *sendStream) drain(stop <-chan struct{}, deadline time.Time) error {
	s.l.mu.Lock()
	target := s.handed
	s.waitEnd = target
	done, err := s.written >= target, s.err
	s.l.mu.Unlock()
	switch {
	case err != nil:
		return err
	case done:
		return nil
	}
	_, err = s.await(target, target, 0, false, stop, deadline)
	return err
}

// await waits until the writer has written the stream up to target, for
// a write of size bytes that started at offset start (ref: the writer
// references them, so a failed write waits until it lets go of them). It
// returns size, or on failure how many of them were written and the
// error.
func (s *sendStream) await(start, target int64, size int, ref bool, stop <-chan struct{}, deadline time.Time) (int, error) {
	// space holds one token, and the writer sends one when the last
	// write's bytes are written: a waiter that leaves passes it on to
	// any other (http.Server.Close closes a connection, whose drain
	// waits, while its handler waits in a Write).
	s.l.mu.Lock()
	s.waiters++
	s.l.mu.Unlock()
	defer func() {
		s.l.mu.Lock()
		if s.waiters--; s.waiters > 0 {
			s.wake()
		}
		s.l.mu.Unlock()
	}()
	var expired <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		expired = t.C
	}
	for {
		s.l.mu.Lock()
		if s.written >= target {
			s.l.mu.Unlock()
			return size, nil
		}
		err := s.err
		if err == nil && s.l.isDead() {
			// A stream whose last chunk was taken left l.sends, so the
			// link's close did not fail it: its unwritten bytes never
			// will be.
			err = errLinkLost
		}
		if err != nil {
			// Failed: what was not taken is dropped; what was taken may
			// be in the writer's hands until it has written it.
			busy := ref && s.written < s.taken
			n := int(min(max(s.written-start, 0), int64(size)))
			s.l.mu.Unlock()
			if !busy {
				return n, err
			}
			select {
			case <-s.space:
			case <-s.l.writerDone:
				return n, err
			}
			continue
		}
		s.l.mu.Unlock()
		select {
		case <-s.space:
		case <-stop:
			// (An abort after the last chunk was taken does nothing: the
			// write then waits for its bytes, without spinning on stop.)
			s.abort(errStop)
			stop = nil
		case <-expired:
			s.abort(errStop)
			expired = nil
		case <-s.l.dead:
			// close has failed every stream: the next turn returns.
		}
	}
}

// finish ends the body: a last chunk, carrying trailer, follows what was
// written.
func (s *sendStream) finish(trailer []string) {
	s.l.mu.Lock()
	if s.err == nil && !s.closed {
		s.closed, s.trailer = true, trailer
		s.activateLocked()
	}
	s.l.mu.Unlock()
	s.l.signal()
}

// abort drops the stream: nothing more of it is sent, and a producer
// waiting in write returns err.
func (s *sendStream) abort(err error) {
	s.l.mu.Lock()
	s.failLocked(err)
	s.l.mu.Unlock()
}

func (s *sendStream) failLocked(err error) {
	if s.err != nil || s.lastSent {
		return
	}
	s.err = err
	s.pieces, s.pending, s.head = nil, 0, nil
	s.l.copyBlocks -= len(s.blocks)
	s.blocks = nil // the writer may still read some: left to the garbage collector
	if s.l.sends[s.id] == s {
		delete(s.l.sends, s.id)
	}
	s.wake()
}

// recvStream is the receiving half of a streamed body. The link's reader
// pushes chunks; one consumer reads them.
type recvStream struct {
	// Set by newRecvStream, read-only after.
	l      *link
	id     uint64
	window int64         // credit granted and not yet used, at most
	limit  int64         // bound on the whole body; 0: none
	notify chan struct{} // room for one token: something arrived or the stream ended

	// mu guards the following fields.
	mu       sync.Mutex
	pieces   []piece // received, not yet read
	buffered int64   // bytes in pieces
	seq      uint64  // last chunk number received
	total    int64   // body bytes received
	done     bool    // the last chunk arrived
	trailer  []string
	err      error // the stream failed
	unacked  int64 // bytes read and not yet granted back
}

// push adds a CHUNK's data. It fails the stream when the sender overran
// its credit, skipped a number, or passed the body limit.
func (r *recvStream) push(env *envelope, frame []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.done || r.err != nil:
		return nil
	case env.Seq != r.seq+1:
		return protoErr(reasonMalformed, "chunk %d of stream %d after chunk %d", env.Seq, r.id, r.seq)
	case r.buffered+int64(len(env.Body)) > r.window:
		return protoErr(reasonMalformed, "stream %d sent past its credit", r.id)
	case r.limit > 0 && r.total+int64(len(env.Body)) > r.limit:
		return fmt.Errorf("%w: streamed body over %d bytes", ErrBodyTooLarge, r.limit)
	}
	r.seq = env.Seq
	if len(env.Body) > 0 {
		if len(env.Trailer) > 0 {
			frame = nil // the trailer strings lie in it too
		}
		r.pieces = append(r.pieces, piece{data: env.Body, frame: frame})
		r.buffered += int64(len(env.Body))
		r.total += int64(len(env.Body))
	}
	if env.Flags&flagLast != 0 {
		r.done = true
		r.trailer = env.Trailer
	}
	r.signal()
	return nil
}

func (r *recvStream) signal() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// fail ends the stream with err (unless it already ended).
func (r *recvStream) fail(err error) {
	r.mu.Lock()
	if !r.done && r.err == nil {
		r.err = err
		r.pieces, r.buffered = nil, 0
	}
	r.mu.Unlock()
	r.signal()
}

// piece is one received chunk body, not yet read, and the pooled frame
// it lies in (nil if none, or if the frame holds more that is in use).
type piece struct {
	data  []byte
	frame []byte
}

// readSome copies what has arrived into p. It returns (0, nil) when
// nothing is there yet: the caller waits on notify and tries again. At
// the end it returns io.EOF; after a failure, the error.
func (r *recvStream) readSome(p []byte) (int, error) {
	r.mu.Lock()
	n := 0
	for n < len(p) && len(r.pieces) > 0 {
		m := copy(p[n:], r.pieces[0].data)
		n += m
		if m == len(r.pieces[0].data) {
			putChunkFrame(r.pieces[0].frame)
			r.pieces[0] = piece{}
			r.pieces = r.pieces[1:]
		} else {
			r.pieces[0].data = r.pieces[0].data[m:]
		}
	}
	err := r.endLocked(n)
	r.consumed(n) // unlocks
	return n, err
}

// nextPiece takes the next received piece whole, without copying it, for
// a consumer that hands it on (WriteTo): it returns the piece and a
// release function to call once the piece is no longer used. It returns
// (nil, nil, nil) when nothing has arrived yet, and io.EOF or the
// stream's error at the end.
func (r *recvStream) nextPiece() ([]byte, func(), error) {
	r.mu.Lock()
	if len(r.pieces) == 0 {
		err := r.endLocked(0)
		r.mu.Unlock()
		return nil, nil, err
	}
	pc := r.pieces[0]
	r.pieces[0] = piece{}
	r.pieces = r.pieces[1:]
	r.consumed(len(pc.data)) // unlocks
	return pc.data, func() { putChunkFrame(pc.frame) }, nil
}

// endLocked is the error a read that got n bytes returns: none if it got
// some, else the stream's failure or io.EOF at its end. r.mu is held.
func (r *recvStream) endLocked(n int) error {
	switch {
	case n > 0:
		return nil
	case r.err != nil:
		return r.err
	case r.done:
		return io.EOF
	}
	return nil
}

// consumed records that n bytes were taken by the reader and unlocks
// r.mu; once a quarter of the window was taken, it is granted back to the
// sender.
func (r *recvStream) consumed(n int) {
	r.buffered -= int64(n)
	grant := int64(0)
	if n > 0 && !r.done && r.err == nil {
		r.unacked += int64(n)
		if r.unacked >= r.window/4 {
			grant, r.unacked = r.unacked, 0
		}
	}
	r.mu.Unlock()
	if grant > 0 {
		r.l.sendCtrl(&envelope{Version: ProtocolVersion, Kind: KindCredit, ID: r.id, Credit: uint64(grant)})
	}
}

// available reports whether readSome would return data or an end now.
func (r *recvStream) available() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pieces) > 0 || r.done || r.err != nil
}

// trailers returns the trailer fields of the last chunk, once read.
func (r *recvStream) trailers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.trailer
}

// finished reports whether the whole body arrived (whether read or not).
func (r *recvStream) finished() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done
}
