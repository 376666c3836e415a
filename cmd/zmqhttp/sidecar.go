package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// runSidecar runs "zmqhttp sidecar": zmqhttp in, HTTP out.
func runSidecar(args []string, stderr io.Writer) int {
	fs := newFlagSet("sidecar", "-listen ENDPOINT -to URL [flags]", stderr)
	listen := fs.String("listen", "", `zmqhttp endpoint to serve: tcp://*:5555, ipc:///path, or ">tcp://broker:5556" to serve behind a proxy (required)`)
	to := fs.String("to", "", "base URL of the HTTP service to forward to, e.g. http://127.0.0.1:8081 (required)")
	workers := fs.Int("workers", 0, "requests forwarded at once (0: 1024)")
	queue := fs.Int("queue", 0, "requests that may wait for a worker before 503 (0: 4096)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9101 (default: none)")
	grace := fs.Duration("shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for requests in flight")
	var curve curveServerFlags
	curve.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	switch {
	case *listen == "" || *to == "":
		return usageError(fs, stderr, "-listen and -to are required")
	case fs.NArg() > 0:
		return usageError(fs, stderr, "unexpected argument %q", fs.Arg(0))
	}
	target, err := url.Parse(*to)
	if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		return usageError(fs, stderr, "-to %q: want a URL like http://127.0.0.1:8081", *to)
	}
	const name = "zmqhttp sidecar"
	opts := append(curve.options(), zmqhttp.WithWorkers(*workers), zmqhttp.WithQueueSize(*queue))
	l, err := zmqhttp.Listen(*listen, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	logger := log.New(stderr, name+": ", log.LstdFlags)
	var counts codeCounter
	srv := &http.Server{Handler: counts.wrap(newSidecar(target, logger)), ErrorLog: logger}
	ms, err := startMetrics(*metricsAddr, func(w io.Writer) {
		counts.write(w, "zmqhttp_sidecar", "the sidecar")
		writeListenerMetrics(w, l.Stats())
	})
	if err != nil {
		l.Close()
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if ms != nil {
		defer ms.Close()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	fmt.Fprintf(stderr, "%s: listening on %s, forwarding to %s\n", name, l.Endpoint(), target)
	if ms != nil {
		fmt.Fprintf(stderr, "%s: metrics on http://%s/metrics\n", name, ms.addr)
	}
	return serveUntilSignal(name, stderr, *grace, srv, served)
}

// newSidecar returns the sidecar's handler: a ReverseProxy forwarding every
// request to target over net/http's Transport, as NewSingleHostReverseProxy
// does (the request's Host is kept; X-Forwarded-For is appended to), with
// errors answered as the gateway answers them.
func newSidecar(target *url.URL, logger *log.Logger) http.Handler {
	rp := httputil.NewSingleHostReverseProxy(target)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true // pass encodings through untouched
	tr.MaxIdleConnsPerHost = 256 // one upstream: keep connections for the concurrency it sees
	rp.Transport = tr
	rp.FlushInterval = -1
	rp.ErrorHandler = errorHandler("zmqhttp sidecar", logger)
	rp.ErrorLog = logger
	return rp
}
