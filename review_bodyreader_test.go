package zmqhttp

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func bigBodyServer(t *testing.T, n int) *testServer {
	return startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(bytes.Repeat([]byte("x"), n))
	}))
}

// A Close from another goroutine must not wait for a WriteTo (io.Copy)
// blocked in its destination's Write: with http.Transport it does not.
func TestReview3CloseDuringBlockedWriteTo(t *testing.T) {
	ts := bigBodyServer(t, 32<<10)
	_, tr := newClient(t, ts.L.Endpoint())
	c := &http.Client{Transport: tr} // no Timeout: resp.Body is the Transport's own
	resp, err := c.Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go io.Copy(pw, resp.Body) // nobody reads pr yet: blocks in pw.Write
	time.Sleep(100 * time.Millisecond)
	closed := make(chan struct{})
	go func() { resp.Body.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(time.Second):
		pr.Close() // unblock, so the test ends
		<-closed
		t.Fatal("resp.Body.Close blocked for 1s behind a WriteTo stuck in its writer's Write")
	}
	pr.Close()
}

type failOnce struct {
	bytes.Buffer
	failed bool
}

var errTransient = errors.New("transient")

func (f *failOnce) Write(p []byte) (int, error) {
	if !f.failed {
		f.failed = true
		n, _ := f.Buffer.Write(p[:100])
		return n, errTransient
	}
	return f.Buffer.Write(p)
}

// After a WriteTo whose writer fails, the rest of the body is still there
// (bytes.Reader, and net/http's bodies, keep it); here it reads as a clean
// io.EOF: a silently truncated body.
func TestReview3WriteToErrorTruncates(t *testing.T) {
	ts := bigBodyServer(t, 32<<10)
	_, tr := newClient(t, ts.L.Endpoint())
	c := &http.Client{Transport: tr} // no Timeout: resp.Body is the Transport's own
	resp, err := c.Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var w failOnce
	if _, err := io.Copy(&w, resp.Body); !errors.Is(err, errTransient) {
		t.Fatalf("copy: %v", err)
	}
	rest, err := io.ReadAll(resp.Body)
	if got := w.Len() + len(rest); got != 32<<10 || err != nil {
		t.Fatalf("got %d of %d bytes, then err=%v (rest read as a clean EOF)", got, 32<<10, err)
	}
}
