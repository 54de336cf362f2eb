package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"pgregory.net/rapid"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// A model-based test of what HR events mean, through the real intake, approval and
// provisioner (real PostgreSQL, embedded NATS, a real PostgreSQL-role target). rapid
// generates each worker's HR timeline (hire, job change, leave, termination in the past or
// the future, rescind, rehire) and delivers it as a relay would: every event once, some again
// under the same webhook-id, some re-sent under new ids, all shuffled. A small reference model
// applies the documented lifecycle rules (docs/hr-events.md) in arrival order. After
// quiescence:
//
//   - the worker's state in the registry equals the model's;
//
//   - a worker the model has left (or on leave) has no role in the target that can log in,
//     read from PostgreSQL itself; an active one has one that can;
//
//   - the leavers published equal the model's, and the provisioner has one case for each;
//
//   - no case is open once all its accounts are verified.
//
//   - no revocation is published after the rescind that restored the worker.
//
// `make test` runs 20 sequences; `make model` runs many (TENURE_MODEL_CHECKS). On failure
// rapid prints the seed; -rapid.seed=N replays it.
func TestHRLifecycleModel(t *testing.T) {
	checks := os.Getenv("TENURE_MODEL_CHECKS")
	if checks == "" {
		checks = "20"
	}
	if f := flag.Lookup("rapid.checks"); f != nil && !isFlagSet("rapid.checks") {
		f.Value.Set(checks)
	}
	ctx := context.Background()
	prefix := fmt.Sprintf("hm%d_", time.Now().UnixNano()%1_000_000)
	env := startStack(t, stackOptions{
		Policy: fmt.Sprintf("systems:\n  - {name: charts, holds_ephi: false, connector: charts}\n"+
			"packages:\n  - {name: charts-user, system: charts, entitlements: [g%sstaff], auto_approve: true}\n"+
			"roles:\n  - {job_code: RN, packages: [charts-user]}\n  - {job_code: RN-3, packages: [charts-user]}\n", prefix),
		ConnectorsFor: func(adminURL string) string {
			return fmt.Sprintf("connectors:\n  - name: charts\n    type: postgres\n    config: {url: %q, role_prefix: %s, groups: [g%sstaff], create_groups: true}\n"+
				"    policy: {backoff_initial: 50ms, backoff_max: 500ms}\n", adminURL, prefix, prefix)
		},
	})
	conn := dial(t, env.GRPCAddr, env.OperatorToken)
	wf := intakev1.NewWorkforceServiceClient(conn)
	db, err := pgx.Connect(ctx, env.AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(ctx) })

	run := 0
	rapid.Check(t, func(rt *rapid.T) {
		run++
		base := time.Now().UTC().Add(-60 * 24 * time.Hour).Truncate(time.Second)
		var all []delivered
		models := map[string]*hrModel{}
		for w := range rapid.IntRange(1, 2).Draw(rt, "workers") {
			id := fmt.Sprintf("m%d-%d-%d", time.Now().UnixNano()%1_000_000, run, w)
			tl := drawTimeline(rt, id, base)
			models[id] = &hrModel{id: id}
			all = append(all, deliveries(rt, tl)...)
		}
		order := rapid.Permutation(all).Draw(rt, "order")
		for _, d := range order {
			code, res := postWebhookB(t, env.Hook, env.HRSecret, d.webhookID, d.body)
			if code/100 != 2 && code != 422 {
				rt.Fatalf("%s %s: %d %v", d.webhookID, d.ev.typ, code, res)
			}
			models[d.ev.worker].deliver(d, code, res)
		}
		for id, m := range models {
			m.endContract()
			m.checkQuiescent(rt, ctx, env, wf, db, prefix, id)
		}
	})
}

// hrEv is one event of a worker's HR timeline.
type hrEv struct {
	worker, typ string
	eff         time.Time // effective time
	job         string
	start       string // a rehire's start date
	end         string // a contractor's end date (the hire's)
	n           int    // position in the timeline, for unique ids
}

func (e hrEv) body() []byte {
	w := map[string]string{"worker_id": e.worker}
	switch e.typ {
	case "hire", "rehire":
		w["worker_type"], w["job_code"], w["email"] = "employee", "RN", strings.ReplaceAll(e.worker, "-", ".")+"@clinic.example"
		if e.start != "" {
			w["start_date"] = e.start
		}
		if e.end != "" {
			// A contractor whose contract has ended: tenure ends it (contract_end).
			w["worker_type"], w["end_date"], w["sponsor_id"] = "contractor", e.end, "sponsor-"+e.worker
		}
	case "job_change":
		w["job_code"] = e.job
	}
	b, _ := json.Marshal(map[string]any{"type": e.typ, "worker": w, "effective_time": e.eff.Format(time.RFC3339)})
	return b
}

// drawTimeline draws what HR did to one worker, in effective-time order.
func drawTimeline(rt *rapid.T, id string, base time.Time) []hrEv {
	day := func(n int) time.Time { return base.Add(time.Duration(n) * 24 * time.Hour) }
	tl := []hrEv{{worker: id, typ: "hire", eff: day(0)}}
	add := func(typ string, eff time.Time) { tl = append(tl, hrEv{worker: id, typ: typ, eff: eff, n: len(tl)}) }
	if rapid.Bool().Draw(rt, "job change") {
		tl = append(tl, hrEv{worker: id, typ: "job_change", eff: day(5), job: "RN-3", n: len(tl)})
	}
	if rapid.Bool().Draw(rt, "leave") {
		add("leave_start", day(10))
		if rapid.Bool().Draw(rt, "leave ends") {
			add("leave_end", day(15))
		}
	}
	switch rapid.IntRange(0, 2).Draw(rt, "termination") {
	case 1: // in the past
		add("termination", day(20))
		switch rapid.IntRange(0, 2).Draw(rt, "after") {
		case 1:
			add("termination_rescinded", day(21))
		case 2:
			tl = append(tl, hrEv{worker: id, typ: "rehire", eff: day(40), start: day(40).Format(time.DateOnly), n: len(tl)})
		}
	case 2: // effective next year: held, not yet a leaver
		add("termination", time.Now().UTC().Add(365*24*time.Hour).Truncate(time.Second))
	default:
		if rapid.Bool().Draw(rt, "contract ended") {
			// No termination from HR: the contract's end date (30 days ago) ends it.
			tl[0].end = day(30).Format(time.DateOnly)
		}
	}
	return tl
}

// delivered is one POST of an event.
type delivered struct {
	ev        hrEv
	webhookID string
	body      []byte
}

// deliveries sends each event once and some again: under the same webhook-id (a retry) or
// under a new one (a re-send).
func deliveries(rt *rapid.T, tl []hrEv) []delivered {
	var out []delivered
	for _, e := range tl {
		id := fmt.Sprintf("%s-%d", e.worker, e.n)
		out = append(out, delivered{ev: e, webhookID: id, body: e.body()})
		switch rapid.IntRange(0, 3).Draw(rt, "copies of "+e.typ) {
		case 1:
			out = append(out, delivered{ev: e, webhookID: id, body: e.body()})
		case 2:
			out = append(out, delivered{ev: e, webhookID: id + "-resent", body: e.body()})
		case 3:
			out = append(out, delivered{ev: e, webhookID: id, body: e.body()}, delivered{ev: e, webhookID: id + "-resent", body: e.body()})
		}
	}
	return out
}

// hrModel is the reference: the documented lifecycle rules applied in arrival order.
type hrModel struct {
	id      string
	status  string // "", active, on_leave, terminated
	eff     time.Time
	seen    map[string]bool // content already received (event type + effective time)
	waiting []hrEv          // changes before the hire
	// cancelled: changes that waited for a hire, cancelled by a termination.
	cancelled []hrEv
	// stale: events older than the record when they arrived.
	stale []hrEv
	// contract: the worker is a contractor whose end date has passed (set by the hire).
	contract bool
	// rescinded: a rescind restored the worker (published on tenure.hr.rescind).
	rescinded bool
	applied   []hrEv // applied events, in order
	leavers   int    // leavers published
	heldTerm  bool   // a termination held for its effective time
	// before is the status the worker had before the current run of terminations.
	before string
}

func (m *hrModel) deliver(d delivered, code int, res map[string]any) {
	if m.seen == nil {
		m.seen = map[string]bool{}
	}
	key := d.ev.typ + d.ev.eff.String()
	if m.seen[key] {
		return // a retry or a re-send: a duplicate
	}
	if d.ev.end != "" {
		m.contract = true
	}
	if d.ev.eff.After(time.Now()) {
		m.seen[key] = true
		if d.ev.typ == "termination" {
			m.heldTerm = true
		}
		return
	}
	if d.ev.typ == "termination_rescinded" && !(m.status == "terminated" || m.heldTerm) {
		return // 422: nothing to rescind; the sender's retry would be refused again
	}
	m.seen[key] = true
	m.apply(d.ev)
}

func (m *hrModel) reactivatedAfter(t time.Time) bool {
	for _, e := range m.applied {
		if (e.typ == "hire" || e.typ == "rehire" || e.typ == "termination_rescinded") && e.eff.After(t) {
			return true
		}
	}
	return false
}

func (m *hrModel) apply(e hrEv) {
	leaver := e.typ == "termination"
	joiner := e.typ == "hire" || e.typ == "rehire"
	switch {
	case e.typ == "termination_rescinded":
		m.heldTerm = false
		if m.status == "terminated" && m.before == "" {
			// The termination was of a worker never hired: a hire it made stale applies
			// now (a joiner); without one the worker is unknown again. What the termination
			// cancelled is back.
			m.waiting, m.cancelled = append(m.waiting, m.cancelled...), nil
			if h, ok := m.blockedHire(); ok {
				m.status, m.applied = "active", []hrEv{h}
				if h.eff.After(m.eff) {
					m.eff = h.eff
				}
				if e.eff.After(m.eff) {
					m.eff = e.eff
				}
				m.release()
			} else {
				m.status, m.eff, m.applied = "", time.Time{}, nil
			}
		} else if m.status == "terminated" {
			m.rescinded = true
			m.status = m.before
			if e.eff.After(m.eff) {
				m.eff = e.eff
			}
			m.applied = append(m.applied, e)
		}
	case m.status == "" && leaver:
		// Recorded as terminated, no leaver; changes waiting for the hire are cancelled.
		m.status, m.eff, m.before = "terminated", e.eff, ""
		m.cancelled, m.waiting = m.waiting, nil
		m.applied = append(m.applied, e)
	case m.status == "" && !joiner:
		m.waiting = append(m.waiting, e)
	case m.status != "" && e.eff.Before(m.eff):
		m.stale = append(m.stale, e)
		if leaver && m.status != "terminated" && !m.reactivatedAfter(e.eff) {
			m.before, m.status = m.status, "terminated"
			m.leavers++
			m.applied = append(m.applied, e)
		}
	case m.status == "terminated" && leaver:
	case m.status == "terminated" && e.typ == "rehire":
		m.status, m.eff = "active", e.eff
		m.applied = append(m.applied, e)
	case m.status == "terminated":
	default:
		m.eff = e.eff
		m.applied = append(m.applied, e)
		switch e.typ {
		case "hire", "rehire", "leave_end":
			m.status = "active"
		case "leave_start":
			m.status = "on_leave"
		case "termination":
			m.before, m.status = m.status, "terminated"
			m.leavers++
		case "job_change":
			if m.status == "" {
				m.status = "active"
			}
		}
	}
	if joiner && m.status == "active" {
		m.release()
	}
}

// endContract: a contractor whose end date has passed and who is not terminated becomes a
// leaver (contract_end), once, whenever the intake's scheduler gets to it: whether before or
// after the changes that follow the hire, the worker ends terminated with one leaver.
func (m *hrModel) endContract() {
	if m.contract && (m.status == "active" || m.status == "on_leave") {
		m.before, m.status = m.status, "terminated"
		m.leavers++
	}
}

// release applies the changes that waited for the hire, in effective-time order.
func (m *hrModel) release() {
	w := m.waiting
	m.waiting = nil
	sort.SliceStable(w, func(i, j int) bool { return w[i].eff.Before(w[j].eff) })
	for _, x := range w {
		m.apply(x)
	}
}

// blockedHire is the newest hire received while the worker was recorded terminated unseen
// (stale because of that termination).
func (m *hrModel) blockedHire() (hrEv, bool) {
	var best hrEv
	ok := false
	for _, h := range m.stale {
		if (h.typ == "hire" || h.typ == "rehire") && (!ok || !h.eff.Before(best.eff)) {
			best, ok = h, true
		}
	}
	return best, ok
}

func (m *hrModel) checkQuiescent(rt *rapid.T, ctx context.Context, env *stackEnv, wf intakev1.WorkforceServiceClient, db *pgx.Conn, prefix, id string) {
	want := map[string]eventsv1.WorkerStatus{"active": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, "on_leave": eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE,
		"terminated": eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED}[m.status]
	role := prefix + strings.ReplaceAll(id, "-", ".")
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if last = m.holds(ctx, wf, db, role, want); last == nil {
			return
		}
		// Polling a condition, not sleeping for a result: the loop ends as soon as it holds.
		time.Sleep(100 * time.Millisecond)
	}
	// The registry's history, to read a failure by.
	var hist []string
	if h, err := wf.GetHistory(ctx, &intakev1.GetHistoryRequest{WorkerId: id}); err == nil {
		for _, e := range h.Entries {
			hist = append(hist, fmt.Sprintf("%s@%s:%s→%s(%s)", e.HrEventType, e.EffectiveTime.AsTime().Format("01-02"),
				strings.TrimPrefix(e.State.String(), "HISTORY_ENTRY_STATE_"), strings.TrimPrefix(e.GetWorker().GetStatus().String(), "WORKER_STATUS_"), e.EffectReason))
		}
	}
	rt.Fatalf("worker %s (model: %s, %d leavers, applied %v): %v\nregistry history: %s", id, m.status, m.leavers, evTypes(m.applied), last, strings.Join(hist, "; "))
}

func evTypes(es []hrEv) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.typ)
	}
	return out
}

func (m *hrModel) holds(ctx context.Context, wf intakev1.WorkforceServiceClient, db *pgx.Conn, role string, want eventsv1.WorkerStatus) error {
	r, err := wf.GetWorker(ctx, &intakev1.GetWorkerRequest{WorkerId: m.id})
	if status.Code(err) == codes.NotFound && m.status == "" {
		err = nil // unknown to the registry, as the model says
	}
	if err != nil {
		return fmt.Errorf("registry: %v", err)
	}
	if got := r.GetWorker().GetStatus(); got != want {
		return fmt.Errorf("registry status %v, model %v", got, want)
	}
	var login, exists bool
	err = db.QueryRow(ctx, `SELECT coalesce(bool_or(rolcanlogin), false), count(*) > 0 FROM pg_roles WHERE rolname = $1`, role).Scan(&login, &exists)
	if err != nil {
		return err
	}
	if want == eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE && !login {
		return fmt.Errorf("target: role %s cannot log in (exists %v), the worker is active", role, exists)
	}
	if want != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE && login {
		return fmt.Errorf("target: role %s can log in, the worker is %v", role, want)
	}
	var cases, openVerified int
	err = db.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE c.status = 'open' AND NOT EXISTS
		(SELECT 1 FROM provisioner.case_accounts a WHERE a.case_id = c.case_id AND a.status <> 'verified'))
		FROM provisioner.cases c WHERE c.worker_id = $1`, m.id).Scan(&cases, &openVerified)
	if err != nil {
		return err
	}
	if cases != m.leavers {
		return fmt.Errorf("%d leaver cases, model %d leavers", cases, m.leavers)
	}
	if openVerified != 0 {
		return fmt.Errorf("%d cases open with every account verified", openVerified)
	}
	var leavers int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM intake.worker_history WHERE worker_id = $1 AND kind = 'leaver' AND applied AND effect_reason = ''`, m.id).Scan(&leavers); err != nil {
		return err
	}
	if leavers != m.leavers {
		return fmt.Errorf("%d leavers applied in the registry, model %d", leavers, m.leavers)
	}
	// No revocation of the rescinded leaver is published after the rescind that restored the
	// worker's access (after the provisioner took it: tenure.case.rescinded), read from the
	// ledger, which records every event with its stream position: no grant_revoked, no
	// worker_terminated or case_completed, no revocation of the case's disables. (A worker the
	// rescind restored on leave is suspended, and that suspension's disable is a revocation
	// of its own; so is a disable for a grant approval revoked and has not granted again.)
	if m.status != "active" {
		return nil
	}
	var late int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM ledger.entries r WHERE r.worker_id = $1 AND r.subject LIKE 'tenure.revocation.%'
		AND r.stream_seq > (SELECT max(stream_seq) FROM ledger.entries WHERE subject = 'tenure.case.rescinded.' || $1)
		AND (r.subject NOT SIMILAR TO 'tenure.revocation.(account_disabled|session_revoked|credentials_revoked).%'
		  OR position(convert_to((SELECT c.case_id FROM provisioner.cases c WHERE c.worker_id = $1 ORDER BY c.opened_at DESC LIMIT 1), 'UTF8') IN r.payload) > 0)`, m.id).Scan(&late); err != nil {
		return err
	}
	if late != 0 {
		var subjects []string
		rows, _ := db.Query(ctx, `SELECT subject || '@' || stream_seq FROM ledger.entries WHERE worker_id = $1 ORDER BY stream_seq`, m.id)
		for rows != nil && rows.Next() {
			var x string
			rows.Scan(&x)
			subjects = append(subjects, x)
		}
		return fmt.Errorf("%d revocations published after the rescind: %v", late, subjects)
	}
	if m.rescinded {
		var seen bool
		if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ledger.entries WHERE subject = 'tenure.hr.rescind.' || $1)`, m.id).Scan(&seen); err != nil || !seen {
			return fmt.Errorf("the rescind is not in the ledger yet (%v)", err)
		}
	}
	return nil
}
