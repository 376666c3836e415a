package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Phases of a run, read by every caller after each request.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// maxErrorTexts bounds the distinct error texts a caller keeps.
const maxErrorTexts = 16

// op is the request a caller repeats: it returns nil once the request has
// succeeded and its reply has been checked. w is the caller running it.
type op func(ctx context.Context, w *caller) error

// load is a group of callers repeating one op during a run.
type load struct {
	conc int
	op   op
}

// caller is one of a run's concurrent goroutines and what it recorded.
type caller struct {
	phase      *atomic.Int32
	lat        []time.Duration // latencies of requests that ended in the window
	events     []time.Duration // delays of streamed events that arrived in the window
	errs       int             // requests that failed in the window
	warmupErrs int             // requests that failed during the warm-up
	errTexts   map[string]int
}

func newCaller(phase *atomic.Int32, latCap int) *caller {
	return &caller{phase: phase, lat: make([]time.Duration, 0, latCap), errTexts: map[string]int{}}
}

// loop runs op back to back until the phase is phaseStop or ctx ends.
func (w *caller) loop(ctx context.Context, op op) {
	for ctx.Err() == nil {
		start := time.Now()
		err := op(ctx, w)
		d := time.Since(start)
		switch w.phase.Load() {
		case phaseWarmup:
			if err != nil {
				w.warmupErrs++
				w.noteError(err)
			}
		case phaseMeasure:
			if err != nil {
				w.errs++
				w.noteError(err)
			} else {
				w.lat = append(w.lat, d)
			}
		default:
			return
		}
	}
}

// event records the delay of one streamed event if it arrived in the
// window.
func (w *caller) event(d time.Duration) {
	if w.phase.Load() == phaseMeasure {
		w.events = append(w.events, d)
	}
}

func (w *caller) noteError(err error) {
	msg := err.Error()
	if _, ok := w.errTexts[msg]; ok || len(w.errTexts) < maxErrorTexts {
		w.errTexts[msg]++
	}
}

// sample is what one run measured, for one of its loads.
type sample struct {
	elapsed    time.Duration
	lat        []time.Duration // sorted
	events     []time.Duration // sorted
	errs       int
	warmupErrs int
	errTexts   map[string]int
	cpuClient  time.Duration
	cpuServer  time.Duration
	cpuErr     error // CPU times unavailable
}

// cpuTimes is a reading of both processes' CPU clocks.
type cpuTimes struct {
	client, server time.Duration
	err            error
}

func readCPU(pid int) cpuTimes {
	var t cpuTimes
	var err1, err2 error
	t.client, err1 = selfCPU()
	t.server, err2 = procCPU(pid)
	if err1 != nil {
		t.err = err1
	} else if err2 != nil {
		t.err = err2
	}
	return t
}

// measure runs loads against one server: a warm-up, then a window of
// length cfg.duration during which completed requests and both processes'
// CPU time are counted. It returns one sample per load, each with the
// window's length and CPU times of both processes (shared by all loads).
func measure(ctx context.Context, cfg config, name string, loads []load, serverPID int) ([]sample, error) {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var phase atomic.Int32
	callers := make([][]*caller, len(loads))
	var wg sync.WaitGroup
	for i, ld := range loads {
		callers[i] = make([]*caller, ld.conc)
		for j := range callers[i] {
			w := newCaller(&phase, latencyCap(ld.conc, cfg.duration))
			callers[i][j] = w
			wg.Add(1)
			go func(op op) {
				defer wg.Done()
				w.loop(runCtx, op)
			}(ld.op)
		}
	}

	sleepErr := sleep(ctx, cfg.warmup)
	before := readCPU(serverPID)
	start := time.Now()
	phase.Store(phaseMeasure)
	if sleepErr == nil {
		sleepErr = sleep(ctx, cfg.duration)
	}
	phase.Store(phaseStop)
	elapsed := time.Since(start)
	after := readCPU(serverPID)

	// Requests still in flight are abandoned; they are not counted.
	cancel()
	if !waitTimeout(&wg, cfg.timeout+5*time.Second) {
		return nil, fmt.Errorf("%s: callers still blocked %v after their context was cancelled",
			name, cfg.timeout+5*time.Second)
	}
	if sleepErr != nil {
		return nil, sleepErr
	}
	samples := make([]sample, len(loads))
	for i := range loads {
		s := merge(callers[i])
		s.elapsed = elapsed
		s.cpuClient, s.cpuServer = after.client-before.client, after.server-before.server
		s.cpuErr = before.err
		if s.cpuErr == nil {
			s.cpuErr = after.err
		}
		samples[i] = s
	}
	return samples, nil
}

// merge pools the callers' records.
func merge(callers []*caller) sample {
	n, m := 0, 0
	for _, w := range callers {
		n += len(w.lat)
		m += len(w.events)
	}
	s := sample{lat: make([]time.Duration, 0, n), events: make([]time.Duration, 0, m), errTexts: map[string]int{}}
	for _, w := range callers {
		s.lat = append(s.lat, w.lat...)
		s.events = append(s.events, w.events...)
		s.errs += w.errs
		s.warmupErrs += w.warmupErrs
		for msg, k := range w.errTexts {
			s.errTexts[msg] += k
		}
	}
	slices.Sort(s.lat)
	slices.Sort(s.events)
	return s
}

// latencyCap guesses how many requests one caller completes in d, so that
// recording them rarely grows the slice: up to about 200k req/s in total.
func latencyCap(conc int, d time.Duration) int {
	total := int(200_000 * d.Seconds())
	return max(total/conc, 1024)
}

func makeBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitTimeout waits for wg, up to d; it reports whether wg finished.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// settle collects garbage from the previous run and lets both processes go
// quiet before the next one.
func settle() {
	runtime.GC()
	time.Sleep(200 * time.Millisecond)
}
