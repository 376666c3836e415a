package zmqhttp

import (
	"net/http"
	"runtime"
	"testing"
	"time"
)

// Chunk frames of 16 KiB and more used to be read into pooled buffers of a
// full chunk's size whatever their size, and the recvStream keeps the
// whole frame until its body is read; the window counts only body bytes.
// A stream of ~20 KiB flushes that was not read held ~13x its window.
func TestReviewChunkFrameAmplification(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev := make([]byte, 20<<10+512)
		for i := 0; i < 200; i++ {
			if _, err := w.Write(ev); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	ts := startServer(t, "tcp", h)
	c, _ := newClient(t, ts.L.Endpoint())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const streams = 8
	var bodies []*http.Response
	for i := 0; i < streams; i++ {
		resp, err := c.Get("http://x/")
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp) // never read: each stream fills its window
	}
	time.Sleep(1500 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap grew %d MiB for %d unread streams with a %d MiB window each", grew>>20, streams, defaultStreamWindow>>20)
	for _, r := range bodies {
		r.Body.Close()
	}
	if grew > 3*streams*defaultStreamWindow {
		t.Fatalf("unread streams hold %d MiB, over 3x the windows' %d MiB", grew>>20, streams*defaultStreamWindow>>20)
	}
}
