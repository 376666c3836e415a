package zmqhttp

// The direct path (Serve): what TestDifferential does not show — that
// requests really take it, streaming as it happens, cancellation and the
// caller's deadline reaching the handler, 503 overload, srv.Shutdown
// draining and the not-processed answer after it, srv.Close, panics,
// server timeouts, and no goroutine left behind.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// directServer serves h with Serve on a new Listener; cleanup closes the
// server and checks Serve's result.
func startDirectServer(t testing.TB, network string, srv *http.Server, opts ...Option) *testServer {
	t.Helper()
	l, err := Listen(testEndpoint(t, network), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{L: l, Srv: srv, err: make(chan error, 1)}
	go func() { ts.err <- Serve(l, srv) }()
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
		l.Close()
	})
	return ts
}

type ctxKey string

// TestDirectRequestShape: the handler gets the ResponseWriter of the
// direct path, a request whose context carries what http.Server's would
// (ServerContextKey, LocalAddrContextKey, BaseContext's and
// ConnContext's values) and PeerFromContext works.
func TestDirectRequestShape(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			var srv *http.Server
			srv = &http.Server{
				BaseContext: func(net.Listener) context.Context {
					return context.WithValue(context.Background(), ctxKey("base"), "b")
				},
				ConnContext: func(ctx context.Context, c net.Conn) context.Context {
					return context.WithValue(ctx, ctxKey("conn"), c.RemoteAddr().String())
				},
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, direct := w.(*directCall)
					p, ok := PeerFromContext(r.Context())
					_, hasLocal := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
					fmt.Fprintf(w, "direct=%v srv=%v base=%v conn=%v peer=%v/%v local=%v remote=%v",
						direct, r.Context().Value(http.ServerContextKey) == srv,
						r.Context().Value(ctxKey("base")), r.Context().Value(ctxKey("conn")) == r.RemoteAddr,
						ok, p.Mechanism, hasLocal, r.RemoteAddr != "")
				}),
			}
			ts := startDirectServer(t, network, srv)
			client, _ := newClient(t, ts.L.Endpoint())
			resp, err := client.Get("http://svc/x")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := "direct=true srv=true base=b conn=true peer=true/NULL local=true remote=true"
			if string(b) != want {
				t.Errorf("got %q, want %q", b, want)
			}
		})
	}
}

// TestDirectStreaming: flushed events reach the client while the handler
// still runs (the next one is written only after the client saw the last).
func TestDirectStreaming(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			seen := make(chan int, 1)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for i := 0; i < 3; i++ {
					fmt.Fprintf(w, "data: %d\n\n", i)
					w.(http.Flusher).Flush()
					select {
					case got := <-seen:
						if got != i {
							return
						}
					case <-time.After(5 * time.Second):
						return // the client never saw it: the test fails below
					}
				}
			})
			ts := startDirectServer(t, network, &http.Server{Handler: h})
			client, _ := newClient(t, ts.L.Endpoint())
			resp, err := client.Get("http://svc/sse")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			for i := 0; i < 3; i++ {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
				if want := fmt.Sprintf("data: %d\n", i); line != want {
					t.Fatalf("event %d: got %q, want %q", i, line, want)
				}
				br.ReadString('\n')
				seen <- i
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Errorf("unexpected tail %q", rest)
			}
			if resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 {
				t.Errorf("ContentLength %d TransferEncoding %v, want chunked", resp.ContentLength, resp.TransferEncoding)
			}
		})
	}
}

// TestDirectTrailersAndLargeBodies: a streamed upload echoed back as a
// streamed response with trailers.
func TestDirectTrailersAndLargeBodies(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		n, err := io.Copy(w, r.Body)
		w.Header().Set("X-Sum", fmt.Sprint(n, err, r.Trailer.Get("X-Up")))
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h})
	client, _ := newClient(t, ts.L.Endpoint())
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("y"), 64<<10)
		for i := 0; i < 32; i++ {
			pw.Write(chunk)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://svc/up", pr)
	req.Trailer = http.Header{"X-Up": {"v"}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 32<<16 {
		t.Fatalf("echoed %d bytes, %v", n, err)
	}
	if got, want := resp.Trailer.Get("X-Sum"), fmt.Sprint(32<<16, nil, "v"); got != want {
		t.Errorf("trailer X-Sum %q, want %q", got, want)
	}
}

// TestDirectCancelAndDeadline: a client's cancellation, and its deadline,
// end the handler's context; Deadline() reports the caller's deadline.
func TestDirectCancelAndDeadline(t *testing.T) {
	started := make(chan struct{}, 2)
	ended := make(chan string, 2)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dl, ok := r.Context().Deadline()
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			ended <- fmt.Sprintf("%v deadline=%v", r.Context().Err(), ok && time.Until(dl) < 10*time.Second)
		case <-time.After(10 * time.Second):
			ended <- "not cancelled"
		}
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h})
	client, _ := newClient(t, ts.L.Endpoint())

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/c", nil)
	go func() { <-started; cancel() }()
	if _, err := client.Do(req); err == nil {
		t.Error("cancelled call succeeded")
	}
	if got := <-ended; got != "context canceled deadline=false" {
		t.Errorf("cancel: handler saw %q", got)
	}

	ctx, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	req, _ = http.NewRequestWithContext(ctx, "GET", "http://svc/d", nil)
	if _, err := client.Do(req); err == nil {
		t.Error("call past its deadline succeeded")
	}
	<-started
	if got := <-ended; got != "context deadline exceeded deadline=true" {
		t.Errorf("deadline: handler saw %q", got)
	}
}

// TestDirectOverload: with one worker and a queue of one, a third
// concurrent request is answered 503 by the Listener.
func TestDirectOverload(t *testing.T) {
	release := make(chan struct{})
	var running atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		running.Add(1)
		<-release
		io.WriteString(w, "done")
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h}, WithWorkers(1), WithQueueSize(1))
	client, _ := newClient(t, ts.L.Endpoint())
	var wg sync.WaitGroup
	codes := make(chan int, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Post("http://svc/", "text/plain", strings.NewReader("x"))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
		waitFor(t, 5*time.Second, "the request to be taken", func() bool { return ts.L.Stats().InFlight == i+1 })
	}
	resp, err := client.Post("http://svc/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third request: %d Retry-After %q, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := running.Load(); n != 1 {
		t.Errorf("%d handlers running, want 1 (one worker)", n)
	}
	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Errorf("queued request: %d", c)
		}
	}
}

// TestDirectShutdownDrains: srv.Shutdown waits for a running handler,
// whose response arrives; a GET sent once Shutdown began goes back not
// processed and the Transport sends it again to the next server on the
// same endpoint; nothing of ours is left running afterwards.
func TestDirectShutdownDrains(t *testing.T) {
	ep := testEndpoint(t, "tcp")
	l, err := Listen(ep)
	if err != nil {
		t.Fatal(err)
	}
	ep = l.Endpoint()
	inHandler := make(chan struct{})
	release := make(chan struct{})
	var runs1 atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs1.Add(1)
		if r.URL.Path == "/slow" {
			close(inHandler)
			<-release
		}
		io.WriteString(w, "first")
	})}
	served := make(chan error, 1)
	go func() { served <- Serve(l, srv) }()
	tr, err := NewTransport(ep, WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}

	slow := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://svc/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- string(b)
	}()
	<-inHandler
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	waitFor(t, 5*time.Second, "the Listener to close", func() bool { return l.closed.Load() })
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a handler runs", err)
	case <-time.After(100 * time.Millisecond):
	}

	// A request now is not run here: it waits for the next server.
	late := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://svc/late")
		if err != nil {
			late <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		late <- string(b)
	}()
	close(release)
	if got := <-slow; got != "first" {
		t.Errorf("in-flight request: %q", got)
	}
	tr.CloseIdleConnections()
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Shutdown did not return once drained")
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve returned %v", err)
	}

	l2, err := listenRetry(ep)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "second")
	})}
	served2 := make(chan error, 1)
	go func() { served2 <- Serve(l2, srv2) }()
	if got := <-late; got != "second" {
		t.Errorf("request sent during Shutdown: %q, want it answered by the next server", got)
	}
	if n := runs1.Load(); n != 1 {
		t.Errorf("first server ran %d handlers, want 1 (the late request not run there)", n)
	}
	tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv2.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	<-served2
	checkNoLeaks(t)
}

// TestDirectCloseFailsRunning: srv.Close fails a running handler's
// request (its context ends, its client gets an error) and Serve returns.
func TestDirectCloseFailsRunning(t *testing.T) {
	in := make(chan struct{})
	ctxDone := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(in)
		<-r.Context().Done()
		close(ctxDone)
	})
	l, err := Listen(testEndpoint(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- Serve(l, srv) }()
	client, tr := newClient(t, l.Endpoint())
	got := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://svc/")
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		got <- err
	}()
	<-in
	srv.Close()
	select {
	case <-ctxDone:
	case <-time.After(5 * time.Second):
		t.Fatal("handler context not cancelled by srv.Close")
	}
	if err := <-got; err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("client got %v, want a server error", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve returned %v", err)
	}
	tr.Close()
	l.Close()
	checkNoLeaks(t)
}

// TestDirectPanic: a panicking handler is logged to ErrorLog (not
// http.ErrAbortHandler), its client gets an error, and the worker serves
// the next request.
func TestDirectPanic(t *testing.T) {
	var logs logLines
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			io.WriteString(w, "partial")
			panic("boom")
		case "/abort":
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h, ErrorLog: log.New(&logs, "", 0)}, WithWorkers(1))
	client, _ := newClient(t, ts.L.Endpoint())
	for _, p := range []string{"/panic", "/abort"} {
		if resp, err := client.Get("http://svc" + p); err == nil {
			resp.Body.Close()
			t.Errorf("%s: got %d, want an error", p, resp.StatusCode)
		}
	}
	resp, err := client.Get("http://svc/fine")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("after the panics: %q", b)
	}
	logs.mu.Lock()
	first := strings.Join(logs.first, "\n")
	logs.mu.Unlock()
	if !strings.Contains(first, "http: panic serving") || !strings.Contains(first, "boom") || strings.Contains(first, "abort Handler") {
		t.Errorf("ErrorLog: %s", logs.summary())
	}
}

// TestDirectTimeouts: srv.WriteTimeout fails a response written after it
// (the client gets an error), srv.ReadTimeout a body read after it, and
// MaxHeaderBytes is enforced like net/http (431).
func TestDirectTimeouts(t *testing.T) {
	readErr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/late":
			time.Sleep(300 * time.Millisecond)
			io.WriteString(w, "too late")
		case "/upload":
			_, err := io.Copy(io.Discard, r.Body)
			readErr <- err
		default:
			io.WriteString(w, "ok")
		}
	})
	srv := &http.Server{Handler: h, WriteTimeout: 150 * time.Millisecond, ReadTimeout: 150 * time.Millisecond, MaxHeaderBytes: 1 << 10}
	ts := startDirectServer(t, "tcp", srv)
	client, _ := newClient(t, ts.L.Endpoint())
	if resp, err := client.Get("http://svc/late"); err == nil {
		resp.Body.Close()
		t.Errorf("response after WriteTimeout: got %d, want an error", resp.StatusCode)
	}

	pr, pw := io.Pipe()
	go func() {
		pw.Write(bytes.Repeat([]byte("u"), 128<<10))
		time.Sleep(400 * time.Millisecond)
		pw.Write([]byte("more"))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://svc/upload", pr)
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
	}
	if err := <-readErr; err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("body read after ReadTimeout: %v, want a deadline error", err)
	}

	req, _ = http.NewRequest("GET", "http://svc/", nil)
	req.Header.Set("X-Big", strings.Repeat("b", 8<<10))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || string(b) != "431 Request Header Fields Too Large" {
		t.Errorf("large head: %d %q, want 431 as net/http answers", resp.StatusCode, b)
	}
}

// TestDirectLargeWriteStreams: a response over the whole-message limit
// written in one Write (with its Content-Length) streams, as on the
// standard path, instead of going out in one message the client refuses.
func TestDirectLargeWriteStreams(t *testing.T) {
	payload := bytes.Repeat([]byte("L"), 40<<20) // over the 32 MiB whole-body default
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(payload)))
		w.Write(payload)
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h})
	client, _ := newClient(t, ts.L.Endpoint())
	resp, err := client.Get("http://svc/big")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != int64(len(payload)) || resp.ContentLength != int64(len(payload)) {
		t.Errorf("got %d bytes (ContentLength %d), %v; want %d", n, resp.ContentLength, err, len(payload))
	}
}

// TestDirectKeptStringsSurvive: a handler may keep the strings of a
// request whose frame is pooled (a large whole body): they stay intact
// while later requests reuse the frame.
func TestDirectKeptStringsSurvive(t *testing.T) {
	// One P: the pool hands the frame just put back to the next read.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var mu sync.Mutex
	var kept [][3]string // as the handler got them (a concatenation would copy)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		kept = append(kept, [3]string{r.Header.Get("X-Keep"), r.URL.Path, r.Host})
		mu.Unlock()
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h}, WithWorkers(1))
	client, _ := newClient(t, ts.L.Endpoint())
	body := bytes.Repeat([]byte("k"), 50<<10) // a pooled frame (half of wholeFrames or more)
	const n = 20
	for i := 0; i < n; i++ {
		req, _ := http.NewRequest("POST", fmt.Sprintf("http://host%d/path/%d", i, i), bytes.NewReader(body))
		req.Header.Set("X-Keep", fmt.Sprintf("value-%d-%s", i, strings.Repeat("v", 100)))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	for i, k := range kept {
		got := k[0] + "|" + k[1] + "|" + k[2]
		want := fmt.Sprintf("value-%d-%s|/path/%d|host%d", i, strings.Repeat("v", 100), i, i)
		if got != want {
			t.Errorf("request %d: kept %q, want %q", i, got, want)
		}
	}
	if len(kept) != n {
		t.Errorf("%d requests served, want %d", len(kept), n)
	}
}

// TestDirectBodyEOFWithData: like net/http's, a request body with a
// known length reports io.EOF with its last bytes (so bytes.Buffer's
// ReadFrom, given room for the declared length, does not grow it).
func TestDirectBodyEOFWithData(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := make([]byte, 64)
		n, err := r.Body.Read(p)
		fmt.Fprint(w, n, " ", err)
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h})
	client, _ := newClient(t, ts.L.Endpoint())
	resp, err := client.Post("http://svc/", "text/plain", strings.NewReader("twelve bytes"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "12 EOF" {
		t.Errorf("one Read of a 12-byte body: %q, want 12 EOF", b)
	}
}

// TestDirectServeNil: Serve with a nil Listener or Server is a clear
// error, not a panic.
func TestDirectServeNil(t *testing.T) {
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := Serve(l, nil); err == nil {
		t.Error("Serve(l, nil) returned nil")
	}
	if err := Serve(nil, &http.Server{}); err == nil {
		t.Error("Serve(nil, srv) returned nil")
	}
}
