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
}

// run starts one server child per protocol, runs every scenario with every
// protocol back to back, and prints the results (also the ones gathered
// before an error).
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	servers := make(map[string]*child, len(cfg.protos))
	defer func() {
		for _, c := range servers {
			c.stop()
		}
	}()
	for _, p := range cfg.protos {
		c, err := startChild(ctx, exe, p, 10*time.Second)
		if err != nil {
			return err
		}
		servers[p] = c
		fmt.Fprintf(stderr, "%s server: pid %d, endpoint %s\n", p, c.pid(), c.endpoint)
	}
	results, err := runAll(ctx, cfg, servers, stderr)
	if cfg.json {
		if jerr := writeJSON(stdout, results); jerr != nil && err == nil {
			err = jerr
		}
	} else {
		writeTable(stdout, results)
	}
	return err
}

func runAll(ctx context.Context, cfg config, servers map[string]*child, stderr io.Writer) ([]result, error) {
	var results []result
	for _, sc := range cfg.scenarios {
		for _, p := range cfg.protos {
			fmt.Fprintf(stderr, "running %-12s %-8s ...", sc, p)
			r, err := runOne(ctx, cfg, sc, p, servers[p])
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

// runOne measures one scenario with one protocol against server.
func runOne(ctx context.Context, cfg config, sc scenario, proto string, server *child) (result, error) {
	if err := server.exited(); err != nil {
		return result{}, err
	}
	settle()
	c, err := newClient(proto, server.endpoint, sc.Conc, cfg.timeout)
	if err != nil {
		return result{}, err
	}
	defer c.close()
	s, err := measure(ctx, cfg, sc, c, server.pid())
	if err != nil {
		return result{}, fmt.Errorf("%s %s: %w", sc, proto, err)
	}
	if err := server.exited(); err != nil {
		return result{}, fmt.Errorf("%s %s: %w", sc, proto, err)
	}
	r := summarize(sc, proto, s)
	if (r.Errors > 0 || r.WarmupErrors > 0) && c.stats != nil {
		r.ClientStats = c.stats()
	}
	return r, nil
}

func summarize(sc scenario, proto string, s sample) result {
	r := result{
		Scenario:     sc.String(),
		Concurrency:  sc.Conc,
		BodyBytes:    sc.Size,
		Proto:        proto,
		Requests:     len(s.lat),
		Seconds:      s.elapsed.Seconds(),
		P50:          percentile(s.lat, 0.50),
		P99:          percentile(s.lat, 0.99),
		CPUClient:    s.cpuClient,
		CPUServer:    s.cpuServer,
		Errors:       s.errs,
		WarmupErrors: s.warmupErrs,
	}
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

// percentile returns the q-quantile of sorted (nearest rank), 0 if empty.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
