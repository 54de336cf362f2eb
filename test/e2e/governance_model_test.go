package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"pgregory.net/rapid"

	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
)

// A model-based test of governance through the real intake, approval, provisioner and
// ledger (real PostgreSQL, embedded NATS) and a real PostgreSQL-role target on the test's
// own database. rapid draws short sequences of what people do to three workers: hires,
// moves between roles with different packages, access requests (permanent, or JIT that
// lapses at once or lasts an hour), approvals and denials stage by stage (re-approvals after
// a move among them), break-glass (lapsing or lasting) and its post-use review, access
// review campaigns with keep or revoke, and terminations. A small model keeps what each
// worker holds and what waits for whom, by the documented rules (docs/governance.md):
// default deny, movers lose role packages the new role lacks and re-approve what they hold
// outside it, JIT counts from the grant, a closed break-glass review ends the access, a
// leaver loses everything.
//
// After every step the approval service must agree with the model (each worker's grants
// with their kind, and each pending request at its stage). After quiescence — mid-sequence
// when drawn, at the end, and again after everyone left — the target itself must: every
// role's login and group memberships, read from pg_roles and pg_auth_members, are exactly
// what the worker's grants explain, nothing else; `explain` says the target matches; every
// decided review campaign has closed on the provisioner's confirmation.
//
// `go test` runs 6 sequences of 16 to 24 steps (about 10 s); `make governance` runs many
// (TENURE_GOVERNANCE_CHECKS, TENURE_GOVERNANCE_STEPS). On failure rapid prints the seed;
// -rapid.seed=N replays it. The approval service ticks every 100ms here, so a one-second
// grant's expiry is observed by polling, never by sleeping.
func TestGovernanceModel(t *testing.T) {
	checks := os.Getenv("TENURE_GOVERNANCE_CHECKS")
	if checks == "" {
		checks = "6"
	}
	if f := flag.Lookup("rapid.checks"); f != nil && !isFlagSet("rapid.checks") {
		f.Value.Set(checks)
	}
	// Sequences run 2/3 to all of maxSteps steps: short enough for every `go test`, long
	// enough that a few of them reach approvals, moves and reviews (rapid's first draws are
	// small). A step that does not apply (a move before the hire) does nothing.
	maxSteps := 24
	if s := os.Getenv("TENURE_GOVERNANCE_STEPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("TENURE_GOVERNANCE_STEPS=%q: want a positive number", s)
		}
		maxSteps = n
	}
	ctx := context.Background()
	stamp := time.Now().UnixNano() % 1_000_000
	prefix := fmt.Sprintf("gv%d_", stamp)
	group := func(pkg string) string { return "g" + prefix + pkg }
	policy := fmt.Sprintf(`systems:
  - {name: db, holds_ephi: true, owner: own1, connector: db}
packages:
  - {name: charts, system: db, entitlements: [%s]}
  - {name: front, system: db, entitlements: [%s]}
  - {name: reports, system: db, entitlements: [%s]}
  - {name: admin, system: db, entitlements: [%s], elevated: true, max_duration: 2h}
roles:
  - {job_code: RN, packages: [charts]}
  - {job_code: CLERK, packages: [front]}
  - {job_code: CHARGE, packages: [charts, reports]}
break_glass: {reason_codes: [patient-emergency], max_duration: 2h, review_within: 24h, packages: [admin]}
`, group("charts"), group("front"), group("reports"), group("admin"))
	tok := func(name string) string { return fmt.Sprintf("%s-%d", name, time.Now().UnixNano()) }
	mgrTok, ownTok, secTok := tok("mgr1"), tok("own1"), tok("sec1")
	env := startStack(t, stackOptions{
		Policy: policy,
		ConnectorsFor: func(adminURL string) string {
			return fmt.Sprintf("connectors:\n  - name: db\n    type: postgres\n    config: {url: %q, role_prefix: %s, groups: [%s, %s, %s, %s], create_groups: true}\n"+
				"    policy: {backoff_initial: 50ms, backoff_max: 500ms}\n", adminURL, prefix, group("charts"), group("front"), group("reports"), group("admin"))
		},
		Tokens: []string{
			fmt.Sprintf("{name: mgr1, roles: [approver], token: %q}", mgrTok),
			fmt.Sprintf("{name: own1, roles: [approver], token: %q}", ownTok),
			fmt.Sprintf("{name: sec1, roles: [security], token: %q}", secTok),
		},
		ApprovalTick: 100 * time.Millisecond,
	})
	db, err := pgx.Connect(ctx, env.AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(ctx) })
	gov := func(token string) approvalv1.GovernanceServiceClient {
		return approvalv1.NewGovernanceServiceClient(dial(t, env.GRPCAddr, token))
	}
	h := &govHarness{t: t, env: env, db: db, prefix: prefix, group: group, olga: gov(env.OperatorToken), seen: map[string]int{},
		approver: map[string]approvalv1.GovernanceServiceClient{"manager": gov(mgrTok), "owner": gov(ownTok), "security": gov(secTok)}}

	run := 0
	rapid.Check(t, func(rt *rapid.T) {
		run++
		m := &govModel{stem: fmt.Sprintf("gw%dr%dx", stamp, run)}
		for i := range 3 {
			m.workers = append(m.workers, &govWorker{id: fmt.Sprintf("%s%d", m.stem, i), held: map[string]*govGrant{}, pending: map[string]*govReq{}})
		}
		// Weighted by repetition. request-outside-role and decide-all make grants held
		// outside the role common enough that moves ask for their re-approval.
		actions := []string{"hire", "hire", "hire", "move", "move", "request", "request", "request-outside-role", "request-outside-role",
			"decide", "decide", "decide", "decide-all", "decide-all", "breakglass", "close-breakglass-review", "review", "terminate", "quiesce"}
		for range rapid.IntRange(max(1, maxSteps*2/3), maxSteps).Draw(rt, "steps") {
			w := rapid.SampledFrom(m.workers).Draw(rt, "worker")
			// Only what applies now is drawn, so short sequences get far.
			switch a := rapid.SampledFrom(slices.DeleteFunc(slices.Clone(actions), func(a string) bool { return !m.applies(a, w) })).Draw(rt, "action"); a {
			case "hire":
				if w.status == "" {
					h.hire(rt, m, w, rapid.SampledFrom([]string{"RN", "CLERK", "CHARGE"}).Draw(rt, "job"))
				}
			case "move":
				if w.status == "active" {
					jobs := slices.DeleteFunc([]string{"RN", "CLERK", "CHARGE"}, func(j string) bool { return j == w.job })
					h.move(rt, m, w, rapid.SampledFrom(jobs).Draw(rt, "new job"))
				}
			case "request":
				h.request(rt, m, w, rapid.SampledFrom(govPackages).Draw(rt, "package"), rapid.SampledFrom([]int64{0, 1, 3600}).Draw(rt, "duration"))
			case "request-outside-role":
				if w.status == "active" {
					outside := slices.DeleteFunc(slices.Clone(govPackages), func(p string) bool { return slices.Contains(govRoles[w.job], p) })
					h.request(rt, m, w, rapid.SampledFrom(outside).Draw(rt, "package"), rapid.SampledFrom([]int64{0, 3600}).Draw(rt, "duration"))
				}
			case "decide":
				h.decide(rt, m, rapid.IntRange(0, 4).Draw(rt, "deny one in five") > 0, false)
			case "decide-all":
				h.decide(rt, m, true, true)
			case "breakglass":
				h.breakGlass(rt, m, w, rapid.SampledFrom([]int64{1, 3600}).Draw(rt, "break-glass duration"))
			case "close-breakglass-review":
				h.closeBreakGlass(rt, m)
			case "review":
				h.review(rt, m)
			case "terminate":
				if w.status == "active" {
					h.terminate(rt, m, w)
				}
			case "quiesce":
				h.quiesce(rt, m)
			default:
				rt.Fatalf("unknown action %s", a)
			}
			h.settle(rt, m)
		}
		h.quiesce(rt, m)
		// Everyone leaves: the leaver path, and the next sequence's reviews see only its own.
		for _, w := range m.workers {
			if w.status == "active" {
				h.terminate(rt, m, w)
			}
		}
		h.settle(rt, m)
		h.quiesce(rt, m)
	})
	var seen []string
	for _, k := range slices.Sorted(maps.Keys(h.seen)) {
		seen = append(seen, fmt.Sprintf("%s %d", k, h.seen[k]))
	}
	t.Logf("%d sequences exercised: %s", run, strings.Join(seen, ", "))
}

var (
	govPackages = []string{"charts", "front", "reports", "admin"}
	govRoles    = map[string][]string{"RN": {"charts"}, "CLERK": {"front"}, "CHARGE": {"charts", "reports"}}
)

// govStages are the approval stages of a package: ePHI needs the manager and the owner, an
// elevated package security too (policy defaults).
func govStages(pkg string) []string {
	if pkg == "admin" {
		return []string{"manager", "owner", "security"}
	}
	return []string{"manager", "owner"}
}

// govModel is the reference: what each worker holds and what waits for a decision.
type govModel struct {
	stem      string // every worker id of this sequence starts with it
	workers   []*govWorker
	campaigns []string // review campaigns started, every item decided
	hooks     int
}

// applies says whether an action can do anything now (the others still have their error
// cases: a request or break-glass for a worker not hired or terminated).
func (m *govModel) applies(action string, w *govWorker) bool {
	switch action {
	case "hire":
		return w.status == ""
	case "move", "terminate", "request-outside-role":
		return w.status == "active"
	case "decide", "decide-all":
		return slices.ContainsFunc(m.workers, func(x *govWorker) bool { return len(x.pending) > 0 })
	case "close-breakglass-review":
		return slices.ContainsFunc(m.workers, func(x *govWorker) bool {
			return slices.ContainsFunc(x.breakGlass, func(b *govBreakGlass) bool { return !b.closed })
		})
	}
	return true
}

type govWorker struct {
	id, status, job string // status: "" (not hired), active, terminated
	held            map[string]*govGrant
	pending         map[string]*govReq
	breakGlass      []*govBreakGlass
}

type govGrant struct {
	id, kind   string // role, request, jit, breakglass
	reapproval bool   // held outside the role after a move: waits for re-approval
}

type govReq struct {
	kind  string // role, request, jit, reapproval
	stage int    // stages approved so far
	dur   int64  // JIT seconds, counted from the grant
}

type govBreakGlass struct {
	review, grant string
	closed        bool
}

type govHarness struct {
	t        *testing.T
	env      *stackEnv
	db       *pgx.Conn
	prefix   string
	group    func(pkg string) string
	olga     approvalv1.GovernanceServiceClient            // operator: requests, break-glass, reviews
	approver map[string]approvalv1.GovernanceServiceClient // by stage; own1 also reviews, sec1 closes break-glass reviews
	// seen counts what the sequences exercised, logged at the end: a run that never reached
	// a re-approval or an expiry proves little about them.
	seen map[string]int
}

func (h *govHarness) postHR(rt *rapid.T, m *govModel, typ string, worker map[string]string) {
	m.hooks++
	// Each change has its own effective time: without one, the intake takes a change that
	// repeats an earlier one on the same day (CLERK → CHARGE → CLERK → CHARGE) for a re-send.
	body, _ := json.Marshal(map[string]any{"type": typ, "worker": worker, "effective_time": time.Now().UTC().Format(time.RFC3339Nano)})
	id := fmt.Sprintf("%s-hook-%d", m.stem, m.hooks)
	if code, res := postWebhookB(h.t, h.env.Hook, h.env.HRSecret, id, body); code/100 != 2 {
		rt.Fatalf("%s %s: %d %v", typ, worker["worker_id"], code, res)
	}
}

// requestRole asks for the role's packages the worker lacks, as the approval service does
// for a joiner or a mover (default deny: each waits for its approvers).
func (w *govWorker) requestRole() {
	for _, pkg := range govRoles[w.job] {
		if g := w.held[pkg]; g != nil && (g.kind == "role" || g.kind == "request") {
			continue
		}
		if w.pending[pkg] == nil {
			w.pending[pkg] = &govReq{kind: "role"}
		}
	}
}

func (h *govHarness) hire(rt *rapid.T, m *govModel, w *govWorker, job string) {
	h.postHR(rt, m, "hire", map[string]string{"worker_id": w.id, "worker_type": "employee", "job_code": job, "email": w.id + "@clinic.example", "manager_id": "mgr1"})
	w.status, w.job = "active", job
	w.requestRole()
}

// move: role packages the new role lacks are revoked at once; grants held outside it
// (requested, JIT) wait for re-approval; break-glass runs out on its own; role requests the
// new role lacks are cancelled; the new role's packages are requested.
func (h *govHarness) move(rt *rapid.T, m *govModel, w *govWorker, job string) {
	h.postHR(rt, m, "job_change", map[string]string{"worker_id": w.id, "job_code": job})
	h.seen["move"]++
	w.job = job
	for pkg, r := range w.pending {
		if r.kind == "role" && !slices.Contains(govRoles[job], pkg) {
			delete(w.pending, pkg)
		}
	}
	for _, pkg := range slices.Sorted(maps.Keys(w.held)) {
		g := w.held[pkg]
		if slices.Contains(govRoles[job], pkg) {
			continue
		}
		switch g.kind {
		case "role":
			delete(w.held, pkg)
		case "request", "jit":
			if !g.reapproval {
				g.reapproval = true
				w.pending[pkg] = &govReq{kind: "reapproval"}
				h.seen["re-approval asked"]++
			}
		}
	}
	w.requestRole()
}

func (h *govHarness) terminate(rt *rapid.T, m *govModel, w *govWorker) {
	h.postHR(rt, m, "termination", map[string]string{"worker_id": w.id})
	h.seen[map[bool]string{true: "termination holding grants", false: "termination holding nothing"}[len(w.held) > 0]]++
	w.status = "terminated"
	clear(w.held)
	clear(w.pending)
}

func wantCode(rt *rapid.T, what string, err error, want codes.Code) {
	if got := status.Code(err); got != want {
		rt.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func (h *govHarness) request(rt *rapid.T, m *govModel, w *govWorker, pkg string, dur int64) {
	what := fmt.Sprintf("request %s for %s (%ds)", pkg, w.id, dur)
	_, err := h.olga.RequestAccess(context.Background(), &approvalv1.RequestAccessRequest{WorkerId: w.id, Package: pkg, DurationSeconds: dur,
		Justification: "model: " + what})
	switch {
	case pkg == "admin" && dur == 0:
		wantCode(rt, what+" (time-boxed package without a duration)", err, codes.InvalidArgument)
	case w.status == "":
		wantCode(rt, what+" (not hired)", err, codes.NotFound)
	case w.status == "terminated":
		wantCode(rt, what+" (terminated)", err, codes.FailedPrecondition)
	case w.held[pkg] != nil || w.pending[pkg] != nil:
		wantCode(rt, what+" (held or pending)", err, codes.AlreadyExists)
	default:
		wantCode(rt, what, err, codes.OK)
		kind := "request"
		if dur > 0 {
			kind = "jit"
		}
		w.pending[pkg] = &govReq{kind: kind, dur: dur}
	}
}

// decide approves (or denies) the current stage of a pending request, as the approver the
// policy names for it; all approves every stage left, each by its approver.
func (h *govHarness) decide(rt *rapid.T, m *govModel, approve, all bool) {
	type pend struct {
		w   *govWorker
		pkg string
	}
	var pending []pend
	for _, w := range m.workers {
		for _, pkg := range slices.Sorted(maps.Keys(w.pending)) {
			pending = append(pending, pend{w, pkg})
		}
	}
	if len(pending) == 0 {
		return
	}
	p := rapid.SampledFrom(pending).Draw(rt, "pending request")
	for all && p.w.pending[p.pkg] != nil && p.w.pending[p.pkg].stage < len(govStages(p.pkg))-1 {
		h.decideOne(rt, m, p.w, p.pkg, true)
		h.settle(rt, m)
	}
	h.decideOne(rt, m, p.w, p.pkg, approve)
}

func (h *govHarness) decideOne(rt *rapid.T, m *govModel, w *govWorker, pkg string, approve bool) {
	r := w.pending[pkg]
	ctx := context.Background()
	res, err := h.olga.ListRequests(ctx, &approvalv1.ListRequestsRequest{WorkerId: w.id, Status: "pending"})
	if err != nil {
		rt.Fatal(err)
	}
	i := slices.IndexFunc(res.GetRequests(), func(x *approvalv1.AccessRequest) bool { return x.GetPackage() == pkg })
	if i < 0 {
		rt.Fatalf("no pending request for %s by %s: %v", pkg, w.id, res.GetRequests())
	}
	id := res.GetRequests()[i].GetRequestId()
	stages := govStages(pkg)
	stage := stages[r.stage]
	what := fmt.Sprintf("%s stage %s of %s request %s (%s for %s)", map[bool]string{true: "approve", false: "deny"}[approve], stage, r.kind, id, pkg, w.id)
	if !approve {
		if _, err := h.approver[stage].Deny(ctx, &approvalv1.DenyRequest{RequestId: id, Comment: "model: no"}); err != nil {
			rt.Fatalf("%s: %v", what, err)
		}
		delete(w.pending, pkg)
		h.seen["denied "+r.kind]++
		if r.kind == "reapproval" {
			delete(w.held, pkg) // a denied re-approval revokes the grant
		}
		return
	}
	out, err := h.approver[stage].Approve(ctx, &approvalv1.ApproveRequest{RequestId: id, Comment: "model: yes"})
	if err != nil {
		rt.Fatalf("%s: %v", what, err)
	}
	r.stage++
	if r.stage < len(stages) {
		return
	}
	delete(w.pending, pkg)
	h.seen["approved "+r.kind]++
	if got := out.GetRequest().GetStatus(); got != "approved" {
		rt.Fatalf("%s: the last stage left it %s", what, got)
	}
	if r.kind == "reapproval" {
		w.held[pkg].reapproval = false
		return
	}
	// The approved grant (of the request's kind) replaces a short one (JIT, break-glass) of
	// the same package.
	w.held[pkg] = &govGrant{id: out.GetRequest().GetGrantId(), kind: r.kind}
	if r.dur == 1 {
		h.lapse(rt, m, w, pkg)
	}
}

// lapse waits for a one-second grant to run out: the approval service revokes it at its
// expiry, counted from the grant.
func (h *govHarness) lapse(rt *rapid.T, m *govModel, w *govWorker, pkg string) {
	h.settle(rt, m)
	id := w.held[pkg].id
	h.poll(rt, 15*time.Second, "grant "+id+" of "+pkg+" to "+w.id+" expires", func() error {
		res, err := h.olga.ListGrants(context.Background(), &approvalv1.ListGrantsRequest{WorkerId: w.id, IncludeRevoked: true})
		if err != nil {
			return err
		}
		for _, g := range res.GetGrants() {
			if g.GetGrantId() != id {
				continue
			}
			if g.GetRevokedAt() == nil {
				return errors.New("still active")
			}
			if !strings.HasPrefix(g.GetRevokeReason(), "expired at ") {
				return fmt.Errorf("revoked, but not by expiry: %s", g.GetRevokeReason())
			}
			if d := g.GetRevokedAt().AsTime().Sub(g.GetGrantedAt().AsTime()); d < time.Second {
				return fmt.Errorf("revoked %s after the grant, before its one second ran out", d)
			}
			return nil
		}
		return errors.New("no such grant")
	})
	h.seen["lapsed "+w.held[pkg].kind]++
	delete(w.held, pkg)
}

func (h *govHarness) breakGlass(rt *rapid.T, m *govModel, w *govWorker, dur int64) {
	what := fmt.Sprintf("break-glass admin for %s (%ds)", w.id, dur)
	out, err := h.olga.BreakGlass(context.Background(), &approvalv1.BreakGlassRequest{WorkerId: w.id, Package: "admin", ReasonCode: "patient-emergency",
		Justification: "model: " + what, DurationSeconds: dur})
	switch {
	case w.status == "":
		wantCode(rt, what+" (not hired)", err, codes.NotFound)
	case w.status == "terminated":
		wantCode(rt, what+" (terminated)", err, codes.FailedPrecondition)
	case w.held["admin"] != nil:
		wantCode(rt, what+" (held)", err, codes.AlreadyExists)
	default:
		wantCode(rt, what, err, codes.OK)
		w.held["admin"] = &govGrant{id: out.GetUse().GetGrantId(), kind: "breakglass"}
		w.breakGlass = append(w.breakGlass, &govBreakGlass{review: out.GetUse().GetReviewId(), grant: out.GetUse().GetGrantId()})
		if dur == 1 {
			h.lapse(rt, m, w, "admin")
		}
	}
}

// closeBreakGlass closes a post-use review as security: while the access is active, closing
// it ends the access.
func (h *govHarness) closeBreakGlass(rt *rapid.T, m *govModel) {
	type open struct {
		w *govWorker
		b *govBreakGlass
	}
	var all []open
	for _, w := range m.workers {
		for _, b := range w.breakGlass {
			if !b.closed {
				all = append(all, open{w, b})
			}
		}
	}
	if len(all) == 0 {
		return
	}
	o := rapid.SampledFrom(all).Draw(rt, "break-glass review")
	out, err := h.approver["security"].CloseBreakGlassReview(context.Background(), &approvalv1.CloseBreakGlassReviewRequest{ReviewId: o.b.review, Comment: "model: reviewed"})
	if err != nil {
		rt.Fatalf("close break-glass review %s: %v", o.b.review, err)
	}
	o.b.closed = true
	g := o.w.held["admin"]
	active := g != nil && g.id == o.b.grant
	if out.GetAccessEnded() != active {
		rt.Fatalf("closing break-glass review %s of %s: access_ended %v, model: the break-glass grant is active %v", o.b.review, o.w.id, out.GetAccessEnded(), active)
	}
	h.seen[fmt.Sprintf("break-glass review closed (access ended %v)", active)]++
	if active {
		delete(o.w.held, "admin")
	}
}

// review runs a campaign over the system: every active grant is an item, reviewed by the
// owner, each kept or revoked as drawn.
func (h *govHarness) review(rt *rapid.T, m *govModel) {
	ctx := context.Background()
	out, err := h.olga.StartReview(ctx, &approvalv1.StartReviewRequest{System: "db"})
	if err != nil {
		rt.Fatalf("start review: %v", err)
	}
	c := out.GetCampaign()
	holder := map[string]*govWorker{}
	for _, w := range m.workers {
		for _, g := range w.held {
			holder[g.id] = w
		}
	}
	var items []string
	for _, it := range c.GetReviewItems() {
		items = append(items, it.GetGrantId())
	}
	sort.Strings(items)
	if want := slices.Sorted(maps.Keys(holder)); !slices.Equal(items, want) {
		rt.Fatalf("campaign %s reviews grants %v, model: the active grants are %v", c.GetCampaignId(), items, want)
	}
	for _, id := range items {
		decision := rapid.SampledFrom([]string{"keep", "revoke"}).Draw(rt, "review decision")
		h.seen["review "+decision]++
		if _, err := h.approver["owner"].DecideReview(ctx, &approvalv1.DecideReviewRequest{CampaignId: c.GetCampaignId(), GrantId: id, Decision: decision,
			Comment: "model"}); err != nil {
			rt.Fatalf("%s grant %s in campaign %s: %v", decision, id, c.GetCampaignId(), err)
		}
		if decision == "revoke" {
			w := holder[id]
			for pkg, g := range w.held {
				if g.id == id {
					delete(w.held, pkg)
					if r := w.pending[pkg]; r != nil && r.kind == "reapproval" {
						delete(w.pending, pkg) // nothing left to re-approve
					}
				}
			}
		}
	}
	m.campaigns = append(m.campaigns, c.GetCampaignId())
}

func (h *govHarness) poll(rt *rapid.T, timeout time.Duration, what string, cond func() error) {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		// Polling a condition, not sleeping for a result: the loop ends as soon as it holds.
		time.Sleep(20 * time.Millisecond)
	}
	rt.Fatalf("%s: %v", what, err)
}

// settle waits until the approval service agrees with the model: each worker's status and
// job, grants (package, kind, id, waiting for re-approval) and pending requests (package,
// kind, stages approved).
func (h *govHarness) settle(rt *rapid.T, m *govModel) {
	h.poll(rt, 20*time.Second, "the approval service agrees with the model", func() error {
		for _, w := range m.workers {
			if err := h.approvalAgrees(w); err != nil {
				return fmt.Errorf("%s: %w", w.id, err)
			}
		}
		return nil
	})
}

func (h *govHarness) approvalAgrees(w *govWorker) error {
	ctx := context.Background()
	if w.status == "" {
		return nil
	}
	var st, job string
	err := h.db.QueryRow(ctx, "SELECT status, job_code FROM approval.workers WHERE worker_id = $1", w.id).Scan(&st, &job)
	if errors.Is(err, pgx.ErrNoRows) {
		return errors.New("not known to the approval service yet")
	}
	if err != nil {
		return err
	}
	if want := "WORKER_STATUS_" + strings.ToUpper(w.status); st != want {
		return fmt.Errorf("status %s, model %s", st, want)
	}
	if w.status == "active" && job != w.job {
		return fmt.Errorf("job %s, model %s", job, w.job)
	}
	gs, err := h.olga.ListGrants(ctx, &approvalv1.ListGrantsRequest{WorkerId: w.id})
	if err != nil {
		return err
	}
	got, want := map[string]string{}, map[string]string{}
	for _, g := range gs.GetGrants() {
		got[g.GetPackage()] = fmt.Sprintf("%s %s reapprove:%v", g.GetKind(), g.GetGrantId(), g.GetReapproveBy() != nil)
	}
	for pkg, g := range w.held {
		want[pkg] = fmt.Sprintf("%s %s reapprove:%v", g.kind, g.id, g.reapproval)
	}
	if !maps.Equal(got, want) {
		return fmt.Errorf("grants %v, model %v", got, want)
	}
	rs, err := h.olga.ListRequests(ctx, &approvalv1.ListRequestsRequest{WorkerId: w.id, Status: "pending"})
	if err != nil {
		return err
	}
	got, want = map[string]string{}, map[string]string{}
	for _, r := range rs.GetRequests() {
		approved := 0
		for _, s := range r.GetStages() {
			if s.GetStatus() == "approved" {
				approved++
			}
		}
		got[r.GetPackage()] = fmt.Sprintf("%s %d/%d", r.GetKind(), approved, len(r.GetStages()))
	}
	for pkg, r := range w.pending {
		want[pkg] = fmt.Sprintf("%s %d/%d", r.kind, r.stage, len(govStages(pkg)))
	}
	if !maps.Equal(got, want) {
		return fmt.Errorf("pending requests %v, model %v", got, want)
	}
	return nil
}

// quiesce waits until the target agrees with the model, read from PostgreSQL itself: a
// worker's role logs in exactly when they are active and hold a grant, and is a member of
// exactly the groups their grants give; no other role of this sequence exists; explain sees
// the same; every campaign whose items were all decided is closed.
func (h *govHarness) quiesce(rt *rapid.T, m *govModel) {
	h.seen["quiescent checks"]++
	h.poll(rt, 30*time.Second, "the target agrees with the model", func() error {
		ctx := context.Background()
		for _, w := range m.workers {
			if err := h.targetAgrees(w); err != nil {
				return fmt.Errorf("%s: %w", w.id, err)
			}
		}
		rows, err := h.db.Query(ctx, "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1", h.prefix+m.stem)
		if err != nil {
			return err
		}
		roles, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, r := range roles {
			if !slices.ContainsFunc(m.workers, func(w *govWorker) bool { return h.prefix+w.id == r && w.status != "" }) {
				return fmt.Errorf("role %s belongs to no hired worker", r)
			}
		}
		for _, id := range m.campaigns {
			c, err := h.olga.GetReview(ctx, &approvalv1.GetReviewRequest{CampaignId: id})
			if err != nil {
				return err
			}
			if c.GetCampaign().GetStatus() != "closed" {
				return fmt.Errorf("campaign %s is %s with every item decided (%d revoked, %d confirmed)", id, c.GetCampaign().GetStatus(),
					c.GetCampaign().GetRevoked(), c.GetCampaign().GetRevokesConfirmed())
			}
		}
		return nil
	})
}

func (h *govHarness) targetAgrees(w *govWorker) error {
	ctx := context.Background()
	role := h.prefix + w.id
	var login, exists bool
	if err := h.db.QueryRow(ctx, `SELECT coalesce(bool_or(rolcanlogin), false), count(*) > 0 FROM pg_roles WHERE rolname = $1`, role).Scan(&login, &exists); err != nil {
		return err
	}
	rows, err := h.db.Query(ctx, `SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
		JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 ORDER BY 1`, role)
	if err != nil {
		return err
	}
	groups, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	var ents []string
	for pkg := range w.held {
		ents = append(ents, h.group(pkg))
	}
	sort.Strings(ents)
	wantLogin := w.status == "active" && len(w.held) > 0
	if login != wantLogin {
		return fmt.Errorf("role %s: login %v (exists %v), model: %s holding %v", role, login, exists, w.status, slices.Sorted(maps.Keys(w.held)))
	}
	if !slices.Equal(groups, ents) {
		return fmt.Errorf("role %s is in groups %v, its grants explain %v", role, groups, ents)
	}
	ex, err := h.olga.ExplainAccess(ctx, &approvalv1.ExplainAccessRequest{WorkerId: w.id, System: "db"})
	if w.status == "" {
		if status.Code(err) != codes.NotFound {
			return fmt.Errorf("explain for a worker never hired: %v, want NotFound", err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if !ex.GetTargetMatches() || ex.GetHasAccess() != wantLogin {
		return fmt.Errorf("explain: target_matches %v, has_access %v (model %v): %s", ex.GetTargetMatches(), ex.GetHasAccess(), wantLogin, ex.GetSummary())
	}
	return nil
}
