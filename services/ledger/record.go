package ledger

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/tenure-dev/tenure/pkg/events"
	// Registers the event payload types, so entries can be decoded by their ce-dataschema.
	_ "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// maxMsgIDLen bounds msg_id, which has a unique btree index: a longer id is replaced by
// "sha256:<hex of the id>" (the id itself stays in the ce-id header).
const maxMsgIDLen = 512

// entryOf turns a delivered message into an entry to append. It never fails: whatever the
// message holds is recorded, with the fields it could not supply left empty.
func entryOf(msg jetstream.Msg) *entry {
	var streamSeq uint64
	var streamTime time.Time
	if meta, err := msg.Metadata(); err == nil && meta != nil {
		streamSeq = meta.Sequence.Stream
		streamTime = meta.Timestamp
	}
	return entryFrom(msg.Subject(), msg.Headers(), msg.Data(), streamSeq, streamTime)
}

// entryFrom builds an entry from a message's parts. seq, recorded_at and the hashes are set
// by the appender.
func entryFrom(subject string, h nats.Header, data []byte, streamSeq uint64, streamTime time.Time) *entry {
	hdr := storedHeaders(h)
	get := func(k string) string {
		if v := hdr[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	e := &entry{
		MsgID:     get(events.HeaderID),
		Subject:   clean(subject),
		Type:      get(events.HeaderType),
		Source:    get(events.HeaderSource),
		WorkerID:  get(events.HeaderSubject),
		Actor:     get(events.HeaderActor),
		StreamSeq: int64(streamSeq),
		TraceID:   traceIDOf(get(events.HeaderTraceParent)),
		Headers:   hdr,
		Payload:   data,
	}
	if e.Payload == nil {
		e.Payload = []byte{}
	}
	switch {
	case e.MsgID == "":
		e.MsgID = "stream:" + strconv.FormatUint(streamSeq, 10)
	case len(e.MsgID) > maxMsgIDLen:
		sum := sha256.Sum256([]byte(e.MsgID))
		e.MsgID = "sha256:" + hex.EncodeToString(sum[:])
	}
	if e.Type == "" {
		e.Type = events.TypeOf(e.Subject)
	}
	if t, err := time.Parse(time.RFC3339Nano, get(events.HeaderTime)); err == nil && saneTime(t) {
		e.EventTime = dbTime(t)
	} else if saneTime(streamTime) {
		e.EventTime = dbTime(streamTime)
	} // else the appender uses recorded_at.
	if m := decodePayload(get(events.HeaderDataSchema), e.Payload); m != nil {
		e.System = clean(systemOf(m))
	}
	return e
}

// storedHeaders returns the headers worth keeping: all but the volatile transport headers
// (Nats-*: message id, expectations, rollups, TTLs, direct-get metadata) and dead-letter
// bookkeeping (Tenure-Dlq-*), which describe one delivery rather than the event. Names and
// values are made valid UTF-8 without NUL bytes, which PostgreSQL text and jsonb refuse.
func storedHeaders(h nats.Header) map[string][]string {
	out := make(map[string][]string, len(h))
	for k, vs := range h {
		if volatileHeader(k) {
			continue
		}
		cv := make([]string, len(vs))
		for i, v := range vs {
			cv[i] = clean(v)
		}
		k = clean(k)
		out[k] = append(out[k], cv...)
	}
	return out
}

func volatileHeader(k string) bool {
	return hasPrefixFold(k, "Nats-") || hasPrefixFold(k, "Tenure-Dlq-")
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// clean makes s storable as PostgreSQL text: valid UTF-8 without NUL.
func clean(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// saneTime reports whether t is set and within years 1..9999 (always storable).
func saneTime(t time.Time) bool {
	if t.IsZero() {
		return false
	}
	y := t.UTC().Year()
	return y >= 1 && y <= 9999
}

// traceIDOf returns the trace id of a W3C traceparent ("00-<trace id>-<span id>-<flags>").
func traceIDOf(tp string) string {
	parts := strings.Split(strings.TrimSpace(tp), "-")
	if len(parts) < 4 || len(parts[1]) != 32 {
		return ""
	}
	id := strings.ToLower(parts[1])
	if _, err := hex.DecodeString(id); err != nil || id == strings.Repeat("0", 32) {
		return ""
	}
	return id
}

// decodePayload decodes payload as the message type named by the ce-dataschema header, or
// returns nil when the type is unknown or the payload does not decode.
func decodePayload(schema string, payload []byte) proto.Message {
	name := protoreflect.FullName(schema)
	if schema == "" || !name.IsValid() {
		return nil
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err != nil {
		return nil
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(payload, m); err != nil {
		return nil
	}
	return m
}

// systemOf returns the message's "system" field, or else its "connector" field.
func systemOf(m proto.Message) string {
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	for _, name := range []protoreflect.Name{"system", "connector"} {
		fd := fields.ByName(name)
		if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() || fd.IsMap() {
			continue
		}
		if v := r.Get(fd).String(); v != "" {
			return v
		}
	}
	return ""
}

// payloadJSON renders an entry's payload for people, or "" when its type is unknown.
func payloadJSON(headers map[string][]string, payload []byte) string {
	var schema string
	if v := headers[events.HeaderDataSchema]; len(v) > 0 {
		schema = v[0]
	}
	m := decodePayload(schema, payload)
	if m == nil {
		return ""
	}
	b, err := protojson.Marshal(m)
	if err != nil {
		return ""
	}
	return string(b)
}
