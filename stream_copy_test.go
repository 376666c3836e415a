package zmqhttp

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// A producer's small writes are copied: they return without waiting for
// the writer while at most sendBufMax copied bytes are unwritten, and
// then wait (here until stop), so a stream whose peer reads nothing
// holds a bounded number of bytes.
func TestStreamSmallWritesCopiedBounded(t *testing.T) {
	a, b := net.Pipe() // b is never read: nothing gets written
	defer b.Close()
	nc := newLiveConn(a)
	l := newLink(nc, bufio.NewReader(nc), zmq4.Dealer, nopHandler{}, linkConfig{hbInterval: time.Hour, hbTimeout: 3 * time.Hour, server: true})
	l.start()
	defer func() { l.close(errLinkFinished); l.wait() }()
	s, err := l.newSendStream(1, []byte{0xc0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	buf := make([]byte, 32<<10)
	accepted := 0
	for accepted <= 4*sendBufMax {
		done := make(chan error, 1)
		go func() {
			_, err := s.write(buf, stop, time.Time{})
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			accepted += len(buf)
			continue
		case <-time.After(300 * time.Millisecond):
		}
		// This write waits: the bound is reached.
		if accepted < sendBufMax || accepted > sendBufMax+len(buf) {
			t.Errorf("writes returned for %d KiB before one waited, want %d to %d KiB", accepted>>10, sendBufMax>>10, (sendBufMax+len(buf))>>10)
		}
		close(stop)
		if err := <-done; !errors.Is(err, errStop) {
			t.Errorf("the waiting write returned %v after stop, want errStop", err)
		}
		return
	}
	t.Fatalf("%d KiB of small writes returned to a peer that reads nothing; the bound is %d KiB", accepted>>10, sendBufMax>>10)
}

// Copied writes send what the producer handed over, though it reuses its
// buffer as soon as write returns; small and large writes mixed arrive in
// order.
func TestStreamCopiedWritesArriveIntact(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	nc := newLiveConn(a)
	l := newLink(nc, bufio.NewReader(nc), zmq4.Dealer, nopHandler{}, linkConfig{hbInterval: time.Hour, hbTimeout: 3 * time.Hour, server: true})
	l.peerWindow.Store(1 << 30) // no credit to wait for
	l.start()
	defer func() { l.close(errLinkFinished); l.wait() }()
	head, err := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindResponse, ID: 7, Status: 200, Flags: flagStreamed})
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.newSendStream(7, head, nil)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan []byte, 1)
	go func() {
		var want bytes.Buffer
		defer func() { wrote <- want.Bytes() }()
		buf := make([]byte, 100<<10)
		for i := 0; i < 200; i++ {
			n := []int{1, 5000, 32 << 10, 100 << 10, 31 << 10}[i%5]
			for j := range buf[:n] {
				buf[j] = byte(i + j/7)
			}
			want.Write(buf[:n])
			if _, err := s.write(buf[:n], nil, time.Time{}); err != nil {
				t.Error(err)
				return
			}
			// buf is overwritten on the next turn at once.
		}
		s.finish(nil)
	}()
	var got bytes.Buffer
	br := bufio.NewReader(b)
	for {
		frame, _, _, err := readEnvelopeFrame(br, 1<<30, nil, func([]byte) {}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var env envelope
		if err := decodeEnvelope(frame, Limits{}, &env); err != nil {
			t.Fatal(err)
		}
		if env.Kind != KindChunk {
			continue // the head
		}
		got.Write(env.Body)
		if env.Flags&flagLast != 0 {
			break
		}
	}
	if want := <-wrote; !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("received %d bytes that differ from the %d written", got.Len(), len(want))
	}
}

// The copied bytes of all the streams of one connection are bounded too
// (maxLinkCopyBlocks): many handlers writing to a peer that reads nothing
// hold a bounded amount, not sendBufMax each.
func TestStreamCopiedBytesBoundedPerLink(t *testing.T) {
	a, b := net.Pipe() // b is never read: nothing gets written
	defer b.Close()
	nc := newLiveConn(a)
	l := newLink(nc, bufio.NewReader(nc), zmq4.Dealer, nopHandler{}, linkConfig{hbInterval: time.Hour, hbTimeout: 3 * time.Hour, server: true})
	l.start()
	defer func() { l.close(errLinkFinished); l.wait() }()
	const streams = 40 // × sendBufMax = 10 MiB without the bound
	stop := make(chan struct{})
	var accepted atomic.Int64
	var wg sync.WaitGroup
	for i := range streams {
		s, err := l.newSendStream(uint64(i+1), []byte{0xc0}, nil)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := s.write(buf, stop, time.Time{})
				if err != nil {
					return
				}
				accepted.Add(int64(n))
			}
		}()
	}
	// Let every writer reach its bound (bounded wait).
	var last int64 = -1
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n := accepted.Load()
		if n == last {
			break
		}
		last = n
	}
	close(stop)
	// A referenced write returns only once the writer lets go of its
	// bytes: end the connection, on which the writer is stuck.
	l.close(errLinkFinished)
	wg.Wait()
	// 4 MiB (maxLinkCopyBlocks of 64 KiB) and two blocks' slack.
	if got, limit := accepted.Load(), int64(4<<20+128<<10); got > limit {
		t.Errorf("%d KiB of small writes returned on one connection to a peer that reads nothing; want at most %d KiB", got>>10, limit>>10)
	}
	l.mu.Lock()
	if l.copyBlocks != 0 {
		t.Errorf("%d copy blocks still counted after every stream failed", l.copyBlocks)
	}
	l.mu.Unlock()
}
