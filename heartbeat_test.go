package zmqhttp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// fakeServer is a hand-driven ZeroMQ ROUTER for testing how the Transport
// treats servers that misbehave. Each accepted connection is handed to
// serve with its index (0 for the first).
type fakeServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startFake(t *testing.T, serve func(i int, c *fakeConn)) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{ln: ln}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for i := 0; ; i++ {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns = append(f.conns, nc)
			f.mu.Unlock()
			f.wg.Add(1)
			go func(i int) {
				defer f.wg.Done()
				br, _, err := handshake(nc, zmq4.Router, true, 5*time.Second)
				if err != nil {
					nc.Close()
					return
				}
				serve(i, &fakeConn{nc: nc, br: br, bw: bufio.NewWriter(nc)})
			}(i)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fakeServer) endpoint() string { return "tcp://" + f.ln.Addr().String() }

type fakeConn struct {
	nc  net.Conn
	br  *bufio.Reader
	wmu sync.Mutex // guards bw: replies may be sent from several goroutines
	bw  *bufio.Writer
}

func (c *fakeConn) recv() (envelope, error) {
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		frames, isCmd, err := readMessage(c.br, 1<<20, nil)
		if err != nil {
			return envelope{}, err
		}
		if isCmd {
			continue
		}
		var e envelope
		if err := decodeEnvelope(frames[1], Limits{}, &e); err != nil {
			return envelope{}, err
		}
		return e, nil
	}
}

func (c *fakeConn) send(e *envelope) error {
	b, err := appendEnvelope(nil, e)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := writeEnvelopeMsg(c.bw, b); err != nil {
		return err
	}
	return c.bw.Flush()
}

func okResponse(id uint64, body string) *envelope {
	return &envelope{Version: 1, Kind: KindResponse, ID: id, Status: 200, Body: []byte(body), ContentLength: int64(len(body))}
}

// TestHeartbeatTimeout: a server that accepts requests and then goes
// silent is declared dead within the heartbeat timeout; the GET in flight
// is sent again on the next connection and succeeds, the POST fails with
// ErrConnectionLost and is never sent twice.
func TestHeartbeatTimeout(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{} // "METHOD path" -> times received
	f := startFake(t, func(i int, c *fakeConn) {
		for {
			e, err := c.recv()
			if err != nil {
				return
			}
			switch e.Kind {
			case KindHello:
				c.send(&envelope{Version: 1, Kind: KindHello, Flags: ourCaps})
			case KindRequest:
				mu.Lock()
				seen[e.Method+" "+e.URI]++
				mu.Unlock()
				if i > 0 { // the second connection answers
					c.send(okResponse(e.ID, "ok "+e.URI))
				}
			}
			// PINGs go unanswered: the server is stuck.
		}
	})
	client, tr := newClient(t, f.endpoint(), WithHeartbeat(50*time.Millisecond, 300*time.Millisecond),
		WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))

	type result struct {
		body    string
		err     error
		elapsed time.Duration
	}
	do := func(method, path string) result {
		start := time.Now()
		req, _ := http.NewRequest(method, "http://svc"+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			return result{err: err, elapsed: time.Since(start)}
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return result{body: string(b), elapsed: time.Since(start)}
	}
	getc, postc := make(chan result, 1), make(chan result, 1)
	go func() { getc <- do("GET", "/get") }()
	go func() { postc <- do("POST", "/post") }()

	post := <-postc
	if !errors.Is(post.err, ErrConnectionLost) {
		t.Fatalf("POST: got %v, want ErrConnectionLost", post.err)
	}
	// Generous bound against a hang; the timeout itself is 300ms.
	if post.elapsed > 3*time.Second {
		t.Errorf("POST failed after %v; the heartbeat timeout is 300ms", post.elapsed)
	}
	get := <-getc
	if get.err != nil || get.body != "ok /get" {
		t.Fatalf("GET: got %q, %v; want it replayed and answered", get.body, get.err)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["POST /post"] != 1 {
		t.Errorf("server saw the POST %d times, want exactly once", seen["POST /post"])
	}
	if seen["GET /get"] != 2 {
		t.Errorf("server saw the GET %d times, want 2 (original and replay)", seen["GET /get"])
	}
	st := tr.Stats()
	if st.Replays != 1 || st.ConnectionsLost != 1 {
		t.Errorf("stats %+v: want 1 replay and 1 lost connection", st)
	}
	t.Logf("POST failed after %v; GET answered after %v; %+v", post.elapsed, get.elapsed, st)
}

// TestBasicPeer: a ROUTER that refuses HELLO (as a minimal peer written
// from PROTOCOL.md's v1 core would) is served without heartbeats,
// cancels or draining, and the connection is not dropped as silent.
func TestBasicPeer(t *testing.T) {
	f := startFake(t, func(i int, c *fakeConn) {
		for {
			e, err := c.recv()
			if err != nil {
				return
			}
			switch e.Kind {
			case KindRequest:
				c.send(okResponse(e.ID, "basic"))
			default:
				c.send(&envelope{Version: 1, Kind: KindError, ID: e.ID, Status: 501, Message: "unsupported kind"})
			}
		}
	})
	client, tr := newClient(t, f.endpoint(), WithHeartbeat(20*time.Millisecond, 60*time.Millisecond))
	for i := 0; i < 3; i++ {
		resp, err := client.Get("http://svc/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "basic" {
			t.Fatalf("got %q", b)
		}
		time.Sleep(100 * time.Millisecond) // longer than the heartbeat timeout
	}
	if st := tr.Stats(); st.ConnectionsLost != 0 || st.Connects != 1 || st.LateReplies != 0 {
		t.Fatalf("a basic peer must not be dropped as silent: %+v", st)
	}
}

// TestDrainReturnsUnprocessed: requests a closing Listener had queued but
// not run come back to the client as not processed — POSTs included — and
// are sent to the next server on the endpoint, which runs each once.
func TestDrainReturnsUnprocessed(t *testing.T) {
	ep := testEndpoint(t, "ipc")
	entered := make(chan string, 16)
	release := make(chan struct{})
	var mu sync.Mutex
	ran := map[string]int{}
	handler := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			ran[r.URL.Path]++
			mu.Unlock()
			if name == "first" {
				entered <- r.URL.Path
				<-release
			}
			io.WriteString(w, name+" "+r.URL.Path)
		})
	}
	first := startServerAt(t, ep, handler("first"), WithWorkers(1), WithQueueSize(8))
	client, tr := newClient(t, ep, WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))

	const n = 4
	results := make(chan string, n)
	for i := 0; i < n; i++ {
		go func() {
			resp, err := client.Post("http://svc/p"+string(rune('0'+i)), "text/plain", strings.NewReader("x"))
			if err != nil {
				results <- "error: " + err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- string(b)
		}()
	}
	<-entered // one runs; the others wait in the queue
	waitFor(t, 5*time.Second, "all requests to reach the server", func() bool { return first.L.Stats().InFlight == n })

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- first.Srv.Shutdown(ctx)
	}()
	waitFor(t, 5*time.Second, "the queued requests to be returned", func() bool {
		return first.L.Stats().ClosedUnanswered == n-1
	})
	close(release)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	startServerAt(t, ep, handler("second"))
	byServer := map[string]int{}
	for i := 0; i < n; i++ {
		r := <-results
		if strings.HasPrefix(r, "error") {
			t.Fatalf("request failed: %s", r)
		}
		byServer[strings.Fields(r)[0]]++
	}
	if byServer["first"] != 1 || byServer["second"] != n-1 {
		t.Errorf("answered by %v, want 1 by the first server and %d by the second", byServer, n-1)
	}
	mu.Lock()
	for path, times := range ran {
		if times != 1 {
			t.Errorf("%s ran %d times", path, times)
		}
	}
	mu.Unlock()
	if st := tr.Stats(); st.Replays != n-1 {
		t.Errorf("Replays = %d, want %d", st.Replays, n-1)
	}
}

// TestStuckPeers: a client that sends requests and never reads the replies,
// and a handler that never returns, hold up nobody else.
func TestStuckPeers(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, 256<<10)) })
	mux.HandleFunc("/forever", func(w http.ResponseWriter, r *http.Request) { <-release })
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	ts := startServer(t, "tcp", mux, WithWorkers(4))

	// A raw client asks for 64 × 256 KiB and reads none of it: far more
	// than the socket buffers hold, so the server's writer to it blocks.
	p := dialRaw(t, ts.L)
	for i := 0; i < 64; i++ {
		e := envelope{Version: 1, Kind: KindRequest, ID: uint64(i + 1), Method: "GET", URI: "/big", Host: "h"}
		b, _ := appendEnvelope(nil, &e)
		p.send(t, nil, b)
	}
	client, _ := newClient(t, ts.L.Endpoint())
	go client.Get("http://svc/forever") // holds one worker until the test ends
	waitFor(t, 5*time.Second, "the stuck client's requests to be answered", func() bool {
		st := ts.L.Stats()
		return st.Requests >= 65 && st.InFlight <= 1
	})
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/ok", nil)
		resp, err := client.Do(req)
		cancel()
		if err != nil {
			t.Fatalf("request %d while another client is stuck: %v", i, err)
		}
		resp.Body.Close()
	}
}

// throttleProxy forwards loopback TCP connections to target at about
// rate bytes per second in each direction.
func throttleProxy(t *testing.T, target string, rate int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
				time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
			}
			if err != nil {
				dst.Close()
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
	return "tcp://" + ln.Addr().String()
}

// TestSlowLinkIsNotDead: a message that takes several heartbeat timeouts
// to cross a slow link is progress, not silence: the call succeeds.
func TestSlowLinkIsNotDead(t *testing.T) {
	hb := WithHeartbeat(100*time.Millisecond, 300*time.Millisecond)
	ts := startServer(t, "tcp", echoHandler(), hb)
	ep := throttleProxy(t, ts.L.Addr().String(), 1<<20) // 1 MiB/s
	client, tr := newClient(t, ep, hb)
	body := strings.Repeat("x", 1<<20) // about 1 s each way
	resp, err := client.Post("http://svc/", "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatalf("1 MiB over a 1 MiB/s link with a 300ms heartbeat timeout: %v (%+v)", err, tr.Stats())
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(got) != len(body) {
		t.Fatalf("echoed %d bytes, want %d", len(got), len(body))
	}
	if st := ts.L.Stats(); st.SilentPeers != 0 {
		t.Fatalf("server dropped the client as silent: %+v", st)
	}
}

// TestCloseDuringHandlerIsNotResent: a POST whose handler is running when
// the server is closed abruptly fails; it is not returned as unprocessed
// and run a second time by the next server.
func TestCloseDuringHandlerIsNotResent(t *testing.T) {
	ep := testEndpoint(t, "ipc")
	var mu sync.Mutex
	ran, finished := 0, 0
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ran++
		mu.Unlock()
		select {
		case entered <- struct{}{}:
		default:
		}
		defer func() {
			mu.Lock()
			finished++
			mu.Unlock()
		}()
		// A side effect done, the body never read; http.Server.Close
		// does not stop a running handler, so the test releases it.
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	first := startServerAt(t, ep, handler)
	client, _ := newClient(t, ep, WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
	errc := make(chan error, 1)
	go func() {
		resp, err := client.Post("http://svc/pay", "text/plain", strings.NewReader("amount=10"))
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-entered
	first.Srv.Close()
	second := startServerAt(t, ep, handler)
	_ = second
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("the POST succeeded; it must fail (its handler was cut off)")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the POST did not end")
	}
	close(release)
	waitFor(t, 5*time.Second, "the handlers to return", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return finished == ran
	})
	mu.Lock()
	defer mu.Unlock()
	if ran != 1 {
		t.Fatalf("the POST handler ran %d times, want 1", ran)
	}
}
