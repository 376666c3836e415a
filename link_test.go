package zmqhttp

import (
	"bytes"
	"testing"
)

// TestChunkSplice: a CHUNK written with its body spliced into the
// envelope (not copied) decodes as the same envelope the codec encodes.
func TestChunkSplice(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256, 65535, 65536, 300000} {
		data := bytes.Repeat([]byte{0xab}, n)
		e := envelope{Version: ProtocolVersion, Kind: KindChunk, ID: 1 << 40, Seq: 7, Flags: flagLast, Trailer: []string{"X-A", "b"}}
		b, err := appendEnvelope(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		at := bodyOffset(b)
		if b[at] != 0xc0 {
			t.Fatalf("body offset %d holds 0x%02x, want c0 (nil)", at, b[at])
		}
		spliced := append(append(append(append([]byte(nil), b[:at]...), appendBinHeader(nil, n)...), data...), b[at+1:]...)
		e.Body = data
		want, _ := appendEnvelope(nil, &e)
		if n > 0 && !bytes.Equal(spliced, want) {
			t.Fatalf("%d bytes: spliced encoding differs from the codec's", n)
		}
		var got envelope
		if err := decodeEnvelope(spliced, Limits{}, &got); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if len(got.Body) != n || got.Seq != 7 || got.ID != 1<<40 || got.Flags != flagLast || len(got.Trailer) != 2 {
			t.Fatalf("%d bytes: decoded %+v", n, got)
		}
	}
}
