package zmqhttp

import (
	"crypto/rand"
	"fmt"

	"golang.org/x/crypto/nacl/box"
)

// Z85 (ZeroMQ RFC 32) is the text form of CURVE keys: every 4 bytes, read
// as a big-endian number, become 5 characters of this alphabet, most
// significant first. A 32-byte key is 40 characters.
const z85Alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

var z85Values = func() (v [256]byte) {
	for i := range v {
		v[i] = 0xff
	}
	for i := 0; i < len(z85Alphabet); i++ {
		v[z85Alphabet[i]] = byte(i)
	}
	return v
}()

// z85Encode encodes b, whose length is a multiple of 4.
func z85Encode(b []byte) string {
	out := make([]byte, 0, len(b)/4*5)
	for i := 0; i+4 <= len(b); i += 4 {
		v := uint32(b[i])<<24 | uint32(b[i+1])<<16 | uint32(b[i+2])<<8 | uint32(b[i+3])
		var chunk [5]byte
		for j := 4; j >= 0; j-- {
			chunk[j] = z85Alphabet[v%85]
			v /= 85
		}
		out = append(out, chunk[:]...)
	}
	return string(out)
}

// z85Decode decodes s, whose length is a multiple of 5.
func z85Decode(s string) ([]byte, error) {
	if len(s)%5 != 0 {
		return nil, fmt.Errorf("z85 text of %d characters: want a multiple of 5", len(s))
	}
	out := make([]byte, 0, len(s)/5*4)
	for i := 0; i < len(s); i += 5 {
		var v uint64
		for j := 0; j < 5; j++ {
			d := z85Values[s[i+j]]
			if d == 0xff {
				return nil, fmt.Errorf("z85 text: invalid character at %d", i+j) // not quoted: it may be a secret key
			}
			v = v*85 + uint64(d)
		}
		if v > 0xffffffff {
			return nil, fmt.Errorf("z85 text: the group at %d is out of range", i)
		}
		out = append(out, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return out, nil
}

// NewCurveKeyPair returns a new CURVE key pair, each key as 40 characters of
// Z85 text, as libzmq's zmq_curve_keypair makes them. Keys made by libzmq
// (or pyzmq's zmq.curve_keypair) work with this package and the other way
// round. Keep the secret key secret: a server's public key goes to its
// clients (WithCurveClient), a client's public key to the server's
// authorizer.
func NewCurveKeyPair() (public, secret string, err error) {
	pub, sec, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("zmqhttp: CURVE key pair: %w", err)
	}
	return z85Encode(pub[:]), z85Encode(sec[:]), nil
}

// parseCurveKey reads a 40-character Z85 key; what names it in the error.
func parseCurveKey(s, what string) (*[32]byte, error) {
	if len(s) != 40 {
		return nil, fmt.Errorf("zmqhttp: CURVE %s: want 40 characters of Z85 text, got %d", what, len(s))
	}
	b, err := z85Decode(s)
	if err != nil {
		return nil, fmt.Errorf("zmqhttp: CURVE %s: %v", what, err)
	}
	var k [32]byte
	copy(k[:], b)
	return &k, nil
}
