package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// serveCmd is the subcommand the parent runs in its server children.
const serveCmd = "serve"

// Paths the server handles (see handler).
const (
	pathEcho  = "/echo"
	pathBytes = "/bytes"
	pathSSE   = "/sse"
)

// maxBytesBody is the largest body pathBytes serves.
const maxBytesBody = 64 << 20

// serve runs one benchmark server until stdin closes (the parent exited or
// closed it) or the process is killed. It writes the endpoint to dial as
// one line on out once it is listening.
func serve(args []string, stdin io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet(serveCmd, flag.ContinueOnError)
	proto := fs.String("proto", "", "protocol to serve: http, zmqhttp or zmqhttp-direct")
	addr := fs.String("addr", "", "listen address (default: an ephemeral loopback port)")
	workers := fs.Int("workers", 512, "zmqhttp: WithWorkers")
	queue := fs.Int("queue", 4096, "zmqhttp: WithQueueSize")
	maxBody := fs.String("max-body", "0", "zmqhttp: Limits.MaxBodyBytes (0: the library default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	limit, err := parseSize(*maxBody)
	if err != nil {
		return fmt.Errorf("-max-body: %w", err)
	}
	opts := []zmqhttp.Option{zmqhttp.WithWorkers(*workers), zmqhttp.WithQueueSize(*queue)}
	if limit > 0 {
		opts = append(opts, zmqhttp.WithLimits(zmqhttp.Limits{MaxBodyBytes: int64(limit)}))
	}
	ln, endpoint, err := listen(*proto, *addr, opts)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:  handler(),
		ErrorLog: log.New(os.Stderr, "zmqhttp-bench serve "+*proto+": ", 0),
	}
	stopProfile := startProfile(*proto)
	go exitOnEOF(stdin, stopProfile)
	if _, err := fmt.Fprintln(out, endpoint); err != nil {
		return err
	}
	serveFn := srv.Serve
	if *proto == protoDirect {
		serveFn = func(ln net.Listener) error { return zmqhttp.Serve(ln.(*zmqhttp.Listener), srv) }
	}
	if err := serveFn(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// listen opens the listener for proto and returns the endpoint a client
// dials: "host:port" for http, "tcp://host:port" for zmqhttp. opts apply to
// zmqhttp only.
func listen(proto, addr string, opts []zmqhttp.Option) (net.Listener, string, error) {
	switch proto {
	case protoHTTP:
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, "", err
		}
		return ln, ln.Addr().String(), nil
	case protoZMQ, "zmq", protoDirect:
		if addr == "" {
			addr = "tcp://127.0.0.1:0"
		}
		ln, err := zmqhttp.Listen(addr, opts...)
		if err != nil {
			return nil, "", err
		}
		return ln, ln.Endpoint(), nil
	}
	return nil, "", fmt.Errorf("-proto: want %s, %s or %s, got %q", protoHTTP, protoZMQ, protoDirect, proto)
}

// exitOnEOF ends the process when r reaches EOF, so a child never outlives
// its parent even if the parent is killed without cleaning up.
func exitOnEOF(r io.Reader, before func()) {
	io.Copy(io.Discard, r)
	before()
	os.Exit(0)
}

// startProfile writes a CPU profile of this process to
// $ZMQHTTP_BENCH_CPUPROFILE.NAME.pprof when that variable is set (NAME is
// the served protocol for a server, "client" for the parent); the returned
// function ends it.
func startProfile(proto string) func() {
	base := os.Getenv("ZMQHTTP_BENCH_CPUPROFILE")
	if base == "" {
		return func() {}
	}
	f, err := os.Create(base + "." + proto + ".pprof")
	if err != nil {
		fmt.Fprintln(os.Stderr, "zmqhttp-bench serve: cpu profile:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "zmqhttp-bench serve: cpu profile:", err)
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// handler routes the benchmark's requests:
//
//	POST /echo                     the request body back (echo)
//	GET  /bytes?n=N                N bytes (sendBytes)
//	GET  /sse?n=N&interval=D       N server-sent events D apart (sendEvents)
//
// Any other path is echoed too.
func handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", echo)
	mux.HandleFunc(pathBytes, sendBytes)
	mux.HandleFunc(pathSSE, sendEvents)
	return mux
}

// bulk is the buffer sendBytes serves from, allocated on first use.
var bulk = sync.OnceValue(func() []byte { return makeBody(maxBytesBody) })

// sendBytes writes the first n bytes (query parameter n, at most
// maxBytesBody) of a preallocated buffer, with a Content-Length.
func sendBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 0 || n > maxBytesBody {
		http.Error(w, fmt.Sprintf("n: want 0 to %d bytes", maxBytesBody), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(n))
	w.Write(bulk()[:n])
}

// sendEvents streams n server-sent events (query parameter n), the first
// at once and the next ones interval apart (query parameter interval, a
// time.Duration). Each event's data is the server's wall clock when it is
// written, in Unix nanoseconds, and each is flushed on its own.
func sendEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, err1 := strconv.Atoi(q.Get("n"))
	interval, err2 := time.ParseDuration(q.Get("interval"))
	if err1 != nil || err2 != nil || n < 1 || interval <= 0 {
		http.Error(w, "want n (events, at least 1) and interval (a positive duration)", http.StatusBadRequest)
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "this ResponseWriter cannot flush", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	var tick *time.Ticker
	buf := make([]byte, 0, 64)
	for i := 0; i < n; i++ {
		if tick == nil {
			tick = time.NewTicker(interval)
			defer tick.Stop()
		} else {
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			}
		}
		buf = fmt.Appendf(buf[:0], "id: %d\ndata: %d\n\n", i, time.Now().UnixNano())
		if _, err := w.Write(buf); err != nil {
			return
		}
		flusher.Flush()
	}
}

// echo writes the request body back with a Content-Length.
func echo(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	if r.ContentLength > 0 && r.ContentLength <= 64<<20 {
		buf.Grow(int(r.ContentLength))
	}
	if _, err := buf.ReadFrom(r.Body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.Write(buf.Bytes())
}
