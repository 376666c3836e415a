package zmqhttp

import (
	"bytes"
	"reflect"
	"testing"
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
