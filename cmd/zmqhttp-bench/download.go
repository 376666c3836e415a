package main

import (
	"context"
	"fmt"
	"io"
)

// The download scenario: downloadConc callers each GET downloadSize bytes
// back to back.
const (
	downloadConc = 4
	downloadSize = 16 << 20
)

// runDownload measures large downloads with each protocol.
func runDownload(ctx context.Context, cfg config, srv *servers, stderr io.Writer) ([]result, error) {
	name := fmt.Sprintf("c=%d %s GET", downloadConc, formatSize(downloadSize))
	return eachProto(ctx, cfg, srv, stderr, name, downloadOne, func(r result) string {
		return fmt.Sprintf("%s MiB/s, %d errors", formatRate(r.BytesPerSec), r.Errors)
	})
}

func downloadOne(ctx context.Context, cfg config, name, proto string, server *child) (result, error) {
	c, err := newClient(proto, server.endpoint, downloadConc, cfg.timeout)
	if err != nil {
		return result{}, err
	}
	defer c.close()
	get := func(ctx context.Context, _ *caller) error { return c.get(ctx, downloadSize) }
	s, err := window(ctx, cfg, name, proto, server, []load{{downloadConc, get}})
	if err != nil {
		return result{}, err
	}
	r := summarize(result{Group: groupDownload, Scenario: name, Concurrency: downloadConc,
		BodyBytes: downloadSize, Proto: proto}, s[0])
	r.BytesPerSec = r.ReqPerSec * downloadSize
	addStats(&r, c)
	return r, nil
}

const downloadFormat = "%-20s %-14s %7s %7s %9s %9s %9s %7s  %s"

// writeDownloadTable prints the download results like writeTable, with the
// body bytes per second.
func writeDownloadTable(w io.Writer, results []result) {
	writeRowf(w, downloadFormat, "download", "proto", "req/s", "MiB/s", "p50", "p99", "CPU/req", "errors", "CPU/req cli+srv")
	for i, r := range results {
		writeRowf(w, downloadFormat, r.Scenario, r.Proto, fmt.Sprintf("%.1f", r.ReqPerSec), formatRate(r.BytesPerSec),
			formatDuration(r.P50), formatDuration(r.P99), formatCPU(r.CPUPerReq, r.CPUError),
			fmt.Sprint(r.Errors), cpuSplit(r))
		h, zs, _ := ratiosAt(results, i)
		for _, z := range zs {
			writeRowf(w, downloadFormat, r.Scenario, ratioLabel(z.Proto), ratio(z.ReqPerSec, h.ReqPerSec),
				ratio(z.BytesPerSec, h.BytesPerSec),
				ratio(float64(z.P50), float64(h.P50)), ratio(float64(z.P99), float64(h.P99)),
				ratio(float64(z.CPUPerReq), float64(h.CPUPerReq)), "", "")
		}
	}
	writeErrors(w, results)
}
