package zmqhttp

// curLocked returns the live link of the Transport's first server address
// (the only one of a single-endpoint Transport), for white-box tests.
// t.mu is held.
func (t *Transport) curLocked() *clientLink {
	if len(t.members) == 0 {
		return nil
	}
	return t.members[0].cur
}
