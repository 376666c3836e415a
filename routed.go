package zmqhttp

import (
	"fmt"
	"time"
)

// This file is the Transport's side of routed messages: a connection to a
// device (libzmq's zmq_proxy, any ROUTER-DEALER queue) rather than to a
// server. The device forwards each message to one of the servers behind
// it, so nothing the connection says speaks for all of them: the servers'
// HELLO answer says so (capRouted), a request one of them returns
// unprocessed goes back through the device, and since a device drops the
// messages it queued for a server that leaves, each server acknowledges
// the requests it takes (ACCEPTED): a request written and not
// acknowledged within ackTimeout is taken as lost in the device.

// ackTick is how often watchAcks looks at the calls of its link; a call
// still unacknowledged after ackMissLimit looks is lost. A request is
// thus given between ackTick*(ackMissLimit-1) and ackTick*ackMissLimit
// to reach a server, after it was written.
const (
	ackTick      = 500 * time.Millisecond
	ackMissLimit = 3
)

// routedResendDelay is the pause before the n-th sending again of a
// request a draining server behind a device returned: 25 ms doubling, at
// most 1 s (so maxResends of them span about 13 s, time for a lone server
// behind the device to restart).
func routedResendDelay(n int) time.Duration {
	return min(25*time.Millisecond<<min(n-1, 6), time.Second)
}

// resendRouted sends c again after its pause, if it still waits.
func (t *Transport) resendRouted(c *call) {
	t.mu.Lock()
	if t.closed || t.pending[c.id] != c || c.link != nil {
		t.mu.Unlock()
		return
	}
	nl := t.requeueLocked(c)
	t.mu.Unlock()
	if nl != nil {
		t.sendOn(nl, c, nil)
	}
}

// accepted records that a server behind the device took call id. The
// first ACCEPTED also shows the link goes through a device, should the
// HELLO answer have been lost there.
func (t *Transport) accepted(cl *clientLink, id uint64) {
	if !cl.has(capRouted) || !cl.has(capAck) {
		cl.caps.Or(capRouted | capAck)
		cl.ackWatch.Do(func() {
			t.wg.Add(1)
			go t.watchAcks(cl)
		})
	}
	t.mu.Lock()
	if c, ok := t.pending[id]; ok && c.link == cl {
		c.acked = true
	}
	t.mu.Unlock()
}

// watchAcks runs while cl, a link through a device whose servers
// acknowledge requests, lives: a call it finds lost in the device is sent
// again if replayable (a server may have taken it and its ACCEPTED been
// lost, so this counts as a replay), and otherwise fails with
// ErrConnectionLost.
func (t *Transport) watchAcks(cl *clientLink) {
	defer t.wg.Done()
	tick := time.NewTicker(ackTick)
	defer tick.Stop()
	for {
		select {
		case <-cl.dead:
			return
		case <-tick.C:
		}
		t.sweepAcks(cl)
	}
}

// sweepAcks counts a miss for each call written on cl and not
// acknowledged, and takes a call at ackMissLimit misses as lost in the
// device.
func (t *Transport) sweepAcks(cl *clientLink) {
	var again []queued
	var lost []*call
	maxReplays := t.cfg.maxReplaysOrDefault()
	t.mu.Lock()
	for id, c := range t.pending {
		if c.link != cl || c.acked || c.seq.Load() == 0 {
			continue
		}
		if c.ackMisses++; c.ackMisses < ackMissLimit {
			continue
		}
		t.unlinkLocked(c)
		if !c.replayable || c.attempts >= maxReplays {
			delete(t.pending, id)
			lost = append(lost, c)
			continue
		}
		c.attempts++
		t.stats.replays.Add(1)
		c.seq.Store(0)
		c.shared = true // the first copy may still be queued: keep its bytes as they are
		if nl := t.requeueLocked(c); nl != nil {
			again = append(again, queued{nl, c})
		}
	}
	t.mu.Unlock()
	t.sendQueued(again)
	for _, c := range lost {
		c.end()
		c.deliver(callResult{err: fmt.Errorf("%w: no server behind the device at %s acknowledged the request within %v (it may still run)",
			ErrConnectionLost, cl.m.name, ackTick*ackMissLimit)})
	}
}
