package zmqhttp

// The broker (proxy.go) and servers that connect (Listen(">...")), in one
// process: dispatch by load, routing by Host, holding requests while no
// server is connected, draining and dying servers, CANCEL, a broker
// restart.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// startProxy runs a Proxy on loopback ports (or the given endpoints),
// closed at cleanup.
func startProxy(t testing.TB, frontend, backend string, opts ...Option) *Proxy {
	t.Helper()
	if frontend == "" {
		frontend = "tcp://127.0.0.1:0"
	}
	if backend == "" {
		backend = "tcp://127.0.0.1:0"
	}
	p, err := NewProxy(frontend, backend, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func frontendOf(p *Proxy) string { return "tcp://" + p.FrontendAddr().String() }

// ipcBackend returns a unix socket endpoint of the test's own for a
// Proxy's backend: unlike an ephemeral tcp port, no server of another
// (parallel) test still dialling its own closed proxy can reach it.
func ipcBackend(t testing.TB) string {
	dir, err := os.MkdirTemp("", "zp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return "ipc://" + filepath.Join(dir, "b.sock")
}

// dialEndpoint opens a raw connection to a tcp:// or ipc:// endpoint.
func dialEndpoint(ep string) (net.Conn, error) {
	if path, ok := strings.CutPrefix(ep, "ipc://"); ok {
		return net.Dial("unix", path)
	}
	return net.Dial("tcp", strings.TrimPrefix(ep, "tcp://"))
}

func backendOf(p *Proxy) string {
	if a := p.BackendAddr(); a.Network() == "unix" {
		return "ipc://" + a.String()
	}
	return "tcp://" + p.BackendAddr().String()
}

// waitServers waits until the proxy has n servers that announced
// themselves.
func waitServers(t testing.TB, p *Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(p.Stats().Servers) != n {
		if time.Now().After(deadline) {
			t.Fatalf("proxy has %d servers, want %d", len(p.Stats().Servers), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nameHandler answers with its name after sleeping d, counting its runs.
func nameHandler(name string, d time.Duration, runs *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if runs != nil {
			runs.Add(1)
		}
		time.Sleep(d)
		io.WriteString(w, name)
	})
}

func getBody(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestListenConnectEndpoint(t *testing.T) {
	t.Parallel()
	l, err := Listen(">tcp://127.0.0.1:1") // nobody there: returns at once anyway
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Endpoint(); got != ">tcp://127.0.0.1:1" {
		t.Errorf("Endpoint() = %q", got)
	}
	if a := l.Addr(); a.Network() != "tcp" || a.String() != "127.0.0.1:1" {
		t.Errorf("Addr() = %s %s", a.Network(), a)
	}
	start := time.Now()
	l.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	l.Accept() // the drain connection
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	if _, err := Listen(">>tcp://127.0.0.1:1"); err == nil {
		t.Error("two prefixes accepted")
	}
	l2, err := Listen("@tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if !strings.HasPrefix(l2.Endpoint(), "tcp://127.0.0.1:") {
		t.Errorf("@ endpoint: %q", l2.Endpoint())
	}
}

// TestProxySpread: three servers with 4 workers each behind the proxy, 24
// callers: every server gets a fair share, in flight never exceeds a
// server's workers.
func TestProxySpread(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	var runs [3]atomic.Int64
	for i := range runs {
		startServerAt(t, ">"+backendOf(p), nameHandler(fmt.Sprint(i), 10*time.Millisecond, &runs[i]), WithWorkers(4))
	}
	waitServers(t, p, 3)
	c, _ := newClient(t, frontendOf(p))
	var wg sync.WaitGroup
	var failed atomic.Int64
	var maxIn atomic.Int64
	for g := 0; g < 24; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				code, _, err := getBody(c, "http://svc/x")
				if err != nil || code != 200 {
					failed.Add(1)
				}
				for _, s := range p.Stats().Servers {
					if int64(s.InFlight) > maxIn.Load() {
						maxIn.Store(int64(s.InFlight))
					}
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	total := runs[0].Load() + runs[1].Load() + runs[2].Load()
	for i := range runs {
		if n := runs[i].Load(); n < total/6 {
			t.Errorf("server %d ran %d of %d", i, n, total)
		}
	}
	if maxIn.Load() > 4 {
		t.Errorf("a server had %d in flight, workers 4", maxIn.Load())
	}
	st := p.Stats()
	if st.Requests != 240 || len(st.Servers) != 3 || st.Servers[0].Workers != 4 {
		t.Errorf("stats: %+v", st)
	}
}

// TestProxyHostRouting: two services behind one proxy; an unknown host
// gets 502 naming it.
func TestProxyHostRouting(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	startServerAt(t, ">"+backendOf(p), nameHandler("a", 0, nil), WithServices("a.example"))
	startServerAt(t, ">"+backendOf(p), nameHandler("b", 0, nil), WithServices("B.example", "c.example"))
	waitServers(t, p, 2)
	c, _ := newClient(t, frontendOf(p))
	for _, tc := range []struct{ host, want string }{
		{"a.example", "a"}, {"b.example:8080", "b"}, {"C.EXAMPLE", "b"}, {"a.example", "a"},
	} {
		code, body, err := getBody(c, "http://"+tc.host+"/")
		if err != nil || code != 200 || body != tc.want {
			t.Errorf("%s: %d %q %v, want %q", tc.host, code, body, err, tc.want)
		}
	}
	code, body, err := getBody(c, "http://nobody.example/")
	if err != nil || code != http.StatusBadGateway || !strings.Contains(body, "nobody.example") {
		t.Errorf("unknown host: %d %q %v, want 502 naming the host", code, body, err)
	}
	if p.Stats().Unrouted != 1 {
		t.Errorf("Unrouted = %d", p.Stats().Unrouted)
	}
}

// TestProxyHoldsRequests: with no server connected, a request waits for
// one (and is served once it connects); one whose deadline passes first
// fails with its deadline.
func TestProxyHoldsRequests(t *testing.T) {
	t.Parallel()
	// An ipc backend: with a tcp port, a server of another test still
	// dialling the port, handed out again to this proxy, answered the
	// request that must find no server (2 runs in 20 under load).
	p := startProxy(t, "", ipcBackend(t))
	c, _ := newClient(t, frontendOf(p))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	start := time.Now()
	// The proxy answers 504 when the deadline it was given passes: that
	// answer and the caller's own deadline race, either may come first.
	if resp, err := c.Do(req); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if d := time.Since(start); resp.StatusCode != http.StatusGatewayTimeout || d < 150*time.Millisecond {
			t.Errorf("no server: answered %d %q after %v, want the deadline", resp.StatusCode, b, d)
		}
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no server: %v, want the deadline", err)
	} else if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("failed after %v", d)
	}
	done := make(chan error, 1)
	go func() {
		code, body, err := getBody(c, "http://svc/")
		if err == nil && (code != 200 || body != "late") {
			err = fmt.Errorf("%d %q", code, body)
		}
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("answered before any server connected: %v", err)
	default:
	}
	if q := p.Stats().Queued; q != 1 {
		t.Errorf("queued %d, want 1", q)
	}
	startServerAt(t, ">"+backendOf(p), nameHandler("late", 0, nil))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("held request not served after a server connected")
	}
}

// TestProxyQueueFull: one server with one worker, a queue of 2: the
// fourth concurrent request gets 503 with Retry-After.
func TestProxyQueueFull(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "", WithQueueSize(2))
	release := make(chan struct{})
	startServerAt(t, ">"+backendOf(p), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}), WithWorkers(1))
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p))
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); getBody(c, "http://svc/") }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Queued != 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := c.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("queue full: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	close(release)
	wg.Wait()
}

// TestProxyServerShutdown: callers keep sending GETs and POSTs while one of
// two servers shuts down gracefully: no client sees an error and no POST
// runs twice.
func TestProxyServerShutdown(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	var log runLog
	h := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			if r.Method == "POST" {
				log.add(r.Header.Get("X-Id"))
			}
			time.Sleep(2 * time.Millisecond)
			io.WriteString(w, name)
		})
	}
	a := startServerAt(t, ">"+backendOf(p), h("a"), WithWorkers(4))
	startServerAt(t, ">"+backendOf(p), h("b"), WithWorkers(4))
	waitServers(t, p, 2)
	c, _ := newClient(t, frontendOf(p))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var errs atomic.Int64
	var seq atomic.Int64
	var firstErr atomic.Value
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprint(seq.Add(1))
				var req *http.Request
				if g%2 == 0 {
					req, _ = http.NewRequest("POST", "http://svc/", strings.NewReader("x"))
				} else {
					req, _ = http.NewRequest("GET", "http://svc/", nil)
				}
				req.Header.Set("X-Id", id)
				resp, err := c.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}(g)
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if errs.Load() != 0 {
		t.Errorf("%d client errors, first: %v", errs.Load(), firstErr.Load())
	}
	log.mu.Lock()
	for id, n := range log.runs {
		if n > 1 {
			t.Errorf("POST %s ran %d times", id, n)
		}
	}
	log.mu.Unlock()
	waitServers(t, p, 1)
}

// TestProxyCancel: a client's cancelled request reaches the server running
// it as a cancelled r.Context().
func TestProxyCancel(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	started := make(chan struct{}, 1)
	canceled := make(chan struct{}, 1)
	ts := startServerAt(t, ">"+backendOf(p), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/warm" {
			return
		}
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			canceled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}))
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p))
	// CANCEL goes only to a peer whose HELLO answer arrived: one round
	// trip first.
	if code, _, err := getBody(c, "http://svc/warm"); err != nil || code != 200 {
		t.Fatalf("warm-up: %d %v", code, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Do(req)
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client: %v", err)
	}
	select {
	case <-canceled:
	case <-time.After(2 * time.Second):
		t.Fatalf("the handler's context was not cancelled; proxy %+v; server %+v", p.Stats(), ts.L.Stats())
	}
	if in := p.Stats().InFlight; in != 0 {
		t.Errorf("in flight after cancel: %d", in)
	}
}

// dyingBackend connects to a proxy's backend as a server would, announces
// one worker, and closes its connection as soon as a request arrives (a
// server killed while running it).
func dyingBackend(t *testing.T, backend string) chan string {
	t.Helper()
	got := make(chan string, 16)
	raw, err := dialEndpoint(backend)
	if err != nil {
		t.Fatal(err)
	}
	nc := newLiveConn(raw)
	br, typ, err := handshakeAs(nc, zmq4.Router, []zmq4.SocketType{zmq4.Dealer}, false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h := &dyingServer{got: got}
	l := newLink(nc, br, typ, h, linkConfig{hbInterval: time.Second, hbTimeout: 3 * time.Second, server: true,
		hello: []string{"Workers", "1"}})
	l.start()
	t.Cleanup(func() { l.close(errProxyClosed); l.wait() })
	return got
}

type dyingServer struct{ got chan string }

func (d *dyingServer) handle(l *link, env *envelope, _ []byte, _ [][]byte) {
	if env.Kind == KindRequest {
		d.got <- env.Method
		l.close(errors.New("killed"))
	}
}
func (d *dyingServer) bad(*link, [][]byte, error) {}

// TestProxyServerDies: a server dies while running a GET and a POST: the
// GET is re-sent to another server and succeeds; the POST fails at the
// client with ErrConnectionLost (not a *RemoteError), at once.
func TestProxyServerDies(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	c, _ := newClient(t, frontendOf(p))
	for _, method := range []string{"POST", "GET"} {
		got := dyingBackend(t, backendOf(p))
		waitServers(t, p, 1)
		res := make(chan error, 1)
		go func() {
			req, _ := http.NewRequest(method, "http://svc/", strings.NewReader("body"))
			resp, err := c.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != "good" {
					err = fmt.Errorf("body %q", b)
				}
			}
			res <- err
		}()
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("the request never reached the server: %+v", p.Stats())
		}
		waitServers(t, p, 0)
		start := time.Now()
		if method == "GET" {
			startServerAt(t, ">"+backendOf(p), nameHandler("good", 0, nil))
			if err := <-res; err != nil {
				t.Errorf("GET: %v", err)
			}
			continue
		}
		err := <-res
		var re *RemoteError
		if !errors.Is(err, ErrConnectionLost) || errors.As(err, &re) {
			t.Errorf("POST: %v, want ErrConnectionLost", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("POST failed after %v", d)
		}
	}
	st := p.Stats()
	if st.Evictions != 2 || st.Lost != 1 || st.Resent != 1 {
		t.Errorf("stats: %+v", st)
	}
}

// TestProxyBrokerRestart: servers that connect come back by themselves
// after the broker restarts on the same ports, and clients recover within
// 3 s.
func TestProxyBrokerRestart(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	front, back := frontendOf(p), backendOf(p)
	for i := 0; i < 2; i++ {
		startServerAt(t, ">"+back, nameHandler("s", 0, nil))
	}
	waitServers(t, p, 2)
	c, _ := newClient(t, front)
	if code, _, err := getBody(c, "http://svc/"); err != nil || code != 200 {
		t.Fatalf("before restart: %d %v", code, err)
	}
	p.Close()
	time.Sleep(200 * time.Millisecond)
	p2 := startProxy(t, front, back)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	resp.Body.Close()
	t.Logf("served %v after the restart", time.Since(start))
	waitServers(t, p2, 2)
}

// TestProxyStreamedBodies: an 8 MiB upload of unknown length echoed back
// streamed, and a 16 MiB download, pass through the proxy intact, and a
// cancelled streamed download stops its handler.
func TestProxyStreamedBodies(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	handlerDone := make(chan error, 1)
	startServerAt(t, ">"+backendOf(p), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo": // read first: net/http's HTTP/1 server is not full duplex
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		case "/download":
			chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
			for i := 0; i < 256; i++ { // 16 MiB
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		case "/endless":
			chunk := make([]byte, 64<<10)
			for {
				if _, err := w.Write(chunk); err != nil {
					handlerDone <- err
					return
				}
			}
		}
	}))
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p))

	payload := make([]byte, 8<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	pr, pw := io.Pipe()
	go func() {
		for off := 0; off < len(payload); off += 100 << 10 {
			pw.Write(payload[off:min(off+100<<10, len(payload))])
		}
		pw.Close()
	}()
	resp, err := c.Post("http://svc/echo", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}

	resp, err = c.Get("http://svc/download")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 16<<20 {
		t.Fatalf("download: %d bytes, %v", n, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/endless", nil)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(io.Discard, resp.Body, 4<<20)
	cancel()
	resp.Body.Close()
	select {
	case <-handlerDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the endless handler did not stop after the client cancelled")
	}
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().InFlight != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := p.Stats(); st.InFlight != 0 {
		t.Errorf("in flight after everything ended: %+v", st)
	}
}

// TestProxyEvictsSilentServer: a server that announces itself and then
// goes silent (no PONG, no PING, its connection open) is evicted within
// the heartbeat timeout, and its replayable request runs elsewhere.
func TestProxyEvictsSilentServer(t *testing.T) {
	t.Parallel()
	const hbTimeout = 300 * time.Millisecond
	p := startProxy(t, "", "", WithHeartbeat(100*time.Millisecond, hbTimeout))
	raw, err := dialEndpoint(backendOf(p))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	br, _, err := handshakeAs(raw, zmq4.Router, []zmq4.SocketType{zmq4.Dealer}, false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = br // never read again: the server is frozen
	hello, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindHello, Flags: ourCaps,
		Timeout: 100000, Header: []string{"Workers", "4"}})
	w := bufio.NewWriter(raw)
	writeEnvelopeMsg(w, hello)
	w.Flush()
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p), WithHeartbeat(100*time.Millisecond, hbTimeout))
	res := make(chan error, 1)
	go func() {
		code, body, err := getBody(c, "http://svc/")
		if err == nil && (code != 200 || body != "alive") {
			err = fmt.Errorf("%d %q", code, body)
		}
		res <- err
	}()
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	for p.Stats().Evictions == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(start); p.Stats().Evictions != 1 || d > 2*hbTimeout {
		t.Fatalf("evicted after %v: %+v", d, p.Stats())
	}
	startServerAt(t, ">"+backendOf(p), nameHandler("alive", 0, nil))
	if err := <-res; err != nil {
		t.Fatalf("the silent server's GET: %v", err)
	}
}

// TestProxyScaling: with a 5 ms handler and 8 workers per server, three
// servers behind the proxy serve at least 2.5 times what one does.
func TestProxyScaling(t *testing.T) {
	if raceEnabled || testing.Short() {
		t.Skip("a throughput measurement: not under -race or -short")
	}
	p := startProxy(t, "", "")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { time.Sleep(5 * time.Millisecond) })
	c, _ := newClient(t, frontendOf(p))
	rate := func() float64 {
		const callers, d = 48, time.Second
		var n atomic.Int64
		stop := time.Now().Add(d)
		var wg sync.WaitGroup
		for g := 0; g < callers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					if code, _, err := getBody(c, "http://svc/"); err == nil && code == 200 {
						n.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		return float64(n.Load()) / d.Seconds()
	}
	startServerAt(t, ">"+backendOf(p), h, WithWorkers(8))
	waitServers(t, p, 1)
	one := rate()
	startServerAt(t, ">"+backendOf(p), h, WithWorkers(8))
	startServerAt(t, ">"+backendOf(p), h, WithWorkers(8))
	waitServers(t, p, 3)
	three := rate()
	t.Logf("one server %.0f req/s, three %.0f req/s (%.2fx)", one, three, three/one)
	if three < 2.5*one {
		t.Errorf("three servers %.0f req/s, one %.0f: %.2fx, want >= 2.5x", three, one, three/one)
	}
}

// TestProxyStreamBounded: a client that stops reading a 64 MiB streamed
// response stalls the handler after a few windows (the proxy holds at
// most one window of the body), and the whole body arrives once it reads.
func TestProxyStreamBounded(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	p := startProxy(t, "", "")
	var written atomic.Int64
	startServerAt(t, ">"+backendOf(p), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for written.Load() < size {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			written.Add(int64(len(chunk)))
		}
	}))
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p))
	resp, err := c.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	time.Sleep(500 * time.Millisecond) // not reading
	stalled := written.Load()
	// Windows of 2 MiB at the client and at the proxy, the handler's and
	// the sockets' buffers.
	if stalled > 16<<20 {
		t.Errorf("the handler wrote %d MiB while the client read nothing", stalled>>20)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	t.Logf("the handler stalled after %.1f MiB", float64(stalled)/(1<<20))
}

// TestProxyStreamLost: a server whose connection breaks in the middle of a
// streamed response: the client's read of the body fails with
// ErrConnectionLost.
func TestProxyStreamLost(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	release := make(chan struct{})
	startServerAt(t, ">"+backendOf(p), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 1<<20))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p))
	resp, err := c.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	for b := range p.backs {
		b.close(errors.New("killed")) // as if the server process died
	}
	p.mu.Unlock()
	_, err = io.Copy(io.Discard, resp.Body)
	var re *RemoteError
	if !errors.Is(err, ErrConnectionLost) || errors.As(err, &re) {
		t.Fatalf("reading the rest: %v, want ErrConnectionLost", err)
	}
}

// TestProxyBasicClient: a basic client (a DEALER that sends no HELLO) gets
// a 200 KiB response, which the server streams to the proxy, whole.
func TestProxyBasicClient(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	body := bytes.Repeat([]byte("b"), 200<<10)
	startServerAt(t, ">"+backendOf(p), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body[:100])
		w.(http.Flusher).Flush() // chunked: streamed to the proxy
		w.Write(body[100:])
	}))
	waitServers(t, p, 1)
	raw, err := net.Dial("tcp", p.FrontendAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	br, _, err := handshakeAs(raw, zmq4.Dealer, []zmq4.SocketType{zmq4.Router}, false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindRequest, ID: 1, Method: "GET", URI: "/", Host: "svc"})
	w := bufio.NewWriter(raw)
	writeEnvelopeMsg(w, req)
	w.Flush()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	frame, _, _, err := readEnvelopeFrame(br, 1<<30, nil, func([]byte) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var env envelope
	if err := decodeEnvelope(frame, Limits{}, &env); err != nil {
		t.Fatal(err)
	}
	if env.Kind != KindResponse || env.ID != 1 || env.Status != 200 || env.Flags&flagStreamed != 0 || !bytes.Equal(env.Body, body) {
		t.Fatalf("reply: kind %v id %d status %d flags %d, %d bytes", env.Kind, env.ID, env.Status, env.Flags, len(env.Body))
	}
}
