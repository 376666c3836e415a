package zmqhttp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		// Like goleak.VerifyTestMain: nothing of ours may outlive the tests.
		for i := 0; i < 100 && len(leakedGoroutines()) > 0; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		if g := leakedGoroutines(); len(g) > 0 {
			fmt.Fprintf(os.Stderr, "goroutines left running after all tests:\n%s\n", strings.Join(g, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-URI", r.RequestURI)
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Remote", r.RemoteAddr)
		w.Header().Set("X-Proto", r.Proto)
		w.Header().Set("X-Content-Length", strconv.FormatInt(r.ContentLength, 10))
		// Read the whole body before writing: an HTTP/1.x http.Server that
		// flushes the response header (past 2 KiB of output) discards the
		// unread rest of a request body under 256 KiB, so copying as it
		// arrives echoed only the first ~4 KiB of a 64 KiB body.
		body, _ := io.ReadAll(r.Body)
		w.Write(body)
	})
}

// TestRoundTrip checks the basic contract over each transport: what the
// handler sees, what the caller gets back.
func TestRoundTrip(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, network, echoHandler())
			client, _ := newClient(t, ts.L.Endpoint())

			req, _ := http.NewRequest("POST", "http://users.internal/a%2Fb/c?x=1&y=%20", strings.NewReader("hello"))
			req.Header.Add("X-Multi", "1")
			req.Header.Add("X-Multi", "2")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(body) != "hello" {
				t.Fatalf("got %d %q, want 200 \"hello\"", resp.StatusCode, body)
			}
			for h, want := range map[string]string{
				"X-Method": "POST", "X-Uri": "/a%2Fb/c?x=1&y=%20", "X-Host": "users.internal",
				"X-Proto": "HTTP/1.1", "X-Content-Length": "5",
			} {
				if got := resp.Header.Get(h); got != want {
					t.Errorf("handler saw %s = %q, want %q", h, got, want)
				}
			}
			if resp.Header.Get("X-Remote") == "" {
				t.Error("handler saw an empty RemoteAddr")
			}
			// http.Client passes RoundTrip a copy of req (to attach its
			// Timeout), so compare the request by content.
			if resp.Proto != "HTTP/1.1" || resp.ContentLength != 5 || resp.Request == nil || resp.Request.URL.String() != req.URL.String() {
				t.Errorf("response fields: Proto %q ContentLength %d Request %v", resp.Proto, resp.ContentLength, resp.Request)
			}
		})
	}
}

// TestConcurrent64 runs 64 goroutines sharing one Transport; every caller
// must get its own reply.
func TestConcurrent64(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, network, echoHandler())
			client, tr := newClient(t, ts.L.Endpoint())
			const callers, each = 64, 50
			var wg sync.WaitGroup
			var failures atomic.Int64
			for g := 0; g < callers; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						want := fmt.Sprintf("caller %d request %d %s", g, i, strings.Repeat("x", i*7))
						resp, err := client.Post("http://svc/echo", "text/plain", strings.NewReader(want))
						if err != nil {
							failures.Add(1)
							t.Error(err)
							return
						}
						got, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if string(got) != want {
							failures.Add(1)
							t.Errorf("caller %d got %q, want %q", g, got, want)
							return
						}
					}
				}()
			}
			wg.Wait()
			if failures.Load() == 0 && tr.Stats().Pending != 0 {
				t.Errorf("%d calls still pending after all returned", tr.Stats().Pending)
			}
		})
	}
}

// blockingHandler blocks each request until release is closed or the
// request's context ends; entered receives one value per request started.
func blockingHandler(entered chan<- string, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if entered != nil {
			entered <- r.URL.Path
		}
		select {
		case <-release:
			io.WriteString(w, "released "+r.URL.Path)
		case <-r.Context().Done():
		}
	})
}

func TestDeadlineAndCancel(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			ts := startServer(t, network, blockingHandler(nil, release))
			client, tr := newClient(t, ts.L.Endpoint())
			defer close(release)

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/slow", nil)
			_, err := client.Do(req)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("deadline: got %v, want an error wrapping context.DeadlineExceeded", err)
			}

			ctx2, cancel2 := context.WithCancel(context.Background())
			req2, _ := http.NewRequestWithContext(ctx2, "GET", "http://svc/cancelled", nil)
			done := make(chan error, 1)
			go func() {
				_, err := client.Do(req2)
				done <- err
			}()
			time.Sleep(50 * time.Millisecond)
			cancel2()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("cancel: got %v, want an error wrapping context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("cancel did not end the call")
			}
			if n := tr.Stats().Pending; n != 0 {
				t.Errorf("%d calls still pending after deadline and cancel", n)
			}
		})
	}
}

// TestLateReplyDropped: a reply that arrives after its caller gave up is
// counted and dropped, and does not reach anybody else. (A zmqhttp server
// would not send it: the cancel reaches the handler and its reply is
// suppressed. This server ignores cancels and answers anyway.)
func TestLateReplyDropped(t *testing.T) {
	held := make(chan uint64, 1)
	release := make(chan struct{})
	f := startFake(t, func(i int, c *fakeConn) {
		for {
			e, err := c.recv()
			if err != nil {
				return
			}
			switch {
			case e.Kind == KindHello:
				c.send(&envelope{Version: 1, Kind: KindHello, Flags: ourCaps})
			case e.Kind == KindRequest && e.URI == "/late":
				held <- e.ID
				go func(id uint64) {
					<-release
					c.send(okResponse(id, "late"))
				}(e.ID)
			case e.Kind == KindRequest:
				c.send(okResponse(e.ID, "released "+e.URI))
			}
		}
	})
	client, tr := newClient(t, f.endpoint())
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/late", nil)
	errc := make(chan error, 1)
	go func() { _, err := client.Do(req); errc <- err }()
	<-held
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	close(release)
	waitFor(t, 5*time.Second, "the late reply to be counted", func() bool { return tr.Stats().LateReplies == 1 })
	resp, err := client.Get("http://svc/next")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "released /next" {
		t.Fatalf("next call got %q", body)
	}
}

// TestOverload: with every worker busy and the queue full, the Listener
// answers 503 with Retry-After and the handler does not run.
func TestOverload(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			entered := make(chan string, 10)
			release := make(chan struct{})
			ts := startServer(t, network, blockingHandler(entered, release), WithWorkers(1), WithQueueSize(1), WithRetryAfter(2*time.Second))
			client, _ := newClient(t, ts.L.Endpoint())

			type result struct {
				status int
				body   string
				err    error
			}
			results := make(chan result, 2)
			get := func(path string) {
				resp, err := client.Get("http://svc" + path)
				if err != nil {
					results <- result{err: err}
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				results <- result{status: resp.StatusCode, body: string(b)}
			}
			go get("/first")
			if p := <-entered; p != "/first" {
				t.Fatalf("handler entered for %s", p)
			}
			go get("/queued")
			waitFor(t, 5*time.Second, "the second request to be queued", func() bool { return ts.L.Stats().InFlight == 2 })

			resp, err := client.Get("http://svc/rejected")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "2" {
				t.Fatalf("overloaded: got %d Retry-After %q, want 503 and 2", resp.StatusCode, resp.Header.Get("Retry-After"))
			}
			if got := ts.L.Stats().Overloaded; got != 1 {
				t.Errorf("Overloaded counter = %d, want 1", got)
			}
			close(release)
			for i := 0; i < 2; i++ {
				r := <-results
				if r.err != nil || r.status != 200 || !strings.HasPrefix(r.body, "released /") {
					t.Errorf("admitted request: %+v", r)
				}
			}
			select {
			case p := <-entered:
				if p == "/rejected" {
					t.Error("handler ran for the rejected request")
				}
			default:
			}
		})
	}
}

// TestTransportClose: Close fails pending calls with ErrTransportClosed,
// later calls too, and leaves no goroutine behind.
func TestTransportClose(t *testing.T) {
	entered := make(chan string, 1)
	release := make(chan struct{})
	ts := startServer(t, "tcp", blockingHandler(entered, release))
	defer close(release)
	tr, err := NewTransport(ts.L.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: tr}
	errc := make(chan error, 1)
	go func() { _, err := client.Get("http://svc/pending"); errc <- err }()
	<-entered
	tr.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrTransportClosed) {
			t.Fatalf("pending call: got %v, want ErrTransportClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not fail the pending call")
	}
	if _, err := client.Get("http://svc/after"); !errors.Is(err, ErrTransportClosed) {
		t.Fatalf("call after Close: got %v, want ErrTransportClosed", err)
	}
	tr.Close() // idempotent
}

// TestNoGoroutineLeft: a Transport and a Listener that served requests,
// once closed, leave nothing of this package running. It is not parallel,
// so parallel tests are paused while it checks.
func TestNoGoroutineLeft(t *testing.T) {
	for _, network := range testNetworks {
		func() {
			l, err := Listen(testEndpoint(t, network))
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: echoHandler()}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(l) }()
			tr, err := NewTransport(l.Endpoint())
			if err != nil {
				t.Fatal(err)
			}
			client := &http.Client{Transport: tr}
			for i := 0; i < 20; i++ {
				resp, err := client.Post("http://svc/", "text/plain", strings.NewReader("x"))
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Fatalf("Serve returned %v, want http.ErrServerClosed", err)
			}
			tr.Close()
		}()
	}
	checkNoLeaks(t)
}

func TestAcceptAfterClose(t *testing.T) {
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	// Once: the drain connection, whose Read ends when every peer has
	// left (none here: at once).
	dc, err := l.Accept()
	if err != nil {
		t.Fatalf("first Accept after Close: %v, want the drain connection", err)
	}
	if n, err := dc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("drain connection Read: %d, %v; want 0, EOF", n, err)
	}
	dc.Close()
	_, err = l.Accept()
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("Accept after Close must not be a timeout")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestShutdownAnswersInFlight: srv.Shutdown waits for requests the server
// accepted and each gets its response.
func TestShutdownAnswersInFlight(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			const n = 8
			entered := make(chan string, n)
			release := make(chan struct{})
			ts := startServer(t, network, blockingHandler(entered, release))
			client, _ := newClient(t, ts.L.Endpoint())
			errs := make(chan error, n)
			for i := 0; i < n; i++ {
				go func() {
					resp, err := client.Get(fmt.Sprintf("http://svc/r%d", i))
					if err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "released") {
							err = fmt.Errorf("got %d %q", resp.StatusCode, b)
						}
					}
					errs <- err
				}()
			}
			for i := 0; i < n; i++ {
				<-entered
			}
			shut := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				shut <- ts.Srv.Shutdown(ctx)
			}()
			time.Sleep(50 * time.Millisecond) // let Shutdown close the listener first
			close(release)
			for i := 0; i < n; i++ {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			if err := <-shut; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		})
	}
}

// TestRequestBeforeServer: a request made before any server listens waits
// for the connection and is served once the server starts.
func TestRequestBeforeServer(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			ep := testEndpoint(t, network)
			if network == "tcp" {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				ep = "tcp://" + ln.Addr().String()
				ln.Close()
			}
			client, _ := newClient(t, ep, WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
			errc := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/early", strings.NewReader("early"))
				resp, err := client.Do(req)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if string(b) != "early" {
						err = fmt.Errorf("got %q", b)
					}
				}
				errc <- err
			}()
			time.Sleep(300 * time.Millisecond)
			startServerAt(t, ep, echoHandler())
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNotConnectedError: a request whose deadline passes while no server
// exists says why it could not connect.
func TestNotConnectedError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "tcp://" + ln.Addr().String()
	ln.Close()
	client, _ := newClient(t, ep, WithReconnectBackoff(5*time.Millisecond, 20*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	_, err = client.Do(req)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("got %v, want a deadline error that says it is not connected", err)
	}
}

// TestRegisterProtocol: one http.Client sends zmq:// URLs over zmqhttp and
// http:// URLs over plain HTTP.
func TestRegisterProtocol(t *testing.T) {
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "zmq "+r.Host+r.URL.Path)
	}))
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "http "+r.URL.Path)
	}))
	defer plain.Close()
	_, zt := newClient(t, ts.L.Endpoint())
	ht := &http.Transport{}
	ht.RegisterProtocol("zmq", zt)
	defer ht.CloseIdleConnections()
	client := &http.Client{Transport: ht, Timeout: 10 * time.Second}
	for url, want := range map[string]string{
		"zmq://users/u/1":  "zmq users/u/1",
		plain.URL + "/p/2": "http /p/2",
	} {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Errorf("GET %s = %q, want %q", url, b, want)
		}
	}
}

// TestHandlerPanic: a handler that panics ends the call with a RemoteError
// (over TCP the client would see the connection close), and the server
// keeps serving.
func TestHandlerPanic(t *testing.T) {
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	}))
	client, _ := newClient(t, ts.L.Endpoint())
	_, err := client.Get("http://svc/panic")
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != 500 {
		t.Fatalf("got %v, want a RemoteError 500", err)
	}
	resp, err := client.Get("http://svc/ok")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after panic: %d", resp.StatusCode)
	}
}

// TestBodyLimits: a request over the server's limits is answered 413 like
// an HTTP server would, without the handler; a message over the frame limit
// is discarded unread and answered 413 too, and the shared connection, with
// another caller's request in flight on it, survives.
func TestBodyLimits(t *testing.T) {
	entered := make(chan string, 4)
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.Handle("/slow", blockingHandler(entered, release))
	mux.Handle("/", echoHandler())
	ts := startServer(t, "tcp", mux, WithLimits(Limits{MaxBodyBytes: 1024, MaxHeaderBytes: 1024, MaxHeaderFields: 16}))
	client, tr := newClient(t, ts.L.Endpoint(), WithLimits(Limits{MaxBodyBytes: 1 << 20}))

	slow := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://svc/slow")
		if err == nil {
			resp.Body.Close()
		}
		slow <- err
	}()
	<-entered

	for _, size := range []int{4096, 64 << 10} { // over the body limit; over the frame limit
		resp, err := client.Post("http://svc/", "text/plain", bytes.NewReader(make([]byte, size)))
		if err != nil {
			t.Fatalf("%d-byte body: %v", size, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("%d-byte body: status %d, want 413", size, resp.StatusCode)
		}
	}
	// Over the client's own limit: refused before sending.
	client2, _ := newClient(t, ts.L.Endpoint(), WithLimits(Limits{MaxBodyBytes: 100}))
	_, err := client2.Post("http://svc/", "text/plain", bytes.NewReader(make([]byte, 101)))
	if !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("over client limit: got %v, want ErrBodyTooLarge", err)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("the other caller's request failed: %v", err)
	}
	if st := tr.Stats(); st.ConnectionsLost != 0 || st.Connects != 1 {
		t.Fatalf("connection did not survive: %+v", st)
	}
	if got := ts.L.Stats().Rejected; got != 2 {
		t.Errorf("Rejected = %d, want 2", got)
	}
}

// rawPeer is a hand-driven ZeroMQ DEALER for feeding a Listener bad input.
type rawPeer struct {
	nc net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func dialRaw(t *testing.T, l *Listener) *rawPeer {
	t.Helper()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	br, _, err := handshake(nc, zmq4.Dealer, false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return &rawPeer{nc: nc, br: br, bw: bufio.NewWriter(nc)}
}

func (p *rawPeer) send(t *testing.T, frames ...[]byte) {
	t.Helper()
	for i, f := range frames {
		if err := writeFrame(p.bw, f, i < len(frames)-1); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.bw.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (p *rawPeer) recvEnvelope(t *testing.T) envelope {
	t.Helper()
	p.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	frames, _, err := readMessage(p.br, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 2 || len(frames[0]) != 0 {
		t.Fatalf("reply has %d frames", len(frames))
	}
	var e envelope
	if err := decodeEnvelope(frames[1], Limits{}, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestBadInputFromNetwork: malformed messages get an error reply or are
// dropped and counted, and the connection carries on; an oversized frame
// makes the server close only that connection; no input panics the server
// or disturbs another client. Each step checks what the server did, not
// merely that a read ended.
func TestBadInputFromNetwork(t *testing.T) {
	ts := startServer(t, "tcp", echoHandler())
	client, _ := newClient(t, ts.L.Endpoint())
	// The other client is connected before the raw peer comes.
	if resp, err := client.Get("http://svc/"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	p := dialRaw(t, ts.L)
	waitFor(t, 5*time.Second, "the raw peer to be counted", func() bool { return ts.L.Stats().Peers == 2 })
	checkCounts := func(step string, bad, rejected uint64) {
		t.Helper()
		st := ts.L.Stats()
		if st.BadMessages != bad || st.Rejected != rejected || st.Peers != 2 {
			t.Fatalf("after %s: BadMessages %d, Rejected %d, Peers %d; want %d, %d, 2 (stats %+v)",
				step, st.BadMessages, st.Rejected, st.Peers, bad, rejected, st)
		}
	}

	// Not msgpack at all: dropped (no reply: the next reply read below is
	// the next step's), counted, the connection kept.
	p.send(t, nil, []byte("GET / HTTP/1.1\r\n"))
	waitFor(t, 5*time.Second, "the bad message to be counted", func() bool { return ts.L.Stats().BadMessages == 1 })
	checkCounts("a message that is not msgpack", 1, 0)

	// Another version: answered with an error envelope naming it.
	p.send(t, nil, []byte{0x93, 0x02, 0x01, 0x2a})
	e := p.recvEnvelope(t)
	if e.Kind != KindError || e.ID != 42 || e.Status != errCodeUnsupported || !strings.Contains(e.Message, "version") {
		t.Fatalf("version 2: got %+v", e)
	}
	checkCounts("an envelope of version 2", 1, 1)
	// A reserved kind (chunk) is not misread as anything else.
	p.send(t, nil, []byte{0x93, 0x01, byte(maxKnownKind + 1), 0x07})
	e = p.recvEnvelope(t)
	if e.Kind != KindError || e.ID != 7 || e.Status != errCodeUnsupported {
		t.Fatalf("unknown kind: got %+v", e)
	}
	checkCounts("an envelope of a reserved kind", 1, 2)
	// Header injection attempt: answered 400 without running the handler
	// (the echo handler would answer 200).
	bad := envelope{Version: 1, Kind: KindRequest, ID: 9, Method: "GET", URI: "/", Host: "h",
		Header: []string{"X-A", "1\r\nX-Injected: yes"}}
	b, _ := appendEnvelope(nil, &bad)
	p.send(t, nil, b)
	e = p.recvEnvelope(t)
	if e.Kind != KindResponse || e.ID != 9 || e.Status != http.StatusBadRequest {
		t.Fatalf("header injection: got %+v", e)
	}
	checkCounts("a header injection attempt", 1, 3)
	// The connection still works after all that: a good request on it is
	// answered.
	good := envelope{Version: 1, Kind: KindRequest, ID: 10, Method: "POST", URI: "/", Host: "h",
		Body: []byte("ok"), ContentLength: 2}
	b, _ = appendEnvelope(nil, &good)
	p.send(t, nil, b)
	e = p.recvEnvelope(t)
	if e.Kind != KindResponse || e.ID != 10 || e.Status != http.StatusOK || string(e.Body) != "ok" {
		t.Fatalf("a good request after the bad ones: got kind %s id %d status %d body %q", e.Kind, e.ID, e.Status, e.Body)
	}

	// A frame that announces 2^50 bytes: the server closes this
	// connection. The read must end with EOF or a reset from the server,
	// not with our own deadline.
	hdr := []byte{flagLong, 0, 0x04, 0, 0, 0, 0, 0, 0}
	if _, err := p.nc.Write(hdr); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	p.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, p.br)
	switch {
	case err == nil, errors.Is(err, syscall.ECONNRESET):
		t.Logf("the server closed the connection %v after the oversized frame header (%d bytes before the close; read error %v)",
			time.Since(sent).Round(time.Microsecond), n, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatalf("the server did not close the connection within 5s of a frame announcing 2^50 bytes (stats %+v)", ts.L.Stats())
	default:
		t.Fatalf("reading after the oversized frame: %v, want EOF or a connection reset", err)
	}
	waitFor(t, 5*time.Second, "the closed connection to leave the Listener's peers", func() bool { return ts.L.Stats().Peers == 1 })
	t.Logf("Listener stats after the oversized frame: %+v", ts.L.Stats())

	// Other clients are unaffected.
	resp, err := client.Post("http://svc/", "text/plain", strings.NewReader("still here"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != "still here" {
		t.Fatalf("got %q", got)
	}
}

// TestSilentConnectionDoesNotBlockOthers: a TCP client that never sends
// its ZMTP greeting does not delay anybody else's handshake.
func TestSilentConnectionDoesNotBlockOthers(t *testing.T) {
	ts := startServer(t, "tcp", echoHandler(), WithHandshakeTimeout(30*time.Second))
	silent, err := net.Dial("tcp", ts.L.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	client, _ := newClient(t, ts.L.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestNonCanonicalFramingHeaders: framing headers spelled in lower case by
// a foreign peer are not passed to the server as a second framing, and the
// worker is not held waiting for body bytes that do not exist.
func TestNonCanonicalFramingHeaders(t *testing.T) {
	ts := startServer(t, "tcp", echoHandler(), WithWorkers(1))
	p := dialRaw(t, ts.L)
	for i, hdr := range [][]string{
		{"content-length", "5"},
		{"transfer-encoding", "chunked"},
		{"host", "evil"},
	} {
		e := envelope{Version: 1, Kind: KindRequest, ID: uint64(100 + i), Method: "POST", URI: "/", Host: "h",
			Header: hdr, Body: []byte("abc"), ContentLength: 3}
		b, _ := appendEnvelope(nil, &e)
		p.send(t, nil, b)
		r := p.recvEnvelope(t)
		if r.Kind != KindResponse || r.ID != e.ID || r.Status != 200 || string(r.Body) != "abc" {
			t.Errorf("header %q: got kind %s id %d status %d body %q", hdr, r.Kind, r.ID, r.Status, r.Body)
		}
	}
}

// TestReplyOverClientLimit: a reply over the client's limit fails only its
// own call, with ErrBodyTooLarge; the connection stays up.
func TestReplyOverClientLimit(t *testing.T) {
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big-declared":
			w.Header().Set("Content-Length", strconv.Itoa(256<<10))
			fallthrough
		case "/big":
			w.Write(make([]byte, 256<<10))
			return
		}
		io.WriteString(w, "small")
	}))
	client, tr := newClient(t, ts.L.Endpoint(), WithLimits(Limits{MaxBodyBytes: 1024, MaxHeaderBytes: 1024, MaxHeaderFields: 16}))
	// A streamed response of unknown length fails when the body read
	// passes the limit; one with a declared length fails at once.
	resp, err := client.Get("http://svc/big")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("got %v, want ErrBodyTooLarge", err)
	}
	if resp, err = client.Get("http://svc/big-declared"); !errors.Is(err, ErrBodyTooLarge) {
		if err == nil {
			resp.Body.Close()
		}
		t.Fatalf("declared length: got %v, want ErrBodyTooLarge", err)
	}
	resp, err = client.Get("http://svc/small")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st := tr.Stats(); st.ConnectionsLost != 0 {
		t.Fatalf("connection lost: %+v", st)
	}
}

// TestHandshakeHugeFrame: a peer whose READY command announces 2^46 bytes
// is refused before zmq4 allocates anything; the server lives on.
func TestHandshakeHugeFrame(t *testing.T) {
	ts := startServer(t, "tcp", echoHandler())
	nc, err := net.Dial("tcp", ts.L.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	greeting := make([]byte, 64)
	greeting[0], greeting[9], greeting[10] = 0xff, 0x7f, 3
	copy(greeting[12:], "NULL")
	nc.Write(greeting)
	nc.Write([]byte{flagCommand | flagLong, 0, 0, 0x40, 0, 0, 0, 0, 0})
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, nc); err != nil {
		t.Fatalf("the server did not close the connection: %v", err)
	}
	waitFor(t, 5*time.Second, "the handshake failure to be counted", func() bool { return ts.L.Stats().HandshakeFailed == 1 })
	client, _ := newClient(t, ts.L.Endpoint())
	resp, err := client.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestAnnouncedFramesCostLittle: peers that announce large frames and send
// a byte do not make the server allocate what they announced.
func TestAnnouncedFramesCostLittle(t *testing.T) {
	ts := startServer(t, "tcp", echoHandler())
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const peers = 16
	for i := 0; i < peers; i++ {
		p := dialRaw(t, ts.L)
		p.send(t, nil)                                        // an empty delimiter frame with MORE set below
		hdr := []byte{flagLong, 0, 0, 0, 0, 0x01, 0xf0, 0, 0} // ~31 MiB, under the default limit
		p.nc.Write(append(hdr, 'x'))
	}
	time.Sleep(200 * time.Millisecond) // let the readers block in the frames
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 64<<20 {
		t.Fatalf("heap grew by %d MiB for %d peers that sent one byte each", grown>>20, peers)
	}
}
