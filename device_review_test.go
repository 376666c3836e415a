package zmqhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// startSlowDeviceServer is a Listener behind the device whose handler
// takes d, counting each run by request path.
func startSlowDeviceServer(t *testing.T, name string, d time.Duration, runs *runLog) *testServer {
	return startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.add(r.URL.Path)
		io.Copy(io.Discard, r.Body)
		time.Sleep(d)
		w.Header().Set("X-Server", name)
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.Path)
	}))
}

// TestDeviceAckFromEveryServer: the client's one HELLO reaches one
// of the two servers behind zmq_proxy; only that server learns the route's
// capAck. Requests the device hands to the other server are never
// ACCEPTED, so a request slower than ackTick*ackMissLimit there is taken
// as lost in the device: a GET is sent again (runs twice, or, when the
// resend reaches the server still running the first copy, the caller gets
// its 400 "request id already in flight"), a plain POST fails with
// ErrConnectionLost although it runs to completion.
func TestDeviceAckFromEveryServer(t *testing.T) {
	var runs runLog
	s1 := startSlowDeviceServer(t, "s1", 2500*time.Millisecond, &runs)
	s2 := startSlowDeviceServer(t, "s2", 2500*time.Millisecond, &runs)
	d := startDevice(t, s1.L.Endpoint(), s2.L.Endpoint())
	time.Sleep(300 * time.Millisecond) // both backends connected
	c, tr := newClient(t, d.frontend)
	// Let the HELLO go first (one server gets it).
	waitFor(t, 5*time.Second, "routed HELLO answer", func() bool {
		tr.mu.Lock()
		cl := tr.curLocked()
		tr.mu.Unlock()
		return cl != nil && cl.has(capRouted)
	})
	type out struct {
		path   string
		post   bool
		err    error
		status int
		server string
	}
	const n = 8
	res := make([]out, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			o := &res[i]
			o.path = fmt.Sprintf("/r%d", i)
			o.post = i%4 == 0
			var req *http.Request
			if o.post {
				req, _ = http.NewRequest(http.MethodPost, "http://svc"+o.path, strings.NewReader("x"))
				req.GetBody = nil
			} else {
				req, _ = http.NewRequest(http.MethodGet, "http://svc"+o.path, nil)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			resp, err := c.Do(req.WithContext(ctx))
			if err == nil {
				io.ReadAll(resp.Body)
				resp.Body.Close()
				o.status, o.server = resp.StatusCode, resp.Header.Get("X-Server")
			}
			o.err = err
		}(i)
		time.Sleep(20 * time.Millisecond) // keep the round-robin order simple
	}
	wg.Wait()
	time.Sleep(3 * time.Second) // replays finish running
	for _, o := range res {
		r := runs.count(o.path)
		t.Logf("%s post=%v ran %d: err %v status %d server %q", o.path, o.post, r, o.err, o.status, o.server)
		switch {
		case o.post && errors.Is(o.err, ErrConnectionLost) && r == 1:
			t.Errorf("%s: POST failed as lost in the device, but a server took it and ran it", o.path)
		case !o.post && r > 1:
			t.Errorf("%s: GET ran %d times (resent though a server had taken it)", o.path, r)
		case o.err == nil && o.status != 200:
			t.Errorf("%s: status %d", o.path, o.status)
		}
	}
	t.Logf("stats %+v", tr.Stats())
}

// routedConn dials a Listener directly as a DEALER, no device: any peer
// may put routing frames before the delimiter.
func routedConn(t *testing.T, ep string) (net.Conn, *bufio.Writer) {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(ep, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	br, _, err := handshake(nc, zmq4.Dealer, false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, br) // take the server's answers
	return nc, bufio.NewWriterSize(nc, 64<<10)
}

// TestDeviceRoutingFrameBounds: a routing frame over 255 bytes (libzmq's
// routing ids are at most 255) makes the message dropped and counted;
// one of 255 bytes is answered on its route.
func TestDeviceRoutingFrameBounds(t *testing.T) {
	ts := startServer(t, "tcp", http.NotFoundHandler())
	nc, err := net.Dial("tcp", strings.TrimPrefix(ts.L.Endpoint(), "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	br, _, err := handshake(nc, zmq4.Dealer, false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(nc, 64<<10)
	hello, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindHello, Flags: ourCaps})
	for _, size := range []int{1 << 20, 256, 255} {
		rt := make([]byte, size)
		rt[0] = byte(size)
		writeFrame(w, rt, true)
		writeFrame(w, nil, true)
		writeFrame(w, hello, false)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	frames, _, err := readMessage(br, 1<<20, nil)
	if err != nil || len(frames) != 3 || len(frames[0]) != 255 {
		t.Fatalf("first answer: %d frames (%v), want the 255-byte route's", len(frames), err)
	}
	if got := ts.L.Stats().BadMessages; got != 2 {
		t.Errorf("BadMessages = %d, want 2 (the 1 MiB and the 256-byte routing frames)", got)
	}
}

// TestDeviceShutdownEitherServer: TestStockDevice shuts down s1, which
// is the server the client's HELLO reached. Shutting down the other one,
// which never learnt the route's capDrain, answers the requests the device
// still hands it with HTTP 503 (Retry-After) instead of a not-processed
// error: the callers get 503 responses for requests that were never run,
// instead of the transparent resend through the device.
func TestDeviceShutdownEitherServer(t *testing.T) {
	s1, s2 := startDeviceServer(t, "s1"), startDeviceServer(t, "s2")
	d := startDevice(t, s1.ts.L.Endpoint(), s2.ts.L.Endpoint())
	time.Sleep(300 * time.Millisecond)
	c, tr := newClient(t, d.frontend)
	res := runDeviceLoad(t, c, "warm", 10, 1, nil)
	for _, r := range res {
		if r.err != nil || r.status != 200 {
			t.Fatalf("%s: %v %d", r.id, r.err, r.status)
		}
	}
	// libzmq's DEALER hands the HELLO to the first server it connected:
	// the other one never saw it.
	victim := s2
	shutdownDone := make(chan error, 1)
	res = runDeviceLoad(t, c, "second", 1000, 64, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownDone <- victim.ts.Srv.Shutdown(ctx)
	})
	<-shutdownDone
	var n503 int
	for _, r := range res {
		if r.err == nil && r.status == http.StatusServiceUnavailable {
			n503++
		}
	}
	t.Logf("transport %+v", tr.Stats())
	if n503 > 0 {
		t.Errorf("shutting down %s (no route caps): %d of 1000 callers got HTTP 503 for requests that never ran", victim.name, n503)
	}
}

// TestDeviceResendKeepsBody: sweepAcks queues a second copy of a
// call whose first copy a server may hold. When the first copy's response
// arrives while the second is still in the link's queue (the writer is
// busy with a large request: the situation the acknowledgements are
// for), await returns c.body to wholeBodies although the queued outMsg
// still references it: the next request with a pooled body overwrites the
// bytes the writer is about to send.
func TestDeviceResendKeepsBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	gotB := make(chan uint64, 1)
	respond := make(chan struct{})
	devDone := make(chan struct{})
	var devConn net.Conn
	go func() {
		defer close(devDone)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		devConn = nc
		br, _, err := handshake(nc, zmq4.Router, true, 5*time.Second)
		if err != nil {
			return
		}
		w := bufio.NewWriter(nc)
		var frames [][]byte
		// HELLO, answered as a server behind a device would.
		frames, _, err = readMessage(br, 64<<20, frames)
		if err != nil {
			return
		}
		ans, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindHello, Flags: capRouted | capCancel | capDrain | capAck})
		writeFrame(w, nil, true)
		writeFrame(w, ans, false)
		w.Flush()
		// Request B: read, never acknowledged.
		frames, _, err = readMessage(br, 64<<20, frames)
		if err != nil {
			return
		}
		_, _, id, _ := peekHead(frames[len(frames)-1])
		gotB <- id
		// Stop reading (a stuck device); answer B when told.
		<-respond
		resp, _ := appendEnvelope(nil, simpleResponse(id, 200, "ok"))
		writeFrame(w, nil, true)
		writeFrame(w, resp, false)
		w.Flush()
	}()
	defer func() {
		select {
		case <-respond:
		default:
			close(respond)
		}
		if devConn != nil {
			devConn.Close()
		}
		<-devDone
	}()

	c, tr := newClient(t, "tcp://"+ln.Addr().String())
	waitFor(t, 5*time.Second, "routed HELLO answer", func() bool {
		tr.mu.Lock()
		cl := tr.curLocked()
		tr.mu.Unlock()
		return cl != nil && cl.has(capRouted)
	})
	tr.mu.Lock()
	cl := tr.curLocked()
	tr.mu.Unlock()

	bRes := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPut, "http://svc/b", strings.NewReader(strings.Repeat("b", 20<<10)))
		req.Header.Set("Idempotency-Key", "b") // replayable
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		bRes <- err
	}()
	<-gotB
	// A large request keeps the writer busy: the device does not read.
	go func() {
		req, _ := http.NewRequest(http.MethodPut, "http://svc/a", strings.NewReader(strings.Repeat("a", 24<<20)))
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		defer cancel()
		resp, err := c.Do(req.WithContext(ctx))
		if err == nil {
			resp.Body.Close()
		}
	}()
	// B is swept (unacknowledged) and queued again behind A.
	deadline := time.Now().Add(5 * time.Second)
	for tr.Stats().Replays == 0 {
		if time.Now().After(deadline) {
			tr.mu.Lock()
			le := tr.lastErr
			tr.mu.Unlock()
			select {
			case err := <-bRes:
				t.Logf("B returned: %v", err)
			default:
			}
			t.Fatalf("B not resent: stats %+v, last error %v", tr.Stats(), le)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case <-respond:
	default:
		close(respond)
	}
	if err := <-bRes; err != nil {
		t.Fatalf("B: %v", err)
	}
	cl.mu.Lock()
	var queued []byte
	for _, m := range cl.msgs {
		if cap(m.body) == wholeBodies.size {
			queued = m.body
		}
	}
	cl.mu.Unlock()
	if queued == nil {
		t.Skip("B's second copy was written before its response came")
	}
	var held [][]byte
	defer func() {
		for _, b := range held {
			wholeBodies.put(b)
		}
	}()
	for i := 0; i < 64; i++ {
		b := wholeBodies.get()
		held = append(held, b)
		if &b[0] == &queued[0] {
			t.Errorf("B's body went back to wholeBodies while B's resent copy, still queued on the link, references it (handed out again on get #%d)", i+1)
			return
		}
	}
}

// TestDeviceDrainBackoff: with one server behind the device, a
// request that server returns unprocessed while it drains is resent at
// once through the same device, to the same server, maxResends times in
// a few milliseconds, then fails with ErrNotProcessed; a direct client
// would have waited for the next connection.
func TestDeviceDrainBackoff(t *testing.T) {
	release := make(chan struct{})
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		io.WriteString(w, "ok")
	}))
	d := startDevice(t, ts.L.Endpoint())
	c, tr := newClient(t, d.frontend)
	if resp, err := c.Get("http://svc/warm"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	held := make(chan error, 1)
	go func() {
		resp, err := c.Get("http://svc/hold")
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	time.Sleep(200 * time.Millisecond)
	go ts.Srv.Shutdown(context.Background()) // waits for /hold
	time.Sleep(200 * time.Millisecond)
	before := tr.Stats().Replays
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/later", nil)
	resp, err := c.Do(req)
	took := time.Since(start)
	if err == nil {
		resp.Body.Close()
	}
	t.Logf("GET during drain: %v after %v, %d resends", err, took, tr.Stats().Replays-before)
	if err != nil && took < 500*time.Millisecond {
		t.Errorf("GET failed with ErrNotProcessed after %v and %d immediate resends to the same draining server", took, tr.Stats().Replays-before)
	}
	close(release)
	<-held
}
