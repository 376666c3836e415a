package zmqhttp

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
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
