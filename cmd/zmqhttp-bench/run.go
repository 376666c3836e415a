package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// result is one protocol's numbers for one scenario.
type result struct {
	Group        string         `json:"group"` // the -scenarios group: rr, download, sse or hol
	Scenario     string         `json:"scenario"`
	Concurrency  int            `json:"concurrency"`
	BodyBytes    int            `json:"body_bytes"`
	Proto        string         `json:"proto"`
	Requests     int            `json:"requests"`
	Seconds      float64        `json:"seconds"`
	ReqPerSec    float64        `json:"req_per_sec"`
	P50          time.Duration  `json:"p50_ns"`
	P99          time.Duration  `json:"p99_ns"`
	CPUPerReq    time.Duration  `json:"cpu_per_req_ns"` // 0 when unknown
	CPUClient    time.Duration  `json:"cpu_client_ns"`  // over the window
	CPUServer    time.Duration  `json:"cpu_server_ns"`  // over the window
	Errors       int            `json:"errors"`
	WarmupErrors int            `json:"warmup_errors"`
	ErrorTexts   map[string]int `json:"error_texts,omitempty"`
	ClientStats  string         `json:"client_stats,omitempty"` // zmqhttp.TransportStats when errors occurred
	CPUError     string         `json:"cpu_error,omitempty"`

	// download, and hol's bulk downloads: body bytes received per second.
	BytesPerSec float64 `json:"bytes_per_sec,omitempty"`

	// sse: Requests counts whole streams, P50 and P99 their durations;
	// these are the delays of single events (arrival - server send time).
	Events   int           `json:"events,omitempty"`
	EventP50 time.Duration `json:"event_p50_ns,omitempty"`
	EventP99 time.Duration `json:"event_p99_ns,omitempty"`
	EventMax time.Duration `json:"event_max_ns,omitempty"`

	// hol: the top-level numbers are the small requests alone; UnderLoad
	// the same requests while Bulk's downloads run through the same client,
	// P99Growth UnderLoad.P99 / P99. UnderLoad and Bulk share one window,
	// whose CPU times they both report, without a CPU per request.
	UnderLoad *result `json:"under_load,omitempty"`
	Bulk      *result `json:"bulk,omitempty"`
	P99Growth float64 `json:"p99_growth,omitempty"`
}

// group is a family of scenarios that -scenarios selects by name, with its
// own table.
type group struct {
	name  string
	run   func(ctx context.Context, cfg config, srv *servers, stderr io.Writer) ([]result, error)
	table func(w io.Writer, results []result)
}

// groups in the order they run and print.
var groups = []group{
	{groupRR, runRR, writeTable},
	{groupDownload, runDownload, writeDownloadTable},
	{groupSSE, runSSE, writeSSETable},
	{groupHOL, runHOL, writeHOLTable},
}

const (
	groupRR       = "rr"
	groupDownload = "download"
	groupSSE      = "sse"
	groupHOL      = "hol"
)

// run runs every selected group of scenarios with every protocol, each
// server in a child process, and prints the results (also the ones
// gathered before an error).
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	srv := &servers{ctx: ctx, exe: exe, stderr: stderr, byProto: map[string]*child{}}
	defer srv.stopAll()
	var results []result
	for _, g := range groups {
		if !cfg.groups[g.name] {
			continue
		}
		var rs []result
		rs, err = g.run(ctx, cfg, srv, stderr)
		results = append(results, rs...)
		if err != nil {
			break
		}
	}
	if cfg.json {
		if jerr := writeJSON(stdout, results); jerr != nil && err == nil {
			err = jerr
		}
		return err
	}
	first := true
	for _, g := range groups {
		var rs []result
		for _, r := range results {
			if r.Group == g.name {
				rs = append(rs, r)
			}
		}
		if len(rs) == 0 {
			continue
		}
		if !first {
			fmt.Fprintln(stdout)
		}
		first = false
		g.table(stdout, rs)
	}
	return err
}

// servers starts the server children on first use, one per protocol and
// set of extra serve flags, and keeps them until stopAll.
type servers struct {
	ctx     context.Context
	exe     string
	stderr  io.Writer
	byProto map[string]*child
}

// get returns the running server for proto, starting it if need be.
func (s *servers) get(proto string) (*child, error) {
	if c, ok := s.byProto[proto]; ok {
		return c, c.exited()
	}
	c, err := startChild(s.ctx, s.exe, proto, 10*time.Second)
	if err != nil {
		return nil, err
	}
	s.byProto[proto] = c
	fmt.Fprintf(s.stderr, "%s server: pid %d, endpoint %s\n", proto, c.pid(), c.endpoint)
	return c, nil
}

func (s *servers) stopAll() {
	for _, c := range s.byProto {
		c.stop()
	}
}

// eachProto runs one scenario with each protocol, one after the other,
// printing a line per run on stderr (summary tells the figures).
func eachProto(ctx context.Context, cfg config, srv *servers, stderr io.Writer, name string,
	one func(ctx context.Context, cfg config, name, proto string, server *child) (result, error),
	summary func(result) string) ([]result, error) {
	var results []result
	for _, p := range cfg.protos {
		server, err := srv.get(p)
		if err != nil {
			return results, err
		}
		fmt.Fprintf(stderr, "running %-12s %-8s ...", name, p)
		r, err := one(ctx, cfg, name, p, server)
		if err != nil {
			fmt.Fprintln(stderr, " failed")
			return results, err
		}
		fmt.Fprintf(stderr, " %s\n", summary(r))
		results = append(results, r)
	}
	return results, nil
}

// window measures loads against server after letting both processes
// settle, and checks that the server is still alive before and after.
func window(ctx context.Context, cfg config, name, proto string, server *child, loads []load) ([]sample, error) {
	if err := server.exited(); err != nil {
		return nil, err
	}
	settle()
	s, err := measure(ctx, cfg, name, loads, server.pid())
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", name, proto, err)
	}
	if err := server.exited(); err != nil {
		return nil, fmt.Errorf("%s %s: %w", name, proto, err)
	}
	return s, nil
}

// runRR runs the echo scenarios (-c × -size, or the defaults).
func runRR(ctx context.Context, cfg config, srv *servers, stderr io.Writer) ([]result, error) {
	var results []result
	for _, sc := range cfg.scenarios {
		for _, p := range cfg.protos {
			server, err := srv.get(p)
			if err != nil {
				return results, err
			}
			fmt.Fprintf(stderr, "running %-12s %-8s ...", sc, p)
			r, err := runOne(ctx, cfg, sc, p, server)
			if err != nil {
				fmt.Fprintln(stderr, " failed")
				return results, err
			}
			fmt.Fprintf(stderr, " %.0f req/s, %d errors\n", r.ReqPerSec, r.Errors)
			results = append(results, r)
		}
	}
	return results, nil
}

// runOne measures one echo scenario with one protocol against server.
func runOne(ctx context.Context, cfg config, sc scenario, proto string, server *child) (result, error) {
	c, err := newClient(proto, server.endpoint, sc.Conc, cfg.timeout)
	if err != nil {
		return result{}, err
	}
	defer c.close()
	body := makeBody(sc.Size)
	post := func(ctx context.Context, _ *caller) error { return c.post(ctx, body) }
	s, err := window(ctx, cfg, sc.String(), proto, server, []load{{sc.Conc, post}})
	if err != nil {
		return result{}, err
	}
	r := summarize(result{Group: groupRR, Scenario: sc.String(), Concurrency: sc.Conc, BodyBytes: sc.Size, Proto: proto}, s[0])
	addStats(&r, c)
	return r, nil
}

// summarize fills r, which names the scenario, with what s measured.
func summarize(r result, s sample) result {
	r.Requests = len(s.lat)
	r.Seconds = s.elapsed.Seconds()
	r.P50 = percentile(s.lat, 0.50)
	r.P99 = percentile(s.lat, 0.99)
	r.CPUClient, r.CPUServer = s.cpuClient, s.cpuServer
	r.Errors, r.WarmupErrors = s.errs, s.warmupErrs
	if len(s.errTexts) > 0 {
		r.ErrorTexts = s.errTexts
	}
	if s.elapsed > 0 {
		r.ReqPerSec = float64(r.Requests) / s.elapsed.Seconds()
	}
	if s.cpuErr != nil {
		r.CPUError = s.cpuErr.Error()
	} else if r.Requests > 0 {
		r.CPUPerReq = (s.cpuClient + s.cpuServer) / time.Duration(r.Requests)
	}
	return r
}

// addStats records the client's diagnostics in r if r saw errors.
func addStats(r *result, c *benchClient) {
	if (r.Errors > 0 || r.WarmupErrors > 0) && c.stats != nil {
		r.ClientStats = c.stats()
	}
}

// percentile returns the q-quantile of sorted (nearest rank), 0 if empty.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
