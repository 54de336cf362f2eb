// Package events builds and reads tenure's event envelopes: a protobuf payload on a NATS
// subject with Nats-Msg-Id for dedupe, CloudEvents attributes in binary mode (ce-* headers,
// per the CloudEvents NATS protocol binding) and the W3C trace context.
package events

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/telemetry"
)

// Header names.
const (
	HeaderMsgID       = jetstream.MsgIDHeader // "Nats-Msg-Id"
	HeaderSpecVersion = "ce-specversion"
	HeaderID          = "ce-id"
	HeaderType        = "ce-type"
	HeaderSource      = "ce-source"
	HeaderTime        = "ce-time"
	HeaderSubject     = "ce-subject"
	HeaderContentType = "ce-datacontenttype"
	HeaderDataSchema  = "ce-dataschema"
	HeaderTraceParent = "traceparent"
	// HeaderActor names the person or service that caused the event (for the audit trail).
	HeaderActor = "tenure-actor"
)

// ContentType of every payload.
const ContentType = "application/protobuf"

// Event is one fact or command to publish.
type Event struct {
	// ID is unique per event and becomes both ce-id and Nats-Msg-Id. Derive it from the
	// cause (e.g. "intake:<source>:<webhook-id>") when a retry must map to the same event.
	ID      string
	Subject string
	// Type is the CloudEvents type; by default the subject without its last token.
	Type string
	// Source is the CloudEvents source, e.g. "tenure/intake".
	Source string
	// WorkerID becomes ce-subject: the worker the event is about.
	WorkerID string
	Actor    string
	Time     time.Time
	Payload  proto.Message
}

// NewID returns a new time-ordered event id.
func NewID() string { return uuid.Must(uuid.NewV7()).String() }

// Headers returns the NATS headers for e, including the trace context of ctx.
func Headers(ctx context.Context, e Event) nats.Header {
	h := nats.Header{}
	h.Set(HeaderMsgID, e.ID)
	h.Set(HeaderSpecVersion, "1.0")
	h.Set(HeaderID, e.ID)
	typ := e.Type
	if typ == "" {
		typ = TypeOf(e.Subject)
	}
	h.Set(HeaderType, typ)
	h.Set(HeaderSource, e.Source)
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	h.Set(HeaderTime, t.UTC().Format(time.RFC3339Nano))
	h.Set(HeaderContentType, ContentType)
	if e.Payload != nil {
		h.Set(HeaderDataSchema, string(e.Payload.ProtoReflect().Descriptor().FullName()))
	}
	if e.WorkerID != "" {
		h.Set(HeaderSubject, e.WorkerID)
	}
	if e.Actor != "" {
		h.Set(HeaderActor, e.Actor)
	}
	telemetry.InjectNATS(ctx, h)
	return h
}

// Msg builds the NATS message for e.
func Msg(ctx context.Context, e Event) (*nats.Msg, error) {
	if e.ID == "" || e.Subject == "" {
		return nil, fmt.Errorf("events: event needs an id and a subject (id=%q subject=%q)", e.ID, e.Subject)
	}
	data, err := proto.Marshal(e.Payload)
	if err != nil {
		return nil, fmt.Errorf("events: marshal %s: %w", e.Subject, err)
	}
	return &nats.Msg{Subject: e.Subject, Header: Headers(ctx, e), Data: data}, nil
}

// TypeOf derives the CloudEvents type from a subject: "tenure.hr.leaver.w1" → "tenure.hr.leaver".
func TypeOf(subject string) string {
	if i := strings.LastIndexByte(subject, '.'); i > 0 && strings.Count(subject, ".") >= 3 {
		return subject[:i]
	}
	return subject
}

// WorkerTokenOf is the last token of a subject: the (escaped) worker of
// "tenure.hr.leaver.w1" and of every tenure.<area>.<kind>.<worker> subject.
func WorkerTokenOf(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// Meta is what a consumer reads from an envelope's headers.
type Meta struct {
	ID, Type, Source, WorkerID, Actor, DataSchema string
	Time                                          time.Time
}

// MetaOf reads the envelope headers of a message.
func MetaOf(h nats.Header) Meta {
	m := Meta{
		ID: h.Get(HeaderID), Type: h.Get(HeaderType), Source: h.Get(HeaderSource),
		WorkerID: h.Get(HeaderSubject), Actor: h.Get(HeaderActor), DataSchema: h.Get(HeaderDataSchema),
	}
	if m.ID == "" {
		m.ID = h.Get(HeaderMsgID)
	}
	m.Time, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderTime))
	return m
}

// Token makes s safe as one NATS subject token. Worker ids come from HR systems and may hold
// '.', '*', '>' or spaces, which NATS would read as structure; those bytes (and '%') are
// percent-encoded, everything else is kept, so common ids stay readable.
func Token(s string) string {
	if s == "" {
		return "_"
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' || c == '*' || c == '>' || c == '%' || c <= ' ' || c >= 0x7f:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Subject joins tokens into a subject, escaping every token after the fixed prefix.
//
//	Subject("tenure.hr", "leaver", workerID)
func Subject(prefix string, tokens ...string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, t := range tokens {
		b.WriteByte('.')
		b.WriteString(Token(t))
	}
	return b.String()
}
