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

// accepted records that a server behind the device took call id.
func (t *Transport) accepted(cl *clientLink, id uint64) {
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

func (t *Transport) sweepAcks(cl *clientLink) {
	type resend struct {
		c  *call
		on *clientLink
	}
	var again []resend
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
		c.refreshTimeout()
		if nl := t.pickLocked(); nl != nil {
			t.assignLocked(nl, c)
			again = append(again, resend{c, nl})
		} else {
			t.waiting = append(t.waiting, c)
		}
	}
	t.mu.Unlock()
	for _, r := range again {
		t.sendOn(r.on, r.c, nil)
	}
	for _, c := range lost {
		c.end()
		c.res <- callResult{err: fmt.Errorf("%w: no server behind the device at %s acknowledged the request within %v (it may still run)",
			ErrConnectionLost, cl.m.name, ackTick*ackMissLimit)}
	}
}
