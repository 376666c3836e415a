package main

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// runGateway runs "zmqhttp gateway": HTTP in, zmqhttp out.
func runGateway(args []string, stderr io.Writer) int {
	fs := newFlagSet("gateway", "-listen ADDR -to ENDPOINT [flags]", stderr)
	listen := fs.String("listen", "", "HTTP address to serve, e.g. 127.0.0.1:8080 (required)")
	to := fs.String("to", "", "zmqhttp endpoint to forward to: tcp://host:port, ipc:///path, or a comma-separated list (required)")
	timeout := fs.Duration("timeout", 60*time.Second, "answer 504 when the response head (status and headers) takes longer, counted from the start, the request body's upload included; the response body may stream for longer (0: no bound)")
	host := fs.String("host", "", "Host to send upstream, e.g. the service name a proxy routes on (default: the request's own)")
	maxBody := fs.Int64("max-body", 0, "largest request or response body in bytes, answered 413 beyond (0: no bound on streamed bodies)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (default: none)")
	grace := fs.Duration("shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for requests in flight")
	var curve curveClientFlags
	curve.register(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	switch {
	case *listen == "" || *to == "":
		return usageError(fs, stderr, "-listen and -to are required")
	case fs.NArg() > 0:
		return usageError(fs, stderr, "unexpected argument %q", fs.Arg(0))
	case *maxBody < 0:
		return usageError(fs, stderr, "-max-body %d: want 0 or more", *maxBody)
	}
	const name = "zmqhttp gateway"
	opts, err := curve.options()
	if err != nil {
		return usageError(fs, stderr, "%v", err)
	}
	// A proxy passes encodings through: no transparent gzip.
	opts = append(opts, zmqhttp.WithDisableCompression(), zmqhttp.WithLimits(zmqhttp.Limits{MaxBodyBytes: *maxBody}))
	tr, err := zmqhttp.NewTransport(*to, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	defer tr.Close()
	logger := log.New(stderr, name+": ", log.LstdFlags)
	var counts codeCounter
	handler := counts.wrap(newGateway(tr, *timeout, *host, *maxBody, logger))

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	ms, err := startMetrics(*metricsAddr, func(w io.Writer) {
		counts.write(w, "zmqhttp_gateway", "the gateway")
		writeTransportMetrics(w, tr.Stats())
	})
	if err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if ms != nil {
		defer ms.Close()
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: logger}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "%s: listening on http://%s, forwarding to %s\n", name, ln.Addr(), *to)
	if ms != nil {
		fmt.Fprintf(stderr, "%s: metrics on http://%s/metrics\n", name, ms.addr)
	}
	return serveUntilSignal(name, stderr, *grace, srv, served)
}

// serveUntilSignal waits for a signal (then shuts srv down gracefully) or
// for srv's Serve to fail, and returns the exit status.
func serveUntilSignal(name string, stderr io.Writer, grace time.Duration, srv *http.Server, served chan error) int {
	failed := make(chan error, 1)
	go func() {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			failed <- err
		}
	}()
	stopped := make(chan error, 1)
	go func() { stopped <- shutdownOnSignal(name, stderr, grace, srv.Shutdown) }()
	select {
	case err := <-failed:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		srv.Close()
		return 1
	case err := <-stopped:
		if err != nil {
			srv.Close()
			fmt.Fprintf(stderr, "%s: shutdown: %v (closed with requests in flight)\n", name, err)
			return 1
		}
		return 0
	}
}

// newGateway returns the gateway's handler: a ReverseProxy forwarding
// every request over rt (a zmqhttp Transport) with the request's Host
// (or host, if set), waiting at most timeout for each response head.
// A request body over maxBody (if > 0) is answered 413: at once for a
// declared length, when the excess is read otherwise.
func newGateway(rt http.RoundTripper, timeout time.Duration, host string, maxBody int64, logger *log.Logger) http.Handler {
	onError := errorHandler("zmqhttp gateway", logger)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			h := pr.In.Host
			if host != "" {
				h = host
			}
			if h == "" {
				h = "localhost"
			}
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = h
			pr.Out.Host = h
			pr.SetXForwarded()
		},
		Transport:     headTimeout{rt: rt, d: timeout},
		FlushInterval: -1, // server-sent events: each write goes out at once
		ErrorHandler:  onError,
		ErrorLog:      logger,
	}
	if maxBody <= 0 {
		return rp
	}
	// The Transport's own limit bounds the response bodies it receives;
	// the request body is bounded here (zmqhttp's Transport does not check
	// a streamed request body against its limit before sending it).
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > maxBody {
			onError(w, r, fmt.Errorf("%w: request body of %d bytes over %d", zmqhttp.ErrBodyTooLarge, r.ContentLength, maxBody))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &limitedBody{ReadCloser: r.Body, left: maxBody, limit: maxBody}
		}
		rp.ServeHTTP(w, r)
	})
}

// limitedBody fails with ErrBodyTooLarge once more than its limit is read.
type limitedBody struct {
	io.ReadCloser
	left  int64 // bytes still allowed
	limit int64 // the limit, for the error
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("%w: request body over %d bytes", zmqhttp.ErrBodyTooLarge, b.limit)
	}
	return n, err
}
