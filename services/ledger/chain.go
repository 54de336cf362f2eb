package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"slices"
	"time"
)

// HashSize is the size of entry hashes (SHA-256).
const HashSize = sha256.Size

// genesis is the prev_hash of entry 1.
var genesis = make([]byte, HashSize)

// canonicalTag opens every canonical encoding, so a future format can never be mistaken for
// this one.
const canonicalTag = "tenure.ledger.entry.v1"

// entry is one ledger row.
type entry struct {
	Seq        int64
	MsgID      string
	Subject    string
	Type       string
	Source     string
	WorkerID   string
	System     string
	Actor      string
	EventTime  time.Time
	RecordedAt time.Time
	StreamSeq  int64
	TraceID    string
	Headers    map[string][]string
	Payload    []byte
	PrevHash   []byte
	Hash       []byte
}

// chainHash returns SHA-256(prev || canonical(e)).
//
// canonical(e) is an unambiguous, length-prefixed encoding. With
//
//	u64(n)  = n as 8 bytes, big-endian
//	str(s)  = u64(len(s)) || the bytes of s
//	time(t) = str(t in UTC, RFC 3339 with nanoseconds, trailing zeros trimmed: time.RFC3339Nano)
//
// it is
//
//	str("tenure.ledger.entry.v1")
//	u64(seq) str(msg_id) str(subject) str(type) str(source) str(worker_id) str(system)
//	str(actor) time(event_time) time(recorded_at) u64(stream_seq) str(trace_id)
//	u64(number of header names)
//	  for each name in byte order: str(name) u64(number of values) str(value)...
//	str(payload)
//
// Every stored column except hash is covered (prev_hash by the prefix), so no column can be
// edited without breaking the chain. Times are truncated to microseconds before they are
// hashed and stored, because that is what PostgreSQL keeps. The headers are those stored in
// the headers column: the envelope as published minus volatile transport headers (every
// "Nats-*" header such as Nats-Msg-Id, which differs between a publish, its retry and a
// re-drive, and the dead-letter bookkeeping "Tenure-Dlq-*"); see storedHeaders.
func chainHash(prev []byte, e *entry) []byte {
	h := sha256.New()
	h.Write(prev)
	c := canon{h: h}
	writeCanonical(&c, e)
	return h.Sum(nil)
}

// writeCanonical writes canonical(e) (see chainHash).
func writeCanonical(c *canon, e *entry) {
	c.str(canonicalTag)
	c.u64(uint64(e.Seq))
	c.str(e.MsgID)
	c.str(e.Subject)
	c.str(e.Type)
	c.str(e.Source)
	c.str(e.WorkerID)
	c.str(e.System)
	c.str(e.Actor)
	c.time(e.EventTime)
	c.time(e.RecordedAt)
	c.u64(uint64(e.StreamSeq))
	c.str(e.TraceID)
	names := make([]string, 0, len(e.Headers))
	for k := range e.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	c.u64(uint64(len(names)))
	for _, k := range names {
		c.str(k)
		c.u64(uint64(len(e.Headers[k])))
		for _, v := range e.Headers[k] {
			c.str(v)
		}
	}
	c.bytes(e.Payload)
}

type canon struct {
	h   hash.Hash
	buf [8]byte
}

func (c *canon) u64(n uint64) {
	binary.BigEndian.PutUint64(c.buf[:], n)
	c.h.Write(c.buf[:])
}

func (c *canon) str(s string) {
	c.u64(uint64(len(s)))
	c.h.Write([]byte(s))
}

func (c *canon) bytes(b []byte) {
	c.u64(uint64(len(b)))
	c.h.Write(b)
}

func (c *canon) time(t time.Time) { c.str(t.UTC().Format(time.RFC3339Nano)) }

// dbTime is t as PostgreSQL stores it: UTC, microseconds.
func dbTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
