package zmqhttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"
)

// This file is how a Transport spreads requests over several servers: the
// endpoint list, the members (one per server address, each with its own
// connection loop), the resolution of tcp host names, and the choice of
// the connection a request goes to.

// member is one server address the Transport keeps a connection to: an
// item of the endpoint list, or one of the addresses a tcp host name of
// the list resolves to. Its connection loop (connectLoop) dials, serves
// and redials with backoff until the member is removed or the Transport
// closes; the loop's end takes the member out of Transport.members.
type member struct {
	// Set before the member's loop starts, read-only after.
	name    string             // the list item it comes from, for errors
	network string             // net package network: "tcp" or "unix"
	addr    string             // net package address
	ctx     context.Context    // done when the member is removed or the Transport closes
	cancel  context.CancelFunc // cancels ctx
	kick    chan<- struct{}    // its resolve loop's, told of a failed dial; nil for an address in the list

	// Guarded by Transport.mu.
	cur     *clientLink // the live connection, nil while connecting
	removed bool        // its address went away: its link drains, then the loop ends
	refused bool        // its last connect attempt was refused (security settings, not a ZeroMQ peer)
}

// endpointItem is one parsed item of an endpoint list.
type endpointItem struct {
	raw  string // as written in the list
	ep   endpoint
	host string // a tcp host name to resolve; "" for an IP address or ipc
	port string // its port
}

// parseEndpointList parses NewTransport's endpoint: one endpoint or
// several separated by commas, without spaces. A list of one item is
// parsed, and fails, exactly as a single endpoint; a longer one's error
// names the bad item.
func parseEndpointList(list string) ([]endpointItem, error) {
	raws := strings.Split(list, ",")
	items := make([]endpointItem, 0, len(raws))
	for i, raw := range raws {
		var ep endpoint
		var err error
		switch {
		case len(raws) > 1 && raw == "":
			err = errors.New("empty item")
		case len(raws) > 1 && strings.ContainsFunc(raw, unicode.IsSpace):
			err = errors.New("spaces are not allowed (separate endpoints with commas only)")
		default:
			ep, err = parseEndpointItem(raw, false)
		}
		if err != nil {
			if len(raws) == 1 {
				return nil, fmt.Errorf("zmqhttp: endpoint %q: %w", list, err)
			}
			return nil, fmt.Errorf("zmqhttp: endpoint list %q: item %d %q: %w", list, i+1, raw, err)
		}
		it := endpointItem{raw: raw, ep: ep}
		if ep.network == "tcp" {
			host, port, _ := net.SplitHostPort(ep.addr)
			if _, err := netip.ParseAddr(host); err != nil {
				it.host, it.port = host, port
			}
		}
		items = append(items, it)
	}
	return items, nil
}

// addMemberLocked starts a member connecting to addr. t.mu is held and
// t.closed is false.
func (t *Transport) addMemberLocked(name, network, addr string, kick chan<- struct{}) *member {
	m := &member{name: name, network: network, addr: addr, kick: kick}
	m.ctx, m.cancel = context.WithCancel(t.ctx)
	t.members = append(t.members, m)
	t.wg.Add(1)
	go t.connectLoop(m)
	return m
}

// removeMember stops m: it stops connecting, and its link takes no new
// calls and closes once the calls on it are answered.
func (t *Transport) removeMember(m *member) {
	t.mu.Lock()
	m.removed = true
	m.cancel()
	cl := m.cur
	t.mu.Unlock()
	if cl != nil {
		cl.draining.Store(true)
		t.maybeCloseDrained(cl)
	}
}

// memberEnded takes m out of the Transport once its loop ends.
func (t *Transport) memberEnded(m *member) {
	t.mu.Lock()
	if i := slices.Index(t.members, m); i >= 0 {
		t.members = slices.Delete(t.members, i, i+1)
	}
	t.mu.Unlock()
	m.cancel()
}

// resolveLoop keeps one member per address that it.host resolves to:
// it looks the name up now and every resolveEvery (sooner, with backoff,
// while it has never resolved; and at most resolveKickGap after the last
// lookup when a member fails to dial, as when a pod was replaced), starts
// members for new addresses and removes those of addresses that went
// away. A failed lookup changes nothing.
func (t *Transport) resolveLoop(it endpointItem) {
	defer t.wg.Done()
	have := make(map[string]*member) // this goroutine's: address → member
	kick := make(chan struct{}, 1)
	lo, _ := t.cfg.backoff()
	every := t.cfg.resolveEveryOrDefault()
	retry := lo
	for {
		lookedUp := time.Now()
		ips, err := t.cfg.lookupHostOrDefault()(t.ctx, it.host)
		if t.ctx.Err() != nil {
			return
		}
		if err == nil && len(ips) == 0 {
			err = errors.New("no addresses")
		}
		wait := every
		if err != nil {
			t.mu.Lock()
			t.lastErr = wrapErr(err, "resolve %s", it.raw)
			t.mu.Unlock()
			if len(have) == 0 {
				wait, retry = retry, min(retry*2, every)
			}
		} else {
			retry = lo
			t.updateMembers(it, have, ips, kick)
		}
		due, soonest := time.Now().Add(wait), lookedUp.Add(resolveKickGap)
		timer := time.NewTimer(wait)
		for waiting := true; waiting; {
			select {
			case <-timer.C:
				waiting = false
			case <-kick:
				if soonest.Before(due) {
					due = soonest
					timer.Reset(max(time.Until(soonest), 0))
				}
			case <-t.ctx.Done():
				timer.Stop()
				return
			}
		}
	}
}

// resolveKickGap is the least time between two lookups of a host name
// when its members fail to dial.
const resolveKickGap = time.Second

// updateMembers makes have hold one member per address in ips.
func (t *Transport) updateMembers(it endpointItem, have map[string]*member, ips []string, kick chan<- struct{}) {
	want := make(map[string]bool, len(ips))
	for _, ip := range ips {
		want[net.JoinHostPort(ip, it.port)] = true
	}
	for addr, m := range have {
		if !want[addr] {
			delete(have, addr)
			t.removeMember(m)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	for _, ip := range ips {
		addr := net.JoinHostPort(ip, it.port)
		if have[addr] == nil {
			have[addr] = t.addMemberLocked(it.raw, "tcp", addr, kick)
		}
	}
}

// usableLocked reports whether new calls may go to cl: it is its member's
// live connection, not draining, and the member was not removed. t.mu is
// held.
func (t *Transport) usableLocked(cl *clientLink) bool {
	return cl != nil && cl.m.cur == cl && !cl.m.removed && !cl.isDead() && !cl.draining.Load()
}

// pickLocked returns the usable link with the fewest calls in flight, or
// nil if none is usable. Ties go round the members in turn. t.mu is held.
func (t *Transport) pickLocked() *clientLink {
	n := uint(len(t.members))
	if n == 0 {
		return nil
	}
	t.turn++
	var best *clientLink
	for i := range n {
		cl := t.members[(t.turn+i)%n].cur
		if t.usableLocked(cl) && (best == nil || cl.inflight < best.inflight) {
			best = cl
		}
	}
	return best
}

// anyLiveLocked reports whether some member is connected. t.mu is held.
func (t *Transport) anyLiveLocked() bool {
	for _, m := range t.members {
		if m.cur != nil {
			return true
		}
	}
	return false
}

// queued is a call assigned to a link, to be sent once t.mu is released.
type queued struct {
	cl *clientLink
	c  *call
}

// dispatchLocked assigns the waiting calls, oldest first, to usable links
// and appends them to out; the caller sends them (sendOn with a nil stop)
// after releasing t.mu. Calls stay waiting while no link is usable.
func (t *Transport) dispatchLocked(out []queued) []queued {
	for len(t.waiting) > 0 {
		cl := t.pickLocked()
		if cl == nil {
			return out
		}
		c := t.waiting[0]
		t.waiting[0] = nil
		t.waiting = t.waiting[1:]
		if t.pending[c.id] != c {
			continue
		}
		c.refreshTimeout()
		t.assignLocked(cl, c)
		out = append(out, queued{cl, c})
	}
	t.waiting = nil
	return out
}

// sendQueued sends what dispatchLocked assigned.
func (t *Transport) sendQueued(out []queued) {
	for _, q := range out {
		t.sendOn(q.cl, q.c, nil)
	}
}

// ServerStats describes one server address of a Transport.
type ServerStats struct {
	Endpoint  string // the endpoint list item it comes from
	Address   string // the address dialled (for a tcp host name, one it resolved to)
	Connected bool   // a connection is up and takes requests
	InFlight  int    // calls sent on its connection and not answered yet
}

// serversLocked describes the members. t.mu is held.
func (t *Transport) serversLocked() []ServerStats {
	out := make([]ServerStats, 0, len(t.members))
	for _, m := range t.members {
		s := ServerStats{Endpoint: m.name, Address: m.addr}
		if m.cur != nil {
			s.Connected = t.usableLocked(m.cur)
			s.InFlight = m.cur.inflight
		}
		out = append(out, s)
	}
	return out
}

// defaultResolveEvery is how often a tcp host name of the endpoint list is
// looked up again.
const defaultResolveEvery = 5 * time.Second

// withResolver replaces the host name lookup and its interval (tests).
func withResolver(lookup func(ctx context.Context, host string) ([]string, error), every time.Duration) Option {
	return func(c *config) { c.lookupHost, c.resolveEvery = lookup, every }
}

func (c *config) resolveEveryOrDefault() time.Duration {
	if c.resolveEvery > 0 {
		return c.resolveEvery
	}
	return defaultResolveEvery
}

func (c *config) lookupHostOrDefault() func(ctx context.Context, host string) ([]string, error) {
	if c.lookupHost != nil {
		return c.lookupHost
	}
	return net.DefaultResolver.LookupHost
}
