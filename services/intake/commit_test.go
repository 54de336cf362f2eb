package intake

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// Many deliveries at once share batches; each still gets its own answer, and the stream
// sequence it reports (and the receipt keeps) is the one its event was stored at.
func TestGroupCommitConcurrentDeliveries(t *testing.T) {
	h := newHarness(t)
	const workers = 40
	type sent struct {
		id, worker string
		a          answer
	}
	var all []*sent
	for i := range workers {
		w := fmt.Sprintf("G%03d", i)
		all = append(all, &sent{id: "gc_hire_" + w, worker: w}, &sent{id: "gc_move_" + w, worker: w})
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			body := fmt.Sprintf(`{"type":"hire","worker":{"worker_id":%q,"worker_type":"employee","given_name":"G","family_name":"C","email":"%s@example.org","job_code":"RN","department":"ICU"},"effective_time":"2025-01-01T00:00:00Z"}`, s.worker, s.worker)
			if s.id[3] == 'm' {
				body = fmt.Sprintf(`{"type":"job_change","worker":{"worker_id":%q,"job_code":"RN-3"},"effective_time":"2025-06-01T00:00:00Z"}`, s.worker)
			}
			s.a = h.post(delivery{id: s.id, body: body, secret: acmeSecret})
		}()
	}
	close(start)
	wg.Wait()

	st, err := h.nats.JS.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	seqs := map[uint64]bool{}
	for _, s := range all {
		if s.a.Status != http.StatusAccepted {
			t.Fatalf("%s: %d %s", s.id, s.a.Status, s.a.Raw)
		}
		if s.a.State == "held" {
			// A job change that arrived before its worker's hire: held until the hire, then
			// fired by the scheduler (below).
			if s.id[3] != 'm' || s.a.StreamSeq != 0 || s.a.Effect != "held" {
				t.Fatalf("%s: held answer %s", s.id, s.a.Raw)
			}
			continue
		}
		if s.a.Stale {
			t.Fatalf("%s: stale answer %s", s.id, s.a.Raw)
		}
		if seqs[s.a.StreamSeq] {
			t.Fatalf("%s: stream sequence %d answered twice", s.id, s.a.StreamSeq)
		}
		seqs[s.a.StreamSeq] = true
		m, err := st.GetMsg(context.Background(), s.a.StreamSeq)
		if err != nil {
			t.Fatalf("%s: message %d: %v", s.id, s.a.StreamSeq, err)
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != "intake:acme:"+s.id || m.Subject != s.a.Subject {
			t.Fatalf("%s: message %d is %s on %s", s.id, s.a.StreamSeq, got, m.Subject)
		}
		var kept int64
		if err := h.pool.QueryRow(context.Background(), "SELECT stream_seq FROM receipts WHERE webhook_id = $1", s.id).Scan(&kept); err != nil || uint64(kept) != s.a.StreamSeq {
			t.Fatalf("%s: receipt keeps %d (%v), answer said %d", s.id, kept, err, s.a.StreamSeq)
		}
	}
	// Whatever order the hire and the job change of a worker arrived in, effective dating
	// makes the job change's record the current one (a held change fires after its hire).
	if err := h.svc.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := h.pool.QueryRow(context.Background(), "SELECT count(*) FROM workers WHERE job_code = 'RN-3'").Scan(&n); err != nil || n != workers {
		t.Fatalf("%d workers with the job change (%v), want %d", n, err, workers)
	}
	if h.count("worker_history") != 2*workers || h.count("receipts") != 2*workers {
		t.Fatalf("history %d receipts %d", h.count("worker_history"), h.count("receipts"))
	}
}

// In one batch, a duplicate, a reused webhook-id with another body, and an event refused for
// its content each get their own answer; the others are stored, and the refused one leaves
// nothing behind.
func TestGroupCommitItemsFailAlone(t *testing.T) {
	h := newHarness(t)
	first := h.post(delivery{id: "gc_dup", body: hireBody, secret: acmeSecret})
	if first.Status != http.StatusAccepted {
		t.Fatalf("first: %d %s", first.Status, first.Raw)
	}
	item := func(webhookID, body string) *ingestItem {
		evs, err := decodeAll(context.Background(), canonicalAdapter{}, Delivery{Source: "acme", WebhookID: webhookID, Body: []byte(body), Received: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		c, err := validate(evs[0])
		if err != nil {
			t.Fatal(err)
		}
		return &ingestItem{ctx: context.Background(), d: Delivery{Source: "acme", WebhookID: webhookID, Body: []byte(body), Received: time.Now()}, c: c}
	}
	hire := func(w string) string {
		return fmt.Sprintf(`{"type":"hire","worker":{"worker_id":%q,"worker_type":"employee","given_name":"A","family_name":"B","email":"%s@example.org"},"effective_time":"2025-01-01T00:00:00Z"}`, w, w)
	}
	ok1, ok2 := item("gc_ok1", hire("H1")), item("gc_ok2", hire("H2"))
	dup := item("gc_dup", hireBody)
	conflict := item("gc_dup", hire("H3"))
	rescind := item("gc_rescind", `{"type":"termination_rescinded","worker":{"worker_id":"H4"}}`)
	batch := []*ingestItem{ok1, dup, conflict, rescind, ok2}
	h.svc.commitBatch(batch)

	for _, it := range []*ingestItem{ok1, ok2} {
		if it.err != nil || it.res.seq == 0 || it.res.duplicate {
			t.Fatalf("%s: %+v, %v", it.d.WebhookID, it.res, it.err)
		}
	}
	if dup.err != nil || !dup.res.duplicate || dup.res.seq != first.StreamSeq {
		t.Fatalf("duplicate: %+v, %v; first was at %d", dup.res, dup.err, first.StreamSeq)
	}
	if conflict.err != errConflict {
		t.Fatalf("conflict: %v", conflict.err)
	}
	var ie *InputError
	if rescind.err == nil || !errors.As(rescind.err, &ie) || ie.Field != "worker.worker_id" {
		t.Fatalf("rescind: %v", rescind.err)
	}
	var n int
	if err := h.pool.QueryRow(context.Background(), "SELECT count(*) FROM receipts WHERE webhook_id = 'gc_rescind'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused event left %d receipts (%v)", n, err)
	}
	if h.count("workers") != 3 || h.count("receipts") != 3 || h.streamMsgs("tenure.hr.>") != 3 {
		t.Fatalf("workers %d receipts %d messages %d; want 3 each", h.count("workers"), h.count("receipts"), h.streamMsgs("tenure.hr.>"))
	}
}

// take keeps a worker's events in order across batches, keeps workers busy in another batch
// out, and sends a rescind alone.
func TestGroupCommitTake(t *testing.T) {
	it := func(worker, typ string) *ingestItem {
		c := change{hrType: typ}
		c.worker = &eventsv1.Worker{WorkerId: worker}
		return &ingestItem{c: c}
	}
	a1, b1, a2, c1, r, d1 := it("A", "hire"), it("B", "hire"), it("A", "job_change"), it("C", "hire"), it("D", "termination_rescinded"), it("D", "job_change")
	g := &committer{queue: []*ingestItem{a1, b1, a2, c1, r, d1}, busy: map[string]bool{"C": true}}
	names := func(b []*ingestItem) string {
		s := ""
		for _, x := range b {
			s += x.c.worker.WorkerId + ":" + x.c.hrType + " "
		}
		return s
	}
	if got := names(g.take()); got != "A:hire B:hire " {
		t.Fatalf("first batch %q", got)
	}
	// A and B are busy now; C still is.
	if got := names(g.take()); got != "D:termination_rescinded " {
		t.Fatalf("second batch %q", got)
	}
	g.busy = map[string]bool{"D": true}
	if got := names(g.take()); got != "A:job_change C:hire " {
		t.Fatalf("third batch %q", got)
	}
	g.busy = map[string]bool{}
	if got := names(g.take()); got != "D:job_change " || len(g.queue) != 0 {
		t.Fatalf("fourth batch %q, %d left", got, len(g.queue))
	}
}
