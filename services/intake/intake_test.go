package intake

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/pkg/telemetry"
	"github.com/tenure-dev/tenure/pkg/webhook"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

func TestMain(m *testing.M) {
	// A real tracer provider, so otelhttp starts spans and events carry a traceparent.
	stop, err := telemetry.Setup(context.Background(), "intake-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := pgtest.Main(m)
	stop(context.Background())
	os.Exit(code)
}

// Secrets of the test sources.
var (
	acmeSecret = webhook.NewSecret()
	oldSecret  = webhook.NewSecret()
	newSecret  = webhook.NewSecret()
)

type harness struct {
	t    testing.TB
	svc  *Service
	pool *pgxpool.Pool
	nats *natstest.Server
	srv  *httptest.Server
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newHarness(t testing.TB, tweak ...func(*Config)) *harness {
	t.Helper()
	ctx := context.Background()
	pool, err := pgstore.Connect(ctx, pgtest.NewDatabase(t), Schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	logs := &syncBuffer{}
	cfg := Config{Sources: map[string]SourceConfig{
		"acme":     {Secrets: []string{acmeSecret}},
		"rotating": {Secrets: []string{oldSecret, newSecret}, Tolerance: time.Minute, Format: FormatCanonical},
	}}
	for _, f := range tweak {
		f(&cfg)
	}
	svc, err := New(ctx, cfg, Deps{Pool: pool, JS: ns.JS, Log: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)
	return &harness{t: t, svc: svc, pool: pool, nats: ns, srv: srv, logs: logs}
}

// delivery is one POST to the intake.
type delivery struct {
	source      string
	id          string
	body        string
	secret      string    // signs with this secret; "" sends no signature headers
	ts          time.Time // default now
	contentType string    // default application/json
	method      string    // default POST
	chunked     bool      // send without Content-Length
	header      http.Header
	endpoint    string // default "webhooks"; "snapshots" for rosters
	query       string
}

type answer struct {
	Status    int
	Error     string `json:"error"`
	Field     string `json:"field"`
	State     string `json:"status"`
	EventID   string `json:"event_id"`
	Subject   string `json:"subject"`
	StreamSeq uint64 `json:"stream_seq"`
	Stale     bool   `json:"stale"`
	Effect    string `json:"effect"`
	Reason    string `json:"reason"`
	DupOf     string `json:"duplicate_of"`
	Raw       string
}

// seedWorkers puts active employees in the registry directly (no receipt, no event), as if
// hired long ago, for tests of changes to existing workers.
func seedWorkers(t testing.TB, h *harness, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := h.pool.Exec(context.Background(), `INSERT INTO workers (worker_id, worker_type, status, effective_time, last_event_id, source)
			VALUES ($1, 'employee', 'active', '2000-01-01T00:00:00Z', 'seed', 'seed')`, id); err != nil {
			t.Fatal(err)
		}
	}
}

func (h *harness) post(d delivery) answer {
	h.t.Helper()
	if d.source == "" {
		d.source = "acme"
	}
	if d.method == "" {
		d.method = http.MethodPost
	}
	if d.contentType == "" {
		d.contentType = "application/json"
	}
	if d.ts.IsZero() {
		d.ts = time.Now()
	}
	var body io.Reader = strings.NewReader(d.body)
	if d.chunked {
		body = io.MultiReader(body) // unknown length: the client sends it chunked
	}
	if d.endpoint == "" {
		d.endpoint = "webhooks"
	}
	req, err := http.NewRequest(d.method, h.srv.URL+"/"+d.endpoint+"/"+d.source+d.query, body)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", d.contentType)
	if d.secret != "" {
		key, err := webhook.ParseSecret(d.secret)
		if err != nil {
			h.t.Fatal(err)
		}
		req.Header.Set(webhook.HeaderID, d.id)
		req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(d.ts.Unix(), 10))
		req.Header.Set(webhook.HeaderSignature, webhook.Sign(key, d.id, d.ts, []byte(d.body)))
	}
	for k, v := range d.header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		h.t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, raw)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		h.t.Fatalf("answer Content-Type %q", ct)
	}
	a.Status, a.Raw = resp.StatusCode, string(raw)
	return a
}

func (h *harness) count(table string) int {
	h.t.Helper()
	var n int
	if err := h.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// streamMsgs returns the number of messages in the events stream on subjects under filter.
func (h *harness) streamMsgs(filter string) int {
	h.t.Helper()
	st, err := h.nats.JS.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(filter))
	if err != nil {
		h.t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

func (h *harness) lastMsg(subject string) (*jetstream.RawStreamMsg, *eventsv1.WorkerEvent) {
	h.t.Helper()
	st, err := h.nats.JS.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		h.t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		h.t.Fatalf("no message on %s: %v", subject, err)
	}
	ev := &eventsv1.WorkerEvent{}
	if err := proto.Unmarshal(m.Data, ev); err != nil {
		h.t.Fatal(err)
	}
	return m, ev
}

const hireBody = `{"type":"hire","worker":{"worker_id":"E1001","worker_type":"employee","given_name":"Ada",
  "family_name":"Lovelace","email":"ada@example.org","job_code":"RN-2","department":"Cardiology",
  "manager_id":"E0042","location":"Boston","start_date":"2025-03-01"},
  "effective_time":"2025-03-01T09:00:00Z","reason":"new position"}`

func TestHireAccepted(t *testing.T) {
	h := newHarness(t)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	a := h.post(delivery{id: "msg_1", body: hireBody, secret: acmeSecret,
		header: http.Header{"Traceparent": {"00-" + traceID + "-00f067aa0ba902b7-01"}}})
	if a.Status != http.StatusAccepted || a.State != "accepted" || a.EventID != "intake:acme:msg_1" ||
		a.Subject != "tenure.hr.joiner.E1001" || a.StreamSeq != 1 {
		t.Fatalf("answer %d %s", a.Status, a.Raw)
	}

	if n := h.streamMsgs("tenure.hr.>"); n != 1 {
		t.Fatalf("%d messages in the stream, want 1", n)
	}
	m, ev := h.lastMsg("tenure.hr.joiner.E1001")
	for k, want := range map[string]string{
		events.HeaderMsgID:      "intake:acme:msg_1",
		events.HeaderID:         "intake:acme:msg_1",
		events.HeaderType:       "tenure.hr.joiner",
		events.HeaderSource:     "tenure/intake/acme",
		events.HeaderSubject:    "E1001",
		events.HeaderDataSchema: "tenure.events.v1.WorkerEvent",
	} {
		if got := m.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	// The trace continues the sender's: same trace id, a new span (otelhttp's server span).
	tp := m.Header.Get(events.HeaderTraceParent)
	if parts := strings.Split(tp, "-"); len(parts) != 4 || parts[1] != traceID || parts[2] == "00f067aa0ba902b7" {
		t.Errorf("traceparent %q does not continue trace %s", tp, traceID)
	}
	w := ev.GetWorker()
	if ev.GetKind() != eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER || ev.GetHrEventType() != "hire" ||
		ev.GetEventId() != "msg_1" || ev.GetSource() != "acme" ||
		!ev.GetEffectiveTime().AsTime().Equal(time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)) || ev.GetReceivedTime() == nil {
		t.Errorf("event %v", ev)
	}
	if w.GetWorkerId() != "E1001" || w.GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE ||
		w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE || w.GetEmail() != "ada@example.org" ||
		w.GetJobCode() != "RN-2" || w.GetManagerId() != "E0042" || w.GetStartDate() != "2025-03-01" {
		t.Errorf("worker %v", w)
	}

	got, err := h.svc.GetWorker(context.Background(), "E1001")
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.GetWorker(), w) || got.GetLastEventId() != "intake:acme:msg_1" {
		t.Errorf("registry %v, published %v", got, w)
	}
	if h.count("receipts") != 1 || h.count("worker_history") != 1 {
		t.Errorf("receipts %d history %d", h.count("receipts"), h.count("worker_history"))
	}
	var seq int64
	h.pool.QueryRow(context.Background(), "SELECT stream_seq FROM receipts").Scan(&seq)
	if seq != 1 {
		t.Errorf("receipt stream_seq %d", seq)
	}

	logs := h.logs.String()
	if !strings.Contains(logs, `"outcome":"accepted"`) || !strings.Contains(logs, `"worker_id":"E1001"`) || !strings.Contains(logs, `"webhook_id":"msg_1"`) {
		t.Errorf("log lacks the outcome: %s", logs)
	}
	for _, secret := range []string{acmeSecret, strings.TrimPrefix(acmeSecret, "whsec_"), "Lovelace", "ada@example.org"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds %q: %s", secret, logs)
		}
	}
}

func TestWorkerIDIsEscapedInSubject(t *testing.T) {
	h := newHarness(t)
	a := h.post(delivery{id: "m", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"a.b *>","worker_type":"temp"}}`})
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.joiner.a%2Eb%20%2A%3E" {
		t.Fatalf("answer %d %s", a.Status, a.Raw)
	}
	m, _ := h.lastMsg(a.Subject)
	if m.Header.Get(events.HeaderSubject) != "a.b *>" {
		t.Fatalf("ce-subject %q", m.Header.Get(events.HeaderSubject))
	}
}

func TestDuplicateDelivery(t *testing.T) {
	h := newHarness(t)
	if a := h.post(delivery{id: "msg_1", body: hireBody, secret: acmeSecret}); a.Status != http.StatusAccepted {
		t.Fatalf("first: %d %s", a.Status, a.Raw)
	}
	// A retry: same id and body, a later timestamp and so a new signature.
	a := h.post(delivery{id: "msg_1", body: hireBody, secret: acmeSecret, ts: time.Now().Add(30 * time.Second)})
	if a.Status != http.StatusOK || a.State != "duplicate" || a.EventID != "intake:acme:msg_1" || a.StreamSeq != 1 {
		t.Fatalf("retry: %d %s", a.Status, a.Raw)
	}
	// Same id, another body: a conflict, not a silent duplicate.
	other := strings.Replace(hireBody, "RN-2", "RN-3", 1)
	a = h.post(delivery{id: "msg_1", body: other, secret: acmeSecret})
	if a.Status != http.StatusConflict || a.Field != "webhook-id" || !strings.Contains(a.Error, "different body") {
		t.Fatalf("conflict: %d %s", a.Status, a.Raw)
	}
	// The same webhook-id from another source is another event.
	if a := h.post(delivery{source: "rotating", id: "msg_1", body: hireBody, secret: newSecret}); a.Status != http.StatusAccepted {
		t.Fatalf("other source: %d %s", a.Status, a.Raw)
	}
	if n := h.streamMsgs("tenure.hr.>"); n != 2 {
		t.Fatalf("%d messages, want 2", n)
	}
	if h.count("receipts") != 2 || h.count("worker_history") != 2 {
		t.Fatalf("receipts %d history %d", h.count("receipts"), h.count("worker_history"))
	}
	w, _ := h.svc.GetWorker(context.Background(), "E1001")
	if w.GetWorker().GetJobCode() != "RN-2" {
		t.Fatalf("the conflicting body changed the registry: %v", w)
	}
}

func TestConcurrentDuplicates(t *testing.T) {
	h := newHarness(t)
	const n = 5
	answers := make([]answer, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			answers[i] = h.post(delivery{id: "msg_c", body: hireBody, secret: acmeSecret})
		}()
	}
	close(start)
	wg.Wait()
	accepted, dup := 0, 0
	for _, a := range answers {
		switch {
		case a.Status == http.StatusAccepted:
			accepted++
		case a.Status == http.StatusOK && a.State == "duplicate" && a.EventID == "intake:acme:msg_c":
			dup++
		default:
			t.Errorf("unexpected answer %d %s", a.Status, a.Raw)
		}
	}
	if accepted != 1 || dup != n-1 {
		t.Fatalf("%d accepted, %d duplicates; want 1 and %d", accepted, dup, n-1)
	}
	if m := h.streamMsgs("tenure.hr.>"); m != 1 {
		t.Fatalf("%d messages, want 1", m)
	}
	if h.count("receipts") != 1 || h.count("worker_history") != 1 || h.count("workers") != 1 {
		t.Fatalf("receipts %d history %d workers %d", h.count("receipts"), h.count("worker_history"), h.count("workers"))
	}
}

func TestBadInput(t *testing.T) {
	h := newHarness(t)
	valid := `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee"}}`
	stale := time.Now().Add(-10 * time.Minute)
	tests := []struct {
		name  string
		d     delivery
		code  int
		field string
		msg   string
	}{
		{"unknown source", delivery{source: "nope", body: valid, secret: acmeSecret}, 404, "source", `unknown webhook source "nope"`},
		{"no source", delivery{source: "acme/extra", body: valid, secret: acmeSecret}, 404, "", "no such endpoint"},
		{"GET", delivery{method: http.MethodGet, secret: acmeSecret}, 405, "method", "use POST"},
		{"wrong content type", delivery{body: valid, secret: acmeSecret, contentType: "text/plain"}, 415, "Content-Type", `"text/plain" is not supported`},
		{"latin1 charset", delivery{body: valid, secret: acmeSecret, contentType: "application/json; charset=latin1"}, 415, "Content-Type", "charset"},
		{"oversized body", delivery{body: `{"type":"hire","reason":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`, secret: acmeSecret}, 413, "body", "larger than 1048576 bytes"},
		{"oversized chunked body", delivery{body: `{"type":"hire","reason":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`, secret: acmeSecret, chunked: true}, 413, "body", "larger than 1048576 bytes"},
		{"unsigned", delivery{body: valid}, 401, "webhook-id", "missing Standard Webhooks header webhook-id"},
		{"no signature header", delivery{body: valid, header: http.Header{"Webhook-Id": {"x"}, "Webhook-Timestamp": {strconv.FormatInt(time.Now().Unix(), 10)}}}, 401, "webhook-signature", "missing Standard Webhooks header webhook-signature"},
		{"wrong secret", delivery{body: valid, secret: newSecret}, 401, "webhook-signature", "no webhook-signature matches"},
		{"stale timestamp", delivery{body: valid, secret: acmeSecret, ts: stale}, 401, "webhook-timestamp", "outside the tolerance window"},
		{"timestamp not a number", delivery{body: valid, secret: acmeSecret, header: http.Header{"Webhook-Timestamp": {"yesterday"}}}, 401, "webhook-timestamp", "not a Unix time"},
		{"empty body", delivery{body: "", secret: acmeSecret}, 400, "", "body is empty"},
		{"malformed JSON", delivery{body: `{"type":"hire",`, secret: acmeSecret}, 400, "", "malformed JSON"},
		{"syntax error", delivery{body: `{"type":"hire" "worker":{}}`, secret: acmeSecret}, 400, "", "malformed JSON at offset 16"},
		{"unknown field", delivery{body: `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","shoe_size":"44"}}`, secret: acmeSecret}, 400, "worker.shoe_size", `unknown field "worker.shoe_size"`},
		{"unknown top-level field", delivery{body: `{"type":"hire","priority":1,"worker":{"worker_id":"E1"}}`, secret: acmeSecret}, 400, "priority", `unknown field "priority"`},
		{"wrong JSON type", delivery{body: `{"type":"hire","worker":{"worker_id":1001}}`, secret: acmeSecret}, 400, "worker.worker_id", "worker.worker_id must be a string, not a number"},
		{"not an object", delivery{body: `["hire"]`, secret: acmeSecret}, 400, "", "must be a JSON object, not an array"},
		{"two values", delivery{body: valid + ` {}`, secret: acmeSecret}, 400, "", "more than one JSON value"},
		{"missing type", delivery{body: `{"worker":{"worker_id":"E1"}}`, secret: acmeSecret}, 422, "type", "type is required"},
		{"unknown type", delivery{body: `{"type":"promotion","worker":{"worker_id":"E1"}}`, secret: acmeSecret}, 422, "type", `unknown type "promotion"`},
		{"missing worker_id", delivery{body: `{"type":"termination","worker":{"email":"a@b.org"}}`, secret: acmeSecret}, 422, "worker.worker_id", "worker.worker_id is required"},
		{"worker_id with spaces", delivery{body: `{"type":"termination","worker":{"worker_id":" E1"}}`, secret: acmeSecret}, 422, "worker.worker_id", "leading or trailing spaces"},
		{"unknown worker_type", delivery{body: `{"type":"hire","worker":{"worker_id":"E1","worker_type":"robot"}}`, secret: acmeSecret}, 422, "worker.worker_type", `unknown worker.worker_type "robot"`},
		{"hire without worker_type", delivery{body: `{"type":"hire","worker":{"worker_id":"E1"}}`, secret: acmeSecret}, 422, "worker.worker_type", "required for hire"},
		{"bad start_date", delivery{body: `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","start_date":"03/01/2025"}}`, secret: acmeSecret}, 422, "worker.start_date", "not a date YYYY-MM-DD"},
		{"end before start", delivery{body: `{"type":"hire","worker":{"worker_id":"E1","worker_type":"temp","start_date":"2025-03-01","end_date":"2025-02-01"}}`, secret: acmeSecret}, 422, "worker.end_date", "before worker.start_date"},
		{"bad effective_time", delivery{body: `{"type":"termination","worker":{"worker_id":"E1"},"effective_time":"tomorrow"}`, secret: acmeSecret}, 422, "effective_time", "not an RFC 3339 time"},
		{"bad email", delivery{body: `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","email":"Ada <ada@example.org>"}}`, secret: acmeSecret}, 422, "worker.email", "not a bare email address"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hh := *h
			hh.t = t
			tt.d.id = fmt.Sprintf("bad_%d", i)
			a := hh.post(tt.d)
			if a.Status != tt.code || a.Field != tt.field || !strings.Contains(a.Error, tt.msg) {
				t.Fatalf("got %d field=%q %q; want %d field=%q containing %q", a.Status, a.Field, a.Error, tt.code, tt.field, tt.msg)
			}
		})
	}
	// A body altered after signing fails verification.
	t.Run("body changed after signing", func(t *testing.T) {
		key, _ := webhook.ParseSecret(acmeSecret)
		now := time.Now()
		req, _ := http.NewRequest(http.MethodPost, h.srv.URL+"/webhooks/acme", strings.NewReader(strings.Replace(valid, "E1", "E2", 1)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(webhook.HeaderID, "tampered")
		req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
		req.Header.Set(webhook.HeaderSignature, webhook.Sign(key, "tampered", now, []byte(valid)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("tampered body: %d", resp.StatusCode)
		}
	})

	for _, table := range []string{"receipts", "workers", "worker_history"} {
		if n := h.count(table); n != 0 {
			t.Errorf("%s has %d rows after rejected deliveries", table, n)
		}
	}
	if n := h.streamMsgs(">"); n != 0 {
		t.Errorf("%d messages in the stream after rejected deliveries", n)
	}
	if strings.Contains(h.logs.String(), "shoe_size\":\"44") {
		t.Errorf("the log holds body content")
	}
}

func TestNATSUnavailable(t *testing.T) {
	check := func(t *testing.T, h *harness) {
		t.Helper()
		a := h.post(delivery{id: "msg_down", body: hireBody, secret: acmeSecret})
		if a.Status != http.StatusServiceUnavailable || !strings.Contains(a.Error, "retry") {
			t.Fatalf("got %d %s, want 503", a.Status, a.Raw)
		}
		for _, table := range []string{"receipts", "workers", "worker_history"} {
			if n := h.count(table); n != 0 {
				t.Errorf("%s has %d rows after a failed publish", table, n)
			}
		}
	}
	t.Run("stream deleted", func(t *testing.T) {
		h := newHarness(t)
		ctx := context.Background()
		if err := h.nats.JS.DeleteStream(ctx, natsx.EventsStream); err != nil {
			t.Fatal(err)
		}
		check(t, h)
		// Once the stream is back, the HRIS retry succeeds.
		if err := natsx.EnsureStreams(ctx, h.nats.JS, natsx.DefaultStreamOptions()); err != nil {
			t.Fatal(err)
		}
		if a := h.post(delivery{id: "msg_down", body: hireBody, secret: acmeSecret}); a.Status != http.StatusAccepted {
			t.Fatalf("retry: %d %s", a.Status, a.Raw)
		}
		if n := h.streamMsgs("tenure.hr.>"); n != 1 {
			t.Fatalf("%d messages after the retry", n)
		}
	})
	t.Run("server down", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.PublishTimeout = time.Second })
		h.nats.Server.Shutdown()
		h.nats.Server.WaitForShutdown()
		check(t, h)
		if !strings.Contains(h.logs.String(), `"outcome":"unavailable"`) {
			t.Errorf("log lacks the outcome: %s", h.logs.String())
		}
	})
}

func TestSecretRotation(t *testing.T) {
	h := newHarness(t)
	body := `{"type":"hire","worker":{"worker_id":"E7","worker_type":"contractor","sponsor_id":"E1","end_date":"2026-01-31"}}`
	if a := h.post(delivery{source: "rotating", id: "r1", body: body, secret: oldSecret}); a.Status != http.StatusAccepted {
		t.Fatalf("old secret: %d %s", a.Status, a.Raw)
	}
	if a := h.post(delivery{source: "rotating", id: "r2", body: strings.Replace(body, "E7", "E8", 1), secret: newSecret}); a.Status != http.StatusAccepted {
		t.Fatalf("new secret: %d %s", a.Status, a.Raw)
	}
	if a := h.post(delivery{source: "rotating", id: "r3", body: body, secret: acmeSecret}); a.Status != http.StatusUnauthorized {
		t.Fatalf("another source's secret: %d %s", a.Status, a.Raw)
	}
	// The source's tolerance is 1m.
	if a := h.post(delivery{source: "rotating", id: "r4", body: body, secret: newSecret, ts: time.Now().Add(-2 * time.Minute)}); a.Status != http.StatusUnauthorized || !strings.Contains(a.Error, "tolerance 1m0s") {
		t.Fatalf("stale for this source: %d %s", a.Status, a.Raw)
	}
}

func TestTerminationFillsFromRegistry(t *testing.T) {
	h := newHarness(t)
	if a := h.post(delivery{id: "h1", body: hireBody, secret: acmeSecret}); a.Status != http.StatusAccepted {
		t.Fatalf("hire: %d %s", a.Status, a.Raw)
	}
	a := h.post(delivery{id: "t1", secret: acmeSecret,
		body: `{"type":"termination","worker":{"worker_id":"E1001","end_date":"2025-09-30"},"effective_time":"2025-09-30T17:00:00Z","reason":"resignation"}`})
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.leaver.E1001" {
		t.Fatalf("termination: %d %s", a.Status, a.Raw)
	}
	m, ev := h.lastMsg("tenure.hr.leaver.E1001")
	if m.Header.Get(events.HeaderType) != "tenure.hr.leaver" || m.Header.Get(events.HeaderID) != "intake:acme:t1" {
		t.Errorf("headers %v", m.Header)
	}
	w := ev.GetWorker()
	if ev.GetKind() != eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER || ev.GetHrEventType() != "termination" ||
		w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED || w.GetEmail() != "ada@example.org" ||
		w.GetGivenName() != "Ada" || w.GetJobCode() != "RN-2" || w.GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE ||
		w.GetEndDate() != "2025-09-30" || w.GetStartDate() != "2025-03-01" {
		t.Fatalf("leaver worker not filled from the registry: %v", w)
	}
	reg, _ := h.svc.GetWorker(context.Background(), "E1001")
	if reg.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED || reg.GetLastEventId() != "intake:acme:t1" {
		t.Fatalf("registry %v", reg)
	}

	// A late job change, effective before the termination: kept in the history, not
	// published (it changes nothing), and the current record stays terminated.
	a = h.post(delivery{id: "j1", secret: acmeSecret,
		body: `{"type":"job_change","worker":{"worker_id":"E1001","job_code":"RN-3"},"effective_time":"2025-06-01T00:00:00Z"}`})
	if a.Status != http.StatusAccepted || !a.Stale || a.Subject != "" || a.StreamSeq != 0 {
		t.Fatalf("stale mover: %d %s", a.Status, a.Raw)
	}
	reg, _ = h.svc.GetWorker(context.Background(), "E1001")
	if reg.GetWorker().GetJobCode() != "RN-2" || reg.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("a stale event changed the registry: %v", reg)
	}
	var applied []bool
	rows, _ := h.pool.Query(context.Background(), "SELECT applied FROM worker_history ORDER BY seq")
	for rows.Next() {
		var b bool
		rows.Scan(&b)
		applied = append(applied, b)
	}
	if fmt.Sprint(applied) != "[true true false]" {
		t.Fatalf("history applied = %v", applied)
	}
	if n := h.streamMsgs("tenure.hr.>"); n != 2 {
		t.Fatalf("%d messages, want 2", n)
	}

	// A termination of a worker the registry does not know is not published as a leaver with
	// an empty record: the worker is recorded as terminated (a late hire cannot make them
	// active) and an operator finding says so.
	a = h.post(delivery{id: "t2", secret: acmeSecret, body: `{"type":"contract_end","worker":{"worker_id":"C9"}}`})
	if a.Status != http.StatusAccepted || a.Subject != "" || a.Effect != "none" || !strings.Contains(a.Reason, "never hired") {
		t.Fatalf("unknown leaver: %d %s", a.Status, a.Raw)
	}
	if n := h.streamMsgs("tenure.hr.leaver.C9"); n != 0 {
		t.Fatalf("%d leavers published for a worker never seen", n)
	}
	if w := h.worker("C9"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("unknown leaver recorded as %v", w)
	}
	fs, err := h.svc.ListFindings(context.Background(), &intakev1.ListFindingsRequest{WorkerId: "C9"})
	if err != nil || len(fs.Findings) != 1 || fs.Findings[0].Kind != findingUnknownWorker || fs.Findings[0].EventId != "intake:acme:t2" {
		t.Fatalf("findings %v %v", fs, err)
	}
	// A hire arriving late (effective before the termination it follows) stays stale.
	a = h.post(delivery{id: "h9", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"C9","worker_type":"contractor"},"effective_time":"2020-01-01T00:00:00Z"}`})
	if !a.Stale || h.worker("C9").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("late hire of a worker terminated unseen: %s", a.Raw)
	}
}

func TestLeaveAndMoverStatus(t *testing.T) {
	h := newHarness(t)
	steps := []struct {
		id, body, subject string
		status            eventsv1.WorkerStatus
	}{
		{"s1", `{"type":"hire","worker":{"worker_id":"E5","worker_type":"employee","department":"ICU"}}`, "tenure.hr.joiner.E5", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE},
		{"s2", `{"type":"leave_start","worker":{"worker_id":"E5"}}`, "tenure.hr.leave_start.E5", eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE},
		{"s3", `{"type":"department_change","worker":{"worker_id":"E5","department":"ER"}}`, "tenure.hr.mover.E5", eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE},
		{"s4", `{"type":"leave_end","worker":{"worker_id":"E5"}}`, "tenure.hr.leave_end.E5", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE},
		{"s5", `{"type":"termination","worker":{"worker_id":"E5"}}`, "tenure.hr.leaver.E5", eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED},
		{"s6", `{"type":"termination_rescinded","worker":{"worker_id":"E5"}}`, "tenure.hr.rescind.E5", eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE},
	}
	for _, s := range steps {
		a := h.post(delivery{id: s.id, body: s.body, secret: acmeSecret})
		if a.Status != http.StatusAccepted || a.Subject != s.subject {
			t.Fatalf("%s: %d %s", s.id, a.Status, a.Raw)
		}
		_, ev := h.lastMsg(s.subject)
		if ev.GetWorker().GetStatus() != s.status || ev.GetWorker().GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE {
			t.Fatalf("%s: worker %v", s.id, ev.GetWorker())
		}
	}
	reg, _ := h.svc.GetWorker(context.Background(), "E5")
	if reg.GetWorker().GetDepartment() != "ER" || reg.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatalf("registry %v", reg)
	}
}
