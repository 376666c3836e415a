package zmqhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// gatewayFor returns an HTTP server that forwards every request through
// tr with httputil.ReverseProxy, as an HTTP→zmqhttp gateway does, mapping
// ErrBodyTooLarge to 413.
func gatewayFor(t *testing.T, tr *Transport) *httptest.Server {
	target, _ := url.Parse("http://svc")
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = tr
	rp.FlushInterval = -1
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		switch {
		case errors.Is(err, ErrBodyTooLarge):
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		default:
			http.Error(w, err.Error(), http.StatusBadGateway)
		}
	}
	gw := httptest.NewServer(rp)
	t.Cleanup(gw.Close)
	return gw
}

// TestReverseProxyStreams: an HTTP gateway on httputil.ReverseProxy over
// the Transport streams both ways: SSE events reach the HTTP client one by
// one, a 48 MiB upload (over the whole-message limit) goes through, and a
// body over the server's limit comes back 413 with the limit's error.
func TestReverseProxyStreams(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: %d %d\n\n", i, time.Now().UnixNano())
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if errors.Is(err, ErrBodyTooLarge) {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, n)
	})
	ts := startServer(t, "tcp", mux, WithLimits(Limits{MaxBodyBytes: 64 << 20}))
	_, tr := newClient(t, ts.L.Endpoint())
	gw := gatewayFor(t, tr)

	// SSE through the gateway: each event within 50 ms of being sent.
	resp, err := http.Get(gw.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		var n int
		var sent int64
		if _, err := fmt.Sscanf(line, "data: %d %d", &n, &sent); err != nil || n != i {
			t.Fatalf("event %d: got %q", i, line)
		}
		if d := time.Since(time.Unix(0, sent)); d > 50*time.Millisecond {
			t.Fatalf("event %d arrived %v after it was sent", i, d)
		}
		br.ReadString('\n')
	}
	resp.Body.Close()

	// A 48 MiB upload of unknown length.
	const size = 48 << 20
	req, _ := http.NewRequest("POST", gw.URL+"/count", &patternReader{n: size})
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != fmt.Sprint(size) {
		t.Fatalf("48 MiB upload: %d %q", resp.StatusCode, got)
	}

	// Over the server's 64 MiB limit: the handler's read fails with
	// ErrBodyTooLarge and it answers 413.
	req, _ = http.NewRequest("POST", gw.URL+"/count", &patternReader{n: 80 << 20})
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(got), "exceeds the size limit") {
		t.Fatalf("over the limit: %d %q", resp.StatusCode, got)
	}
}

// TestGatewayMapsClientLimit: a response over the Transport's own limit
// fails the proxied request with ErrBodyTooLarge, which the gateway's
// ErrorHandler turns into 413 (not an empty 502).
func TestGatewayMapsClientLimit(t *testing.T) {
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(1<<20))
		w.Write(make([]byte, 1<<20))
	}))
	_, tr := newClient(t, ts.L.Endpoint(), WithLimits(Limits{MaxBodyBytes: 256 << 10}))
	gw := gatewayFor(t, tr)
	resp, err := http.Get(gw.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "exceeds the size limit") {
		t.Fatalf("got %d %q, want 413 naming the limit", resp.StatusCode, body)
	}
}

// TestDownloadCancelStopsHandler: a handler streaming without end stops
// (its write fails) within 50 ms of the caller cancelling, its worker
// slot is free again, and the connection serves others.
func TestDownloadCancelStopsHandler(t *testing.T) {
	var stopped atomic.Int64 // UnixNano when the handler's write failed
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "ok")
			return
		}
		buf := make([]byte, 32<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				stopped.Store(time.Now().UnixNano())
				return
			}
		}
	}))
	client, _ := newClient(t, ts.L.Endpoint())
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/forever", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 10<<20); err != nil {
		t.Fatal(err)
	}
	cancelled := time.Now()
	cancel()
	if _, err := io.Copy(io.Discard, resp.Body); !errors.Is(err, context.Canceled) {
		t.Fatalf("body read after cancel: %v, want context.Canceled", err)
	}
	resp.Body.Close()
	waitFor(t, 2*time.Second, "the handler to stop", func() bool { return stopped.Load() != 0 })
	if d := time.Unix(0, stopped.Load()).Sub(cancelled); d > 50*time.Millisecond {
		t.Fatalf("the handler stopped %v after the cancel, want ≤ 50ms", d)
	}
	waitFor(t, time.Second, "the request to be finished", func() bool { return ts.L.Stats().InFlight == 0 })
	resp, err = client.Get("http://svc/small")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestSlowReaderStallsOnlyItself: a caller that stops reading a large
// download holds its own stream; small requests on the same Transport
// and a second download go on.
func TestSlowReaderStallsOnlyItself(t *testing.T) {
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "ok")
			return
		}
		io.Copy(w, &patternReader{n: 64 << 20})
	}))
	client, _ := newClient(t, ts.L.Endpoint())
	stuck, err := client.Get("http://svc/big")
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Body.Close()
	stuck.Body.Read(make([]byte, 1024)) // then never again
	for i := 0; i < 50; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/small", nil)
		resp, err := client.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("small request %d beside a stalled stream: %v", i, err)
		}
		resp.Body.Close()
		cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/big", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 64<<20 {
		t.Fatalf("second download beside a stalled one: %d bytes, %v", n, err)
	}
}

// TestBasicPeerGetsWholeBodies: a client that announced no streaming (a
// plain DEALER without HELLO, like REQ or the Python peer) gets a large
// chunked response as one whole response envelope.
func TestBasicPeerGetsWholeBodies(t *testing.T) {
	const size = 300 << 10
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < size/1024; i++ {
			w.Write(make([]byte, 1024))
			w.(http.Flusher).Flush()
		}
	}))
	p := dialRaw(t, ts.L)
	req := envelope{Version: 1, Kind: KindRequest, ID: 3, Method: "GET", URI: "/", Host: "h"}
	b, _ := appendEnvelope(nil, &req)
	p.send(t, nil, b)
	e := p.recvEnvelope(t)
	if e.Kind != KindResponse || e.ID != 3 || e.Status != 200 || e.Flags&flagStreamed != 0 || len(e.Body) != size || e.ContentLength != -1 {
		t.Fatalf("got kind %v id %d status %d flags %d body %d bytes content_length %d; want one whole 200 of %d bytes",
			e.Kind, e.ID, e.Status, e.Flags, len(e.Body), e.ContentLength, size)
	}
}

// TestUnreadUploadFreesSlot: a handler that answers a large upload without
// reading it frees its worker slot when its reply is queued, not after
// net/http's 500 ms close delay: with one worker, the next request runs
// at once.
func TestUnreadUploadFreesSlot(t *testing.T) {
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			http.Error(w, "no thanks", http.StatusRequestEntityTooLarge)
			return
		}
		io.WriteString(w, "ok")
	}), WithWorkers(1))
	client, _ := newClient(t, ts.L.Endpoint())
	resp, err := client.Post("http://svc/upload", "application/octet-stream", &patternReader{n: 10 << 20})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	start := time.Now()
	resp, err = client.Get("http://svc/next")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("the next request took %v with one worker: the slot was held after the reply", d)
	}
}
