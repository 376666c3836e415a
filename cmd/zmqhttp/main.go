// Command zmqhttp runs the parts of zmqhttp that stand alone, and puts
// services that do not speak zmqhttp on either side of it.
//
// Usage:
//
//	zmqhttp gateway -listen ADDR -to ENDPOINT [flags]   HTTP in, zmqhttp out
//	zmqhttp sidecar -listen ENDPOINT -to URL [flags]    zmqhttp in, HTTP out
//	zmqhttp call [flags] ENDPOINT PATH                  one request, like curl
//	zmqhttp keygen [-format text|env] [-server]         a new CURVE key pair
//	zmqhttp proxy -frontend ENDPOINT -backend ENDPOINT  the broker
//
// gateway serves HTTP on -listen and forwards every request through a
// zmqhttp Transport to -to (httputil.ReverseProxy; bodies and server-sent
// events stream). A request the Transport cannot carry is answered 413
// (a body over -max-body), 504 (no response head within -timeout) or 502
// (anything else), with a text body saying why.
//
// sidecar serves zmqhttp on -listen (a Listener and an http.Server) and
// forwards every request over plain HTTP to -to, an existing service in
// any language (httputil.ReverseProxy over net/http's Transport).
//
// call sends one request and writes the response body to stdout (with -i
// the status line and headers first). It exits 0 on any HTTP response,
// whatever its status, and 1 when no response was obtained.
//
// gateway, sidecar and proxy stop gracefully on SIGTERM or SIGINT (within
// -shutdown-timeout; a second signal stops waiting). With -metrics ADDR
// they serve their counters at http://ADDR/metrics in Prometheus' text
// format.
//
// CURVE: sidecar takes the server's secret key (-curve-server-secret or
// $ZMQHTTP_CURVE_SERVER_SECRET); gateway and call take the server's public
// key (-curve-server-key or $ZMQHTTP_CURVE_SERVER_KEY) and, optionally, the
// client's own pair (-curve-public/-curve-secret or $ZMQHTTP_CURVE_PUBLIC,
// $ZMQHTTP_CURVE_SECRET; a fresh pair when omitted). keygen makes pairs.
//
// Exit status: 0 after a clean shutdown (or, for call, any HTTP response),
// 1 on a runtime error (an endpoint that cannot be bound, a shutdown that
// timed out, a request that got no response), 2 on a usage error.
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
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: zmqhttp <command> [flags]

commands:
  gateway   HTTP in, zmqhttp out: put HTTP clients in front of a zmqhttp service
  sidecar   zmqhttp in, HTTP out: serve an existing HTTP service over zmqhttp
  call      send one request and print the response body (like curl)
  keygen    print a new CURVE key pair
  proxy     run the broker: clients connect to -frontend, servers to -backend

Run "zmqhttp <command> -h" for a command's flags.
`

// run runs the command line args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "gateway":
		return runGateway(args[1:], stderr)
	case "sidecar":
		return runSidecar(args[1:], stderr)
	case "call":
		return runCall(args[1:], os.Stdin, stdout, stderr)
	case "keygen":
		return runKeygen(args[1:], stdout, stderr)
	case "proxy":
		return runProxy(args[1:], stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, usage)
		return 0
	}
	fmt.Fprintf(stderr, "zmqhttp: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// newFlagSet returns the flag set of subcommand name, printing its usage
// line and flags on -h.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("zmqhttp "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: zmqhttp %s %s\n\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs. It returns ok, or the exit status:
// 0 for -h, 2 for a usage error (already reported by fs).
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	return 0, true
}

// usageError reports a usage error of fs's subcommand and returns 2.
func usageError(fs *flag.FlagSet, stderr io.Writer, format string, a ...any) int {
	fmt.Fprintf(stderr, "%s: %s\n\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.Usage()
	return 2
}

// shutdownOnSignal waits for SIGTERM or SIGINT, then calls shutdown with a
// context that ends after grace or at a second signal. It returns
// shutdown's error.
func shutdownOnSignal(name string, stderr io.Writer, grace time.Duration, shutdown func(context.Context) error) error {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	s := <-sig
	fmt.Fprintf(stderr, "%s: %v: shutting down\n", name, s)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	go func() {
		select {
		case <-sig:
			cancel() // a second signal: stop waiting
		case <-ctx.Done():
		}
	}()
	return shutdown(ctx)
}
