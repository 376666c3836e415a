package zmqhttp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestReview3CancelBehindBackpressure: a peer's reader stops (over 1 MiB
// of its requests queued) before it reads the CANCEL that would free the
// worker those queued requests wait for: the handler never sees its
// context cancelled and the queued calls never run.
func TestReview3CancelBehindBackpressure(t *testing.T) {
	polling := make(chan struct{}, 1)
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/poll" {
			polling <- struct{}{}
			<-r.Context().Done() // a long poll: ends when the client gives up
			return
		}
		io.Copy(io.Discard, r.Body)
	}), WithWorkers(1))
	c, _ := newClient(t, ts.L.Endpoint())

	ctx, cancel := context.WithCancel(context.Background())
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/poll", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-polling
	body := bytes.Repeat([]byte("x"), 60<<10)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	call := func(path string, b []byte) {
		defer wg.Done()
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		req, _ := http.NewRequestWithContext(rctx, "POST", "http://svc"+path, bytes.NewReader(b))
		resp, err := c.Do(req)
		if err != nil {
			errs <- err
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i := 0; i < 20; i++ { // 20 x 60 KiB queued behind /poll: over 1 MiB unread
		wg.Add(1)
		go call("/big", body)
	}
	// Wait until the reader has stopped taking requests (pooled frames
	// count 80 KiB each: it stops after about 13 of them).
	for last := uint64(0); ; {
		time.Sleep(300 * time.Millisecond)
		n := ts.L.Stats().Requests
		if n == last {
			break
		}
		last = n
	}
	t.Logf("reader stopped after %d requests", ts.L.Stats().Requests)
	wg.Add(1)
	go call("/small", []byte("y")) // the reader now stops before taking this one
	time.Sleep(300 * time.Millisecond)
	cancel() // CANCEL for /poll: behind /small in the socket
	<-pollDone
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(8 * time.Second):
		t.Fatal("queued calls hung")
	}
	close(errs)
	n := 0
	var first error
	for err := range errs {
		if first == nil {
			first = err
		}
		n++
	}
	if n > 0 {
		t.Errorf("%d of 21 queued calls failed although their client cancelled the call holding the only worker: first %v (Canceled=%d)", n, first, ts.L.Stats().Canceled)
	}
}

// TestReview3CreditBehindBackpressure: the same stop with no cancellation
// at all: a streamed download holds the only worker and needs the
// client's CREDIT to go on; the client's uploads queued behind it (over
// 1 MiB) stop the peer's reader before that CREDIT is read.
func TestReview3CreditBehindBackpressure(t *testing.T) { creditCase(t, 21) }

// TestReview3CreditControl: the same with 600 KiB queued (under the
// 1 MiB) passes: the stop above is the reader's backpressure.
func TestReview3CreditControl(t *testing.T) { creditCase(t, 10) }

func creditCase(t *testing.T, uploads int) {
	started := make(chan struct{}, 1)
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/download" {
			started <- struct{}{}
			buf := bytes.Repeat([]byte("d"), 32<<10)
			for i := 0; i < 128; i++ { // 4 MiB
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
			return
		}
		io.Copy(io.Discard, r.Body)
	}), WithWorkers(1))
	c, _ := newClient(t, ts.L.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/download", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	body := bytes.Repeat([]byte("x"), 60<<10)
	var wg sync.WaitGroup
	for i := 0; i < uploads; i++ { // 21: over 1 MiB queued behind the download, then one more
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/up", bytes.NewReader(body))
			if r, err := c.Do(req); err == nil {
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
		}()
	}
	for last := uint64(0); ; { // until the server takes no more
		time.Sleep(300 * time.Millisecond)
		n := ts.L.Stats().Requests
		if n == last {
			break
		}
		last = n
	}
	t.Logf("server took %d requests", ts.L.Stats().Requests)
	n, err := io.Copy(io.Discard, resp.Body) // sends CREDIT as it reads
	resp.Body.Close()
	if err != nil || n != 4<<20 {
		t.Fatalf("download: %d of %d bytes, err %v", n, 4<<20, err)
	}
	wg.Wait()
}

// TestReview3ExpiredJobsFillQueue: queued requests whose callers gave up
// (CANCEL read, deadline passed) stay in the queue, counted in its 4 MiB
// and in their peers' unread bytes, until a worker reaches them: a live
// request from another client is answered 503 overloaded although nothing
// live is queued.
func TestReview3ExpiredJobsFillQueue(t *testing.T) {
	release := make(chan struct{})
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.Copy(io.Discard, r.Body)
	}), WithWorkers(1))
	t.Cleanup(func() { close(release) })
	c0, _ := newClient(t, ts.L.Endpoint())
	go c0.Get("http://svc/slow")
	for ts.L.Stats().Requests < 1 {
		time.Sleep(5 * time.Millisecond)
	}
	body := bytes.Repeat([]byte("x"), 60<<10) // an 80 KiB pooled frame each
	var wg sync.WaitGroup
	for _, n := range []int{13, 13, 13, 12} { // 51 x 80 KiB = 4080 KiB queued: under 4 MiB
		c, _ := newClient(t, ts.L.Endpoint())
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/up", bytes.NewReader(body))
				if r, err := c.Do(req); err == nil {
					r.Body.Close()
				}
			}()
		}
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond) // every queued request is past its deadline
	before := ts.L.Stats()
	if before.Overloaded != 0 {
		t.Fatalf("setup: %d uploads overloaded", before.Overloaded)
	}
	// The worker is still busy with /slow: the live request must be
	// queued (and wait), not refused.
	c2, _ := newClient(t, ts.L.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/live", bytes.NewReader(body))
	resp, err := c2.Do(req)
	if err != nil {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		return // queued behind /slow: not refused
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		t.Errorf("live request answered %d (Overloaded %d) while the only queued requests were cancelled and past their deadlines (Canceled %d)",
			resp.StatusCode, ts.L.Stats().Overloaded, before.Canceled)
	}
}

// TestCancelBeforeHelloAnswer: a call cancelled before the client has read
// the server's HELLO answer (the first calls on a new connection are
// written before it comes) still reaches the server as a CANCEL once the
// answer says the server takes them: the handler's context ends. Before,
// the CANCEL was dropped and the handler ran on.
func TestCancelBeforeHelloAnswer(t *testing.T) {
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			ended <- r.Context().Err()
		case <-time.After(5 * time.Second):
			ended <- errors.New("not cancelled within 5s")
		}
	}))
	release := make(chan struct{})
	hook := func() { <-release }
	testHookClientHello.Store(&hook)
	defer testHookClientHello.Store(nil)
	client, _ := newClient(t, ts.L.Endpoint())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://svc/slow", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("the handler did not start")
	}
	cancel() // the client's reader is held before the HELLO answer
	if err := <-errc; err == nil {
		t.Error("the cancelled call succeeded")
	}
	close(release)
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Errorf("handler: %v; want its context cancelled", err)
	}
}
