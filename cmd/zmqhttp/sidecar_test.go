package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// TestSidecarHeaders: the sidecar, served over a real zmqhttp Listener,
// forwards as httputil.ReverseProxy does: hop-by-hop headers (Connection,
// the headers Connection names, Keep-Alive, Upgrade...) are dropped both
// ways, the Host is kept, X-Forwarded-For is appended to, end-to-end headers
// and the body pass through, and a gzip body is passed on encoded.
func TestSidecarHeaders(t *testing.T) {
	t.Parallel()
	seen := make(chan *http.Request, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "drop me")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End", "keep me")
		w.Header().Set("Content-Encoding", "gzip")
		io.WriteString(w, "not really gzip")
	}))
	t.Cleanup(up.Close)
	target, _ := url.Parse(up.URL)
	l, err := zmqhttp.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: newSidecar(target, discardLogger()), ErrorLog: discardLogger()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	tr, err := zmqhttp.NewTransport(l.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })

	req, _ := http.NewRequest("GET", "http://orders.internal/o/1?x=2", nil)
	req.Header.Set("Te", "gzip")
	req.Header.Set("X-Forwarded-For", "192.0.2.7")
	req.Header.Set("Accept-Encoding", "gzip")
	req.Header.Set("X-Req", "keep me")
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := <-seen
	if r.Host != "orders.internal" || r.URL.RequestURI() != "/o/1?x=2" || r.Header.Get("X-Req") != "keep me" ||
		r.Header.Get("Te") != "" ||
		r.Header.Get("X-Forwarded-For") != "192.0.2.7, 127.0.0.1" || r.Header.Get("Accept-Encoding") != "gzip" {
		t.Errorf("upstream got Host %q URI %q headers %v", r.Host, r.URL.RequestURI(), r.Header)
	}
	if resp.StatusCode != 200 || string(b) != "not really gzip" || resp.Header.Get("X-End") != "keep me" ||
		resp.Header.Get("X-Hop") != "" || resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Errorf("client got %d %q headers %v", resp.StatusCode, b, resp.Header)
	}
}

// TestSidecarRequestHopByHop: headers a request's Connection names do not
// reach the upstream. The request comes over plain HTTP here: zmqhttp's
// Transport drops a request's Connection header but still sends the
// headers it names, so behind a Listener they cannot be told apart.
func TestSidecarRequestHopByHop(t *testing.T) {
	t.Parallel()
	seen := make(chan http.Header, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r.Header }))
	t.Cleanup(up.Close)
	target, _ := url.Parse(up.URL)
	ts := httptest.NewServer(newSidecar(target, discardLogger()))
	t.Cleanup(ts.Close)
	req, _ := http.NewRequest("GET", ts.URL+"/", nil)
	req.Header.Set("Connection", "X-Client-Hop")
	req.Header.Set("X-Client-Hop", "drop me")
	req.Header.Set("X-Req", "keep me")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := <-seen; h.Get("X-Client-Hop") != "" || h.Get("X-Req") != "keep me" {
		t.Errorf("upstream got %v", h)
	}
}

// TestSidecarUpstreamDown: with nothing at -to, a request is answered 502
// with a body naming the sidecar and the dial error.
func TestSidecarUpstreamDown(t *testing.T) {
	t.Parallel()
	target, _ := url.Parse("http://" + freePort(t))
	ts := httptest.NewServer(newSidecar(target, discardLogger()))
	t.Cleanup(ts.Close)
	code, body := get(t, "GET", ts.URL+"/", nil)
	if code != 502 || !strings.HasPrefix(body, "zmqhttp sidecar: 502 Bad Gateway: ") || !strings.Contains(body, "connection refused") {
		t.Errorf("%d %q", code, body)
	}
}

// TestGracefulStop: SIGTERM to the built gateway and sidecar while a slow
// request is in flight through both: the request is still answered 200 in
// full, and both exit 0.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	bin := buildCommand(t)
	started := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(700 * time.Millisecond)
		io.WriteString(w, "finished")
	}))
	t.Cleanup(up.Close)
	sidecar := startEnv(t, nil, bin, "sidecar", "-listen", "tcp://127.0.0.1:0", "-to", up.URL)
	endpoint := sidecar.waitFor(t, `listening on (tcp://\S+),`)
	gateway := startEnv(t, nil, bin, "gateway", "-listen", "127.0.0.1:0", "-to", endpoint)
	gw := gateway.waitFor(t, `listening on (http://\S+),`)

	type result struct {
		code int
		body string
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Get(gw + "/slow")
		if err != nil {
			done <- result{body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b)}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}
	gateway.cmd.Process.Signal(syscall.SIGTERM)
	sidecar.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case r := <-done:
		if r.code != 200 || r.body != "finished" {
			t.Errorf("in flight at SIGTERM: %d %q", r.code, r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer")
	}
	if code := gateway.wait(t); code != 0 {
		t.Errorf("gateway exited %d", code)
	}
	if code := sidecar.wait(t); code != 0 {
		t.Errorf("sidecar exited %d", code)
	}
}
