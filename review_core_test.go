package zmqhttp

import (
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// Fresh-eye review of the performance branches merged on main (small,
// bigbody, the Listener's Close during handshakes): proving tests.

// TestReviewIdleTrimmedWithoutTraffic: a peer's idle connections beyond
// maxIdlePerPeer (up to the worker count since a247c1c) were trimmed only
// when another connection went idle. A peer that makes a burst of
// requests and then goes silent (its heartbeats keep it alive) kept every
// connection of the burst (an http.Server connection goroutine and its
// buffers each, up to 1024 per peer by default) for as long as it stayed.
// They must go once they waited idleTrim, traffic or not.
func TestReviewIdleTrimmedWithoutTraffic(t *testing.T) {
	testIdleTrim.Store(int64(300 * time.Millisecond))
	t.Cleanup(func() { testIdleTrim.Store(0) })
	const n = maxIdlePerPeer + 20
	var in sync.WaitGroup
	rel := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in.Done()
		<-rel
		w.Write([]byte("ok"))
	})
	ts := startServer(t, "tcp", h)
	client, _ := newClient(t, ts.L.Endpoint())
	in.Add(n)
	var done sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		done.Add(1)
		go func() {
			defer done.Done()
			resp, err := client.Get("http://svc/")
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	in.Wait() // n handlers at once: n connections
	close(rel)
	done.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// No more traffic: the connections beyond maxIdlePerPeer must end
	// within idleTrim (and a little).
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := idleConns(ts.L)
		if got <= maxIdlePerPeer {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still idle 5 s after a burst of %d (idle trim %v), want at most %d",
				got, n, idleTrimFor(), maxIdlePerPeer)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
