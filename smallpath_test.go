package zmqhttp

import (
	"bytes"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ugorji/go/codec"
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

// decodeEnvelopeCodec is decodeEnvelope as it was with the msgpack codec
// decoding the fields: the reference for readFields.
func decodeEnvelopeCodec(b []byte, lim Limits, e *envelope) error {
	if len(b) == 0 {
		return protoErr(reasonMalformed, "empty frame")
	}
	n, err := arrayHeader(b)
	if err != nil {
		return err
	}
	if n < 3 {
		return protoErr(reasonMalformed, "array of %d fields, want at least 3", n)
	}
	ver, kind, id, ok := peekHead(b)
	if !ok {
		return protoErr(reasonMalformed, "version, kind and id must be unsigned integers")
	}
	if ver != ProtocolVersion {
		return &idError{id: id, kind: kindOf(kind), err: protoErr(reasonVersion, "version %d", ver)}
	}
	if !kindOf(kind).supported() {
		return &idError{id: id, kind: kindOf(kind), err: protoErr(reasonKind, "kind %d", kind)}
	}
	if err := checkShape(b, 2*lim.maxHeaderFields()); err != nil {
		return &idError{id: id, kind: Kind(kind), err: err}
	}
	if err := checkTypes(b); err != nil {
		return &idError{id: id, kind: Kind(kind), err: err}
	}
	*e = envelope{}
	if err := codec.NewDecoderBytes(b, mh).Decode(e); err != nil {
		return &idError{id: id, kind: Kind(kind), err: protoErr(reasonMalformed, "%v", err)}
	}
	if err := validateEnvelope(e, lim); err != nil {
		return &idError{id: id, kind: e.Kind, err: err}
	}
	canonicalNames(e.Header)
	canonicalNames(e.Trailer)
	return nil
}

// TestReadFieldsMatchesCodec decodes random envelopes (valid ones, and
// ones with nil, missing, extra, negative, huge or mistyped fields) both
// with decodeEnvelope and with the msgpack codec, and wants the same
// envelope or the same refusal (reason and id).
func TestReadFieldsMatchesCodec(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ints := []any{0, 1, 127, 128, -1, -32, -33, -200, 255, 256, 65535, 65536, int64(1) << 40, -(int64(1) << 40),
		uint64(math.MaxInt64), uint64(math.MaxUint64), int64(math.MinInt64), nil, "x", []byte("y"), 1.5}
	strs := []any{"", "GET", "/a?b=c", "h:80", strings.Repeat("s", 40), strings.Repeat("t", 300), nil, 5, []byte("b"), []string{"a"}}
	lists := []any{[]string{}, []string{"content-type", "x"}, []string{"A", "1", "B", "2", "A", "3"}, nil, []int{1}, "x",
		[]string{"Bad Name", "v"}, []string{"A", "v\x00"}, []string{"A"}}
	bodies := []any{[]byte{}, []byte("hello"), bytes.Repeat([]byte("b"), 300), nil, "str", 7}
	pick := func(s []any) any { return s[rng.IntN(len(s))] }
	base := func() []any {
		return []any{1, int(KindRequest), 5, "POST", "/", "h", 0, []string{"A", "1"}, []byte("body"), nil, 4, 1000, "", 0, 0, 0}
	}
	for i := 0; i < 20000; i++ {
		f := base()
		switch rng.IntN(4) {
		case 0:
			f[1] = int(KindResponse)
			f[6] = 200
		case 1:
			f[1] = int(KindChunk)
			f[13] = 1
		}
		for range rng.IntN(4) {
			k := 3 + rng.IntN(len(f)-3)
			switch fieldTypes[k] {
			case 'u', 'i':
				f[k] = pick(ints)
			case 's':
				f[k] = pick(strs)
			case 'b':
				f[k] = pick(bodies)
			case 'l':
				f[k] = pick(lists)
			}
		}
		switch rng.IntN(8) {
		case 0:
			f = f[:3+rng.IntN(len(f)-3)]
		case 1:
			f = append(f, pick(ints), pick(strs))
		}
		var b []byte
		if err := codec.NewEncoderBytes(&b, mh).Encode(f); err != nil {
			t.Fatal(err)
		}
		var got, want envelope
		gerr := decodeEnvelope(b, Limits{}, &got)
		werr := decodeEnvelopeCodec(b, Limits{}, &want)
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("fields %v:\ndecodeEnvelope: %v\ncodec:          %v", f, gerr, werr)
		}
		if gerr != nil {
			var gp, wp *ProtocolError
			var gi, wi *idError
			errors.As(gerr, &gp)
			errors.As(werr, &wp)
			errors.As(gerr, &gi)
			errors.As(werr, &wi)
			if gp == nil || wp == nil || gp.Reason != wp.Reason || (gi == nil) != (wi == nil) || (gi != nil && (gi.id != wi.id || gi.kind != wi.kind)) {
				t.Fatalf("fields %v:\ndecodeEnvelope: %v\ncodec:          %v", f, gerr, werr)
			}
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("fields %v:\ndecodeEnvelope: %+v\ncodec:          %+v", f, got, want)
		}
	}
}

// TestEncodeMatchesCodec encodes random envelopes with encodeEnvelope and
// with the msgpack codec and wants the same bytes.
func TestEncodeMatchesCodec(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	u := []uint64{0, 1, 127, 128, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, math.MaxInt64, math.MaxUint64}
	i := []int64{0, 1, -1, -32, -33, -128, -129, 127, 128, 255, 256, 32767, 32768, -32768, -32769, 1<<31 - 1, 1 << 31,
		-1 << 31, -1<<31 - 1, math.MaxInt64, math.MinInt64}
	s := []string{"", "a", strings.Repeat("s", 31), strings.Repeat("s", 32), strings.Repeat("s", 255), strings.Repeat("s", 256),
		strings.Repeat("s", 65535), strings.Repeat("s", 65536)}
	lists := [][]string{nil, {}, {"A", "1"}, make([]string, 15), make([]string, 16), make([]string, 70000)}
	bodies := [][]byte{nil, {}, []byte("b"), make([]byte, 255), make([]byte, 256), make([]byte, 65536)}
	for n := 0; n < 3000; n++ {
		e := envelope{Version: uint8(u[rng.IntN(4)]), Kind: Kind(u[rng.IntN(5)]), ID: u[rng.IntN(len(u))],
			Method: s[rng.IntN(len(s))], URI: s[rng.IntN(len(s))], Host: s[rng.IntN(4)],
			Status: int(i[rng.IntN(len(i))]), Header: lists[rng.IntN(len(lists))], Body: bodies[rng.IntN(len(bodies))],
			Trailer: lists[rng.IntN(4)], ContentLength: i[rng.IntN(len(i))], Timeout: i[rng.IntN(len(i))],
			Message: s[rng.IntN(len(s))], Seq: u[rng.IntN(len(u))], Flags: u[rng.IntN(len(u))], Credit: u[rng.IntN(len(u))]}
		var want []byte
		if err := codec.NewEncoderBytes(&want, mh).Encode(&e); err != nil {
			t.Fatal(err)
		}
		got, err := appendEnvelope(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("envelope %+v:\ngot  % x\nwant % x", e, got[:min(len(got), 64)], want[:min(len(want), 64)])
		}
	}
}
