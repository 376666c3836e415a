package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// get sends method url with body through the default client and returns
// the status and body.
func get(t *testing.T, method, url string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestGatewayErrorStatus: each error a Transport returns is answered with
// its status and a text body naming the gateway, the status and the error:
// ErrBodyTooLarge and a RemoteError 413 → 413; a deadline → 504; lost or
// unprocessed requests, other remote errors and anything else → 502.
func TestGatewayErrorStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		code int
	}{
		{zmqhttp.ErrBodyTooLarge, 413},
		{&zmqhttp.RemoteError{Code: 413, Message: "response body over 1 MiB"}, 413},
		{fmt.Errorf("zmqhttp: %w", context.DeadlineExceeded), 504},
		{zmqhttp.ErrConnectionLost, 502},
		{zmqhttp.ErrNotProcessed, 502},
		{zmqhttp.ErrTransportClosed, 502},
		{&zmqhttp.RemoteError{Code: 500, Message: "handler panicked"}, 502},
		{errors.New("something else"), 502},
	} {
		rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Body != nil {
				r.Body.Close()
			}
			return nil, tc.err
		})
		gw := httptest.NewServer(newGateway(rt, time.Second, "", 0, nil))
		code, body := get(t, "GET", gw.URL+"/x", nil)
		gw.Close()
		want := fmt.Sprintf("zmqhttp gateway: %d %s: %v\n", tc.code, http.StatusText(tc.code), tc.err)
		if code != tc.code || body != want {
			t.Errorf("%v: %d %q, want %d %q", tc.err, code, body, tc.code, want)
		}
	}
}

// TestGatewayErrorsLive: the same mapping with a real Transport and
// Listener: a body over -max-body is 413 and never reaches the handler; a
// handler slower than -timeout is 504 at the timeout (and its context is
// cancelled); a handler that panics is 502; with no server at all, 504 at
// the timeout with the dial error in the body. A chunked body over
// -max-body is 413 too. An SSE stream that lasts
// longer than -timeout is not cut, and its events arrive one by one.
func TestGatewayErrorsLive(t *testing.T) {
	t.Parallel()
	ran := make(chan string, 10)
	cancelled := make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(5 * time.Second):
		}
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		ran <- "/count"
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 4; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(150 * time.Millisecond)
		}
	})
	l, err := zmqhttp.Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ErrorLog: discardLogger()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	tr, err := zmqhttp.NewTransport(l.Endpoint(), zmqhttp.WithDisableCompression(),
		zmqhttp.WithLimits(zmqhttp.Limits{MaxBodyBytes: 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	const timeout = 300 * time.Millisecond
	gw := httptest.NewServer(newGateway(tr, timeout, "", 1<<20, nil))
	t.Cleanup(gw.Close)

	if code, body := get(t, "GET", gw.URL+"/count", nil); code != 200 || body != "0" {
		t.Fatalf("GET /count: %d %q", code, body)
	}
	<-ran
	if code, body := get(t, "POST", gw.URL+"/count", make([]byte, 2<<20)); code != 413 || !strings.HasPrefix(body, "zmqhttp gateway: 413 Request Entity Too Large: ") {
		t.Errorf("POST 2 MiB over a 1 MiB limit: %d %q", code, body)
	}
	select {
	case <-ran:
		t.Error("the handler ran for a body over the limit")
	default:
	}
	// The same without a declared length: 413 once the excess is read.
	req, _ := http.NewRequest("POST", gw.URL+"/count", io.MultiReader(bytes.NewReader(make([]byte, 2<<20))))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || !strings.Contains(string(b), "request body over 1048576 bytes") {
		t.Errorf("chunked POST of 2 MiB over a 1 MiB limit: %d %q", resp.StatusCode, b)
	}

	start := time.Now()
	code, body := get(t, "GET", gw.URL+"/slow", nil)
	if took := time.Since(start); code != 504 || !strings.Contains(body, "no response within 300ms") || took > timeout+time.Second {
		t.Errorf("GET /slow: %d %q after %v", code, body, took)
	}
	select {
	case <-cancelled:
	case <-time.After(2 * time.Second):
		t.Error("the slow handler's context was not cancelled")
	}

	if code, body := get(t, "GET", gw.URL+"/panic", nil); code != 502 || !strings.HasPrefix(body, "zmqhttp gateway: 502 Bad Gateway: ") {
		t.Errorf("GET /panic: %d %q", code, body)
	}

	// SSE for 600 ms through a 300 ms head timeout, event by event.
	sent := time.Now()
	resp, err = http.Get(gw.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	var arrived []time.Duration
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			break
		}
		if strings.HasPrefix(line, "data: ") {
			arrived = append(arrived, time.Since(sent))
		}
	}
	resp.Body.Close()
	if len(arrived) != 4 || arrived[0] > 300*time.Millisecond || arrived[3] < 400*time.Millisecond {
		t.Errorf("events through the gateway arrived at %v, want 4, the first at once, the last after 450 ms", arrived)
	}

	// Nothing listening: 504 at the timeout, saying why.
	dead, err := zmqhttp.NewTransport("tcp://" + freePort(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() })
	gw2 := httptest.NewServer(newGateway(dead, timeout, "", 0, nil))
	t.Cleanup(gw2.Close)
	if code, body := get(t, "GET", gw2.URL+"/", nil); code != 504 || !strings.Contains(body, "not connected") {
		t.Errorf("no server: %d %q", code, body)
	}
}

// TestGatewayHost: the request's Host goes upstream, or -host's; the
// gateway adds X-Forwarded-For/Host/Proto.
func TestGatewayHost(t *testing.T) {
	t.Parallel()
	got := make(chan *http.Request, 2)
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		got <- r
		return &http.Response{StatusCode: 204, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	})
	for _, host := range []string{"", "api.internal"} {
		gw := httptest.NewServer(newGateway(rt, time.Second, host, 0, nil))
		req, _ := http.NewRequest("GET", gw.URL+"/p?q=1", nil)
		req.Host = "public.example"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		gw.Close()
		r := <-got
		want := "public.example"
		if host != "" {
			want = host
		}
		if r.Host != want || r.URL.RequestURI() != "/p?q=1" || r.Header.Get("X-Forwarded-Host") != "public.example" ||
			r.Header.Get("X-Forwarded-For") != "127.0.0.1" || r.Header.Get("X-Forwarded-Proto") != "http" {
			t.Errorf("-host %q: upstream Host %q URI %q headers %v", host, r.Host, r.URL.RequestURI(), r.Header)
		}
	}
}
