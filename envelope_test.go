package zmqhttp

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/ugorji/go/codec"
)

func sampleEnvelopes() []envelope {
	return []envelope{
		{Version: 1, Kind: KindRequest, ID: 1, Method: "GET", URI: "/", Host: "h"},
		{Version: 1, Kind: KindRequest, ID: 1<<64 - 1, Method: "POST", URI: "/a%2Fb?x=%20&y", Host: "users:8080",
			Header: []string{"Accept", "a", "X-Multi", "1", "X-Multi", "2"}, Body: []byte("hello"),
			Trailer: []string{"X-Sum", "abc"}, ContentLength: -1, Timeout: 1500000},
		{Version: 1, Kind: KindResponse, ID: 7, Status: 418, Message: "I'm a teapot",
			Header: []string{"Content-Type", "text/plain"}, Body: bytes.Repeat([]byte{0, 1, 2}, 100), ContentLength: 300},
		{Version: 1, Kind: KindError, ID: 3, Status: 500, Message: "no response"},
	}
}

// normalise makes nil and empty slices compare equal: msgpack does not
// distinguish them.
func normalise(e envelope) envelope {
	if len(e.Header) == 0 {
		e.Header = nil
	}
	if len(e.Trailer) == 0 {
		e.Trailer = nil
	}
	if len(e.Body) == 0 {
		e.Body = nil
	}
	return e
}

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, in := range sampleEnvelopes() {
		b, err := appendEnvelope(nil, &in)
		if err != nil {
			t.Fatal(err)
		}
		var out envelope
		if err := decodeEnvelope(b, Limits{}, &out); err != nil {
			t.Fatalf("%s: %v", in.Kind, err)
		}
		if !reflect.DeepEqual(normalise(in), normalise(out)) {
			t.Errorf("round trip changed the envelope:\n in  %+v\n out %+v", in, out)
		}
	}
}

func TestEnvelopeRejects(t *testing.T) {
	lim := Limits{MaxBodyBytes: 10, MaxHeaderBytes: 64, MaxHeaderFields: 3}
	enc := func(e envelope) []byte {
		b, err := appendEnvelope(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	req := func(mod func(*envelope)) []byte {
		e := envelope{Version: 1, Kind: KindRequest, ID: 5, Method: "GET", URI: "/", Host: "h"}
		mod(&e)
		return enc(e)
	}
	// fields spoils one field of a valid request given as a field list.
	fields := func(mod func(f []any)) []byte {
		f := []any{1, 1, 5, "GET", "/", "h", 0, []string{}, []byte{}, []string{}, 0, 0, "", 0, 0, 0}
		mod(f)
		var b []byte
		if err := codec.NewEncoderBytes(&b, mh).Encode(f); err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name   string
		in     []byte
		reason string
	}{
		// Wrong msgpack types are refused, not converted (section 3).
		{"kind 257", fields(func(f []any) { f[1] = 257 }), reasonKind},
		{"header map", fields(func(f []any) { f[7] = map[string]string{"A": "1"} }), reasonMalformed},
		{"trailer map", fields(func(f []any) { f[9] = map[string]string{"A": "1"} }), reasonMalformed},
		{"header of ints", fields(func(f []any) { f[7] = []int{1, 2} }), reasonMalformed},
		{"float status", fields(func(f []any) { f[6] = 200.0 }), reasonMalformed},
		{"float timeout", fields(func(f []any) { f[11] = 1e6 }), reasonMalformed},
		{"float32 content length", fields(func(f []any) { f[10] = float32(0) }), reasonMalformed},
		{"bool flags", fields(func(f []any) { f[14] = true }), reasonMalformed},
		{"str body", fields(func(f []any) { f[8] = "abc"; f[10] = 3 }), reasonMalformed},
		{"bin method", fields(func(f []any) { f[3] = []byte("GET") }), reasonMalformed},
		{"negative credit", fields(func(f []any) { f[15] = -1 }), reasonMalformed},
		{"empty", nil, reasonMalformed},
		{"not an array", []byte{0xa3, 'a', 'b', 'c'}, reasonMalformed},
		{"too few fields", []byte{0x92, 1, 1}, reasonMalformed},
		{"version 2", []byte{0x93, 2, 1, 5}, reasonVersion},
		{"unknown kind", []byte{0x93, 1, 99, 5}, reasonKind},
		{"kind 0", []byte{0x93, 1, 0, 5}, reasonKind},
		{"truncated", req(func(e *envelope) {})[:10], reasonMalformed},
		{"trailing bytes", append(req(func(e *envelope) {}), 0xc0), reasonMalformed},
		{"body over limit", req(func(e *envelope) { e.Body = make([]byte, 11); e.ContentLength = 11 }), reasonBodyLarge},
		{"too many headers", req(func(e *envelope) { e.Header = []string{"A", "1", "B", "2", "C", "3", "D", "4"} }), reasonHeaderLarge},
		{"header bytes", req(func(e *envelope) { e.Header = []string{"A", string(make([]byte, 70))} }), reasonHeaderLarge},
		{"odd header list", req(func(e *envelope) { e.Header = []string{"A"} }), reasonMalformed},
		{"bad header name", req(func(e *envelope) { e.Header = []string{"A B", "1"} }), reasonInvalidHTTP},
		{"CRLF in value", req(func(e *envelope) { e.Header = []string{"A", "1\r\nB: 2"} }), reasonInvalidHTTP},
		{"space in URI", req(func(e *envelope) { e.URI = "/a b" }), reasonInvalidHTTP},
		{"empty method", req(func(e *envelope) { e.Method = "" }), reasonInvalidHTTP},
		{"content length mismatch", req(func(e *envelope) { e.Body = []byte("abc"); e.ContentLength = 2 }), reasonMalformed},
		{"negative timeout", req(func(e *envelope) { e.Timeout = -1 }), reasonMalformed},
		// An array that claims 2^32-1 elements in a few bytes must not
		// make the decoder allocate for them.
		{"huge declared array", []byte{0x93 + 4, 1, 1, 5, 0xa1, 'G', 0xdd, 0xff, 0xff, 0xff, 0xff}, reasonHeaderLarge},
		{"huge declared string", []byte{0x94, 1, 1, 5, 0xdb, 0xff, 0xff, 0xff, 0xff}, reasonMalformed},
	}
	for _, c := range cases {
		var e envelope
		err := decodeEnvelope(c.in, lim, &e)
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			t.Errorf("%s: got %v, want a ProtocolError", c.name, err)
			continue
		}
		if pe.Reason != c.reason {
			t.Errorf("%s: reason %q (%v), want %q", c.name, pe.Reason, err, c.reason)
		}
	}
}

func FuzzEnvelope(f *testing.F) {
	for _, e := range sampleEnvelopes() {
		b, err := appendEnvelope(nil, &e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x93, 1, 1, 5})
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	// Wrong types and values out of range (hostile_test.go sends the same
	// to a server): kind 257, a header map, a float timeout and status, a
	// timeout of 2^62 µs.
	f.Add([]byte{0x93, 1, 0xcd, 1, 1, 5})
	f.Add([]byte{0x98, 1, 1, 5, 0xa3, 'G', 'E', 'T', 0xa1, '/', 0xa0, 0, 0x81, 0xa1, 'A', 0xa1, 'b'})
	f.Add([]byte{0x9c, 1, 1, 5, 0xa3, 'G', 'E', 'T', 0xa1, '/', 0xa0, 0, 0xc0, 0xc0, 0xc0, 0, 0xcb, 0x41, 0x2e, 0x84, 0x80, 0, 0, 0, 0})
	f.Add([]byte{0x97, 1, 2, 5, 0xc0, 0xc0, 0xc0, 0xcb, 0x40, 0x69, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x9c, 1, 1, 5, 0xa3, 'G', 'E', 'T', 0xa1, '/', 0xa0, 0, 0xc0, 0xc0, 0xc0, 0, 0xd3, 0x40, 0, 0, 0, 0, 0, 0, 0})
	lim := Limits{MaxBodyBytes: 1 << 16, MaxHeaderBytes: 1 << 12, MaxHeaderFields: 64}
	f.Fuzz(func(t *testing.T, b []byte) {
		var e envelope
		if err := decodeEnvelope(b, lim, &e); err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a ProtocolError", err)
			}
			return
		}
		// Whatever decodes must re-encode and decode to the same value.
		b2, err := appendEnvelope(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		var e2 envelope
		if err := decodeEnvelope(b2, lim, &e2); err != nil {
			t.Fatalf("re-encoded envelope does not decode: %v", err)
		}
		if !reflect.DeepEqual(normalise(e), normalise(e2)) {
			t.Fatalf("round trip changed the envelope:\n %+v\n %+v", e, e2)
		}
	})
}

func BenchmarkEnvelopeEncode(b *testing.B) {
	e := sampleEnvelopes()[1]
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		buf, err = appendEnvelope(buf[:0], &e)
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEnvelopeDecode(b *testing.B) {
	e := sampleEnvelopes()[1]
	buf, _ := appendEnvelope(nil, &e)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var out envelope
		if err := decodeEnvelope(buf, Limits{}, &out); err != nil {
			b.Fatal(err)
		}
	}
}
