package main

// Prometheus text exposition format (version 0.0.4), written by hand from
// the Stats snapshots: counters end in _total, gauges do not; each family
// has a HELP and a TYPE line.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// metricsServer serves /metrics on its own HTTP listener.
type metricsServer struct {
	addr string // the bound address
	srv  *http.Server
	done chan struct{} // closed when Serve returns
}

// startMetrics serves write's output at http://addr/metrics. An empty addr
// serves nothing and returns nil.
func startMetrics(addr string, write func(io.Writer)) (*metricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		bw := bufio.NewWriter(w)
		write(bw)
		bw.Flush()
	})
	m := &metricsServer{addr: ln.Addr().String(), done: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		defer close(m.done)
		m.srv.Serve(ln)
	}()
	return m, nil
}

// Close stops the metrics server at once and waits for it.
func (m *metricsServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	m.srv.Shutdown(ctx)
	m.srv.Close()
	<-m.done
	return nil
}

// promWriter writes metric families.
type promWriter struct{ w io.Writer }

// family writes the HELP and TYPE lines of name.
func (p promWriter) family(name, typ, help string) {
	fmt.Fprintf(p.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// sample writes one sample of name; labels alternate names and values.
func (p promWriter) sample(name string, v float64, labels ...string) {
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(labels[i])
			b.WriteString(`="`)
			b.WriteString(labelEscaper.Replace(labels[i+1]))
			b.WriteByte('"')
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	b.WriteByte('\n')
	io.WriteString(p.w, b.String())
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// counter writes a counter family with one unlabelled sample.
func (p promWriter) counter(name, help string, v uint64) {
	p.family(name, "counter", help)
	p.sample(name, float64(v))
}

// gauge writes a gauge family with one unlabelled sample.
func (p promWriter) gauge(name, help string, v int) {
	p.family(name, "gauge", help)
	p.sample(name, float64(v))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// writeTransportMetrics writes a Transport's Stats.
func writeTransportMetrics(w io.Writer, s zmqhttp.TransportStats) {
	p := promWriter{w}
	p.counter("zmqhttp_transport_requests_total", "Calls of RoundTrip (a request sent again counts once).", s.Requests)
	p.counter("zmqhttp_transport_connects_total", "Connections to servers established.", s.Connects)
	p.counter("zmqhttp_transport_dial_failures_total", "Failed attempts to connect to a server or to complete the handshake.", s.DialFailures)
	p.counter("zmqhttp_transport_connections_lost_total", "Established connections that broke.", s.ConnectionsLost)
	p.counter("zmqhttp_transport_late_replies_total", "Replies for which no caller was waiting (cancelled, timed out, unknown).", s.LateReplies)
	p.counter("zmqhttp_transport_bad_replies_total", "Messages from servers that could not be decoded or were over a limit.", s.BadReplies)
	p.counter("zmqhttp_transport_replays_total", "Requests sent again after a lost connection or a draining server.", s.Replays)
	p.gauge("zmqhttp_transport_pending", "Requests queued or awaiting a reply now.", s.Pending)
	p.family("zmqhttp_transport_server_connected", "gauge", "1 if the connection to this server address is up and takes requests.")
	for _, sv := range s.Servers {
		p.sample("zmqhttp_transport_server_connected", b2f(sv.Connected), "endpoint", sv.Endpoint, "address", sv.Address)
	}
	p.family("zmqhttp_transport_server_in_flight", "gauge", "Requests sent to this server address and not answered yet.")
	for _, sv := range s.Servers {
		p.sample("zmqhttp_transport_server_in_flight", float64(sv.InFlight), "endpoint", sv.Endpoint, "address", sv.Address)
	}
}

// writeListenerMetrics writes a Listener's Stats.
func writeListenerMetrics(w io.Writer, s zmqhttp.ListenerStats) {
	p := promWriter{w}
	p.counter("zmqhttp_listener_requests_total", "Requests received and decoded.", s.Requests)
	p.counter("zmqhttp_listener_overloaded_total", "Requests answered 503 because workers and queue were full.", s.Overloaded)
	p.counter("zmqhttp_listener_rejected_total", "Requests not run: invalid or over a limit.", s.Rejected)
	p.counter("zmqhttp_listener_bad_messages_total", "Messages dropped: unreadable or badly framed.", s.BadMessages)
	p.counter("zmqhttp_listener_handshake_failed_total", "Connections dropped during the ZMTP handshake.", s.HandshakeFailed)
	p.counter("zmqhttp_listener_handshakes_evicted_total", "Handshakes ended to make room for a new connection.", s.HandshakesEvicted)
	p.counter("zmqhttp_listener_accept_errors_total", "Failed accepts, each followed by a pause.", s.AcceptErrors)
	p.counter("zmqhttp_listener_slow_peers_total", "Connections dropped because they did not read their replies.", s.SlowPeers)
	p.counter("zmqhttp_listener_no_response_total", "Requests the server closed without a complete response.", s.NoResponse)
	p.counter("zmqhttp_listener_closed_unanswered_total", "Requests returned unprocessed (or 503) because the listener was closed.", s.ClosedUnanswered)
	p.counter("zmqhttp_listener_silent_peers_total", "Connections closed because the peer was silent for the heartbeat timeout.", s.SilentPeers)
	p.counter("zmqhttp_listener_canceled_total", "Requests the client cancelled.", s.Canceled)
	p.counter("zmqhttp_listener_expired_total", "Queued requests dropped unrun because the caller's deadline had passed.", s.Expired)
	p.gauge("zmqhttp_listener_peers", "Connected peers now.", s.Peers)
	p.gauge("zmqhttp_listener_in_flight", "Requests received and not yet answered.", s.InFlight)
}

// writeProxyMetrics writes a Proxy's Stats.
func writeProxyMetrics(w io.Writer, s zmqhttp.ProxyStats) {
	p := promWriter{w}
	p.counter("zmqhttp_proxy_requests_total", "Requests received from clients.", s.Requests)
	p.counter("zmqhttp_proxy_resent_total", "Requests sent to another server after theirs died, drained or returned them.", s.Resent)
	p.counter("zmqhttp_proxy_lost_total", "Requests failed with connection lost at the client.", s.Lost)
	p.counter("zmqhttp_proxy_evictions_total", "Servers dropped without draining.", s.Evictions)
	p.counter("zmqhttp_proxy_overloaded_total", "Requests answered 503: every server busy and the queue full.", s.Overloaded)
	p.counter("zmqhttp_proxy_unrouted_total", "Requests answered 502: no server serves the Host.", s.Unrouted)
	p.counter("zmqhttp_proxy_expired_total", "Queued requests answered 504 because their deadline passed.", s.Expired)
	p.counter("zmqhttp_proxy_not_processed_total", "Requests returned unprocessed (or 503) because the proxy was shutting down.", s.NotProcessed)
	p.counter("zmqhttp_proxy_handshake_failed_total", "Connections dropped during the ZMTP handshake.", s.HandshakeFailed)
	p.gauge("zmqhttp_proxy_clients", "Client connections now.", s.Clients)
	p.gauge("zmqhttp_proxy_servers", "Connected servers now.", len(s.Servers))
	p.gauge("zmqhttp_proxy_queued", "Requests waiting for a server with room.", s.Queued)
	p.gauge("zmqhttp_proxy_in_flight", "Requests received and not yet answered.", s.InFlight)
	servers := append([]zmqhttp.ProxyServer(nil), s.Servers...)
	sort.Slice(servers, func(i, j int) bool { return servers[i].Addr < servers[j].Addr })
	p.family("zmqhttp_proxy_server_workers", "gauge", "The capacity a server announced.")
	for _, sv := range servers {
		p.sample("zmqhttp_proxy_server_workers", float64(sv.Workers), "server", sv.Addr)
	}
	p.family("zmqhttp_proxy_server_in_flight", "gauge", "Requests sent to a server and not answered yet.")
	for _, sv := range servers {
		p.sample("zmqhttp_proxy_server_in_flight", float64(sv.InFlight), "server", sv.Addr)
	}
	p.family("zmqhttp_proxy_server_served_total", "counter", "Responses a server returned.")
	for _, sv := range servers {
		p.sample("zmqhttp_proxy_server_served_total", float64(sv.Served), "server", sv.Addr)
	}
}

// codeCounter counts the responses a handler wrote, by status code, and
// the requests it is running.
type codeCounter struct {
	mu       sync.Mutex
	codes    map[int]uint64 // guarded by mu
	inFlight int            // guarded by mu
}

// wrap returns h counting into c.
func (c *codeCounter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.inFlight++
		c.mu.Unlock()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			c.mu.Lock()
			c.inFlight--
			if c.codes == nil {
				c.codes = map[int]uint64{}
			}
			c.codes[code]++
			c.mu.Unlock()
		}()
		h.ServeHTTP(sw, r)
	})
}

// write writes the family name_requests_total{code} and name_in_flight.
func (c *codeCounter) write(w io.Writer, name, what string) {
	c.mu.Lock()
	codes := make([]int, 0, len(c.codes))
	for code := range c.codes {
		codes = append(codes, code)
	}
	sort.Ints(codes)
	counts := make([]uint64, len(codes))
	for i, code := range codes {
		counts[i] = c.codes[code]
	}
	inFlight := c.inFlight
	c.mu.Unlock()
	p := promWriter{w}
	p.family(name+"_requests_total", "counter", "Requests "+what+" answered, by status code.")
	for i, code := range codes {
		p.sample(name+"_requests_total", float64(counts[i]), "code", strconv.Itoa(code))
	}
	p.gauge(name+"_in_flight", "Requests "+what+" is answering now.", inFlight)
}

// statusWriter records the status code written through it. Flush and the
// rest reach the underlying writer through Unwrap (http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	code int // the first status written, 0 before
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush flushes the underlying writer, for code that asserts http.Flusher.
func (w *statusWriter) Flush() {
	http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
