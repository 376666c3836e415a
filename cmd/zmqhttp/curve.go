package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/zmqhttp/zmqhttp"
)

// Environment variables that stand in for the CURVE flags, so that secret
// keys need not appear on a command line (where ps shows them).
const (
	envServerSecret = "ZMQHTTP_CURVE_SERVER_SECRET"
	envServerKey    = "ZMQHTTP_CURVE_SERVER_KEY"
	envPublic       = "ZMQHTTP_CURVE_PUBLIC"
	envSecret       = "ZMQHTTP_CURVE_SECRET"
)

// orEnv returns v, or the environment variable name when v is empty.
func orEnv(v, name string) string {
	if v != "" {
		return v
	}
	return os.Getenv(name)
}

// curveServerFlags are the server side's CURVE flags (sidecar).
type curveServerFlags struct{ secret string }

func (c *curveServerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.secret, "curve-server-secret", "", "speak CURVE with this server secret key (Z85; default $"+envServerSecret+", else no CURVE)")
}

// options returns the Listener options, none without a key.
func (c *curveServerFlags) options() []zmqhttp.Option {
	if s := orEnv(c.secret, envServerSecret); s != "" {
		return []zmqhttp.Option{zmqhttp.WithCurveServer(s)}
	}
	return nil
}

// curveClientFlags are the client side's CURVE flags (gateway, call).
type curveClientFlags struct{ serverKey, public, secret string }

func (c *curveClientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.serverKey, "curve-server-key", "", "speak CURVE to a server with this public key (Z85; default $"+envServerKey+", else no CURVE)")
	fs.StringVar(&c.public, "curve-public", "", "this client's CURVE public key (default $"+envPublic+", else a fresh key pair)")
	fs.StringVar(&c.secret, "curve-secret", "", "this client's CURVE secret key (default $"+envSecret+")")
}

// options returns the Transport options, none without a server key. A
// client without a key pair of its own gets a fresh one, which a server
// without an allow-list accepts.
func (c *curveClientFlags) options() ([]zmqhttp.Option, error) {
	server := orEnv(c.serverKey, envServerKey)
	public, secret := orEnv(c.public, envPublic), orEnv(c.secret, envSecret)
	if server == "" {
		if public != "" || secret != "" {
			return nil, fmt.Errorf("a CURVE key pair without -curve-server-key (or $%s)", envServerKey)
		}
		return nil, nil
	}
	switch {
	case public == "" && secret == "":
		var err error
		if public, secret, err = zmqhttp.NewCurveKeyPair(); err != nil {
			return nil, err
		}
	case public == "" || secret == "":
		return nil, fmt.Errorf("-curve-public and -curve-secret go together")
	}
	return []zmqhttp.Option{zmqhttp.WithCurveClient(server, public, secret)}, nil
}
