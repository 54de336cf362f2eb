package ledger

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tenure-dev/tenure/pkg/events"
)

func goldenEntry() *entry {
	return &entry{
		Seq: 1, MsgID: "intake:workday:h1", Subject: "tenure.hr.joiner.w1", Type: "tenure.hr.joiner", Source: "tenure/intake",
		WorkerID: "w1", System: "", Actor: "workday",
		EventTime:  time.Date(2026, 3, 2, 9, 0, 0, 123456000, time.UTC),
		RecordedAt: time.Date(2026, 3, 2, 9, 0, 1, 0, time.UTC),
		StreamSeq:  7, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
		Headers: map[string][]string{"ce-id": {"intake:workday:h1"}, "ce-type": {"tenure.hr.joiner"}},
		Payload: []byte{0x0a, 0x02, 'h', '1'},
	}
}

// The canonical encoding is a format: changing it silently would break every stored chain.
func TestChainHashGolden(t *testing.T) {
	got := hex.EncodeToString(chainHash(genesis, goldenEntry()))
	const want = "47a0c52a4c9eb95ace0bf37f5d7f144110996c0f63327fe4038e02ba89ef72d5" // reproduced independently from the documented encoding
	if got != want {
		t.Fatalf("chainHash = %s, want %s (did the canonical encoding change? it must stay stable)", got, want)
	}
}

func TestChainHashCoversEveryField(t *testing.T) {
	base := chainHash(genesis, goldenEntry())
	edits := map[string]func(e *entry){
		"seq":         func(e *entry) { e.Seq = 2 },
		"msg_id":      func(e *entry) { e.MsgID += "x" },
		"subject":     func(e *entry) { e.Subject += "x" },
		"type":        func(e *entry) { e.Type += "x" },
		"source":      func(e *entry) { e.Source += "x" },
		"worker_id":   func(e *entry) { e.WorkerID += "x" },
		"system":      func(e *entry) { e.System = "ehr" },
		"actor":       func(e *entry) { e.Actor += "x" },
		"event_time":  func(e *entry) { e.EventTime = e.EventTime.Add(time.Microsecond) },
		"recorded_at": func(e *entry) { e.RecordedAt = e.RecordedAt.Add(time.Microsecond) },
		"stream_seq":  func(e *entry) { e.StreamSeq++ },
		"trace_id":    func(e *entry) { e.TraceID = "" },
		"header":      func(e *entry) { e.Headers["ce-type"] = []string{"other"} },
		"header name": func(e *entry) { e.Headers["ce-typ"] = e.Headers["ce-type"]; delete(e.Headers, "ce-type") },
		"extra value": func(e *entry) { e.Headers["ce-type"] = append(e.Headers["ce-type"], "") },
		"payload":     func(e *entry) { e.Payload = append(e.Payload, 0) },
		// Length prefixes: moving bytes from one field to the next changes the hash.
		"shifted": func(e *entry) { e.Type, e.Source = "tenure.hr.joine", "rtenure/intake" },
	}
	for name, edit := range edits {
		e := goldenEntry()
		edit(e)
		if bytes.Equal(chainHash(genesis, e), base) {
			t.Errorf("editing %s does not change the hash", name)
		}
	}
	if bytes.Equal(chainHash(make([]byte, HashSize-1), goldenEntry()), base) {
		t.Error("prev_hash is not covered")
	}
	// Times hash in UTC: the zone they are read back in does not matter.
	e := goldenEntry()
	e.EventTime = e.EventTime.In(time.FixedZone("x", 3600))
	if !bytes.Equal(chainHash(genesis, e), base) {
		t.Error("hash depends on the time zone")
	}
}

func TestEntryFrom(t *testing.T) {
	m := msg(t, "id1", events.Subject("tenure.access", "grant", "w1"), "w1", t0, grant("w1", "ehr"))
	m.Header.Set(events.HeaderTraceParent, "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
	a := entryFrom(m.Subject, m.Header, m.Data, 3, time.Time{})
	// A retry or re-drive differs in transport headers only: the same entry.
	m.Header.Set(nats.MsgIdHdr, "redrive:9")
	m.Header.Set("Tenure-Dlq-Error", "boom")
	m.Header.Set("Nats-Expected-Stream", "TENURE_EVENTS")
	b := entryFrom(m.Subject, m.Header, m.Data, 3, time.Time{})
	if !bytes.Equal(chainHash(genesis, a), chainHash(genesis, b)) {
		t.Errorf("volatile headers change the entry: %v vs %v", a.Headers, b.Headers)
	}
	if a.MsgID != "id1" || a.WorkerID != "w1" || a.System != "ehr" || a.Type != "tenure.access.grant" || a.Actor != "tester" ||
		a.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || !a.EventTime.Equal(t0.Truncate(time.Microsecond)) || a.StreamSeq != 3 {
		t.Errorf("entry = %+v", a)
	}

	long := strings.Repeat("x", 2000)
	h := nats.Header{events.HeaderID: {long}, events.HeaderTime: {"not a time"}}
	streamTime := time.Date(2026, 1, 1, 0, 0, 0, 999, time.UTC)
	e := entryFrom("tenure.alert.x", h, nil, 5, streamTime)
	if !strings.HasPrefix(e.MsgID, "sha256:") || len(e.MsgID) != 7+64 || e.Headers[events.HeaderID][0] != long {
		t.Errorf("long id: msg_id %q", e.MsgID)
	}
	if !e.EventTime.Equal(streamTime.Truncate(time.Microsecond)) || e.Payload == nil || e.Type != "tenure.alert.x" {
		t.Errorf("fallbacks: %+v", e)
	}
	if e := entryFrom("tenure.alert.x", nil, nil, 42, time.Time{}); e.MsgID != "stream:42" || !e.EventTime.IsZero() {
		t.Errorf("no headers: %+v", e)
	}
	for tp, want := range map[string]string{
		"": "", "garbage": "", "00-00000000000000000000000000000000-00f067aa0ba902b7-01": "",
		"00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01": "",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": "4bf92f3577b34da6a3ce929d0e0e4736",
	} {
		if got := traceIDOf(tp); got != want {
			t.Errorf("traceIDOf(%q) = %q, want %q", tp, got, want)
		}
	}
	if got := leftRunes("héllo", 2); got != "hé" {
		t.Errorf("leftRunes = %q", got)
	}
	if got := likePrefix(`a_b%c\`); got != `a\_b\%c\\%` {
		t.Errorf("likePrefix = %q", got)
	}
}

// Verify's jsonb header parser must hash exactly what chainHash hashed at append time,
// whatever the headers hold.
func TestVerifyHashesOddHeaders(t *testing.T) {
	s := newService(t, Config{VerifyPageSize: 3}, newPool(t), nil)
	heads := []map[string][]string{
		{},
		{"a": {}},
		{"q": {`say "hi"`, `back\slash`, "tab\there", "new\nline", "ctl\u0001"}},
		{"uni": {"héllo", "日本", "emoji 🩺", "\u00e9"}},
		{"x": {"1"}, "X": {"2"}, "xx": {""}, "b": {"", ""}},
		{"sp ace": {" lead", "trail "}, "{}": {"[]", ":", ","}},
	}
	var es []*entry
	for i, h := range heads {
		e := goldenEntry()
		e.MsgID = fmt.Sprint("odd-", i)
		e.Headers = h
		es = append(es, e)
	}
	appendAll(t, s, es, 2)
	verifyOK(t, s, int64(len(es)))
	hs, err := parseHeaders(nil, []byte(`{"b": ["1"], "a": ["2", "3"], "a": ["4"]}`))
	if err != nil || len(hs) != 2 || string(hs[0].name) != "a" || len(hs[0].vals) != 1 {
		t.Errorf("duplicate names: %v, %v", hs, err)
	}
	if _, err := parseHeaders(nil, []byte(`{"a": "not a list"}`)); err == nil {
		t.Error("a header that is not a list parsed")
	}
}
