package zmqhttp

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"
)

// A streamed upload returned "not processed" by a draining server: sendAgain
// calls maybeCloseDrained while the upload's sendStream is still in
// cl.sends, and endUpload (which removes it) calls no maybeCloseDrained,
// so the idle draining link stays open and the Transport does not
// reconnect until the server drops it.
func TestReviewDrainedLinkKeptByUpload(t *testing.T) {
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		io.Copy(io.Discard, r.Body)
	})
	ts := startServer(t, "tcp", h, WithWorkers(1))
	defer close(release)
	_, tr1 := newClient(t, ts.L.Endpoint())
	go func() {
		req, _ := http.NewRequest("GET", "http://x/hold", nil)
		if resp, err := tr1.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, 2*time.Second, "worker busy", func() bool { return ts.L.Stats().InFlight == 1 })
	_, tr2 := newClient(t, ts.L.Endpoint())
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(make([]byte, 1000)) // the body never ends
	req, _ := http.NewRequest("POST", "http://x/up", pr)
	done := make(chan error, 1)
	go func() {
		resp, err := tr2.RoundTrip(req)
		if resp != nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, 2*time.Second, "queued", func() bool { return ts.L.Stats().InFlight == 2 })
	go ts.Srv.Shutdown(context.Background())
	err := <-done
	if !errors.Is(err, ErrNotProcessed) {
		t.Fatalf("got %v", err)
	}
	tr2.mu.Lock()
	cl := tr2.curLocked()
	tr2.mu.Unlock()
	if cl == nil {
		return
	}
	select {
	case <-cl.dead:
	case <-time.After(1 * time.Second):
		cl.mu.Lock()
		ns := len(cl.sends)
		cl.mu.Unlock()
		tr2.mu.Lock()
		inf := cl.inflight
		tr2.mu.Unlock()
		t.Fatalf("draining link with nothing in flight (inflight=%d, sends=%d) still open 1 s later", inf, ns)
	}
}
