package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestRecordsEveryEventOnceInOrder(t *testing.T) {
	ns := natstest.Start(t)
	pool := newPool(t)
	s := newService(t, Config{}, pool, ns.JS)
	run(t, s)
	ctx := context.Background()

	hire := msg(t, "intake:workday:h1", events.Subject("tenure.hr", "joiner", "w.1"), "w.1", t0, joiner("w.1"))
	hire.Header.Set(events.HeaderTraceParent, traceparent)
	grantEHR := msg(t, "approval:g1", events.Subject("tenure.access", "grant", "w.1"), "w.1", t0.Add(time.Second), grant("w.1", "ehr"))
	provision := msg(t, "prov:c1", "tenure.provision.scim-ehr.ensure", "w.1", t0.Add(2*time.Second),
		&eventsv1.ProvisionCommand{CommandId: "c1", Connector: "scim-ehr", Op: eventsv1.ProvisionOp_PROVISION_OP_ENSURE, WorkerId: "w.1"})
	leave := msg(t, "intake:workday:l2", events.Subject("tenure.hr", "leaver", "w2"), "w2", t0.Add(3*time.Second), leaver("w2"))
	revoke := msg(t, "prov:r2", events.Subject("tenure.revocation", "account_disabled", "w2"), "w2", t0.Add(4*time.Second),
		&eventsv1.Revocation{RevocationId: "r2", Kind: eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, WorkerId: "w2", System: "ehr", Connector: "scim-ehr"})
	// Not a CloudEvent at all, with a payload nothing can decode and a header PostgreSQL
	// could not store as is: still recorded.
	raw := &nats.Msg{Subject: "tenure.alert.odd", Header: nats.Header{"X-Odd": {"bad\xff\x00byte"}}, Data: []byte{0xff, 0x00, 0x13}}
	// A known schema with a payload that does not decode: recorded raw, no system, no JSON.
	garbled := msg(t, "approval:g2", events.Subject("tenure.access", "grant", "w3"), "w3", t0.Add(5*time.Second), grant("w3", "pacs"))
	garbled.Data = []byte{0xff, 0xff, 0xff}

	// redo republishes a message as a retry or a re-drive would: same ce-id, new Nats-Msg-Id,
	// so JetStream stores it again.
	redo := func(m *nats.Msg, n int) *nats.Msg {
		h := nats.Header{}
		for k, v := range m.Header {
			h[k] = v
		}
		h.Set(nats.MsgIdHdr, fmt.Sprintf("redrive:%d", n))
		return &nats.Msg{Subject: m.Subject, Header: h, Data: m.Data}
	}
	publish := []*nats.Msg{hire, grantEHR, redo(hire, 1), provision, leave, redo(grantEHR, 2), revoke, raw, redo(hire, 3), garbled}
	var rawSeq uint64
	for _, m := range publish {
		ack, err := ns.JS.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if m == raw {
			rawSeq = ack.Sequence
		}
	}
	waitAcked(t, ns.JS, 20*time.Second)

	res, err := s.Query(ctx, &ledgerv1.QueryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// A checkpoint signed when Run started may have landed among the events.
	res.Entries = slices.DeleteFunc(res.Entries, func(e *ledgerv1.Entry) bool { return e.Type == checkpointType })
	type want struct{ msgID, subject, typ, worker, system string }
	wants := []want{
		{"intake:workday:h1", "tenure.hr.joiner.w%2E1", "tenure.hr.joiner", "w.1", ""},
		{"approval:g1", "tenure.access.grant.w%2E1", "tenure.access.grant", "w.1", "ehr"},
		{"prov:c1", "tenure.provision.scim-ehr.ensure", "tenure.provision.scim-ehr", "w.1", "scim-ehr"},
		{"intake:workday:l2", "tenure.hr.leaver.w2", "tenure.hr.leaver", "w2", ""},
		{"prov:r2", "tenure.revocation.account_disabled.w2", "tenure.revocation.account_disabled", "w2", "ehr"},
		{fmt.Sprintf("stream:%d", rawSeq), "tenure.alert.odd", "tenure.alert.odd", "", ""},
		{"approval:g2", "tenure.access.grant.w3", "tenure.access.grant", "w3", ""},
	}
	if len(res.Entries) != len(wants) {
		for _, e := range res.Entries {
			t.Logf("%d %s %s", e.Seq, e.MsgId, e.Subject)
		}
		t.Fatalf("%d entries, want %d", len(res.Entries), len(wants))
	}
	for i, w := range wants {
		e := res.Entries[i]
		got := want{e.MsgId, e.Subject, e.Type, e.WorkerId, e.System}
		if got != w {
			t.Errorf("entry %d = seq %d %+v, want seq %d %+v", i, e.Seq, got, i+1, w)
		}
	}
	first := res.Entries[0]
	if first.TraceId != "4bf92f3577b34da6a3ce929d0e0e4736" || first.Actor != "tester" || first.Source != "tenure/test" {
		t.Errorf("first entry trace/actor/source = %q %q %q", first.TraceId, first.Actor, first.Source)
	}
	if !first.EventTime.AsTime().Equal(t0.Truncate(time.Microsecond)) {
		t.Errorf("event_time = %s, want %s", first.EventTime.AsTime(), t0)
	}
	if !strings.Contains(first.PayloadJson, `"workerId":"w.1"`) || !strings.Contains(first.PayloadJson, "WORKER_EVENT_KIND_JOINER") {
		t.Errorf("payload_json = %s", first.PayloadJson)
	}
	odd := res.Entries[5]
	if odd.PayloadJson != "" || string(odd.Payload) != "\xff\x00\x13" {
		t.Errorf("raw entry payload %q json %q", odd.Payload, odd.PayloadJson)
	}
	if g := res.Entries[6]; g.PayloadJson != "" || string(g.Payload) != "\xff\xff\xff" {
		t.Errorf("garbled entry payload %q json %q", g.Payload, g.PayloadJson)
	}
	var streamSeq int64
	var oddHeader []string
	if err := pool.QueryRow(ctx, "SELECT stream_seq, headers->'X-Odd' FROM entries WHERE msg_id = $1", fmt.Sprintf("stream:%d", rawSeq)).Scan(&streamSeq, &oddHeader); err != nil {
		t.Fatal(err)
	}
	if streamSeq != int64(rawSeq) || len(oddHeader) != 1 || oddHeader[0] != "bad\uFFFD\uFFFDbyte" {
		t.Errorf("raw entry stream_seq %d header %q", streamSeq, oddHeader)
	}
	var msgIDHeaders int
	pool.QueryRow(ctx, "SELECT count(*) FROM entries WHERE headers ? 'Nats-Msg-Id'").Scan(&msgIDHeaders)
	if msgIDHeaders != 0 {
		t.Errorf("%d entries kept the volatile Nats-Msg-Id header", msgIDHeaders)
	}
	verifyOK(t, s, headSeq(t, pool))
}

func TestQuery(t *testing.T) {
	pool := newPool(t)
	s := newService(t, Config{}, pool, nil)
	ctx := context.Background()
	es := sampleEntries(t, "q", 30) // worker w(i%5), subject by i%3, t0 + i minutes
	// A worker id that needs escaping in subjects and LIKE patterns.
	es = append(es, direct(msg(t, "odd", events.Subject("tenure.hr", "joiner", "x_%.y"), "x_%.y", t0, joiner("x_%.y"))))
	appendAll(t, s, es, 7)

	seqs := func(req *ledgerv1.QueryRequest) []int64 {
		t.Helper()
		res, err := s.Query(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var out []int64
		for i, e := range res.Entries {
			if i > 0 && e.Seq <= res.Entries[i-1].Seq {
				t.Fatalf("entries out of order: %d after %d", e.Seq, res.Entries[i-1].Seq)
			}
			out = append(out, e.Seq)
		}
		return out
	}
	eq := func(name string, got, want []int64) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	eq("worker w1", seqs(&ledgerv1.QueryRequest{WorkerId: "w1"}), []int64{2, 7, 12, 17, 22, 27})
	eq("subject prefix", seqs(&ledgerv1.QueryRequest{SubjectPrefix: "tenure.revocation."}), []int64{3, 6, 9, 12, 15, 18, 21, 24, 27, 30})
	eq("worker and prefix", seqs(&ledgerv1.QueryRequest{WorkerId: "w1", SubjectPrefix: "tenure.revocation."}), []int64{12, 27})
	eq("LIKE metacharacters are literal", seqs(&ledgerv1.QueryRequest{SubjectPrefix: "tenure.hr_"}), nil)
	eq("escaped worker", seqs(&ledgerv1.QueryRequest{WorkerId: "x_%.y"}), []int64{31})
	eq("escaped subject", seqs(&ledgerv1.QueryRequest{SubjectPrefix: "tenure.hr.joiner.x_%25"}), []int64{31})
	eq("time range [from, to)", seqs(&ledgerv1.QueryRequest{
		From: timestamppb.New(t0.Add(10 * time.Minute)), To: timestamppb.New(t0.Add(13 * time.Minute)),
	}), []int64{11, 12, 13})
	eq("paging", seqs(&ledgerv1.QueryRequest{AfterSeq: 25, Limit: 3}), []int64{26, 27, 28})
	eq("default limit covers all", seqs(&ledgerv1.QueryRequest{SubjectPrefix: "tenure."})[25:], []int64{26, 27, 28, 29, 30, 31})

	res, err := s.Query(ctx, &ledgerv1.QueryRequest{WorkerId: "w1", Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := res.Entries[0]
	if e.Type != "tenure.access.grant" || e.System != "ehr" || e.WorkerId != "w1" || !strings.Contains(e.PayloadJson, `"package":"clinician"`) ||
		len(e.Hash) != HashSize || len(e.PrevHash) != 0 || e.RecordedAt == nil {
		t.Errorf("entry = %+v", e)
	}
	_, err = s.Query(ctx, &ledgerv1.QueryRequest{From: timestamppb.New(t0), To: timestamppb.New(t0.Add(-time.Hour))})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("to before from: err %v, want InvalidArgument", err)
	}
}

func TestVerifyFindsTampering(t *testing.T) {
	const n = 12
	exec := func(t *testing.T, s *Service, sqls ...string) {
		t.Helper()
		for _, q := range sqls {
			if _, err := s.pool.Exec(context.Background(), q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	const disable = "ALTER TABLE ledger.entries DISABLE TRIGGER ALL"
	cases := []struct {
		name    string
		tamper  func(t *testing.T, s *Service)
		broken  int64
		problem string
	}{
		{"edited payload", func(t *testing.T, s *Service) {
			exec(t, s, disable, "UPDATE ledger.entries SET payload = '\\x0a0178'::bytea WHERE seq = 5")
		}, 5, "does not match its content"},
		{"edited worker", func(t *testing.T, s *Service) {
			exec(t, s, disable, "UPDATE ledger.entries SET worker_id = 'someone-else' WHERE seq = 3")
		}, 3, "does not match its content"},
		{"edited header", func(t *testing.T, s *Service) {
			exec(t, s, disable, `UPDATE ledger.entries SET headers = jsonb_set(headers, '{tenure-actor}', '["mallory"]') WHERE seq = 7`)
		}, 7, "does not match its content"},
		{"edited recorded_at", func(t *testing.T, s *Service) {
			exec(t, s, disable, "UPDATE ledger.entries SET recorded_at = recorded_at - interval '1 day' WHERE seq = 9")
		}, 9, "does not match its content"},
		{"deleted row", func(t *testing.T, s *Service) {
			exec(t, s, disable, "DELETE FROM ledger.entries WHERE seq = 4")
		}, 4, "entry 4 is missing"},
		{"deleted last row", func(t *testing.T, s *Service) {
			exec(t, s, disable, fmt.Sprintf("DELETE FROM ledger.entries WHERE seq = %d", n))
		}, n, "head is at"},
		{"swapped rows", func(t *testing.T, s *Service) {
			exec(t, s, disable,
				"UPDATE ledger.entries SET seq = 1000 WHERE seq = 2",
				"UPDATE ledger.entries SET seq = 2 WHERE seq = 6",
				"UPDATE ledger.entries SET seq = 6 WHERE seq = 1000")
		}, 2, "does not match its content"},
		{"rehashed edit", func(t *testing.T, s *Service) {
			// A forger recomputes the edited entry's leaf hash: the tree's root changes.
			e := loadEntry(t, s, 5)
			e.Actor = "mallory"
			h := leafHash(&e)
			exec(t, s, disable)
			if _, err := s.pool.Exec(context.Background(), "UPDATE ledger.entries SET actor = $1, hash = $2 WHERE seq = 5", e.Actor, h); err != nil {
				t.Fatal(err)
			}
		}, n, "does not match the root of the tree"},
		{"forged entry past the head", func(t *testing.T, s *Service) {
			// Inserting needs no trigger bypass, but the head does not move.
			last := loadEntry(t, s, n)
			e := last
			e.Seq, e.MsgID = n+1, "forged"
			e.Hash = leafHash(&e)
			if _, err := s.pool.CopyFrom(context.Background(), pgx.Identifier{"entries"}, entryColumns, pgx.CopyFromRows([][]any{rowOf(&e)})); err != nil {
				t.Fatal(err)
			}
		}, n + 1, "beyond the head"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newService(t, Config{VerifyPageSize: 5}, newPool(t), nil) // pages of 5: breaks across pages
			appendAll(t, s, sampleEntries(t, "v", n), 5)
			verifyOK(t, s, n)
			c.tamper(t, s)
			res, err := s.Verify(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if res.Ok || res.FirstBrokenSeq != c.broken || !strings.Contains(res.Problem, c.problem) {
				t.Fatalf("Verify = ok %v first_broken_seq %d problem %q; want broken at %d with %q", res.Ok, res.FirstBrokenSeq, res.Problem, c.broken, c.problem)
			}
			t.Logf("%s: %s (checked %d)", c.name, res.Problem, res.EntriesChecked)
		})
	}
}

func loadEntry(t *testing.T, s *Service, seq int64) entry {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), entrySelect+" WHERE seq = $1", seq)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if !rows.Next() {
		t.Fatalf("no entry %d", seq)
	}
	e, hdr, err := scanEntry(rows)
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	e.Headers = map[string][]string{}
	if err := json.Unmarshal(hdr, &e.Headers); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestAppendOnly(t *testing.T) {
	pool := newPool(t)
	s := newService(t, Config{}, pool, nil)
	appendAll(t, s, sampleEntries(t, "a", 5), 5)
	ctx := context.Background()
	for _, q := range []string{
		"UPDATE entries SET payload = 'x' WHERE seq = 2",
		"UPDATE entries SET actor = actor",
		"DELETE FROM entries WHERE seq = 5",
		"DELETE FROM entries",
		"TRUNCATE entries",
		"TRUNCATE entries CASCADE",
		"INSERT INTO entries SELECT * FROM entries WHERE seq = 1 ON CONFLICT (seq) DO UPDATE SET payload = 'x'",
		"DELETE FROM head",
		"UPDATE head SET seq = 1",
		"UPDATE head SET hash = decode(repeat('00', 32), 'hex')",
		"TRUNCATE head",
	} {
		_, err := pool.Exec(ctx, q)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "append-only") {
			t.Errorf("%s: err = %v, want the append-only error", q, err)
		}
	}
	// Not even with triggers in replica mode (superuser only, but still).
	err := pgxTx(t, pool, "SET LOCAL session_replication_role = replica", "DELETE FROM entries WHERE seq = 1")
	if err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("delete in replica mode: err = %v", err)
	}
	verifyOK(t, s, 5)
}

func TestConcurrentAppenders(t *testing.T) {
	url := pgtest.NewDatabase(t)
	a := newService(t, Config{}, connect(t, url), nil)
	b := newService(t, Config{}, connect(t, url), nil)
	// Each appender has its own events, and both see a shared set (as when a message is
	// redelivered to another replica): every event is recorded exactly once.
	mine := func(prefix string) []*entry {
		es := sampleEntries(t, prefix, 300)
		shared := sampleEntries(t, "shared", 300)
		for i := range es {
			if i%3 == 0 {
				es[i] = shared[i]
			}
		}
		return es
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, w := range []struct {
		s  *Service
		es []*entry
	}{{a, mine("a")}, {b, mine("b")}} {
		wg.Go(func() {
			for i := 0; i < len(w.es); i += 10 {
				if _, err := w.s.appendEntries(context.Background(), w.es[i:i+10]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const want = 200 + 200 + 100
	var n, distinct int64
	a.pool.QueryRow(context.Background(), "SELECT count(*), count(DISTINCT msg_id) FROM entries").Scan(&n, &distinct)
	if n != want || distinct != want {
		t.Fatalf("%d entries (%d distinct), want %d", n, distinct, want)
	}
	verifyOK(t, a, want)
	verifyOK(t, b, want)
}

// Two replicas share the durable consumer on one stream: between them they record every
// event once, in one valid chain.
func TestReplicasShareOneChain(t *testing.T) {
	ns := natstest.Start(t)
	url := pgtest.NewDatabase(t)
	cfg := Config{BatchSize: 50}
	r1 := newService(t, cfg, connect(t, url), ns.JS)
	r2 := newService(t, cfg, connect(t, url), ns.JS)
	run(t, r1)
	run(t, r2)
	const n = 1000
	ctx := context.Background()
	for i := range n {
		w := fmt.Sprintf("w%d", i%17)
		m := msg(t, fmt.Sprintf("e%d", i), events.Subject("tenure.hr", "joiner", w), w, t0, joiner(w))
		if _, err := ns.JS.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-ns.JS.PublishAsyncComplete():
	case <-time.After(20 * time.Second):
		t.Fatal("publish timed out")
	}
	waitFor(t, "all events recorded", 30*time.Second, func() bool { return eventCount(t, r1.pool) >= n })
	waitAcked(t, ns.JS, 20*time.Second)
	var distinct int64
	r1.pool.QueryRow(ctx, "SELECT count(DISTINCT msg_id) FROM entries WHERE type <> $1", checkpointType).Scan(&distinct)
	if distinct != n || eventCount(t, r1.pool) != n {
		t.Fatalf("%d distinct events, %d events; want %d", distinct, eventCount(t, r1.pool), n)
	}
	verifyOK(t, r2, headSeq(t, r1.pool))
}

// If the durable consumer disappears (an operator deleted it), the ledger recreates it:
// it catches up from the stream's start, and nothing is recorded twice.
func TestRecreatesDeletedConsumer(t *testing.T) {
	ns := natstest.Start(t)
	pool := newPool(t)
	s := newService(t, Config{}, pool, ns.JS)
	run(t, s)
	ctx := context.Background()
	publish := func(id, w string) {
		t.Helper()
		if _, err := ns.JS.PublishMsg(ctx, msg(t, id, events.Subject("tenure.hr", "joiner", w), w, t0, joiner(w))); err != nil {
			t.Fatal(err)
		}
	}
	publish("e1", "w1")
	publish("e2", "w2")
	waitFor(t, "two entries", 10*time.Second, func() bool { return eventCount(t, pool) == 2 })
	if err := ns.JS.DeleteConsumer(ctx, "TENURE_EVENTS", Durable); err != nil {
		t.Fatal(err)
	}
	publish("e3", "w3")
	waitFor(t, "the third entry", 20*time.Second, func() bool { return eventCount(t, pool) >= 3 })
	waitAcked(t, ns.JS, 10*time.Second)
	if n := eventCount(t, pool); n != 3 {
		r, _ := s.Query(ctx, &ledgerv1.QueryRequest{})
		for _, e := range r.Entries {
			t.Logf("%d %s %s", e.Seq, e.MsgId, e.Subject)
		}
		t.Fatalf("%d events, want 3", n)
	}
	verifyOK(t, s, headSeq(t, pool))
}
