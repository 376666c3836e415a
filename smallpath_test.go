package zmqhttp

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSetTimeout checks that rewriting the Timeout field of an encoded
// request (a call that waited for a connection) changes that field only,
// whatever the widths of the old and new values, in place or in a copy.
func TestSetTimeout(t *testing.T) {
	values := []int64{0, 1, 127, 128, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, 1 << 40}
	for _, body := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte("b"), 300)} {
		for _, from := range values {
			for _, to := range values {
				for _, inPlace := range []bool{false, true} {
					e := envelope{Version: ProtocolVersion, Kind: KindRequest, ID: 7, Method: "POST", URI: "/x", Host: "h",
						Header: []string{"A", "1", "B", "2"}, Body: body, ContentLength: int64(len(body)), Timeout: from,
						Flags: flagAckWanted, Seq: 3, Credit: 9}
					msg, err := appendEnvelope(nil, &e)
					if err != nil {
						t.Fatal(err)
					}
					orig := bytes.Clone(msg)
					got, ok := setTimeout(msg, to, inPlace)
					if !ok {
						t.Fatalf("setTimeout(%d -> %d) refused the envelope", from, to)
					}
					if !inPlace && !bytes.Equal(msg, orig) {
						t.Fatalf("setTimeout(%d -> %d) not in place changed its input", from, to)
					}
					var d envelope
					if err := decodeEnvelope(got, Limits{}, &d); err != nil {
						t.Fatalf("%d -> %d: decode: %v", from, to, err)
					}
					want := e
					want.Timeout = to
					if len(want.Body) == 0 {
						want.Body, d.Body = nil, nil
					}
					if !reflect.DeepEqual(d, want) {
						t.Fatalf("%d -> %d (body %d):\ngot  %+v\nwant %+v", from, to, len(body), d, want)
					}
				}
			}
		}
	}
	if _, ok := setTimeout([]byte{0x93, 1, 1, 1}, 5, true); ok {
		t.Fatal("setTimeout took an envelope of 3 fields")
	}
}

// idleConns counts the connections the Listener's peers keep idle.
func idleConns(l *Listener) int {
	l.mu.Lock()
	peers := make([]*peer, 0, len(l.peers))
	for p := range l.peers {
		peers = append(peers, p)
	}
	l.mu.Unlock()
	n := 0
	for _, p := range peers {
		p.mu.Lock()
		n += len(p.idle)
		p.mu.Unlock()
	}
	return n
}

// TestIdleConnsFollowConcurrency checks that a peer with more requests in
// flight than maxIdlePerPeer keeps the connections that carried them: a
// second burst as large as the first is served by the same connections,
// not by new ones (a new http.Server connection each).
func TestIdleConnsFollowConcurrency(t *testing.T) {
	const n = maxIdlePerPeer + 36
	var in sync.WaitGroup
	var release atomic.Pointer[chan struct{}] // closed to end the burst's handlers
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in.Done()
		<-*release.Load()
		w.Write([]byte("ok"))
	})
	ts := startServer(t, "tcp", h)
	var conns atomic.Int64
	ts.Srv.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	client, _ := newClient(t, ts.L.Endpoint())
	burst := func() {
		t.Helper()
		rel := make(chan struct{})
		release.Store(&rel)
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
		in.Wait() // n handlers run at once: n connections
		close(rel)
		done.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	burst()
	if got := conns.Load(); got != n {
		t.Fatalf("first burst: %d connections, want %d", got, n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for idleConns(ts.L) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections idle after a burst of %d, want %d", idleConns(ts.L), n, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	burst()
	if got := conns.Load(); got != n {
		t.Fatalf("after a second burst of %d: %d connections in all, want %d (the first burst's, reused)", n, got, n)
	}
}
