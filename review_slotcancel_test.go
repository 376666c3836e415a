package zmqhttp

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"
)

// Same leak, triggered by the client closing the body (CANCEL) while the
// completing Write waits for credit.
func TestReviewSlotLeakFinalStreamWriteCancel(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			w.Write([]byte("ok"))
			return
		}
		w.Write(make([]byte, defaultStreamWindow))
		w.Write([]byte("tail"))
	})
	l, err := Listen("tcp://127.0.0.1:0", WithWorkers(1))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	defer srv.Close()
	tr, _ := NewTransport(l.Endpoint())
	defer tr.Close()
	c := &http.Client{Transport: tr}
	resp, err := c.Get("http://x/big")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	resp.Body.Close() // CANCEL
	time.Sleep(300 * time.Millisecond)
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
