package zmqhttp

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogger: connection events reach the logger given, on both sides;
// nothing is logged without one.
func TestLogger(t *testing.T) {
	var slog1, clog syncBuffer
	srvLog := slog.New(slog.NewTextHandler(&slog1, nil))
	cliLog := slog.New(slog.NewTextHandler(&clog, nil))
	ts := startServer(t, "tcp", echoHandler(), WithLogger(srvLog))
	c, _ := newClient(t, ts.L.Endpoint(), WithLogger(cliLog))
	resp, err := c.Get("http://svc/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ts.Srv.Close()
	ts.L.Close()
	for _, want := range []string{"zmqhttp: connected", "zmqhttp: server draining", "zmqhttp: connect failed"} {
		waitFor(t, 5*time.Second, want, func() bool { return strings.Contains(clog.String(), want) })
	}
	for _, want := range []string{"zmqhttp: peer connected", "mechanism=NULL", "zmqhttp: peer left"} {
		waitFor(t, 5*time.Second, want, func() bool { return strings.Contains(slog1.String(), want) })
	}
}

// TestHTTPTrace: RoundTrip fires the httptrace callbacks http.Transport
// fires, in its order.
func TestHTTPTrace(t *testing.T) {
	ts := startServer(t, "tcp", echoHandler())
	c, _ := newClient(t, ts.L.Endpoint())
	for _, body := range []string{"", strings.Repeat("s", 200<<10)} { // whole, and streamed
		var mu sync.Mutex
		var got []string
		add := func(s string) {
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
		}
		trace := &httptrace.ClientTrace{
			GetConn:              func(hostPort string) { add("GetConn " + hostPort) },
			GotConn:              func(i httptrace.GotConnInfo) { add("GotConn " + i.Conn.RemoteAddr().Network()) },
			WroteHeaders:         func() { add("WroteHeaders") },
			WroteRequest:         func(i httptrace.WroteRequestInfo) { add("WroteRequest") },
			GotFirstResponseByte: func() { add("GotFirstResponseByte") },
		}
		ctx := httptrace.WithClientTrace(context.Background(), trace)
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/", strings.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		mu.Lock()
		want := "GetConn svc:80,GotConn zmq,WroteHeaders,WroteRequest,GotFirstResponseByte"
		if strings.Join(got, ",") != want {
			t.Errorf("body of %d bytes: callbacks %v, want %s", len(body), got, want)
		}
		mu.Unlock()
	}
}
