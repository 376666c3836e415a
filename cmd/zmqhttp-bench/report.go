package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

const rowFormat = "%-15s %-8s %9s %9s %9s %9s %7s  %s"

func writeRow(w io.Writer, cols ...any) { writeRowf(w, rowFormat, cols...) }

// writeRowf prints one table row in format, without trailing blanks.
func writeRowf(w io.Writer, format string, cols ...any) {
	fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf(format, cols...), " "))
}

// writeTable prints one row per result and, after each scenario run with
// both protocols, a row of zmqhttp/http ratios; then any error texts.
func writeTable(w io.Writer, results []result) {
	writeRow(w, "scenario", "proto", "req/s", "p50", "p99", "CPU/req", "errors", "CPU/req cli+srv")
	for i, r := range results {
		writeRow(w, r.Scenario, r.Proto, fmt.Sprintf("%.0f", r.ReqPerSec),
			formatDuration(r.P50), formatDuration(r.P99), formatCPU(r.CPUPerReq, r.CPUError),
			fmt.Sprint(r.Errors), cpuSplit(r))
		if h, z, ok := pairAt(results, i); ok {
			writeRow(w, r.Scenario, "ratio", ratio(z.ReqPerSec, h.ReqPerSec),
				ratio(float64(z.P50), float64(h.P50)), ratio(float64(z.P99), float64(h.P99)),
				ratio(float64(z.CPUPerReq), float64(h.CPUPerReq)), "", "")
		}
	}
	writeErrors(w, results)
}

// pairAt returns the http and zmqhttp results of one scenario when results[i]
// completes such a pair.
func pairAt(results []result, i int) (h, z result, ok bool) {
	if i == 0 || results[i].Scenario != results[i-1].Scenario {
		return h, z, false
	}
	a, b := results[i-1], results[i]
	switch {
	case a.Proto == protoHTTP && b.Proto == protoZMQ:
		return a, b, true
	case a.Proto == protoZMQ && b.Proto == protoHTTP:
		return b, a, true
	}
	return h, z, false
}

// writeErrors lists, below a table, the error texts and client stats of
// results and of their parts (hol's UnderLoad and Bulk).
func writeErrors(w io.Writer, results []result) {
	var all []result
	for _, r := range results {
		all = append(all, r)
		for _, part := range []*result{r.UnderLoad, r.Bulk} {
			if part != nil {
				all = append(all, *part)
			}
		}
	}
	for _, r := range all {
		if len(r.ErrorTexts) == 0 && r.ClientStats == "" {
			continue
		}
		fmt.Fprintf(w, "\n%s %s: %d errors in the window, %d during warm-up\n",
			r.Scenario, r.Proto, r.Errors, r.WarmupErrors)
		msgs := make([]string, 0, len(r.ErrorTexts))
		for m := range r.ErrorTexts {
			msgs = append(msgs, m)
		}
		sort.Slice(msgs, func(i, j int) bool { return r.ErrorTexts[msgs[i]] > r.ErrorTexts[msgs[j]] })
		for _, m := range msgs {
			fmt.Fprintf(w, "  %6d× %s\n", r.ErrorTexts[m], m)
		}
		if r.ClientStats != "" {
			fmt.Fprintf(w, "  transport stats: %s\n", r.ClientStats)
		}
	}
}

func writeJSON(w io.Writer, results []result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if results == nil {
		results = []result{}
	}
	return enc.Encode(results)
}

// ratio prints num/den as 1.23x, or n/a when either is 0.
func ratio(num, den float64) string {
	if den == 0 || num == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", num/den)
}

// formatRate prints bytes per second in MiB/s.
func formatRate(bytesPerSec float64) string {
	if bytesPerSec <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", bytesPerSec/(1<<20))
}

func formatCPU(d time.Duration, cpuErr string) string {
	if cpuErr != "" || d == 0 {
		return "n/a"
	}
	return formatDuration(d)
}

func cpuSplit(r result) string {
	if r.CPUError != "" || r.Requests == 0 {
		return ""
	}
	n := time.Duration(r.Requests)
	return formatDuration(r.CPUClient/n) + "+" + formatDuration(r.CPUServer/n)
}

// formatDuration prints d with about three significant digits: 850ns, 71µs,
// 2.13ms, 1.20s.
func formatDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < 10*time.Microsecond:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
