package zmqhttp

// Review of the direct path (Serve): each test shows a difference from
// the standard path (an http.Server on the Listener) that a client or a
// handler can observe.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// reviewResp is what a client sees of a response.
type reviewResp struct {
	Status  int
	Header  http.Header
	Body    string
	Trailer http.Header
	CL      int64
	TE      []string
}

func (r reviewResp) String() string {
	h := r.Header.Clone()
	h.Del("Date")
	return fmt.Sprintf("status=%d cl=%d te=%v header=%v body=%q trailer=%v date=%v",
		r.Status, r.CL, r.TE, h, r.Body, r.Trailer, r.Header["Date"] != nil)
}

// reviewBoth runs h on the standard path and on the direct path, sends
// the request made by mk to each, and returns what the client saw.
func reviewBoth(t *testing.T, h http.Handler, mk func() *http.Request) (std, direct reviewResp) {
	t.Helper()
	get := func(ep string) reviewResp {
		client, _ := newClient(t, ep)
		resp, err := client.Do(mk())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return reviewResp{resp.StatusCode, resp.Header, string(b), resp.Trailer, resp.ContentLength, resp.TransferEncoding}
	}
	s := startServer(t, "tcp", h)
	d := startDirectServer(t, "tcp", &http.Server{Handler: h})
	return get(s.L.Endpoint()), get(d.L.Endpoint())
}

func reviewGet() *http.Request {
	r, _ := http.NewRequest("GET", "http://svc/", nil)
	return r
}

// TestReviewDirectNilHeaderSuppresses: net/http adds no Content-Type,
// Date or Content-Length when the handler sets the field to nil (the
// documented way to prevent sniffing); the direct path looked for a
// value, not the key, and added them.
func TestReviewDirectNilHeaderSuppresses(t *testing.T) {
	for _, field := range []string{"Content-Type", "Date", "Content-Length"} {
		t.Run(field, func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header()[field] = nil
				io.WriteString(w, "<html><body>hi</body></html>")
			})
			std, direct := reviewBoth(t, h, reviewGet)
			_, stdHas := std.Header[field]
			_, dHas := direct.Header[field]
			if stdHas != dHas || std.CL != direct.CL {
				t.Errorf("standard: %v\ndirect:   %v", std, direct)
			}
		})
	}
}

// TestReviewDirectForbiddenTrailer: net/http only sends the trailers a
// Trailer field may announce (httpguts.ValidTrailerHeader: not
// Cache-Control, Content-Type, Authorization...); the direct path sent
// any but three.
func TestReviewDirectForbiddenTrailer(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Cache-Control, X-Sum")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(200)
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
	})
	std, direct := reviewBoth(t, h, reviewGet)
	if std.String() != direct.String() {
		t.Errorf("standard: %v\ndirect:   %v", std, direct)
	}
}

var _ = context.Background
var _ = strings.NewReader
var _ = time.Second

// TestReviewDirectCloseClosesListener: on the standard path srv.Close
// closes the Listener before it returns (http.Server closes its
// listeners synchronously), so the endpoint can be bound again at once
// (a restart). The direct path closed it later, from a goroutine.
func TestReviewDirectCloseClosesListener(t *testing.T) {
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			for i := 0; i < 20; i++ {
				l, err := Listen(testEndpoint(t, "tcp"))
				if err != nil {
					t.Fatal(err)
				}
				ep := l.Endpoint()
				srv := &http.Server{Handler: http.NotFoundHandler()}
				served := make(chan error, 1)
				if direct {
					go func() { served <- Serve(l, srv) }()
				} else {
					go func() { served <- srv.Serve(l) }()
				}
				client, _ := newClient(t, ep)
				resp, err := client.Get("http://svc/")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				srv.Close()
				closed := l.closed.Load()
				<-served
				if !closed {
					t.Fatalf("round %d: the Listener is still open when srv.Close returned", i)
				}
				l2, err := Listen(ep)
				if err != nil {
					t.Fatalf("round %d: Listen again after srv.Close: %v", i, err)
				}
				l2.Close()
			}
		})
	}
}

// TestReviewDirectShutdownWaitsDisabledOptions: srv.Shutdown waits for a
// running handler however long it takes. With
// srv.DisableGeneralOptionsHandler the direct path's internal connection
// stays "new" (an unfinished request head), which http.Server's
// Shutdown treats as idle after 5 s: it closed it, failing the running
// request, and returned.
func TestReviewDirectShutdownWaitsDisabledOptions(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 7 s")
	}
	inHandler := make(chan struct{})
	release := make(chan struct{})
	ctxErr := make(chan error, 1)
	srv := &http.Server{
		DisableGeneralOptionsHandler: true,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(inHandler)
			select {
			case <-release:
				ctxErr <- nil
			case <-r.Context().Done():
				ctxErr <- r.Context().Err()
			}
			io.WriteString(w, "done")
		}),
	}
	l, err := Listen(testEndpoint(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- Serve(l, srv) }()
	client, tr := newClient(t, l.Endpoint())
	got := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://svc/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-inHandler
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	shutDone := false
	select {
	case err := <-shut:
		shutDone = true
		t.Errorf("Shutdown returned %v while the handler runs", err)
	case err := <-ctxErr:
		t.Errorf("the running handler's context ended: %v", err)
	case <-time.After(7 * time.Second):
	}
	close(release)
	if s := <-got; s != "done" {
		t.Errorf("the running request got %q", s)
	}
	if !shutDone {
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Errorf("Serve returned %v", err)
	}
	tr.Close()
	checkNoLeaks(t)
}

// TestReviewDirectDisconnectAndUnreadUpload: a handler's context ends
// when its client goes away; a handler that returns without reading a
// streamed upload answers at once and the upload stops.
func TestReviewDirectDisconnectAndUnreadUpload(t *testing.T) {
	ended := make(chan error, 1)
	inHandler := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			inHandler <- struct{}{}
			select {
			case <-r.Context().Done():
				ended <- r.Context().Err()
			case <-time.After(10 * time.Second):
				ended <- nil
			}
			return
		}
		io.WriteString(w, "ignored")
	})
	ts := startDirectServer(t, "tcp", &http.Server{Handler: h})

	client, _ := newClient(t, ts.L.Endpoint())
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := pw.Write(buf); err != nil {
				return
			}
		}
	}()
	req, _ := http.NewRequest("POST", "http://svc/upload", pr)
	done := make(chan string, 1)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- string(b)
	}()
	select {
	case s := <-done:
		if s != "ignored" {
			t.Errorf("unread upload: got %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a handler that ignores an endless upload: no answer")
	}

	tr2, err := NewTransport(ts.L.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		resp, err := (&http.Client{Transport: tr2}).Get("http://svc/wait")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-inHandler
	tr2.Close()
	if err := <-ended; err == nil {
		t.Error("the handler's context did not end when its client closed")
	}
}

// TestReviewDirectServeEdges: Serve on a closed Listener returns an error
// wrapping net.ErrClosed; Serve with a server already shut down returns
// http.ErrServerClosed; neither leaves a goroutine behind.
func TestReviewDirectServeEdges(t *testing.T) {
	l, err := Listen(testEndpoint(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	srv := &http.Server{Handler: http.NotFoundHandler()}
	errc := make(chan error, 1)
	go func() { errc <- Serve(l, srv) }()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve on a closed Listener: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve on a closed Listener did not return")
	}

	l2, err := Listen(testEndpoint(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{Handler: http.NotFoundHandler()}
	srv2.Close()
	go func() { errc <- Serve(l2, srv2) }()
	select {
	case err := <-errc:
		if err != http.ErrServerClosed {
			t.Errorf("Serve with a closed server: %v, want http.ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve with a closed server did not return")
	}
	if !l2.closed.Load() {
		t.Error("Serve with a closed server left the Listener open (srv.Serve closes it)")
	}
	l2.Close()
	checkNoLeaks(t)
}

// TestReviewDirectCloseUnblocksBodyRead: srv.Close closes the
// connections, so a handler blocked reading a request body that stalls
// gets an error at once (standard path). On the direct path kill only
// woke the reader, which went back to waiting.
func TestReviewDirectCloseUnblocksBodyRead(t *testing.T) {
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			reading := make(chan struct{})
			readErr := make(chan error, 1)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				buf := make([]byte, 1024)
				n, err := io.ReadFull(r.Body, buf[:5])
				if err != nil || n != 5 {
					readErr <- fmt.Errorf("first read: %d %v", n, err)
					return
				}
				close(reading)
				_, err = r.Body.Read(buf)
				readErr <- err
			})
			var ts *testServer
			if direct {
				ts = startDirectServer(t, "tcp", &http.Server{Handler: h})
			} else {
				ts = startServer(t, "tcp", h)
			}
			client, tr := newClient(t, ts.L.Endpoint())
			pr, pw := io.Pipe()
			defer pw.Close()
			go func() { pw.Write([]byte("hello")) }()
			req, _ := http.NewRequest("POST", "http://svc/", pr)
			go func() {
				resp, err := client.Do(req)
				if err == nil {
					resp.Body.Close()
				}
			}()
			select {
			case <-reading:
			case err := <-readErr:
				t.Fatal(err)
			case <-time.After(10 * time.Second):
				t.Fatal("the handler did not get the first bytes")
			}
			ts.Srv.Close()
			select {
			case err := <-readErr:
				if err == nil {
					t.Error("the body read after srv.Close returned no error")
				}
			case <-time.After(5 * time.Second):
				t.Error("a handler reading a stalled body is still blocked 5 s after srv.Close")
			}
			pw.Close()
			tr.Close()
		})
	}
}

// TestReviewDirectResponseShapes compares what clients see of odd
// handler behaviours on both paths.
func TestReviewDirectResponseShapes(t *testing.T) {
	cases := map[string]http.HandlerFunc{
		"flush-then-header": func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush()
			w.Header().Set("X-Late", "1")
			w.WriteHeader(201)
			io.WriteString(w, "x")
		},
		"te-chunked-set": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Transfer-Encoding", "chunked")
			io.WriteString(w, "abc")
		},
		"te-gzip-with-cl": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Transfer-Encoding", "gzip")
			w.Header().Set("Content-Length", "3")
			io.WriteString(w, "abc")
		},
		"cl-invalid": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "abc")
			io.WriteString(w, "abc")
		},
		"304-ct": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/x")
			w.Header().Set("Content-Length", "5")
			w.WriteHeader(304)
			w.Write([]byte("nope"))
		},
		"header-after-write": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "a")
			w.Header().Set("X-After", "1")
			w.Header().Set("Trailer:X-T", "t")
		},
		"trailer-prefix-unannounced-cl": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "2")
			w.Header().Set("Trailer:X-T", "t")
			io.WriteString(w, "ab")
		},
		"ce-no-sniff": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "br")
			io.WriteString(w, "<html>")
		},
		"lowercase-keys": func(w http.ResponseWriter, r *http.Request) {
			w.Header()["x-low"] = []string{"v"}
			w.Header()["content-type"] = []string{"text/y"}
			io.WriteString(w, "<html>")
		},
		"status-999": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(999)
		},
		"value-newline": func(w http.ResponseWriter, r *http.Request) {
			w.Header()["X-Nl"] = []string{" a\r\nb "}
		},
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			std, direct := reviewBoth(t, h, reviewGet)
			if std.String() != direct.String() {
				t.Errorf("standard: %v\ndirect:   %v", std, direct)
			}
		})
	}
}

// TestReviewDirectAbortAfterDeclaredBody: a handler that writes its whole
// declared body and then panics (ErrAbortHandler). On the standard path
// the last small write is still in net/http's 2 KiB response buffer when
// the connection closes: the client gets an error. Compare.
func TestReviewDirectAbortAfterDeclaredBody(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3001")
		w.Write(make([]byte, 3000))
		w.Write([]byte("x"))
		panic(http.ErrAbortHandler)
	})
	outcome := func(ep string) string {
		client, _ := newClient(t, ep)
		resp, err := client.Get("http://svc/")
		if err != nil {
			return "error"
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return "body error"
		}
		return fmt.Sprintf("%d bytes", len(b))
	}
	s := startServer(t, "tcp", h)
	d := startDirectServer(t, "tcp", &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)})
	std, direct := outcome(s.L.Endpoint()), outcome(d.L.Endpoint())
	if std != direct {
		t.Errorf("standard: %s, direct: %s", std, direct)
	}
}

// TestReviewDirectShutdownContextExpires: Shutdown returns its context's
// error while a handler outlives it; the handler's answer still reaches
// its client, and nothing is left running after.
func TestReviewDirectShutdownContextExpires(t *testing.T) {
	inHandler := make(chan struct{})
	release := make(chan struct{})
	var hooks atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(inHandler)
		<-release
		io.WriteString(w, "late")
	})}
	srv.RegisterOnShutdown(func() { hooks.Add(1) })
	l, err := Listen(testEndpoint(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- Serve(l, srv) }()
	client, tr := newClient(t, l.Endpoint())
	got := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://svc/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-inHandler
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Errorf("Shutdown: %v, want context.DeadlineExceeded", err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Errorf("Serve: %v", err)
	}
	close(release)
	if s := <-got; s != "late" {
		t.Errorf("the outliving handler's client got %q", s)
	}
	waitFor(t, 5*time.Second, "the OnShutdown hook", func() bool { return hooks.Load() == 1 })
	tr.Close()
	checkNoLeaks(t)
}

// TestReviewDirectExpectToken: net/http takes an Expect field holding the
// token 100-continue among others ("100-continue, x") as 100-continue
// (hasToken) and runs the handler; the direct path compared the whole
// value and answered 417.
func TestReviewDirectExpectToken(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "ran %q", b)
	})
	for _, v := range []string{"100-continue, x", "foo 100-Continue", "x100-continue"} {
		t.Run(v, func(t *testing.T) {
			std, direct := reviewBoth(t, h, func() *http.Request {
				r, _ := http.NewRequest("POST", "http://svc/", strings.NewReader("body"))
				r.Header.Set("Expect", v)
				return r
			})
			if std.String() != direct.String() {
				t.Errorf("standard: %v\ndirect:   %v", std, direct)
			}
		})
	}
}
