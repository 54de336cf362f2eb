package approval

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

type env struct {
	svc  *Service
	pool *pgxpool.Pool
	js   jetstream.JetStream
	sub  jetstream.Consumer
}

func start(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	pol, err := LoadPolicy("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgstore.Connect(ctx, pgtest.NewDatabase(t), schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	svc, err := New(ctx, Config{Policy: pol}, Deps{Pool: pool, JS: ns.JS})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { svc.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sub, err := ns.JS.CreateConsumer(ctx, natsx.EventsStream, jetstream.ConsumerConfig{FilterSubjects: []string{"tenure.access.grant.>", "tenure.access.revoke.>"}, AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	return &env{svc: svc, pool: pool, js: ns.JS, sub: sub}
}

func (e *env) hr(t *testing.T, id string, kind eventsv1.WorkerEventKind, w *eventsv1.Worker, eff time.Time) {
	t.Helper()
	tok := map[eventsv1.WorkerEventKind]string{eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER: "joiner", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER: "mover", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER: "leaver"}[kind]
	msg, err := events.Msg(context.Background(), events.Event{ID: id, Subject: events.Subject("tenure.hr", tok, w.WorkerId), Source: "test", WorkerID: w.WorkerId,
		Payload: &eventsv1.WorkerEvent{EventId: id, Kind: kind, Worker: w, EffectiveTime: timestamppb.New(eff)}})
	if err != nil {
		t.Fatal(err)
	}
	msg.Header.Set("Nats-Msg-Id", id+"-"+events.NewID()) // transport id differs: the inbox must dedupe on ce-id
	if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// decisions reads n access decisions, then checks no more arrive.
func (e *env) decisions(t *testing.T, n int) []*eventsv1.AccessDecision {
	t.Helper()
	var out []*eventsv1.AccessDecision
	if n > 0 {
		batch, err := e.sub.Fetch(n, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			var d eventsv1.AccessDecision
			if err := proto.Unmarshal(m.Data(), &d); err != nil {
				t.Fatal(err)
			}
			out = append(out, &d)
		}
	}
	if len(out) != n {
		t.Fatalf("got %d decisions, want %d", len(out), n)
	}
	extra, _ := e.sub.Fetch(1, jetstream.FetchMaxWait(300*time.Millisecond))
	for m := range extra.Messages() {
		t.Fatalf("unexpected extra decision on %s", m.Subject())
	}
	return out
}

func worker(id, job string, status eventsv1.WorkerStatus) *eventsv1.Worker {
	return &eventsv1.Worker{WorkerId: id, JobCode: job, Status: status}
}

var (
	active     = eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE
	terminated = eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED
	joiner     = eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER
	mover      = eventsv1.WorkerEventKind_WORKER_EVENT_KIND_MOVER
	leaver     = eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER
)

func TestJoinerDefaultDenyAndAutoApproval(t *testing.T) {
	e := start(t)
	now := time.Now()
	e.hr(t, "h1", joiner, worker("w1", "RN", active), now)
	ds := e.decisions(t, 1)
	d := ds[0]
	if d.Kind != eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT || d.Package != "reporting-reader" || d.Connector != "demo-reporting" || !d.Approvals[0].Automatic {
		t.Fatalf("decision %v", d)
	}
	// The ePHI package waits for approvers: a pending request, no grant.
	var pending int
	e.pool.QueryRow(context.Background(), "SELECT count(*) FROM requests WHERE worker_id='w1' AND package='ehr-clinician' AND status='pending'").Scan(&pending)
	if pending != 1 {
		t.Fatalf("pending ehr requests = %d, want 1", pending)
	}
	res, err := e.svc.ListGrants(context.Background(), &approvalv1.ListGrantsRequest{WorkerId: "w1"})
	if err != nil || len(res.Grants) != 1 || res.Grants[0].System != "reporting" {
		t.Fatalf("ListGrants = %v, %v", res, err)
	}
}

// (a) A redelivered message has one effect: same ce-id, new transport id.
func TestRedeliveredEventHasOneEffect(t *testing.T) {
	e := start(t)
	now := time.Now()
	e.hr(t, "h1", joiner, worker("w2", "CLERK", active), now)
	e.hr(t, "h1", joiner, worker("w2", "CLERK", active), now)
	e.decisions(t, 1)
	var n int
	e.pool.QueryRow(context.Background(), "SELECT count(*) FROM grants WHERE worker_id='w2'").Scan(&n)
	if n != 1 {
		t.Fatalf("grants = %d, want 1", n)
	}
}

func TestMoverDoesNotStack(t *testing.T) {
	e := start(t)
	now := time.Now()
	e.hr(t, "h1", joiner, worker("w3", "CLERK", active), now)
	e.decisions(t, 1)
	e.hr(t, "h2", mover, worker("w3", "RN", active), now.Add(time.Hour))
	ds := e.decisions(t, 2)
	kinds := map[string]string{}
	for _, d := range ds {
		kinds[d.Package] = d.Kind.String()
	}
	if kinds["wiki-editor"] != "ACCESS_DECISION_KIND_REVOKE" || kinds["reporting-reader"] != "ACCESS_DECISION_KIND_GRANT" {
		t.Fatalf("mover decisions %v", kinds)
	}
}

func TestLeaverRevokesEverythingAndLateJoinerIsIgnored(t *testing.T) {
	e := start(t)
	now := time.Now()
	e.hr(t, "h1", joiner, worker("w4", "RN", active), now)
	e.decisions(t, 1)
	e.hr(t, "h2", leaver, worker("w4", "RN", terminated), now.Add(time.Hour))
	ds := e.decisions(t, 1)
	if ds[0].Kind != eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE || !strings.HasPrefix(ds[0].Reason, "leaver") {
		t.Fatalf("leaver decision %v", ds[0])
	}
	var pending int
	e.pool.QueryRow(context.Background(), "SELECT count(*) FROM requests WHERE worker_id='w4' AND status='pending'").Scan(&pending)
	if pending != 0 {
		t.Fatalf("pending requests after leaver = %d", pending)
	}
	// A joiner effective before the termination arrives late: nothing is granted.
	e.hr(t, "h0", joiner, worker("w4", "CLERK", active), now.Add(-time.Hour))
	e.decisions(t, 0)
}

func TestPolicyErrorsNameLineAndField(t *testing.T) {
	bad := `systems:
  - {name: ehr, holds_ephi: true, connector: demo-ehr}
packages:
  - {name: ehr-all, system: ehr, auto_approve: true}
  - {name: x, system: nowhere}
roles:
  - {job_code: RN, packages: [ehr-all, missing]}
`
	_, err := ParsePolicy([]byte(bad))
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"line 4: packages[0].auto_approve", "line 5: packages[1].system: unknown system \"nowhere\"", "roles[0].packages[1]: unknown package \"missing\""} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := ParsePolicy([]byte("systems: []\nsurprise: 1\n")); err == nil || !strings.Contains(err.Error(), "surprise") {
		t.Fatalf("unknown field not named: %v", err)
	}
}
