package zmqhttp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Fresh-eye review of the performance branches merged on main (small,
// bigbody, the Listener's Close during handshakes): proving tests.

// TestReviewIdleTrimmedWithoutTraffic: a peer's idle connections beyond
// maxIdlePerPeer (up to the worker count since a247c1c) were trimmed only
// when another connection went idle. A peer that makes a burst of
// requests and then goes silent (its heartbeats keep it alive) kept every
// connection of the burst (an http.Server connection goroutine and its
// buffers each, up to 1024 per peer by default) for as long as it stayed.
// They must go once they waited idleTrim, traffic or not.
func TestReviewIdleTrimmedWithoutTraffic(t *testing.T) {
	testIdleTrim.Store(int64(300 * time.Millisecond))
	t.Cleanup(func() { testIdleTrim.Store(0) })
	const n = maxIdlePerPeer + 20
	var in sync.WaitGroup
	rel := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in.Done()
		<-rel
		w.Write([]byte("ok"))
	})
	ts := startServer(t, "tcp", h)
	client, _ := newClient(t, ts.L.Endpoint())
	in.Add(n)
	var done sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		done.Add(1)
		go func() {
			defer done.Done()
			resp, err := client.Get("http://svc/")
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	in.Wait() // n handlers at once: n connections
	close(rel)
	done.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// No more traffic: the connections beyond maxIdlePerPeer must end
	// within idleTrim (and a little).
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := idleConns(ts.L)
		if got <= maxIdlePerPeer {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still idle 5 s after a burst of %d (idle trim %v), want at most %d",
				got, n, idleTrimFor(), maxIdlePerPeer)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReviewServerCloseDuringUntilCloseWrite: http.Server.Close closes a
// connection (vconn.Close) while its handler is in a Write of a response
// that ends with the connection (no length, not chunked). Close then
// sends what is left and waits for it to be written (drain, since
// c28016f) while the handler's Write waits for its own bytes: two waiters
// on the stream, whose writer wakes a producer once (one token, since
// 355f7ee) when the last byte is written. One of them took the token and
// the other slept on: Close never returned (srv.Close hung), or the
// handler never came back from its Write.
func TestReviewServerCloseDuringUntilCloseWrite(t *testing.T) {
	block := bytes.Repeat([]byte("z"), 64<<10) // referenced, not copied: its Write waits until written
	inWrite := make(chan struct{})
	handlerDone := make(chan struct{})
	var once sync.Once
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
		w.Header().Set("Transfer-Encoding", "identity") // delimited by the connection's end
		w.WriteHeader(http.StatusOK)
		for i := 0; ; i++ {
			if i == 20 { // the client reads nothing: within its window (2 MiB), Writes soon wait
				once.Do(func() { close(inWrite) })
			}
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	})
	l, err := Listen(testEndpoint(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	client, _ := newClient(t, l.Endpoint())
	resp, err := client.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-inWrite:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not fill the window")
	}
	time.Sleep(300 * time.Millisecond) // the handler waits in its Write
	closed := make(chan struct{})
	go func() {
		srv.Close()
		close(closed)
	}()
	time.Sleep(200 * time.Millisecond) // vconn.Close waits in drain
	// Now read everything: both waiters must come back.
	go func() {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Error("http.Server.Close did not return (vconn.Close stuck in its drain)")
	}
	select {
	case <-handlerDone:
	case <-time.After(10 * time.Second):
		t.Error("the handler's Write did not return")
	}
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Error("Serve did not return")
	}
}

// TestReviewServerCloseWithStalledReader: http.Server.Close must not wait
// for a client that reads nothing. Closing a connection whose response
// ends with it (no length, not chunked) waited, since c28016f, until
// everything the handler wrote was written (vconn.Close's drain, no
// deadline): with a client that grants no more credit, srv.Close never
// returned.
func TestReviewServerCloseWithStalledReader(t *testing.T) {
	block := bytes.Repeat([]byte("z"), 16<<10) // copied writes: they return at once
	filled := make(chan struct{})
	var once sync.Once
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Transfer-Encoding", "identity") // delimited by the connection's end
		w.WriteHeader(http.StatusOK)
		for i := 0; i < 160; i++ { // 2.5 MiB: past the client's window
			if _, err := w.Write(block); err != nil {
				return
			}
			if i == 100 {
				once.Do(func() { close(filled) })
			}
		}
		once.Do(func() { close(filled) })
	})
	l, err := Listen(testEndpoint(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	client, _ := newClient(t, l.Endpoint())
	resp, err := client.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() // never read
	select {
	case <-filled:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not write")
	}
	time.Sleep(200 * time.Millisecond)
	closed := make(chan struct{})
	go func() {
		srv.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("http.Server.Close did not return while the client read nothing")
	}
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Error("Serve did not return")
	}
}

// TestReviewAwaitEndsWhenLinkDiesAfterLastChunk: a producer waiting in
// write whose bytes the writer took, with the last chunk (the stream's
// finish came from another goroutine: vconn.Close while its handler
// writes), when the link dies before they are written. The stream left
// l.sends with its last chunk, so the link's close did not fail it:
// await saw the link dead, no error and written < its target, and went
// round again at once, for ever (a goroutine spinning on a closed
// channel). Here the writer's take is done by hand, as the writer does
// it, while the real writer is stuck on a peer that reads nothing.
func TestReviewAwaitEndsWhenLinkDiesAfterLastChunk(t *testing.T) {
	a, b := net.Pipe() // b is never read: the writer is stuck in its first write
	defer b.Close()
	nc := newLiveConn(a)
	l := newLink(nc, bufio.NewReader(nc), zmq4.Dealer, nopHandler{}, linkConfig{hbInterval: time.Hour, hbTimeout: 3 * time.Hour, server: true})
	l.start()
	defer func() { l.close(errLinkFinished); l.wait() }()
	s, err := l.newSendStream(1, []byte{0xc0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)      // the writer takes the head and waits on the pipe
	p := bytes.Repeat([]byte("r"), 64<<10) // referenced: write waits until it is written
	done := make(chan error, 1)
	go func() {
		_, err := s.write(p, nil, time.Time{})
		done <- err
	}()
	for {
		l.mu.Lock()
		handed := s.handed
		l.mu.Unlock()
		if handed == int64(len(p)) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	s.finish(nil) // another goroutine ends the body (vconn.Close)
	l.mu.Lock()
	s.credit = 1 << 20
	it := s.takeLocked() // the writer's take: the data and the last chunk
	l.mu.Unlock()
	if !it.last || it.n != len(p) {
		t.Fatalf("take: last %v, %d bytes; want the last chunk with %d", it.last, it.n, len(p))
	}
	l.close(errors.New("link lost"))
	select {
	case err := <-done:
		if err == nil {
			t.Error("write returned no error though its bytes were never written")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("write did not return after the link died")
	}
}
