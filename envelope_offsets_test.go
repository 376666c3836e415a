package zmqhttp

import (
	"math/rand"
	"strings"
	"testing"

	"github.com/ugorji/go/codec"
)

// randomFrame returns a msgpack array of random values: an envelope with
// random fields, or an array of n values of random msgpack types (some
// nested, some long enough for 2- and 4-byte length headers), sometimes
// cut short or with a byte changed.
func randomFrame(r *rand.Rand) []byte {
	var b []byte
	if r.Intn(2) == 0 {
		e := envelope{Version: 1, Kind: Kind(1 + r.Intn(int(maxKnownKind))), ID: r.Uint64() >> r.Intn(64),
			Method: randString(r, 8), URI: "/" + randString(r, 300), Host: randString(r, 20),
			Status: r.Intn(1000), ContentLength: int64(r.Intn(70000)) - 1, Timeout: r.Int63() >> r.Intn(63),
			Message: randString(r, 40), Seq: uint64(r.Intn(1 << 20)), Flags: uint64(r.Intn(32)), Credit: r.Uint64() >> r.Intn(64)}
		for range r.Intn(6) {
			e.Header = append(e.Header, randString(r, 10), randString(r, 300))
		}
		for range r.Intn(3) {
			e.Trailer = append(e.Trailer, randString(r, 10), randString(r, 10))
		}
		if r.Intn(2) == 0 {
			e.Body = make([]byte, r.Intn(70000))
		}
		var err error
		if b, err = appendEnvelope(nil, &e); err != nil {
			panic(err)
		}
	} else {
		vals := make([]any, r.Intn(24))
		for i := range vals {
			switch r.Intn(8) {
			case 0:
				vals[i] = r.Int63() >> r.Intn(63)
			case 1:
				vals[i] = -r.Int63() >> r.Intn(63)
			case 2:
				vals[i] = strings.Repeat("x", r.Intn(70000))
			case 3:
				vals[i] = make([]byte, r.Intn(300))
			case 4:
				vals[i] = []string{randString(r, 5), randString(r, 5)}
			case 5:
				vals[i] = map[string]any{"a": []any{1, "x", []any{2}}}
			case 6:
				vals[i] = r.Float64()
			default:
				vals[i] = nil
			}
		}
		if err := codec.NewEncoderBytes(&b, mh).Encode(vals); err != nil {
			panic(err)
		}
	}
	switch r.Intn(4) {
	case 0:
		b = b[:r.Intn(len(b)+1)]
	case 1:
		if len(b) > 0 {
			b[r.Intn(len(b))] = byte(r.Intn(256))
		}
	}
	return b
}

func randString(r *rand.Rand, maxLen int) string {
	s := make([]byte, r.Intn(maxLen+1))
	for i := range s {
		s[i] = byte('!' + r.Intn(94))
	}
	return string(s)
}

// TestCheckShapeOffsets: the field offsets checkShape records (which
// checkTypes reads instead of walking the frame again) are where the
// fields start, found by walking the top-level array one element at a
// time.
func TestCheckShapeOffsets(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	accepted := 0
	for range 5000 {
		b := randomFrame(r)
		n, err := arrayHeader(b) // decodeEnvelope's first check
		if err != nil {
			continue
		}
		var offs fieldOffsets
		if checkShape(b, 2*defaultMaxHeaderFields, &offs) != nil {
			continue
		}
		accepted++
		p := 1
		if b[0] == 0xdc {
			p = 3
		} else if b[0] == 0xdd {
			p = 5
		}
		for i := 0; i < n && i < envelopeFields; i++ {
			if offs[i] != p {
				t.Fatalf("field %d recorded at %d, starts at %d, in %x", i, offs[i], p, b[:min(len(b), 64)])
			}
			m, err := walk(b[p:], 1, 1<<30)
			if err != nil {
				t.Fatalf("field %d: %v after checkShape took the frame %x", i, err, b[:min(len(b), 64)])
			}
			p += m
		}
	}
	if accepted < 1000 {
		t.Fatalf("only %d of 5000 random frames were well formed: the test checks too little", accepted)
	}
}
