package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// parseProtos parses "http,zmqhttp" (any subset, in the order given).
func parseProtos(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, p := range splitList(s) {
		switch p {
		case "zmq":
			p = protoZMQ
		case "direct":
			p = protoDirect
		}
		if p != protoHTTP && p != protoZMQ && p != protoDirect {
			return nil, fmt.Errorf("-proto: unknown protocol %q (want %s, %s or %s)", p, protoHTTP, protoZMQ, protoDirect)
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-proto: no protocol given")
	}
	return out, nil
}

// groupNames lists the scenario groups in the order they run.
func groupNames() []string {
	names := make([]string, len(groups))
	for i, g := range groups {
		names[i] = g.name
	}
	return names
}

// parseGroups parses "rr,download,sse,hol" (any subset; "all" is every
// group).
func parseGroups(s string) (map[string]bool, error) {
	known := groupNames()
	out := map[string]bool{}
	for _, g := range splitList(s) {
		switch {
		case g == "all":
			for _, name := range known {
				out[name] = true
			}
		case slices.Contains(known, g):
			out[g] = true
		default:
			return nil, fmt.Errorf("-scenarios: unknown group %q (want some of %s, or all)", g, strings.Join(known, ","))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-scenarios: no group given")
	}
	return out, nil
}

// crossScenarios returns every concurrency of concList with every size of
// sizeList, sizes in the outer loop.
func crossScenarios(concList, sizeList string) ([]scenario, error) {
	var concs, sizes []int
	for _, f := range splitList(concList) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-c: bad concurrency %q", f)
		}
		concs = append(concs, n)
	}
	for _, f := range splitList(sizeList) {
		n, err := parseSize(f)
		if err != nil {
			return nil, fmt.Errorf("-size: %w", err)
		}
		sizes = append(sizes, n)
	}
	if len(concs) == 0 || len(sizes) == 0 {
		return nil, fmt.Errorf("-c and -size need at least one value each")
	}
	var out []scenario
	for _, size := range sizes {
		for _, c := range concs {
			out = append(out, scenario{Conc: c, Size: size})
		}
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseSize parses a byte count: 128, 128B, 4K, 4KiB, 1M, 1MiB (binary
// units, case-insensitive).
func parseSize(s string) (int, error) {
	num := strings.ToLower(s)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"kb", 1 << 10}, {"mb", 1 << 20}, {"k", 1 << 10}, {"m", 1 << 20}, {"b", 1}} {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSuffix(num, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > (1<<30)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// formatSize writes n as 128B, 64KiB or 1MiB when exact.
func formatSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
