package zmqhttp

import (
	"encoding/binary"
	"errors"
	"math"
	"unsafe"
)

// This file encodes and decodes envelopes without reflection.
//
// encodeEnvelope writes, byte for byte, what the msgpack codec (ugorji's,
// with the handle mh) writes for an envelope: an array of 16 (dc 00 10),
// non-negative integers of unsigned fields in their shortest unsigned
// form, integers of signed fields as the codec writes them (fixint up to
// 127, else the shortest signed form), str and bin with the shortest
// length prefix, nil for a nil slice.
//
// readFields decodes envelope fields. It runs on bytes
// that checkShape and checkTypes accepted (every field, up to the 16th,
// has its msgpack type or is nil, and every length fits), and gives the
// result the msgpack codec gave: strings and the body alias the frame
// (as with the codec's ZeroCopy), an empty list or bin is empty and not
// nil, nil leaves a field at its zero value, fields past the 16th are
// skipped. Negative values of unsigned fields are refused, as the codec
// refused them; an unsigned value too large for a signed field wraps, as
// with the codec (validateEnvelope then refuses a negative length or
// timeout).

// errTooLong refuses a string, body or list of 2^32 bytes or more, which
// msgpack cannot carry.
var errTooLong = errors.New("zmqhttp: envelope field of 4 GiB or more")

// encodeEnvelope appends the msgpack encoding of e to dst.
func encodeEnvelope(dst []byte, e *envelope) ([]byte, error) {
	if len(e.Body) > math.MaxUint32 || len(e.Header) > math.MaxUint32 || len(e.Trailer) > math.MaxUint32 ||
		len(e.Method) > math.MaxUint32 || len(e.URI) > math.MaxUint32 || len(e.Host) > math.MaxUint32 || len(e.Message) > math.MaxUint32 {
		return dst, errTooLong
	}
	dst = append(dst, 0xdc, 0, envelopeFields)
	dst = appendUint(dst, uint64(e.Version))
	dst = appendUint(dst, uint64(e.Kind))
	dst = appendUint(dst, e.ID)
	dst = appendStr(dst, e.Method)
	dst = appendStr(dst, e.URI)
	dst = appendStr(dst, e.Host)
	dst = appendInt(dst, int64(e.Status))
	dst = appendStrList(dst, e.Header)
	if e.Body == nil {
		dst = append(dst, 0xc0)
	} else {
		dst = append(appendLen(dst, len(e.Body), 0, 0, 0xc4, 0xc5, 0xc6), e.Body...)
	}
	dst = appendStrList(dst, e.Trailer)
	dst = appendInt(dst, e.ContentLength)
	dst = appendInt(dst, e.Timeout)
	dst = appendStr(dst, e.Message)
	dst = appendUint(dst, e.Seq)
	dst = appendUint(dst, e.Flags)
	dst = appendUint(dst, e.Credit)
	return dst, nil
}

// appendUint appends v as the codec writes an unsigned integer.
func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v <= math.MaxInt8:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xcf), v)
}

// appendInt appends v as the codec writes a signed integer.
func appendInt(dst []byte, v int64) []byte {
	switch {
	case v > math.MaxInt32 || v < math.MinInt32:
		return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(v))
	case v > math.MaxInt16 || v < math.MinInt16:
		return binary.BigEndian.AppendUint32(append(dst, 0xd2), uint32(v))
	case v > math.MaxInt8 || v < math.MinInt8:
		return binary.BigEndian.AppendUint16(append(dst, 0xd1), uint16(v))
	case v >= -32:
		return append(dst, byte(v))
	}
	return append(dst, 0xd0, byte(v))
}

// appendLen appends the header of a str, bin or array of n items: fix (a
// mask, 0 for none) below cut, else the 8-bit form (0 for none) below
// 256, then the 16- and 32-bit forms.
func appendLen(dst []byte, n int, cut int, fix, b8, b16, b32 byte) []byte {
	switch {
	case n < cut:
		return append(dst, fix|byte(n))
	case b8 != 0 && n < 256:
		return append(dst, b8, byte(n))
	case n < 65536:
		return binary.BigEndian.AppendUint16(append(dst, b16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, b32), uint32(n))
}

func appendStr(dst []byte, s string) []byte {
	return append(appendLen(dst, len(s), 32, 0xa0, 0xd9, 0xda, 0xdb), s...)
}

func appendStrList(dst []byte, l []string) []byte {
	if l == nil {
		return append(dst, 0xc0)
	}
	dst = appendLen(dst, len(l), 16, 0x90, 0, 0xdc, 0xdd)
	for _, s := range l {
		dst = appendStr(dst, s)
	}
	return dst
}

// readFields decodes the fields of the envelope at b into e, which is
// zero.
func readFields(b []byte, e *envelope) error {
	n, _ := arrayHeader(b)
	p := 1
	if b[0] == 0xdc {
		p = 3
	} else if b[0] == 0xdd {
		p = 5
	}
	for i := 0; i < n && i < envelopeFields; i++ {
		if b[p] == 0xc0 {
			p++
			continue
		}
		var m int
		var err error
		switch fieldTypes[i] {
		case 'u':
			var v uint64
			v, m, err = fieldUint(b[p:], i)
			switch i {
			case 0:
				e.Version = uint8(v) // 1: peekHead checked it
			case 1:
				e.Kind = Kind(v) // a supported kind: decodeEnvelope checked it
			case 2:
				e.ID = v
			case 13:
				e.Seq = v
			case 14:
				e.Flags = v
			case 15:
				e.Credit = v
			}
		case 'i':
			var v int64
			v, m, err = fieldInt(b[p:], i)
			switch i {
			case 6:
				if v > math.MaxInt || v < math.MinInt { // 32-bit platforms
					err = protoErr(reasonMalformed, "field %d (%s): %d overflows int", i, fieldNames[i], v)
				}
				e.Status = int(v)
			case 10:
				e.ContentLength = v
			case 11:
				e.Timeout = v
			}
		case 's':
			var s string
			s, m = msgpackString(b[p:])
			switch i {
			case 3:
				e.Method = s
			case 4:
				e.URI = s
			case 5:
				e.Host = s
			case 12:
				e.Message = s
			}
		case 'b':
			var v []byte
			v, m = msgpackRaw(b[p:])
			e.Body = v
		case 'l':
			var l []string
			l, m = msgpackStrList(b[p:])
			if i == 7 {
				e.Header = l
			} else {
				e.Trailer = l
			}
		}
		if err != nil {
			return err
		}
		p += m
	}
	return nil
}

// msgpackInt reads the integer at b: its value as an int64 when neg, else
// as a uint64, and its size.
func msgpackInt(b []byte) (u uint64, i int64, neg bool, n int) {
	c := b[0]
	switch {
	case c <= 0x7f:
		return uint64(c), 0, false, 1
	case c >= 0xe0:
		return 0, int64(int8(c)), true, 1
	}
	switch c {
	case 0xcc:
		return uint64(b[1]), 0, false, 2
	case 0xcd:
		return uint64(binary.BigEndian.Uint16(b[1:])), 0, false, 3
	case 0xce:
		return uint64(binary.BigEndian.Uint32(b[1:])), 0, false, 5
	case 0xcf:
		return binary.BigEndian.Uint64(b[1:]), 0, false, 9
	case 0xd0:
		i, n = int64(int8(b[1])), 2
	case 0xd1:
		i, n = int64(int16(binary.BigEndian.Uint16(b[1:]))), 3
	case 0xd2:
		i, n = int64(int32(binary.BigEndian.Uint32(b[1:]))), 5
	default: // 0xd3
		i, n = int64(binary.BigEndian.Uint64(b[1:])), 9
	}
	if i >= 0 {
		return uint64(i), 0, false, n
	}
	return 0, i, true, n
}

// fieldUint reads unsigned field i at b.
func fieldUint(b []byte, i int) (uint64, int, error) {
	u, v, neg, n := msgpackInt(b)
	if neg {
		return 0, n, protoErr(reasonMalformed, "field %d (%s): negative value %d", i, fieldNames[i], v)
	}
	return u, n, nil
}

// fieldInt reads signed field i at b.
func fieldInt(b []byte, _ int) (int64, int, error) {
	u, v, neg, n := msgpackInt(b)
	if neg {
		return v, n, nil
	}
	return int64(u), n, nil // wraps above MaxInt64, as the codec's
}

// msgpackRaw reads the str or bin at b: its bytes (aliasing b) and its
// size.
func msgpackRaw(b []byte) ([]byte, int) {
	c := b[0]
	var l, h int
	switch {
	case c&0xe0 == 0xa0:
		l, h = int(c&0x1f), 1
	case c == 0xd9 || c == 0xc4:
		l, h = int(b[1]), 2
	case c == 0xda || c == 0xc5:
		l, h = int(binary.BigEndian.Uint16(b[1:])), 3
	default: // 0xdb, 0xc6
		l, h = int(binary.BigEndian.Uint32(b[1:])), 5
	}
	return b[h : h+l : h+l], h + l
}

// msgpackString reads the str at b as a string aliasing b, and its size.
func msgpackString(b []byte) (string, int) {
	raw, n := msgpackRaw(b)
	if len(raw) == 0 {
		return "", n
	}
	return unsafe.String(&raw[0], len(raw)), n
}

// msgpackStrList reads the array of str at b, and its size.
func msgpackStrList(b []byte) ([]string, int) {
	c := b[0]
	var l, p int
	switch {
	case c&0xf0 == 0x90:
		l, p = int(c&0x0f), 1
	case c == 0xdc:
		l, p = int(binary.BigEndian.Uint16(b[1:])), 3
	default: // 0xdd
		l, p = int(binary.BigEndian.Uint32(b[1:])), 5
	}
	if l == 0 {
		return []string{}, p
	}
	out := make([]string, l)
	for k := range out {
		s, m := msgpackString(b[p:])
		out[k] = s
		p += m
	}
	return out, p
}
