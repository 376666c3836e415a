package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

const rowFormat = "%-15s %-14s %9s %9s %9s %9s %7s  %s"

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
		h, zs, _ := ratiosAt(results, i)
		for _, z := range zs {
			writeRow(w, r.Scenario, ratioLabel(z.Proto), ratio(z.ReqPerSec, h.ReqPerSec),
				ratio(float64(z.P50), float64(h.P50)), ratio(float64(z.P99), float64(h.P99)),
				ratio(float64(z.CPUPerReq), float64(h.CPUPerReq)), "", "")
		}
	}
	writeErrors(w, results)
}

// ratiosAt returns, when results[i] is the last result of its scenario,
// the scenario's http result and its other results (each gets a ratio row
// to http); ok is false, and others empty, otherwise or without http.
func ratiosAt(results []result, i int) (h result, others []result, ok bool) {
	sc := results[i].Scenario
	if i+1 < len(results) && results[i+1].Scenario == sc {
		return h, nil, false
	}
	start := i
	for start > 0 && results[start-1].Scenario == sc {
		start--
	}
	for _, r := range results[start : i+1] {
		if r.Proto == protoHTTP && !ok {
			h, ok = r, true
		} else if r.Proto != protoHTTP {
			others = append(others, r)
		}
	}
	if !ok {
		return h, nil, false
	}
	return h, others, len(others) > 0
}

// ratioLabel names the ratio row of proto to http.
func ratioLabel(proto string) string {
	if proto == protoDirect {
		return "ratio-d"
	}
	return "ratio"
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
