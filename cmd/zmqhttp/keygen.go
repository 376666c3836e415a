package main

import (
	"fmt"
	"io"

	"github.com/zmqhttp/zmqhttp"
)

// runKeygen runs "zmqhttp keygen": prints a new CURVE key pair.
func runKeygen(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("keygen", "[-format text|env] [-server]", stderr)
	format := fs.String("format", "text", `"text": lines "public: KEY" and "secret: KEY"; "env": shell assignments to source`)
	server := fs.Bool("server", false, "with -format env, name the variables for a server's pair ("+envServerKey+", "+envServerSecret+") rather than a client's ("+envPublic+", "+envSecret+")")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, stderr, "unexpected argument %q", fs.Arg(0))
	}
	if *format != "text" && *format != "env" {
		return usageError(fs, stderr, "-format %q: want text or env", *format)
	}
	public, secret, err := zmqhttp.NewCurveKeyPair()
	if err != nil {
		fmt.Fprintf(stderr, "zmqhttp keygen: %v\n", err)
		return 1
	}
	switch {
	case *format == "text":
		fmt.Fprintf(stdout, "public: %s\nsecret: %s\n", public, secret)
	case *server:
		// Z85 has no quote or backslash: single quotes keep every key whole.
		fmt.Fprintf(stdout, "%s='%s'\n%s='%s'\n", envServerKey, public, envServerSecret, secret)
	default:
		fmt.Fprintf(stdout, "%s='%s'\n%s='%s'\n", envPublic, public, envSecret, secret)
	}
	return 0
}
