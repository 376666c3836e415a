// Command zmqhttp-bench compares zmqhttp with plain net/http on the same
// machine: the same handlers are served (a) by an http.Server on a
// zmqhttp.Listener, reached through one shared zmqhttp.Transport, and (b)
// by an http.Server on a TCP loopback listener, reached through an
// http.Transport that keeps one HTTP/1.1 keep-alive connection per caller.
//
// Each server runs in a child process (the command re-executes itself as
// "zmqhttp-bench serve -proto http|zmqhttp|zmqhttp-direct"; the child prints its endpoint
// on one line and exits when its stdin closes or it is killed). The parent
// runs N goroutines that send requests back to back, first for a warm-up
// that is not counted, then for a measured window. Every scenario runs
// with each protocol back to back: http, zmqhttp (an http.Server on the
// Listener) and zmqhttp-direct (the same handler run by zmqhttp.Serve,
// the direct path), each zmqhttp one compared with http in its own ratio
// row ("ratio" for zmqhttp, "ratio-d" for zmqhttp-direct). Scenarios come
// in groups, chosen with
// -scenarios, each printed as its own table:
//
// rr: callers POST fixed-size bodies to an echo handler (it reads the
// request body and writes it back), for each concurrency × body size. The
// table reports
//
//   - req/s: requests completed in the window / window length;
//   - p50, p99: latency of those requests, each one recorded;
//   - CPU/req: (client process CPU + server child CPU) over the window /
//     requests, from getrusage and /proc/<pid>/stat (Linux only, else n/a);
//     cli/srv splits it between the two processes;
//   - errors: requests in the window that failed or were not a 200 with the
//     whole body echoed back; distinct error texts are listed below the table;
//   - ratio: zmqhttp / http for req/s, p50, p99 and CPU/req (ratio-d:
//     zmqhttp-direct / http).
//
// download: 4 callers GET 16 MiB bodies, which the handler writes from a
// preallocated buffer with a Content-Length. Reported as rr, plus MiB/s,
// body bytes received per second.
//
// sse: 4 callers open event streams back to back; the handler writes 5
// events 100 ms apart, each followed by http.Flusher.Flush, each carrying
// the server's wall clock when written. The client reads events as they
// arrive and records arrival minus send time (one machine, one clock). The
// table reports the p50, p99 and max of that delay over the events that
// arrived in the window.
//
// hol: head-of-line blocking. 16 callers GET 128-byte bodies, measured
// alone, then again in a second window while 2 callers download 64 MiB
// bodies back to back through the same client (the same zmqhttp.Transport
// or http.Client). The table reports the small requests' p50 and p99 alone
// and under load, the p99 growth (under load / alone) and the downloads'
// MiB/s.
//
// Usage:
//
//	go run ./cmd/zmqhttp-bench                   # every group, 3 protocols, ~110 s
//	go run ./cmd/zmqhttp-bench -scenarios download,sse,hol
//	go run ./cmd/zmqhttp-bench -scenarios rr -c 1,64 -size 128,64K -d 5s
//	go run ./cmd/zmqhttp-bench -proto zmqhttp -json
//
// By default the rr group runs concurrency 1, 16, 64 and 256 with 128-byte
// bodies and concurrency 16 with 64 KiB bodies; -c and -size replace them
// with their cross product. -d, -warmup and -timeout apply to every run
// (hol has two windows per protocol). See -h for all flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	protoHTTP = "http"
	protoZMQ  = "zmqhttp"
	// protoDirect is zmqhttp served by zmqhttp.Serve (the direct path)
	// instead of http.Server.Serve on the Listener; the same client.
	protoDirect = "zmqhttp-direct"
)

// config is what the command-line flags ask for.
type config struct {
	duration  time.Duration   // measured window per run
	warmup    time.Duration   // uncounted run before the window
	timeout   time.Duration   // per-request timeout
	scenarios []scenario      // the rr group's echo scenarios
	groups    map[string]bool // scenario groups to run
	protos    []string
	json      bool
}

// scenario is one load shape, run once per protocol.
type scenario struct {
	Conc int // concurrent callers
	Size int // request (and response) body bytes
}

func (s scenario) String() string { return fmt.Sprintf("c=%d %s", s.Conc, formatSize(s.Size)) }

var defaultScenarios = []scenario{
	{1, 128}, {16, 128}, {64, 128}, {256, 128}, {16, 64 << 10},
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveCmd {
		if err := serve(os.Args[2:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "zmqhttp-bench serve:", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "zmqhttp-bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := startProfile("client")
	err = run(ctx, cfg, os.Stdout, os.Stderr)
	stopProfile()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "zmqhttp-bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("zmqhttp-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.DurationVar(&cfg.duration, "d", 3*time.Second, "measured `duration` of each run")
	fs.DurationVar(&cfg.warmup, "warmup", 500*time.Millisecond, "uncounted warm-up before each run")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "per-request timeout")
	conc := fs.String("c", "1,16,64,256", "comma-separated concurrency `list`")
	sizes := fs.String("size", "128", "comma-separated body size `list` (128, 4K, 64KiB, 1M)")
	protos := fs.String("proto", protoHTTP+","+protoZMQ+","+protoDirect, "protocols to run: http, zmqhttp, zmqhttp-direct (alias direct), comma-separated")
	groupList := fs.String("scenarios", strings.Join(groupNames(), ","),
		"scenario `groups` to run: rr (echo, -c × -size), download, sse, hol, or all")
	fs.BoolVar(&cfg.json, "json", false, "print results as JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: zmqhttp-bench [flags]\n\n"+
			"Compares zmqhttp with net/http HTTP/1.1 keep-alive. Scenario groups:\n"+
			"  rr        echo POSTs: c=1,16,64,256 with 128B bodies, and c=16 with 64KiB;\n"+
			"            -c or -size replace them with their cross product\n"+
			"  download  4 callers GET 16MiB bodies\n"+
			"  sse       4 streams of 5 flushed events 100ms apart: delay of each event\n"+
			"  hol       16 callers GET 128B, alone and beside 2 callers GETting 64MiB\n"+
			"\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.duration <= 0 || cfg.warmup < 0 || cfg.timeout <= 0 {
		return cfg, errors.New("-d and -timeout must be positive, -warmup not negative")
	}
	var err error
	if cfg.protos, err = parseProtos(*protos); err != nil {
		return cfg, err
	}
	if cfg.groups, err = parseGroups(*groupList); err != nil {
		return cfg, err
	}
	cfg.scenarios = defaultScenarios
	if flagSet(fs, "c") || flagSet(fs, "size") {
		cfg.scenarios, err = crossScenarios(*conc, *sizes)
	}
	return cfg, err
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
