package zmqhttp

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"
)

// The last Write of a streamed response (the one that completes it) sets
// j.sent before waiting for credit; when that wait fails (WriteTimeout),
// Write returns without l.finished(j). The pending background read then
// clears c.cur, so vconn.Close never finishes the job: the worker slot
// and the inflight count leak.
func TestReviewSlotLeakFinalStreamWrite(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			w.Write([]byte("ok"))
			return
		}
		w.Write(make([]byte, defaultStreamWindow)) // uses up the client's window exactly
		w.Write([]byte("tail"))                    // buffered: goes out with the terminator in finishRequest
	})
	l, err := Listen("tcp://127.0.0.1:0", WithWorkers(1))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, WriteTimeout: 300 * time.Millisecond}
	go srv.Serve(l)
	defer srv.Close()
	tr, _ := NewTransport(l.Endpoint())
	defer tr.Close()
	c := &http.Client{Transport: tr}
	resp, err := c.Get("http://x/big")
	if err != nil {
		t.Fatal(err)
	}
	// Do not read the body: no credit comes back.
	time.Sleep(1 * time.Second)
	resp.Body.Close()
	time.Sleep(200 * time.Millisecond)
	st := l.Stats()
	t.Logf("after: InFlight=%d", st.InFlight)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/small", nil)
	r2, err := c.Do(req)
	if err != nil {
		t.Fatalf("second request (1 worker): %v; Listener InFlight=%d", err, l.Stats().InFlight)
	}
	io.ReadAll(r2.Body)
	r2.Body.Close()
}
