// Command zmqhttp runs the parts of zmqhttp that stand alone.
//
// Usage:
//
//	zmqhttp proxy -frontend ENDPOINT -backend ENDPOINT [flags]
//
// The proxy subcommand runs the broker (zmqhttp.NewProxy) in the
// foreground: clients point their Transport at the frontend, servers
// Listen(">" + backend). On SIGTERM or SIGINT it shuts down gracefully
// (within -shutdown-timeout; a second signal closes at once).
//
// Exit status: 0 after a clean shutdown, 1 on a runtime error (an endpoint
// that cannot be bound, a shutdown that timed out), 2 on a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

const usage = `usage: zmqhttp <command> [flags]

commands:
  proxy   run the broker: clients connect to -frontend, servers to -backend

Run "zmqhttp <command> -h" for a command's flags.
`

// run runs the command line args and returns the exit status.
func run(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "proxy":
		return runProxy(args[1:], stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, usage)
		return 0
	}
	fmt.Fprintf(stderr, "zmqhttp: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func runProxy(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("zmqhttp proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	frontend := fs.String("frontend", "", "endpoint clients connect to, e.g. tcp://*:5555 (required)")
	backend := fs.String("backend", "", "endpoint servers connect to with Listen(\">tcp://host:5556\"), e.g. tcp://*:5556 (required)")
	queue := fs.Int("queue", 0, "requests that may wait for a server with room (0: 4096)")
	hbInterval := fs.Duration("heartbeat", 0, "heartbeat interval on every connection (0: 1s)")
	hbTimeout := fs.Duration("heartbeat-timeout", 0, "silence after which a connection is dropped (0: 3 heartbeats)")
	grace := fs.Duration("shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for requests in flight")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: zmqhttp proxy -frontend ENDPOINT -backend ENDPOINT [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *frontend == "" || *backend == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	p, err := zmqhttp.NewProxy(*frontend, *backend,
		zmqhttp.WithQueueSize(*queue), zmqhttp.WithHeartbeat(*hbInterval, *hbTimeout))
	if err != nil {
		fmt.Fprintf(stderr, "zmqhttp proxy: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "zmqhttp proxy: clients on %s, servers on %s\n", p.FrontendAddr(), p.BackendAddr())

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	fmt.Fprintf(stderr, "zmqhttp proxy: %v: shutting down\n", s)
	ctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	go func() {
		select {
		case <-sig:
			cancel() // a second signal: stop waiting
		case <-ctx.Done():
		}
	}()
	if err := p.Shutdown(ctx); err != nil {
		p.Close()
		fmt.Fprintf(stderr, "zmqhttp proxy: shutdown: %v (closed with requests in flight)\n", err)
		return 1
	}
	return 0
}
