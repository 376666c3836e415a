package zmqhttp

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Option configures a Transport (NewTransport) or a Listener (Listen). Each
// option says which side it applies to; given to the other side, it makes
// Listen or NewTransport fail.
type Option func(*config)

// config is the set of settings options write. Zero values mean defaults,
// supplied by the accessor methods below.
type config struct {
	limits           Limits
	handshakeTimeout time.Duration
	dialTimeout      time.Duration
	maxPending       int
	backoffMin       time.Duration
	backoffMax       time.Duration
	disableCompress  bool
	workers          int
	queueSize        int
	retryAfter       time.Duration
	hbInterval       time.Duration
	hbTimeout        time.Duration
	maxReplays       int
	window           int
	curveServer      *string    // WithCurveServer's secret key
	curveClient      *[3]string // WithCurveClient's keys
	curve            *curveKeys // either one's keys, parsed by checkSecurity (Listen, NewTransport)
	authorizer       func(Peer) error
	plainServer      bool
	noHeartbeat      bool
	logger           *slog.Logger                                             // WithLogger's; nil: nothing is logged
	plainClient      *[2]string                                               // WithPlainClient's user name and password
	lookupHost       func(ctx context.Context, host string) ([]string, error) // nil: net.DefaultResolver.LookupHost
	resolveEvery     time.Duration
	services         []string
}

func newConfig(opts []Option) config {
	var c config
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c
}

// WithLimits sets the limits this side enforces on what it receives and
// sends (body size, header bytes, header count). Both sides. Default: the
// zero Limits, i.e. 32 MiB bodies, 2 MiB of headers, 8192 header fields.
func WithLimits(l Limits) Option { return func(c *config) { c.limits = l } }

// WithHandshakeTimeout bounds the ZMTP greeting and handshake of a new
// connection. Both sides. Default 5s.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) { c.handshakeTimeout = d }
}

func (c *config) handshakeTimeoutOrDefault() time.Duration {
	if c.handshakeTimeout > 0 {
		return c.handshakeTimeout
	}
	return 5 * time.Second
}

// WithDialTimeout bounds one attempt to connect to the server. Transport
// only. Default 5s.
func WithDialTimeout(d time.Duration) Option { return func(c *config) { c.dialTimeout = d } }

func (c *config) dialTimeoutOrDefault() time.Duration {
	if c.dialTimeout > 0 {
		return c.dialTimeout
	}
	return 5 * time.Second
}

// WithMaxPending bounds the requests a Transport holds at once, waiting to
// be sent or waiting for their reply. Past it, RoundTrip fails at once with
// ErrTooManyPending. Transport only. Default 16384; Unlimited removes the
// bound (each pending call holds its own request's memory).
func WithMaxPending(n int) Option { return func(c *config) { c.maxPending = n } }

func (c *config) maxPendingOrDefault() int {
	if c.maxPending == Unlimited {
		return math.MaxInt
	}
	if c.maxPending > 0 {
		return c.maxPending
	}
	return 16384
}

// WithReconnectBackoff sets the first and the largest wait between two
// attempts to connect to one server address; the wait doubles after each
// failure. Transport and connecting Listener (Listen(">tcp://...")).
// Default 50ms and 2s.
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(c *config) { c.backoffMin, c.backoffMax = min, max }
}

func (c *config) backoff() (time.Duration, time.Duration) {
	lo, hi := c.backoffMin, c.backoffMax
	if lo <= 0 {
		lo = 50 * time.Millisecond
	}
	if hi < lo {
		hi = 2 * time.Second
		if hi < lo {
			hi = lo
		}
	}
	return lo, hi
}

// WithDisableCompression turns off transparent gzip, as
// http.Transport.DisableCompression does: by default a Transport asks for
// gzip when the request names no Accept-Encoding and decompresses the reply.
// Transport only.
func WithDisableCompression() Option { return func(c *config) { c.disableCompress = true } }

// WithWorkers sets how many requests the Listener lets the http.Server
// handle at once: Accept hands out at most n connections that are still
// open. It is also the capacity a Listener announces to a Proxy, which
// sends it at most n requests at once. Listener only. Default 1024: a
// service that runs a thousand slow handlers at once over HTTP runs them at
// once here too; lower it to make the Listener push back (503) sooner.
func WithWorkers(n int) Option { return func(c *config) { c.workers = n } }

func (c *config) workersOrDefault() int {
	if c.workers > 0 {
		return c.workers
	}
	return 1024
}

// WithQueueSize sets how many received requests may wait for a free worker.
// When every worker is busy and the queue is full, the Listener answers 503
// Service Unavailable with Retry-After, without running the handler.
// The queue also holds at most 4 MiB of request messages (one request
// whatever its size). Listener only. Default 4096.
func WithQueueSize(n int) Option { return func(c *config) { c.queueSize = n } }

func (c *config) queueSizeOrDefault() int {
	if c.queueSize > 0 {
		return c.queueSize
	}
	return 4096
}

// WithRetryAfter sets the Retry-After the Listener sends with its overload
// 503 (rounded up to whole seconds). Listener only. Default 1s.
func WithRetryAfter(d time.Duration) Option { return func(c *config) { c.retryAfter = d } }

func (c *config) retryAfterSeconds() int {
	if c.retryAfter <= 0 {
		return 1
	}
	return int((c.retryAfter + time.Second - 1) / time.Second)
}

// WithServices names the HTTP hosts (services) a Listener serves behind a
// Proxy: the Proxy sends it only requests whose Host (without port,
// case-insensitive) is one of them. A Listener naming none receives every
// Host. Listener only. Default none.
func WithServices(hosts ...string) Option {
	return func(c *config) { c.services = append(c.services, hosts...) }
}

// WithHeartbeat sets how often each side sends a heartbeat (PING) on a
// connection whose peer speaks the heartbeat protocol, and how long a
// connection may stay silent before it is declared dead and closed. Both
// sides. Default 1s and 3s. Calls in flight on a dead connection are
// replayed (if replayable) or failed with ErrConnectionLost at once.
func WithHeartbeat(interval, timeout time.Duration) Option {
	return func(c *config) { c.hbInterval, c.hbTimeout = interval, timeout }
}

// WithoutHeartbeats turns heartbeats off on this side's connections: it
// announces no heartbeat in its HELLO, so neither side sends PINGs, and it
// never declares a silent peer dead (a peer that vanishes without closing
// its connection is then noticed only by the requests' own deadlines).
// Both sides. For links where idle traffic costs, or peers that sleep.
func WithoutHeartbeats() Option { return func(c *config) { c.noHeartbeat = true } }

// Unlimited, as WithMaxPending's count or as Limits.MaxBodyBytes, removes
// that bound.
const Unlimited = -1

// checkOptions reports an option given a value it cannot take, naming it;
// Listen and NewTransport fail with it. Zero always means the default.
func (c *config) checkOptions() error {
	for _, o := range []struct {
		name string
		v    int64
		unl  bool // Unlimited is allowed
	}{
		{"WithWorkers", int64(c.workers), false},
		{"WithQueueSize", int64(c.queueSize), false},
		{"WithMaxPending", int64(c.maxPending), true},
		{"WithStreamWindow", int64(c.window), false},
		{"WithHandshakeTimeout", int64(c.handshakeTimeout), false},
		{"WithDialTimeout", int64(c.dialTimeout), false},
		{"WithRetryAfter", int64(c.retryAfter), false},
		{"Limits.MaxBodyBytes", c.limits.MaxBodyBytes, true},
		{"Limits.MaxHeaderBytes", int64(c.limits.MaxHeaderBytes), false},
		{"Limits.MaxHeaderFields", int64(c.limits.MaxHeaderFields), false},
	} {
		if o.v < 0 && !(o.unl && o.v == Unlimited) {
			if o.unl {
				return fmt.Errorf("zmqhttp: %s(%d): want a positive value, 0 for the default or Unlimited", o.name, o.v)
			}
			return fmt.Errorf("zmqhttp: %s(%d): want a positive value, or 0 for the default", o.name, o.v)
		}
	}
	if c.hbInterval < 0 || c.hbTimeout < 0 {
		return fmt.Errorf("zmqhttp: WithHeartbeat(%v, %v): want positive durations, or 0 for the defaults (WithoutHeartbeats turns them off)", c.hbInterval, c.hbTimeout)
	}
	if c.backoffMin < 0 || c.backoffMax < 0 || (c.backoffMin > 0 && c.backoffMax > 0 && c.backoffMax < c.backoffMin) {
		return fmt.Errorf("zmqhttp: WithReconnectBackoff(%v, %v): want 0 < min <= max, or 0 for the defaults", c.backoffMin, c.backoffMax)
	}
	return nil
}

func (c *config) heartbeat() (interval, timeout time.Duration) {
	interval, timeout = c.hbInterval, c.hbTimeout
	if interval <= 0 {
		interval = time.Second
	}
	if timeout <= interval {
		timeout = 3 * interval
	}
	return interval, timeout
}

// WithMaxReplays bounds how many times a Transport replays one request: a
// replayable request (GET, HEAD, OPTIONS, TRACE, or one with an
// Idempotency-Key header, whose body is in memory) in flight on a
// connection that broke, when it may have run. Past it the call fails with
// ErrConnectionLost. A request that provably did not run (a draining
// server returned it, or it was written after DRAINING's watermark) is
// sent again up to 16 times whatever this says. Transport only. Default 3;
// a negative n disables replay.
func WithMaxReplays(n int) Option { return func(c *config) { c.maxReplays = n } }

func (c *config) maxReplaysOrDefault() int {
	switch {
	case c.maxReplays < 0:
		return 0
	case c.maxReplays == 0:
		return 3
	}
	return c.maxReplays
}

// WithStreamWindow sets the flow-control window this side grants each
// streamed body it receives: at most n bytes of one body are in flight or
// waiting to be read, so a stream's memory is bounded by n on each side
// and a reader that stops reading stalls only its own stream. Both sides.
// Default 2 MiB.
func WithStreamWindow(n int) Option { return func(c *config) { c.window = n } }

func (c *config) streamWindow() int64 {
	if c.window > 0 {
		return int64(c.window)
	}
	return defaultStreamWindow
}
