package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/zmqhttp/zmqhttp"
)

var (
	helpLine   = regexp.MustCompile(`^# HELP ([a-z_]+) \S.*$`)
	typeLine   = regexp.MustCompile(`^# TYPE ([a-z_]+) (counter|gauge)$`)
	sampleLine = regexp.MustCompile(`^([a-z_]+)(\{[a-z_]+="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-z_]+="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+]+)$`)
)

// checkExposition checks page against Prometheus' text format as we write
// it: every family has HELP then TYPE, once, before its samples; counters
// end in _total and gauges do not; label values are quoted and escaped.
// It returns the samples by their name and labels.
func checkExposition(t *testing.T, page string) map[string]string {
	t.Helper()
	samples := map[string]string{}
	typed := map[string]string{}
	helped := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(page, "\n"), "\n") {
		switch {
		case helpLine.MatchString(line):
			name := helpLine.FindStringSubmatch(line)[1]
			if helped[name] {
				t.Errorf("line %d: a second HELP for %s", i+1, name)
			}
			helped[name] = true
		case typeLine.MatchString(line):
			m := typeLine.FindStringSubmatch(line)
			if !helped[m[1]] || typed[m[1]] != "" {
				t.Errorf("line %d: TYPE for %s without HELP first, or twice", i+1, m[1])
			}
			typed[m[1]] = m[2]
			if (m[2] == "counter") != strings.HasSuffix(m[1], "_total") {
				t.Errorf("line %d: %s %s: counters and only counters end in _total", i+1, m[2], m[1])
			}
		case sampleLine.MatchString(line):
			m := sampleLine.FindStringSubmatch(line)
			if typed[m[1]] == "" {
				t.Errorf("line %d: sample of %s before its TYPE", i+1, m[1])
			}
			samples[m[1]+m[2]] = m[3]
		default:
			t.Errorf("line %d: not in the text format: %q", i+1, line)
		}
	}
	return samples
}

// TestMetricsFormat: the Transport's, Listener's and Proxy's stats and the
// per-code request counts are written in the text format, with their
// values; label values with quotes and backslashes are escaped.
func TestMetricsFormat(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	writeTransportMetrics(&b, zmqhttp.TransportStats{Requests: 11, Connects: 3, Replays: 2, Pending: 7,
		Servers: []zmqhttp.ServerStats{{Endpoint: `tcp://a:1`, Address: `10.0.0.1:1`, Connected: true, InFlight: 5},
			{Endpoint: `ipc:///run/"odd"\path`, Address: "x", InFlight: 1}}})
	s := checkExposition(t, b.String())
	for k, want := range map[string]string{
		"zmqhttp_transport_requests_total": "11", "zmqhttp_transport_connects_total": "3", "zmqhttp_transport_replays_total": "2", "zmqhttp_transport_pending": "7",
		`zmqhttp_transport_server_connected{endpoint="tcp://a:1",address="10.0.0.1:1"}`:       "1",
		`zmqhttp_transport_server_in_flight{endpoint="ipc:///run/\"odd\"\\path",address="x"}`: "1",
	} {
		if s[k] != want {
			t.Errorf("%s = %q, want %q\n%s", k, s[k], want, b.String())
		}
	}

	b.Reset()
	writeListenerMetrics(&b, zmqhttp.ListenerStats{Requests: 12, Overloaded: 1, Peers: 2, InFlight: 4})
	s = checkExposition(t, b.String())
	for k, want := range map[string]string{"zmqhttp_listener_requests_total": "12", "zmqhttp_listener_overloaded_total": "1",
		"zmqhttp_listener_peers": "2", "zmqhttp_listener_in_flight": "4", "zmqhttp_listener_expired_total": "0"} {
		if s[k] != want {
			t.Errorf("%s = %q, want %q", k, s[k], want)
		}
	}

	b.Reset()
	writeProxyMetrics(&b, zmqhttp.ProxyStats{Requests: 9, Queued: 3, Clients: 2,
		Servers: []zmqhttp.ProxyServer{{Addr: "10.0.0.2:4000", Workers: 8, InFlight: 2, Served: 40}, {Addr: "10.0.0.1:4000", Workers: 4}}})
	s = checkExposition(t, b.String())
	for k, want := range map[string]string{"zmqhttp_proxy_requests_total": "9", "zmqhttp_proxy_queued": "3", "zmqhttp_proxy_servers": "2",
		`zmqhttp_proxy_server_served_total{server="10.0.0.2:4000"}`: "40", `zmqhttp_proxy_server_workers{server="10.0.0.1:4000"}`: "4"} {
		if s[k] != want {
			t.Errorf("%s = %q, want %q", k, s[k], want)
		}
	}
}

// TestCodeCounter: requests are counted by the status their handler
// wrote (200 when it only wrote a body or only flushed), and a handler
// behind the counter can still flush.
func TestCodeCounter(t *testing.T) {
	t.Parallel()
	var c codeCounter
	h := c.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/404":
			http.NotFound(w, r)
		case "/flush":
			if _, ok := w.(http.Flusher); !ok {
				t.Error("not a Flusher")
			}
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("ResponseController.Flush: %v", err)
			}
		case "/body":
			io.WriteString(w, "x")
		}
	}))
	ts := httptest.NewServer(h)
	defer ts.Close()
	for _, p := range []string{"/404", "/flush", "/body", "/404", "/none"} {
		resp, err := http.Get(ts.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		// Read to the end: the last chunk of /flush's answer comes after
		// its handler (and the counting) returned; its head comes before.
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var b bytes.Buffer
	c.write(&b, "zmqhttp_gateway", "the gateway")
	s := checkExposition(t, b.String())
	if s[`zmqhttp_gateway_requests_total{code="200"}`] != "3" || s[`zmqhttp_gateway_requests_total{code="404"}`] != "2" ||
		s["zmqhttp_gateway_in_flight"] != "0" {
		t.Errorf("counts:\n%s", b.String())
	}
}

// metricsPage fetches a /metrics page, checks its format and returns its
// samples.
func metricsPage(t *testing.T, url string) map[string]string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return checkExposition(t, string(b))
}
