package zmqhttp

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// testNetworks are the ZeroMQ transports every end-to-end test runs over.
var testNetworks = []string{"tcp", "ipc"}

// testEndpoint returns a listen endpoint of the given network on loopback
// or in a short temporary directory (unix socket paths are limited to
// about 100 bytes).
func testEndpoint(t testing.TB, network string) string {
	t.Helper()
	switch network {
	case "tcp":
		return "tcp://127.0.0.1:0"
	case "ipc":
		dir, err := os.MkdirTemp("", "zh")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return "ipc://" + filepath.Join(dir, "s.sock")
	}
	t.Fatalf("unknown network %q", network)
	return ""
}

// testServer is a Listener served by a standard http.Server.
type testServer struct {
	L   *Listener
	Srv *http.Server
	err chan error // Serve's result
}

// startServer serves h on a new Listener at a fresh endpoint of network.
// Cleanup closes the server and waits for Serve to return.
func startServer(t testing.TB, network string, h http.Handler, opts ...Option) *testServer {
	t.Helper()
	return startServerAt(t, testEndpoint(t, network), h, opts...)
}

func startServerAt(t testing.TB, ep string, h http.Handler, opts ...Option) *testServer {
	t.Helper()
	l, err := Listen(ep, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{L: l, Srv: &http.Server{Handler: h}, err: make(chan error, 1)}
	go func() { ts.err <- ts.Srv.Serve(l) }()
	t.Cleanup(func() {
		ts.Srv.Close()
		select {
		case err := <-ts.err:
			if !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
	})
	return ts
}

// newClient returns an http.Client over a new Transport to ep, closed at
// cleanup.
func newClient(t testing.TB, ep string, opts ...Option) (*http.Client, *Transport) {
	t.Helper()
	tr, err := NewTransport(ep, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
}

// checkNoLeaks fails t if goroutines running this package's code are
// still alive after everything was closed. It retries for a few seconds,
// since connections close asynchronously.
func checkNoLeaks(t testing.TB) {
	t.Helper()
	var leaked []string
	for i := 0; i < 100; i++ {
		leaked = leakedGoroutines()
		if len(leaked) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%d goroutines left running:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "github.com/zmqhttp/zmqhttp.") {
			continue
		}
		// The test's own goroutines, and this check, are not leaks.
		if strings.Contains(g, "zmqhttp.leakedGoroutines") || strings.Contains(g, "testing.tRunner") ||
			strings.Contains(g, "testing.(*T).Run") || strings.Contains(g, "_test.go") {
			continue
		}
		out = append(out, g)
	}
	return out
}

// waitFor polls cond every 5ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s", d, what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
