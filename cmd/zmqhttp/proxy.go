package main

import (
	"fmt"
	"io"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// runProxy runs "zmqhttp proxy": the broker in the foreground.
func runProxy(args []string, stderr io.Writer) int {
	fs := newFlagSet("proxy", "-frontend ENDPOINT -backend ENDPOINT [flags]", stderr)
	frontend := fs.String("frontend", "", "endpoint clients connect to, e.g. tcp://*:5555 (required)")
	backend := fs.String("backend", "", "endpoint servers connect to with Listen(\">tcp://host:5556\"), e.g. tcp://*:5556 (required)")
	queue := fs.Int("queue", 0, "requests that may wait for a server with room (0: the library default, see WithQueueSize)")
	hbInterval := fs.Duration("heartbeat", 0, "heartbeat interval on every connection (0: 1s)")
	hbTimeout := fs.Duration("heartbeat-timeout", 0, "silence after which a connection is dropped (0: 3 heartbeats)")
	grace := fs.Duration("shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for requests in flight")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (default: none)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *frontend == "" || *backend == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	p, err := zmqhttp.NewProxy(*frontend, *backend,
		zmqhttp.WithQueueSize(*queue), zmqhttp.WithHeartbeat(*hbInterval, *hbTimeout))
	if err != nil {
		fmt.Fprintf(stderr, "zmqhttp proxy: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "zmqhttp proxy: clients on %s, servers on %s\n", p.FrontendAddr(), p.BackendAddr())
	ms, err := startMetrics(*metricsAddr, func(w io.Writer) { writeProxyMetrics(w, p.Stats()) })
	if err != nil {
		p.Close()
		fmt.Fprintf(stderr, "zmqhttp proxy: %v\n", err)
		return 1
	}
	if ms != nil {
		defer ms.Close()
		fmt.Fprintf(stderr, "zmqhttp proxy: metrics on http://%s/metrics\n", ms.addr)
	}

	err = shutdownOnSignal("zmqhttp proxy", stderr, *grace, p.Shutdown)
	if err != nil {
		p.Close()
		fmt.Fprintf(stderr, "zmqhttp proxy: shutdown: %v (closed with requests in flight)\n", err)
		return 1
	}
	return 0
}
