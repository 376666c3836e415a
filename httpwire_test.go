package zmqhttp

import (
	"reflect"
	"testing"
)

// FuzzRespParser: the response parser never panics, and how the bytes are
// split across writes does not change what it reads.
func FuzzRespParser(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), uint(7))
	f.Add([]byte("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"), uint(40))
	f.Add([]byte("HTTP/1.1 204 No Content\r\n\r\n"), uint(3))
	f.Add([]byte("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"), uint(30))
	f.Fuzz(func(t *testing.T, data []byte, cut uint) {
		parse := func(pieces ...[]byte) *respParser {
			p := &respParser{maxBody: 1 << 16, maxHeader: 1 << 12}
			for _, piece := range pieces {
				// The server reuses its buffer after Write returns.
				buf := append([]byte(nil), piece...)
				if p.write(buf) != nil {
					break
				}
				for i := range buf {
					buf[i] = 'Z'
				}
			}
			p.finish()
			return p
		}
		whole := parse(data)
		i := int(cut % uint(len(data)+1))
		split := parse(data[:i], data[i:])
		if (whole.err == nil) != (split.err == nil) || whole.done() != split.done() {
			t.Fatalf("split at %d changes the outcome: err %v/%v done %v/%v", i, whole.err, split.err, whole.done(), split.done())
		}
		if whole.err == nil && whole.done() {
			a, b := whole.envelope(1), split.envelope(1)
			if !reflect.DeepEqual(normalise(*a), normalise(*b)) {
				t.Fatalf("split at %d changes the response:\n%+v\n%+v", i, a, b)
			}
		}
	})
}
