package zmqhttp

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// BenchmarkRoundTrip measures one request/response through Transport,
// Listener and http.Server in one process, with b.SetParallelism callers.
func BenchmarkRoundTrip(b *testing.B) {
	for _, network := range testNetworks {
		b.Run(network, func(b *testing.B) { benchRoundTrip(b, network, 128, 32) })
	}
	b.Run("tcp-64KiB", func(b *testing.B) { benchRoundTrip(b, "tcp", 64<<10, 8) })
}

// benchRoundTrip runs 2×par callers (on 2 cores) posting size-byte bodies
// to an echo handler; each call fails the benchmark unless the whole body
// comes back.
func benchRoundTrip(b *testing.B, network string, size, par int) {
	benchRoundTripWith(b, network, size, par, nil, nil)
}

// BenchmarkSecurity compares the mechanisms at 64 callers (2×32 on 2
// cores) and 128-byte bodies: CURVE's req/s against NULL's is the ratio of
// their ns/op, inverted.
func BenchmarkSecurity(b *testing.B) {
	b.Run("NULL", func(b *testing.B) { benchRoundTripWith(b, "tcp", 128, 32, nil, nil) })
	b.Run("CURVE", func(b *testing.B) {
		spub, ssec, _ := NewCurveKeyPair()
		cpub, csec, _ := NewCurveKeyPair()
		benchRoundTripWith(b, "tcp", 128, 32, []Option{WithCurveServer(ssec)}, []Option{WithCurveClient(spub, cpub, csec)})
	})
}

func benchRoundTripWith(b *testing.B, network string, size, par int, srvOpts, cliOpts []Option) {
	ts := startServer(b, network, echoHandler(), append([]Option{WithWorkers(512)}, srvOpts...)...)
	client, _ := newClient(b, ts.L.Endpoint(), cliOpts...)
	body := bytes.Repeat([]byte("x"), size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.SetParallelism(par)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post("http://svc/", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				b.Errorf("reading the reply: %v", err)
				return
			}
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
			if n != int64(size) {
				b.Errorf("echoed %d bytes, want %d", n, size)
				return
			}
		}
	})
}

// BenchmarkDownload16MiB measures one 16 MiB streamed response through
// Transport, Listener and http.Server in one process, 4 callers.
func BenchmarkDownload16MiB(b *testing.B) {
	payload := bytes.Repeat([]byte("z"), 16<<20)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
		w.Write(payload)
	})
	ts := startServer(b, "tcp", h)
	client, _ := newClient(b, ts.L.Endpoint())
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.SetParallelism(2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 32<<10)
		for pb.Next() {
			resp, err := client.Get("http://svc/")
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{resp.Body}, buf)
			resp.Body.Close()
			if n != int64(len(payload)) {
				b.Errorf("got %d bytes", n)
				return
			}
		}
	})
}

// BenchmarkHTTPRoundTrip64KiB is the net/http HTTP/1.1 baseline of
// BenchmarkRoundTrip/tcp-64KiB, in one process with the same handler.
func BenchmarkHTTPRoundTrip64KiB(b *testing.B) {
	ts := httptest.NewServer(echoHandler())
	defer ts.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := bytes.Repeat([]byte("x"), 64<<10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(ts.URL, "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if n != int64(len(body)) {
				b.Errorf("echoed %d bytes", n)
				return
			}
		}
	})
}
