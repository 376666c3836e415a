package zmqhttp

// Streamed bodies: events flushed by a handler reach the caller as they
// are flushed, and a cancelled upload frees both sides at once.
// (TestStreamGiBBoundedMemory, in streammem_test.go, moves a GiB each way
// in bounded memory.)

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// streamPatternPeriod is prime, so that no chunk size lines up with the
// pattern and a lost, repeated or reordered chunk changes the CRC.
const streamPatternPeriod = 65521

// streamPattern holds the pattern twice, so that any run of up to
// streamPatternPeriod bytes starting anywhere in it is one slice.
var streamPattern = func() []byte {
	b := make([]byte, 2*streamPatternPeriod)
	x := uint32(2463534242)
	for i := 0; i < streamPatternPeriod; i++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	copy(b[streamPatternPeriod:], b[:streamPatternPeriod])
	return b
}()

var streamCRCTable = crc32.MakeTable(crc32.Castagnoli)

// patternReader generates n bytes of the pattern, never holding them: the
// body of a streamed upload. onRead, if set, is called with the running
// total after each Read. Reads must not be concurrent; read and closed
// may be looked at from anywhere.
type patternReader struct {
	n      int64
	read   atomic.Int64
	pos    int
	onRead func(total int64)

	closeOnce sync.Once
	closed    chan struct{} // closed by Close, if not nil
}

func (r *patternReader) Read(p []byte) (int, error) {
	done := r.read.Load()
	if done >= r.n {
		return 0, io.EOF
	}
	k := min(int64(len(p)), int64(streamPatternPeriod), r.n-done)
	copy(p, streamPattern[r.pos:r.pos+int(k)])
	r.pos = (r.pos + int(k)) % streamPatternPeriod
	total := r.read.Add(k)
	if r.onRead != nil {
		r.onRead(total)
	}
	return int(k), nil
}

func (r *patternReader) Close() error {
	if r.closed != nil {
		r.closeOnce.Do(func() { close(r.closed) })
	}
	return nil
}

// patternCRC is the CRC-32C of the first n bytes of the pattern.
func patternCRC(n int64) uint32 {
	h := crc32.New(streamCRCTable)
	io.Copy(h, &patternReader{n: n})
	return h.Sum32()
}

// ---------------------------------------------------------------------

// TestSSEEventsArriveOnFlush: a handler sends 5 server-sent events 100 ms
// apart, flushing each (with http.Flusher, and with
// http.NewResponseController(w).Flush); the caller, reading resp.Body as
// it comes, gets each event within 20 ms of its Flush, and the response
// head with the first.
func TestSSEEventsArriveOnFlush(t *testing.T) {
	for _, network := range testNetworks {
		for _, how := range []string{"Flusher", "ResponseController"} {
			t.Run(network+"/"+how, func(t *testing.T) {
				t.Parallel()
				sseCheck(t, network, how)
			})
		}
	}
}

func sseCheck(t *testing.T, network, how string) {
	const (
		events = 5
		gap    = 100 * time.Millisecond
		slack  = 20 * time.Millisecond
	)
	var (
		mu       sync.Mutex
		flushed  [events]time.Time // when the handler called Flush for event i
		flushErr error
	)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var flush func() error
		switch how {
		case "Flusher":
			f, ok := w.(http.Flusher)
			if !ok {
				http.Error(w, "the ResponseWriter is no http.Flusher", http.StatusInternalServerError)
				return
			}
			flush = func() error { f.Flush(); return nil }
		default:
			flush = http.NewResponseController(w).Flush
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		for i := 0; i < events; i++ {
			if i > 0 {
				select {
				case <-time.After(gap):
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, "id: %d\nevent: tick\ndata: event %d of %d\n\n", i, i, events)
			mu.Lock()
			flushed[i] = time.Now()
			mu.Unlock()
			if err := flush(); err != nil {
				mu.Lock()
				flushErr = err
				mu.Unlock()
				return
			}
		}
	})
	ts := startServer(t, network, h)
	client, _ := newClient(t, ts.L.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	headAt := time.Now()
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	type event struct {
		id string
		at time.Time
	}
	var got []event
	br := bufio.NewReader(resp.Body)
	id, fields := "", 0
	for len(got) < events+1 {
		line, err := br.ReadString('\n')
		if err != nil {
			if err != io.EOF || line != "" {
				t.Errorf("reading the stream after %d events: %q, %v", len(got), line, err)
			}
			break
		}
		switch line = strings.TrimRight(line, "\r\n"); {
		case line == "" && fields > 0: // the blank line ending an event
			got = append(got, event{id, time.Now()})
			id, fields = "", 0
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
			fields++
		default:
			fields++
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if flushErr != nil {
		t.Fatalf("the handler's Flush failed: %v", flushErr)
	}
	if len(got) != events {
		t.Fatalf("got %d events, want %d", len(got), events)
	}
	var lags []string
	late := 0
	for i, e := range got {
		if e.id != strconv.Itoa(i) {
			t.Errorf("event %d has id %q", i, e.id)
		}
		lag := e.at.Sub(flushed[i])
		lags = append(lags, lag.Round(100*time.Microsecond).String())
		if lag > slack {
			late++
		}
	}
	headLag := headAt.Sub(flushed[0])
	t.Logf("%s over %s: response head %v after the first Flush (%v after sending); each event's arrival after its Flush: %s",
		how, network, headLag.Round(100*time.Microsecond), headAt.Sub(sent).Round(100*time.Microsecond), strings.Join(lags, ", "))
	if headLag > slack {
		t.Errorf("the response head arrived %v after the handler's first Flush, want within %v (the response is not streamed: it came when the handler returned)", headLag.Round(time.Millisecond), slack)
	}
	if late > 0 {
		t.Errorf("%d of %d events arrived more than %v after their Flush (lags: %s)", late, events, slack, strings.Join(lags, ", "))
	}
}

// ---------------------------------------------------------------------

// TestUploadCancelFreesBothSides: a 100 MiB upload streamed from a
// generating io.Reader is cancelled once the Transport has read 10 MiB of
// it. RoundTrip returns within 50 ms of the cancel; the handler, reading
// the body in a loop, gets an error (not EOF: the body was not complete)
// within 50 ms of it; the Listener's InFlight returns to 0; the shared
// connection survives: a request in flight meanwhile, and requests made
// afterwards, succeed.
func TestUploadCancelFreesBothSides(t *testing.T) {
	const (
		total       = 100 << 20
		cancelAfter = 10 << 20
		bound       = 50 * time.Millisecond
	)
	type report struct {
		n     int64
		err   error
		errAt time.Time
	}
	entered := make(chan time.Time, 4)
	reports := make(chan report, 4)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		entered <- time.Now()
		buf := make([]byte, 32<<10)
		var rep report
		for {
			n, err := r.Body.Read(buf)
			rep.n += int64(n)
			if err != nil {
				rep.err, rep.errAt = err, time.Now()
				break
			}
		}
		reports <- rep
		if rep.err == io.EOF {
			fmt.Fprintf(w, "%d", rep.n)
		}
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(300 * time.Millisecond):
			io.WriteString(w, "slow done")
		case <-r.Context().Done():
		}
	})
	mux.Handle("/echo", echoHandler())
	limits := WithLimits(Limits{MaxBodyBytes: 1 << 30}) // no size limit in the way
	ts := startServer(t, "tcp", mux, limits)
	client, tr := newClient(t, ts.L.Endpoint(), limits)

	// Connect first, so that the upload starts at once.
	if resp, err := client.Get("http://svc/echo"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}

	// Another caller's request in flight on the same connection during
	// the cancel.
	other := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://svc/slow")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "slow done" {
				err = fmt.Errorf("status %d body %q", resp.StatusCode, b)
			}
		}
		other <- err
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cancelled := make(chan time.Time, 1)
	fired := false
	body := &patternReader{n: total, closed: make(chan struct{})}
	body.onRead = func(n int64) {
		if n >= cancelAfter && !fired {
			fired = true
			cancelled <- time.Now()
			cancel()
		}
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/upload", body)
	req.ContentLength = -1
	type result struct {
		err error
		at  time.Time
	}
	rt := make(chan result, 1)
	start := time.Now()
	go func() {
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		rt <- result{err, time.Now()}
	}()

	var cancelAt time.Time
	select {
	case cancelAt = <-cancelled:
	case r := <-rt:
		t.Fatalf("RoundTrip returned (%v) before the Transport had read %d MiB of the body (it read %d bytes)", r.err, cancelAfter>>20, body.read.Load())
	case <-time.After(10 * time.Second):
		t.Fatalf("the Transport read only %d bytes of the body in 10s", body.read.Load())
	}
	readAtCancel := body.read.Load()

	var r result
	select {
	case r = <-rt:
	case <-time.After(5 * time.Second):
		t.Fatalf("RoundTrip had not returned 5s after the cancel")
	}
	rtLag := r.at.Sub(cancelAt)
	t.Logf("cancelled %v after the start, with %.1f MiB read from the body; RoundTrip returned %v after the cancel: %v",
		cancelAt.Sub(start).Round(time.Millisecond), float64(readAtCancel)/(1<<20), rtLag.Round(100*time.Microsecond), r.err)
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("RoundTrip returned %v, want an error wrapping context.Canceled", r.err)
	}
	if rtLag > bound {
		t.Errorf("RoundTrip returned %v after the cancel, want within %v", rtLag.Round(time.Millisecond), bound)
	}

	// The handler.
	var enteredAt time.Time
	select {
	case enteredAt = <-entered:
	case <-time.After(time.Second):
		t.Errorf("the handler was never started (waited 1s after RoundTrip returned): the body was not streamed while the Transport read it")
	}
	if !enteredAt.IsZero() {
		if enteredAt.After(cancelAt) {
			t.Errorf("the handler started %v after the cancel: the body was not streamed while the Transport read it, and a cancelled request was sent",
				enteredAt.Sub(cancelAt).Round(time.Millisecond))
		}
		select {
		case rep := <-reports:
			lag := rep.errAt.Sub(cancelAt)
			t.Logf("handler started %v before the cancel (negative: after), read %.1f MiB, then got %v %v after the cancel",
				cancelAt.Sub(enteredAt).Round(time.Millisecond), float64(rep.n)/(1<<20), rep.err, lag.Round(100*time.Microsecond))
			if rep.err == io.EOF {
				t.Errorf("the handler's body read ended with io.EOF after %d bytes: a cancelled upload looks complete", rep.n)
			}
			if lag > bound {
				t.Errorf("the handler's body read ended (%v) %v after the cancel, want an error within %v", rep.err, lag.Round(time.Millisecond), bound)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("the handler's body read had not returned 5s after the cancel")
		}
	}

	// Both sides let go.
	deadline := time.Now().Add(time.Second)
	for ts.L.Stats().InFlight != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := ts.L.Stats().InFlight; n != 0 {
		t.Errorf("Listener InFlight is %d 1s after the cancel, want 0", n)
	}
	select {
	case <-body.closed:
	case <-time.After(time.Second):
		t.Errorf("the request body was not closed within 1s of the cancel")
	}
	t.Logf("the Transport read %.1f MiB of the body after the cancel (of %d MiB)", float64(body.read.Load()-readAtCancel)/(1<<20), total>>20)

	// The shared connection serves on.
	select {
	case err := <-other:
		if err != nil {
			t.Errorf("the request in flight alongside the cancelled upload failed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the request in flight alongside the cancelled upload had not returned after 10s")
	}
	payload := bytes.Repeat([]byte("after the cancel "), 64<<10)
	resp, err := client.Post("http://svc/echo", "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatalf("POST after the cancel: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(b, payload) {
		t.Errorf("POST after the cancel: %d bytes back (want %d), %v", len(b), len(payload), err)
	}
	resp, err = client.Get("http://svc/echo")
	if err != nil {
		t.Fatalf("GET after the cancel: %v", err)
	}
	resp.Body.Close()
	st := tr.Stats()
	t.Logf("Transport stats: %+v; Listener stats: %+v", st, ts.L.Stats())
	if st.ConnectionsLost != 0 {
		t.Errorf("the shared connection was lost %d times: cancelling one upload must not reset it", st.ConnectionsLost)
	}
}
