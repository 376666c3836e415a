package zmqhttp

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// rejectAll is a listener wrapper of a common kind (an IP allow-list, a
// connection limiter) that closes connections it does not want unread.
type rejectAll struct {
	net.Listener
	n atomic.Int64
}

func (r *rejectAll) Accept() (net.Conn, error) {
	for {
		c, err := r.Listener.Accept()
		if err != nil {
			return nil, err
		}
		r.n.Add(1)
		if _, ok := c.(*vconn); ok {
			c.Close() // not allowed: dropped before reading anything
			continue
		}
		return c, nil // the drain connection
	}
}

// vconn.Close gives a request whose head was never read to another
// connection, with no bound: a server that closes such connections every
// time spins the request between Accept and Close until its caller gives
// up (for ever without a deadline), holding a worker slot and a CPU.
func TestReview2RedispatchSpins(t *testing.T) {
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &rejectAll{Listener: l}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(rl)
	defer srv.Close()
	tr, _ := NewTransport(l.Endpoint())
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", nil)
	start := time.Now()
	_, err = tr.RoundTrip(req)
	t.Logf("RoundTrip after %v: %v; connections accepted and closed: %d", time.Since(start).Round(time.Millisecond), err, rl.n.Load())
	if rl.n.Load() > 100 {
		t.Errorf("one request was handed to %d connections", rl.n.Load())
	}
}
