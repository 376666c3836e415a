package main

import (
	"context"
	"fmt"
	"io"
)

// The hol (head-of-line) scenario: holConc callers GET holSize bytes back
// to back, alone, then while holBulkConc more callers GET holBulkSize bytes
// back to back through the same client (the same zmqhttp.Transport, the
// same http.Client).
const (
	holConc     = 16
	holSize     = 128
	holBulkConc = 2
	holBulkSize = 64 << 20
)

// runHOL measures how much bulk downloads delay small requests that share
// their client, with each protocol.
func runHOL(ctx context.Context, cfg config, srv *servers, stderr io.Writer) ([]result, error) {
	name := fmt.Sprintf("c=%d %s +%d×%s", holConc, formatSize(holSize), holBulkConc, formatSize(holBulkSize))
	return eachProto(ctx, cfg, srv, stderr, name, holOne, func(r result) string {
		return fmt.Sprintf("p99 %s alone, %s under load, %d errors",
			formatDuration(r.P99), formatDuration(r.UnderLoad.P99), r.Errors+r.UnderLoad.Errors+r.Bulk.Errors)
	})
}

func holOne(ctx context.Context, cfg config, name, proto string, server *child) (result, error) {
	c, err := newClient(proto, server.endpoint, holConc+holBulkConc, cfg.timeout)
	if err != nil {
		return result{}, err
	}
	defer c.close()
	small := load{holConc, func(ctx context.Context, _ *caller) error { return c.get(ctx, holSize) }}
	bulk := load{holBulkConc, func(ctx context.Context, _ *caller) error { return c.get(ctx, holBulkSize) }}

	alone, err := window(ctx, cfg, name+" alone", proto, server, []load{small})
	if err != nil {
		return result{}, err
	}
	loaded, err := window(ctx, cfg, name+" under load", proto, server, []load{small, bulk})
	if err != nil {
		return result{}, err
	}
	label := result{Group: groupHOL, Concurrency: holConc, BodyBytes: holSize, Proto: proto}
	r := label
	r.Scenario = name
	r = summarize(r, alone[0])
	addStats(&r, c)
	under := label
	under.Scenario = name + ": under load"
	under = summarize(under, loaded[0])
	addStats(&under, c)
	b := result{Group: groupHOL, Scenario: name + ": bulk", Concurrency: holBulkConc, BodyBytes: holBulkSize, Proto: proto}
	b = summarize(b, loaded[1])
	b.BytesPerSec = b.ReqPerSec * holBulkSize
	addStats(&b, c)
	// The loaded window's CPU is spent on both loads and cannot be split
	// per request; CPUClient and CPUServer keep the window's totals.
	under.CPUPerReq, b.CPUPerReq = 0, 0
	r.UnderLoad, r.Bulk = &under, &b
	if r.P99 > 0 {
		r.P99Growth = float64(under.P99) / float64(r.P99)
	}
	return r, nil
}

const holFormat = "%-20s %-14s %9s %9s %9s %9s %10s %10s %7s"

// writeHOLTable prints the small requests' latency alone and under load,
// the growth of their p99 (the head-of-line cost), and the bulk downloads'
// throughput.
func writeHOLTable(w io.Writer, results []result) {
	writeRowf(w, holFormat, "head-of-line", "proto", "alone p50", "p99", "load p50", "p99", "p99 growth", "bulk MiB/s", "errors")
	for i, r := range results {
		u, b := r.UnderLoad, r.Bulk
		writeRowf(w, holFormat, r.Scenario, r.Proto, formatDuration(r.P50), formatDuration(r.P99),
			formatDuration(u.P50), formatDuration(u.P99), growth(r.P99Growth), formatRate(b.BytesPerSec),
			fmt.Sprint(r.Errors+u.Errors+b.Errors))
		h, zs, _ := ratiosAt(results, i)
		for _, z := range zs {
			writeRowf(w, holFormat, r.Scenario, ratioLabel(z.Proto),
				ratio(float64(z.P50), float64(h.P50)), ratio(float64(z.P99), float64(h.P99)),
				ratio(float64(z.UnderLoad.P50), float64(h.UnderLoad.P50)),
				ratio(float64(z.UnderLoad.P99), float64(h.UnderLoad.P99)),
				ratio(z.P99Growth, h.P99Growth), ratio(z.Bulk.BytesPerSec, h.Bulk.BytesPerSec), "")
		}
	}
	writeErrors(w, results)
}

// growth prints a p99 growth factor, or n/a.
func growth(g float64) string {
	if g <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", g)
}
