package zmqhttp

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// This file holds the two halves of a streamed body (PROTOCOL.md 4.6). The
// sender's bytes wait in its sendStream until the link's writer takes them,
// a chunk at a time and only as far as the receiver's credit allows; the
// receiver's recvStream holds at most its window and grants credit back as
// its reader consumes. So a stream's memory is bounded on both sides, and a
// reader that stops reading stops only its own stream.

// sendStream is the sending half of a streamed body. Its producer (a
// caller's upload goroutine, or a handler's writes) calls write, finish and
// abort; the link's writer takes from it.
type sendStream struct {
	// Set by newSendStream, read-only after.
	l     *link
	id    uint64
	max   int           // bytes the producer may have waiting
	space chan struct{} // room for one token: data was taken, or the stream ended

	// Guarded by l.mu.
	head     []byte       // the encoded head envelope, until written
	onWrite  func(uint64) // told the head's request number
	buf      []byte       // data not yet taken
	credit   int64        // bytes the receiver allows beyond what was taken
	seq      uint64       // chunks taken
	closed   bool         // the producer is done: the last chunk follows buf
	trailer  []string     // sent with the last chunk
	lastSent bool
	err      error // the stream failed or was abandoned
	isActive bool  // in l.active
}

func (s *sendStream) hasWorkLocked() bool {
	if s.err != nil || s.lastSent {
		return false
	}
	return s.head != nil || (len(s.buf) > 0 && s.credit > 0) || (s.closed && len(s.buf) == 0)
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
	it := writeItem{s: s, head: s.head, onW: s.onWrite}
	s.head, s.onWrite = nil, nil
	n := min(len(s.buf), maxChunk, int(max(s.credit, 0)))
	if n > 0 || (s.closed && len(s.buf) == 0) {
		it.chunk = true
		it.data = s.buf[:n:n]
		s.buf = s.buf[n:]
		if len(s.buf) == 0 {
			s.buf = nil
		}
		s.credit -= int64(n)
		s.seq++
		it.seq = s.seq
		if s.closed && len(s.buf) == 0 {
			it.last, it.trl = true, s.trailer
			s.lastSent = true
			delete(s.l.sends, s.id)
		}
		select {
		case s.space <- struct{}{}:
		default:
		}
	}
	return it
}

// write queues p, waiting while max bytes are queued already, until stop
// is closed (errStop) or the stream fails.
func (s *sendStream) write(p []byte, stop <-chan struct{}) (int, error) {
	done := 0
	for done < len(p) {
		s.l.mu.Lock()
		if s.err != nil {
			err := s.err
			s.l.mu.Unlock()
			return done, err
		}
		if s.closed {
			s.l.mu.Unlock()
			return done, errors.New("zmqhttp: write after the end of a streamed body")
		}
		if room := s.max - len(s.buf); room > 0 {
			n := min(room, len(p)-done)
			s.buf = append(s.buf, p[done:done+n]...)
			done += n
			s.activateLocked()
			s.l.mu.Unlock()
			s.l.signal()
			continue
		}
		s.l.mu.Unlock()
		select {
		case <-s.space:
		case <-stop:
			return done, errStop
		case <-s.l.dead:
			// failLocked has run (close holds l.mu while failing
			// every stream), so the next turn returns its error.
		}
	}
	return done, nil
}

// finish ends the body: a last chunk, carrying trailer, follows what is
// queued.
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

// flushed reports whether everything, the last chunk included, was taken
// by the writer.
func (s *sendStream) flushed() bool {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return s.lastSent
}

func (s *sendStream) failLocked(err error) {
	if s.err != nil || s.lastSent {
		return
	}
	s.err = err
	s.buf, s.head = nil, nil
	if s.l.sends[s.id] == s {
		delete(s.l.sends, s.id)
	}
	select {
	case s.space <- struct{}{}:
	default:
	}
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
	bufs     [][]byte // received, not yet read
	buffered int64
	seq      uint64 // last chunk number received
	total    int64  // body bytes received
	done     bool   // the last chunk arrived
	trailer  []string
	err      error // the stream failed
	unacked  int64 // bytes read and not yet granted back
}

// push adds a CHUNK's data. It fails the stream when the sender overran
// its credit, skipped a number, or passed the body limit.
func (r *recvStream) push(env *envelope) error {
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
		r.bufs = append(r.bufs, env.Body)
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
		r.bufs, r.buffered = nil, 0
	}
	r.mu.Unlock()
	r.signal()
}

// readSome copies what has arrived into p. It returns (0, nil) when
// nothing is there yet: the caller waits on notify and tries again. At
// the end it returns io.EOF; after a failure, the error.
func (r *recvStream) readSome(p []byte) (int, error) {
	r.mu.Lock()
	n := 0
	for n < len(p) && len(r.bufs) > 0 {
		m := copy(p[n:], r.bufs[0])
		n += m
		if m == len(r.bufs[0]) {
			r.bufs[0] = nil
			r.bufs = r.bufs[1:]
		} else {
			r.bufs[0] = r.bufs[0][m:]
		}
	}
	r.buffered -= int64(n)
	var err error
	switch {
	case n > 0:
	case r.err != nil:
		err = r.err
	case r.done:
		err = io.EOF
	}
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
	return n, err
}

// available reports whether readSome would return data or an end now.
func (r *recvStream) available() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bufs) > 0 || r.done || r.err != nil
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
