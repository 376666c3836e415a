package zmqhttp

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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

// BenchmarkRoundTripDirect is BenchmarkRoundTrip with the server on the
// direct path (Serve).
func BenchmarkRoundTripDirect(b *testing.B) {
	for _, network := range testNetworks {
		b.Run(network, func(b *testing.B) {
			ts := startDirectServer(b, network, &http.Server{Handler: echoHandler()}, WithWorkers(512))
			benchRoundTripOn(b, ts, 128, 32, nil)
		})
	}
	b.Run("tcp-64KiB", func(b *testing.B) {
		ts := startDirectServer(b, "tcp", &http.Server{Handler: echoHandler()}, WithWorkers(512))
		benchRoundTripOn(b, ts, 64<<10, 8, nil)
	})
}

func benchRoundTripWith(b *testing.B, network string, size, par int, srvOpts, cliOpts []Option) {
	ts := startServer(b, network, echoHandler(), append([]Option{WithWorkers(512)}, srvOpts...)...)
	benchRoundTripOn(b, ts, size, par, cliOpts)
}

// benchRoundTripOn runs benchRoundTrip's callers against ts.
func benchRoundTripOn(b *testing.B, ts *testServer, size, par int, cliOpts []Option) {
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

// BenchmarkDownload16MiBCopy is BenchmarkDownload16MiB with a handler that
// writes 32 KiB at a time, as io.Copy and http.ServeContent do.
func BenchmarkDownload16MiBCopy(b *testing.B) {
	payload := bytes.Repeat([]byte("z"), 16<<20)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
		for i := 0; i < len(payload); i += 32 << 10 {
			w.Write(payload[i : i+32<<10])
		}
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

// BenchmarkProxyHop compares a round trip through the broker (Transport →
// Proxy → connecting Listener) with the direct one (Transport → Listener),
// 128-byte echo, in one process: "64" runs 64 callers (throughput),
// "1" one caller (latency; p50-µs is the median round trip).
//
//	go test -run '^$' -bench ProxyHop -benchtime 3s .
func BenchmarkProxyHop(b *testing.B) {
	for _, par := range []int{1, 64} {
		for _, via := range []string{"direct", "proxy"} {
			b.Run(via+"/"+strconv.Itoa(par), func(b *testing.B) { benchProxyHop(b, via == "proxy", par) })
		}
	}
}

func benchProxyHop(b *testing.B, viaProxy bool, callers int) {
	ep := ""
	if viaProxy {
		p := startProxy(b, "", "")
		startServerAt(b, ">"+backendOf(p), echoHandler(), WithWorkers(512))
		waitServers(b, p, 1)
		ep = frontendOf(p)
	} else {
		ep = startServer(b, "tcp", echoHandler(), WithWorkers(512)).L.Endpoint()
	}
	client, _ := newClient(b, ep)
	body := bytes.Repeat([]byte("x"), 128)
	call := func() time.Duration {
		start := time.Now()
		resp, err := client.Post("http://svc/", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			b.Error(err)
			return 0
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n != int64(len(body)) {
			b.Errorf("echoed %d bytes", n)
		}
		return time.Since(start)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if callers == 1 {
		lat := make([]time.Duration, 0, b.N)
		for i := 0; i < b.N; i++ {
			lat = append(lat, call())
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				call()
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
