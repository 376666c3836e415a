package zmqhttp

import (
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// A job handed (assignIdle) to a connection whose background read went
// idle, or whose idle read just hit its deadline, is answered "not
// processed" when the server then closes that connection, though the
// Listener is not closing: the client gets DRAINING and a 503 resend.
func TestReviewSpuriousNotProcessed(t *testing.T) {
	for _, mode := range []string{"connection-close", "idle-timeout"} {
		t.Run(mode, func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if mode == "connection-close" {
					w.Header().Set("Connection", "close")
				}
				w.Write([]byte("ok"))
			})
			l, err := Listen("tcp://127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: h}
			if mode == "idle-timeout" {
				srv.IdleTimeout = time.Millisecond
			}
			go srv.Serve(l)
			defer srv.Close()
			tr, _ := NewTransport(l.Endpoint())
			defer tr.Close()
			c := &http.Client{Transport: tr}
			var wg sync.WaitGroup
			deadline := time.Now().Add(2 * time.Second)
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(deadline) {
						resp, err := c.Get("http://x/")
						if err != nil {
							t.Error(err)
							return
						}
						io.ReadAll(resp.Body)
						resp.Body.Close()
					}
				}()
			}
			wg.Wait()
			ls, ts := l.Stats(), tr.Stats()
			t.Logf("listener: requests=%d ClosedUnanswered=%d; transport: connects=%d replays=%d", ls.Requests, ls.ClosedUnanswered, ts.Connects, ts.Replays)
			if ls.ClosedUnanswered > 0 {
				t.Errorf("%d requests answered 'not processed' (with DRAINING) by a Listener that is not closing; the client reconnected %d times", ls.ClosedUnanswered, ts.Connects-1)
			}
		})
	}
}
