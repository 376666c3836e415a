package zmqhttp

// Review of the direct path (Serve): each test shows a difference from
// the standard path (an http.Server on the Listener) that a client or a
// handler can observe.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
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
