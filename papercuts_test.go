package zmqhttp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestEndpointValidation: a port out of range or not a number fails at
// construction, naming it, rather than at every request's deadline.
func TestEndpointValidation(t *testing.T) {
	for _, ep := range []string{"tcp://127.0.0.1:99999", "tcp://127.0.0.1:http", "tcp://127.0.0.1:-1"} {
		if _, err := NewTransport(ep); err == nil || !strings.Contains(err.Error(), "want a number from 1 to 65535") {
			t.Errorf("NewTransport(%q) = %v", ep, err)
		}
		if _, err := Listen(ep); err == nil || !strings.Contains(err.Error(), "port") {
			t.Errorf("Listen(%q) = %v", ep, err)
		}
	}
	l, err := Listen("tcp://127.0.0.1:*")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

// TestNotZMTPPeer: a Transport pointed at something that is not a ZeroMQ
// peer fails its requests at once, saying so and quoting what it sent.
func TestNotZMTPPeer(t *testing.T) {
	hs := httptest.NewServer(http.NotFoundHandler())
	defer hs.Close()
	banner := func(b string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(b))
				time.AfterFunc(time.Second, func() { c.Close() })
			}
		}()
		return "tcp://" + ln.Addr().String()
	}
	// An HTTP server waits for a line that a ZMTP greeting never ends: the
	// handshake times out, and the request's error says why.
	c, _ := newClient(t, "tcp://"+strings.TrimPrefix(hs.URL, "http://"), WithHandshakeTimeout(300*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	if _, err := c.Do(req); err == nil || !strings.Contains(err.Error(), "sent nothing within 300ms: is it a ZeroMQ endpoint?") {
		t.Errorf("to an HTTP server: %v", err)
	}
	for _, tc := range []struct{ name, ep, want string }{
		{"ssh", banner("SSH-2.0-OpenSSH_9.2\r\n"), `it sent "SSH-2.0-OpenSSH_9.2\r\n"`},
		{"binary", banner("\x16\x03\x01\x00"), "it sent 16 03 01 00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newClient(t, tc.ep)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
			start := time.Now()
			_, err := c.Do(req)
			if err == nil || !strings.Contains(err.Error(), "does not speak ZeroMQ") || !strings.Contains(err.Error(), tc.want) ||
				time.Since(start) > 2*time.Second {
				t.Errorf("after %v: %v; want %q at once", time.Since(start), err, tc.want)
			}
		})
	}
}

// TestStaleIPCSocket: a socket file left by a killed server is replaced;
// one a live server listens on is not.
func TestStaleIPCSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, as after kill -9
	ts := startServerAt(t, "ipc://"+path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("up")) }))
	c, _ := newClient(t, "ipc://"+path)
	resp, err := c.Get("http://svc/")
	if err != nil {
		t.Fatalf("over the replaced socket: %v", err)
	}
	resp.Body.Close()
	if _, err := Listen("ipc://" + path); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Listen over a live server's socket: %v", err)
	}
	_ = ts
}

// TestOptionValidation: a value an option cannot take fails at
// construction, naming the option; Unlimited and WithoutHeartbeats work.
func TestOptionValidation(t *testing.T) {
	for _, tc := range []struct {
		opt  Option
		want string
	}{
		{WithWorkers(-3), "WithWorkers(-3)"},
		{WithQueueSize(-1), "WithQueueSize(-1)"},
		{WithLimits(Limits{MaxBodyBytes: -2}), "Limits.MaxBodyBytes(-2)"},
		{WithLimits(Limits{MaxHeaderFields: -1}), "Limits.MaxHeaderFields(-1)"},
		{WithHeartbeat(-time.Second, 0), "WithHeartbeat(-1s, 0s)"},
		{WithReconnectBackoff(time.Second, time.Millisecond), "WithReconnectBackoff(1s, 1ms)"},
		{WithMaxPending(-5), "WithMaxPending(-5)"},
	} {
		_, lerr := Listen("tcp://127.0.0.1:0", tc.opt)
		_, terr := NewTransport("tcp://127.0.0.1:1", tc.opt)
		if lerr == nil || terr == nil || !strings.Contains(lerr.Error(), tc.want) || !strings.Contains(terr.Error(), tc.want) {
			t.Errorf("%s: Listen: %v; NewTransport: %v", tc.want, lerr, terr)
		}
	}
	// An option for the other side is refused, not ignored.
	if _, err := Listen("tcp://127.0.0.1:0", WithMaxPending(10)); err == nil || !strings.Contains(err.Error(), "WithMaxPending is a Transport option") {
		t.Errorf("Listen with a Transport option: %v", err)
	}
	if _, err := NewTransport("tcp://127.0.0.1:1", WithWorkers(8)); err == nil || !strings.Contains(err.Error(), "WithWorkers is a Listener option") {
		t.Errorf("NewTransport with a Listener option: %v", err)
	}
	// Unlimited bodies; heartbeats off on one side while the other has
	// them at 50 ms / 100 ms: neither side may then ping or time the
	// other out, so a connection silent for three timeouts lives on.
	hb := WithHeartbeat(50*time.Millisecond, 100*time.Millisecond)
	for _, tc := range []struct {
		name     string
		srv, cli []Option
	}{
		{"client off", []Option{hb}, []Option{hb, WithoutHeartbeats()}},
		{"server off", []Option{hb, WithoutHeartbeats()}, []Option{hb}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, "tcp", echoHandler(), append(tc.srv, WithLimits(Limits{MaxBodyBytes: Unlimited}))...)
			c, tr := newClient(t, ts.L.Endpoint(), append(tc.cli, WithMaxPending(Unlimited), WithLimits(Limits{MaxBodyBytes: Unlimited}))...)
			for i := 0; i < 2; i++ {
				resp, err := c.Post("http://svc/", "text/plain", strings.NewReader(strings.Repeat("u", 1<<20)))
				if err != nil {
					t.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if n != 1<<20 {
					t.Fatalf("echoed %d bytes", n)
				}
				time.Sleep(300 * time.Millisecond)
			}
			if st := tr.Stats(); st.Connects != 1 || st.ConnectionsLost != 0 {
				t.Errorf("a silent connection was dropped: %+v", st)
			}
		})
	}
}

// TestErrorShape: one "zmqhttp:" per error; a response over the server's
// body limit is ErrBodyTooLarge across the wire; a context's cause is the
// error, as with net/http.
func TestErrorShape(t *testing.T) {
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic("boom")
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(2<<20))
			w.Write(make([]byte, 2<<20))
		case "/slow":
			<-r.Context().Done()
		}
	}), WithLimits(Limits{MaxBodyBytes: 1 << 20}))
	c, _ := newClient(t, ts.L.Endpoint())
	once := func(err error) {
		t.Helper()
		if err == nil || strings.Count(err.Error(), "zmqhttp:") != 1 {
			t.Errorf("want one zmqhttp: prefix: %v", err)
		}
	}
	_, err := c.Get("http://svc/panic")
	once(err)
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != 500 {
		t.Errorf("handler panic: %v, want a RemoteError 500", err)
	}
	_, err = c.Get("http://svc/big")
	once(err)
	if !errors.Is(err, ErrBodyTooLarge) || !errors.As(err, &re) || re.Code != 413 {
		t.Errorf("response over the server's limit: %v, want RemoteError 413 matching ErrBodyTooLarge", err)
	}
	cause := errors.New("the user gave up")
	ctx, cancel := context.WithCancelCause(context.Background())
	time.AfterFunc(50*time.Millisecond, func() { cancel(cause) })
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/slow", nil)
	_, err = c.Do(req)
	once(err)
	if !errors.Is(err, cause) {
		t.Errorf("cancelled with a cause: %v, want the cause", err)
	}
	// Not connected: the deadline error says why, once prefixed.
	nc, _ := newClient(t, "tcp://127.0.0.1:1", WithReconnectBackoff(10*time.Millisecond, 20*time.Millisecond))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	req, _ = http.NewRequestWithContext(ctx2, "GET", "http://svc/", nil)
	_, err = nc.Do(req)
	once(err)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not connected: dial tcp://127.0.0.1:1") {
		t.Errorf("not connected: %v", err)
	}
}

// TestTransportCloseNeverConnected: Close returns at once for a Transport
// whose server never completed a handshake (a TCP peer that stays silent).
func TestTransportCloseNeverConnected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent until the test ends
		}
	}()
	pub, _, _ := NewCurveKeyPair()
	cpub, csec, _ := NewCurveKeyPair()
	for _, opts := range [][]Option{nil, {WithCurveClient(pub, cpub, csec)}} {
		tr, err := NewTransport("tcp://"+ln.Addr().String(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // in its handshake
		start := time.Now()
		tr.Close()
		if d := time.Since(start); d > time.Second {
			t.Errorf("Close took %v", d)
		}
	}
	checkNoLeaks(t)
}

// TestTransportRequestLimits: a Transport's Limits.MaxBodyBytes bounds the
// request bodies it streams too (declared length: at once; unknown: as
// they go), and headers named by Connection do not travel; Stats counts
// requests.
func TestTransportRequestLimits(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Method == "GET" { // not the refused uploads, which may end later
			mu.Lock()
			seen = r.Header.Clone()
			mu.Unlock()
		}
	}))
	c, tr := newClient(t, ts.L.Endpoint(), WithLimits(Limits{MaxBodyBytes: 1 << 20}))
	_, err := c.Post("http://svc/", "text/plain", strings.NewReader(strings.Repeat("x", 2<<20)))
	if !errors.Is(err, ErrBodyTooLarge) {
		t.Errorf("2 MiB declared body with a 1 MiB limit: %v", err)
	}
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 2<<20))
		pw.Close()
	}()
	_, err = c.Post("http://svc/", "text/plain", pr)
	if !errors.Is(err, ErrBodyTooLarge) {
		t.Errorf("2 MiB body of unknown length with a 1 MiB limit: %v", err)
	}
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	req.Header.Set("Connection", "X-Hop, keep-alive")
	req.Header.Set("X-Hop", "1")
	req.Header.Set("X-End", "2")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	if seen.Get("X-Hop") != "" || seen.Get("X-End") != "2" {
		t.Errorf("server saw %v: want X-End and not X-Hop", seen)
	}
	mu.Unlock()
	if n := tr.Stats().Requests; n != 3 {
		t.Errorf("Stats().Requests = %d, want 3", n)
	}
}
