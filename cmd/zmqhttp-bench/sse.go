package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// The sse scenario: sseStreams callers each open a stream of sseEvents
// events sseInterval apart, back to back, and record each event's delay.
const (
	sseStreams  = 4
	sseEvents   = 5
	sseInterval = 100 * time.Millisecond
)

// runSSE measures the delay of flushed events with each protocol.
func runSSE(ctx context.Context, cfg config, srv *servers, stderr io.Writer) ([]result, error) {
	name := fmt.Sprintf("c=%d %d events/%v", sseStreams, sseEvents, sseInterval)
	return eachProto(ctx, cfg, srv, stderr, name, sseOne, func(r result) string {
		return fmt.Sprintf("event p99 %s, %d errors", formatDuration(r.EventP99), r.Errors)
	})
}

func sseOne(ctx context.Context, cfg config, name, proto string, server *child) (result, error) {
	c, err := newClient(proto, server.endpoint, sseStreams, cfg.timeout)
	if err != nil {
		return result{}, err
	}
	defer c.close()
	stream := func(ctx context.Context, w *caller) error {
		return c.stream(ctx, sseEvents, sseInterval, w.event)
	}
	s, err := window(ctx, cfg, name, proto, server, []load{{sseStreams, stream}})
	if err != nil {
		return result{}, err
	}
	r := summarize(result{Group: groupSSE, Scenario: name, Concurrency: sseStreams, Proto: proto}, s[0])
	r.Events = len(s[0].events)
	r.EventP50 = percentile(s[0].events, 0.50)
	r.EventP99 = percentile(s[0].events, 0.99)
	r.EventMax = percentile(s[0].events, 1)
	addStats(&r, c)
	return r, nil
}

const sseFormat = "%-20s %-14s %7s %7s %9s %9s %9s %7s"

// writeSSETable prints the event delays: arrival at the client minus the
// server's wall clock when it wrote and flushed the event.
func writeSSETable(w io.Writer, results []result) {
	writeRowf(w, sseFormat, "sse", "proto", "streams", "events", "delay p50", "p99", "max", "errors")
	for i, r := range results {
		writeRowf(w, sseFormat, r.Scenario, r.Proto, fmt.Sprint(r.Requests), fmt.Sprint(r.Events),
			formatDuration(r.EventP50), formatDuration(r.EventP99), formatDuration(r.EventMax), fmt.Sprint(r.Errors))
		h, zs, _ := ratiosAt(results, i)
		for _, z := range zs {
			writeRowf(w, sseFormat, r.Scenario, ratioLabel(z.Proto), "", "",
				ratio(float64(z.EventP50), float64(h.EventP50)), ratio(float64(z.EventP99), float64(h.EventP99)),
				ratio(float64(z.EventMax), float64(h.EventMax)), "")
		}
	}
	writeErrors(w, results)
}
