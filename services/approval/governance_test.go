package approval

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	"github.com/tenure-dev/tenure/services/provisioner"
)

// genv runs the approval service on the governance policy; restart() replaces it with a new
// instance on the same database and NATS server, as after a crash.
type genv struct {
	*env
	url    string
	cfg    Config
	stop   func()
	policy string
}

func startGov(t *testing.T) *genv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	b, err := os.ReadFile("testdata/governance.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	url := pgtest.NewDatabase(t)
	pool, err := pgstore.Connect(ctx, url, schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	sub, err := ns.JS.CreateConsumer(ctx, natsx.EventsStream, jetstream.ConsumerConfig{FilterSubjects: []string{"tenure.access.grant.>", "tenure.access.revoke.>"}, AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	g := &genv{env: &env{pool: pool, js: ns.JS, sub: sub}, url: url, policy: path,
		cfg: Config{PolicyFile: path, PolicyPoll: 100 * time.Millisecond, Tick: 100 * time.Millisecond}}
	g.run(t)
	t.Cleanup(func() { g.stop() })
	return g
}

func (g *genv) run(t *testing.T) {
	t.Helper()
	svc, err := New(context.Background(), g.cfg, Deps{Pool: g.pool, JS: g.js})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(rctx); close(done) }()
	g.svc = svc
	g.stop = func() { cancel(); <-done }
}

func as(name string, roles ...authn.Role) context.Context {
	if len(roles) == 0 {
		roles = []authn.Role{authn.RoleApprover}
	}
	return authn.WithPrincipal(context.Background(), authn.Principal{Name: name, Roles: roles})
}

func codeOf(err error) codes.Code { return status.Code(err) }

func eventuallyT(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func (g *genv) pending(t *testing.T, worker, pkg string) *approvalv1.AccessRequest {
	t.Helper()
	var out *approvalv1.AccessRequest
	eventuallyT(t, "pending request for "+pkg, func() error {
		res, err := g.svc.ListRequests(context.Background(), &approvalv1.ListRequestsRequest{WorkerId: worker, Status: "pending"})
		if err != nil {
			return err
		}
		for _, r := range res.Requests {
			if r.Package == pkg {
				out = r
				return nil
			}
		}
		return fmt.Errorf("none among %v", res.Requests)
	})
	return out
}

func staff(id, job, manager string) *eventsv1.Worker {
	return &eventsv1.Worker{WorkerId: id, JobCode: job, Status: active, ManagerId: manager, WorkerType: eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE}
}

// lastOn reads the last message on a subject.
func (g *genv) lastOn(t *testing.T, subject string, into proto.Message) error {
	st, err := g.js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		return err
	}
	m, err := st.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		return err
	}
	return proto.Unmarshal(m.Data, into)
}

// A nurse joiner: the EHR package needs the manager, then the system owner; nothing is
// granted before both approve; nobody approves for themselves or out of turn.
func TestNurseJoinerNeedsManagerAndOwner(t *testing.T) {
	g := startGov(t)
	g.hr(t, "h1", joiner, staff("n1", "RN", "m1"), time.Now())
	ds := g.decisions(t, 1)
	if ds[0].Package != "wiki-reader" {
		t.Fatalf("auto grant %v", ds[0])
	}
	req := g.pending(t, "n1", "ehr-clinician")
	if len(req.Stages) != 2 || req.Stages[0].Stage != "manager" || req.Stages[0].Approvers[0] != "m1" || req.Stages[1].Stage != "owner" {
		t.Fatalf("stages %v", req.Stages)
	}
	// The nurse cannot approve their own access; the owner cannot go before the manager.
	if _, err := g.svc.Approve(as("n1"), &approvalv1.ApproveRequest{RequestId: req.RequestId}); codeOf(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "themselves") {
		t.Fatalf("self-approval: %v", err)
	}
	if _, err := g.svc.Approve(as("dr-cmio"), &approvalv1.ApproveRequest{RequestId: req.RequestId}); codeOf(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "m1") {
		t.Fatalf("owner out of turn: %v", err)
	}
	r, err := g.svc.Approve(as("m1"), &approvalv1.ApproveRequest{RequestId: req.RequestId, Comment: "new starter on ward 3"})
	if err != nil || r.Request.Status != "pending" || r.Request.Stages[0].DecidedBy != "m1" {
		t.Fatalf("manager approval: %v %v", r, err)
	}
	g.decisions(t, 0) // still nothing provisioned
	// dr-cmio is the principal of worker cmio, the EHR owner.
	r, err = g.svc.Approve(as("dr-cmio"), &approvalv1.ApproveRequest{RequestId: req.RequestId, Comment: "ok"})
	if err != nil || r.Request.Status != "approved" {
		t.Fatalf("owner approval: %v %v", r, err)
	}
	ds = g.decisions(t, 1)
	d := ds[0]
	if d.Package != "ehr-clinician" || len(d.Approvals) != 2 || d.Approvals[0].Approver != "m1" || d.Approvals[1].Approver != "cmio" || d.Approvals[0].Comment != "new starter on ward 3" || d.RequestId != req.RequestId {
		t.Fatalf("grant %v", d)
	}
	ex, err := g.svc.ExplainAccess(context.Background(), &approvalv1.ExplainAccessRequest{WorkerId: "n1", System: "ehr"})
	// Granted, but no provisioner has read an account back: not access yet, and it says so.
	if err != nil || ex.HasAccess || ex.TargetMatches || ex.Justifications[0].Request.RequestId != req.RequestId || !strings.Contains(ex.Summary, "manager by m1") ||
		!strings.HasPrefix(ex.Summary, "granted but not in effect") {
		t.Fatalf("explain %v %v", ex, err)
	}
	if _, err := g.svc.ExplainAccess(context.Background(), &approvalv1.ExplainAccessRequest{WorkerId: "nobody", System: "ehr"}); codeOf(err) != codes.NotFound {
		t.Fatalf("explain for an unknown worker: %v", err)
	}
	ex, _ = g.svc.ExplainAccess(context.Background(), &approvalv1.ExplainAccessRequest{WorkerId: "n1", System: "billing"})
	if ex.HasAccess || !strings.HasPrefix(ex.Summary, "no access") {
		t.Fatalf("explain billing %v", ex)
	}
}

func (g *genv) approveAll(t *testing.T, req *approvalv1.AccessRequest, approvers ...string) {
	t.Helper()
	for _, a := range approvers {
		roles := []authn.Role{authn.RoleApprover}
		if a == "sec" {
			roles = []authn.Role{authn.RoleSecurity}
		}
		if _, err := g.svc.Approve(as(a, roles...), &approvalv1.ApproveRequest{RequestId: req.RequestId, Comment: "ok"}); err != nil {
			t.Fatalf("approve by %s: %v", a, err)
		}
	}
}

// Mover nurse → billing: the EHR grant is revoked at once, billing is requested; a grant
// held outside the new role must be re-approved within the window.
func TestMoverNurseToBilling(t *testing.T) {
	g := startGov(t)
	now := time.Now()
	g.hr(t, "h1", joiner, staff("n2", "RN", "m1"), now)
	g.decisions(t, 1)
	g.approveAll(t, g.pending(t, "n2", "ehr-clinician"), "m1", "cmio")
	g.decisions(t, 1)
	g.hr(t, "h2", mover, staff("n2", "BILLING", "m2"), now.Add(time.Hour))
	ds := g.decisions(t, 1)
	if ds[0].Kind != eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE || ds[0].Package != "ehr-clinician" || !strings.Contains(ds[0].Reason, "role change") {
		t.Fatalf("mover decision %v", ds[0])
	}
	req := g.pending(t, "n2", "billing-clerk")
	if req.Stages[0].Approvers[0] != "m2" {
		t.Fatalf("billing request goes to the new manager: %v", req.Stages)
	}
}

// A time-boxed grant is revoked at its end time even if the service was down then.
func TestJITExpiryAcrossRestart(t *testing.T) {
	g := startGov(t)
	g.hr(t, "h1", joiner, staff("j1", "CLERK", "m1"), time.Now())
	g.decisions(t, 1)
	if _, err := g.svc.RequestAccess(as("m1"), &approvalv1.RequestAccessRequest{WorkerId: "j1", Package: "pharmacy-dispense", Justification: "cover",
		EndTime: timestamppb.New(time.Now().Add(60 * 24 * time.Hour))}); codeOf(err) != codes.InvalidArgument {
		t.Fatalf("end beyond max_duration: %v", err)
	}
	// Nobody approves their own request: m1 asked for this one.
	own, err := g.svc.RequestAccess(as("m1"), &approvalv1.RequestAccessRequest{WorkerId: "j1", Package: "billing-clerk", Justification: "month end"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.svc.Approve(as("m1"), &approvalv1.ApproveRequest{RequestId: own.Request.RequestId}); codeOf(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "own request") {
		t.Fatalf("requester approving: %v", err)
	}
	end := time.Now().Add(3 * time.Second)
	res, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "j1", Package: "pharmacy-dispense", Justification: "weekend cover", EndTime: timestamppb.New(end)})
	if err != nil {
		t.Fatal(err)
	}
	g.approveAll(t, res.Request, "m1", "pharm-lead")
	ds := g.decisions(t, 1)
	if ds[0].ExpiresAt == nil || ds[0].ExpiresAt.AsTime().Sub(end).Abs() > time.Second {
		t.Fatalf("JIT grant %v", ds[0])
	}
	g.stop()
	time.Sleep(time.Until(end) + 500*time.Millisecond)
	g.run(t)
	ds = g.decisions(t, 1)
	if ds[0].Kind != eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE || !strings.HasPrefix(ds[0].Reason, "expired") {
		t.Fatalf("expiry %v", ds[0])
	}
}

// Break-glass: immediate grant, alert at once, a review that goes overdue until security
// closes it; the user cannot review their own use.
func TestBreakGlassAlertAndOverdueReview(t *testing.T) {
	g := startGov(t)
	g.hr(t, "h1", joiner, staff("b1", "CLERK", "m1"), time.Now())
	g.decisions(t, 1)
	if _, err := g.svc.BreakGlass(as("b1", authn.RoleOperator), &approvalv1.BreakGlassRequest{WorkerId: "b1", Package: "ehr-clinician", ReasonCode: "because"}); codeOf(err) != codes.InvalidArgument {
		t.Fatalf("unknown reason code: %v", err)
	}
	// Longer than break_glass.max_duration is refused like JIT, not silently shortened.
	if _, err := g.svc.BreakGlass(as("b1", authn.RoleOperator), &approvalv1.BreakGlassRequest{WorkerId: "b1", Package: "ehr-clinician", ReasonCode: "patient-emergency",
		Justification: "code blue, bed 4", DurationSeconds: 24 * 3600}); codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "max_duration 2h") {
		t.Fatalf("break-glass beyond the maximum: %v", err)
	}
	res, err := g.svc.BreakGlass(as("b1", authn.RoleOperator), &approvalv1.BreakGlassRequest{WorkerId: "b1", Package: "ehr-clinician", ReasonCode: "patient-emergency",
		Justification: "code blue, bed 4"})
	if err != nil {
		t.Fatal(err)
	}
	ds := g.decisions(t, 1)
	if ds[0].Package != "ehr-clinician" || ds[0].ExpiresAt.AsTime().Sub(time.Now()) > 2*time.Hour+time.Minute {
		t.Fatalf("break-glass grant %v (max 2h)", ds[0])
	}
	var alert eventsv1.BreakGlassAlert
	eventuallyT(t, "breakglass alert", func() error { return g.lastOn(t, "tenure.alert.breakglass.b1", &alert) })
	if alert.ReasonCode != "patient-emergency" || alert.GrantId != res.Use.GrantId {
		t.Fatalf("alert %v", &alert)
	}
	eventuallyT(t, "overdue alert", func() error { return g.lastOn(t, "tenure.alert.breakglass_review_overdue.b1", &alert) })
	list, _ := g.svc.ListBreakGlass(context.Background(), &approvalv1.ListBreakGlassRequest{WorkerId: "b1"})
	if len(list.Uses) != 1 || list.Uses[0].ReviewStatus != "overdue" {
		t.Fatalf("uses %v", list.Uses)
	}
	if _, err := g.svc.CloseBreakGlassReview(as("b1", authn.RoleSecurity), &approvalv1.CloseBreakGlassReviewRequest{ReviewId: res.Use.ReviewId, Comment: "fine"}); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("self review: %v", err)
	}
	u, err := g.svc.CloseBreakGlassReview(as("sec", authn.RoleSecurity), &approvalv1.CloseBreakGlassReviewRequest{ReviewId: res.Use.ReviewId, Comment: "chart audit matches the emergency"})
	if err != nil || u.Use.ReviewStatus != "closed" || u.Use.ReviewedBy != "sec" {
		t.Fatalf("close: %v %v", u, err)
	}
	// The access was still active (2h): the review covers the whole use, so closing it ended
	// the access.
	if !u.AccessEnded {
		t.Fatalf("closed while active, access_ended = false: %v", u)
	}
	if ds := g.decisions(t, 1); ds[0].Kind != eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE || ds[0].GrantId != res.Use.GrantId {
		t.Fatalf("closing the review while active: %v", ds[0])
	}
}

// A JIT grant's duration counts from the grant, not from the request: the approval stages'
// time is not the worker's.
func TestJITDurationCountsFromTheGrant(t *testing.T) {
	g := startGov(t)
	g.hr(t, "h1", joiner, staff("j1", "CLERK", "m1"), time.Now())
	g.decisions(t, 1)
	if _, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "j1", Package: "pharmacy-dispense", Justification: "cover",
		DurationSeconds: 31 * 24 * 3600}); codeOf(err) != codes.InvalidArgument {
		t.Fatalf("beyond max_duration: %v", err)
	}
	res, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "j1", Package: "pharmacy-dispense", Justification: "cover",
		DurationSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	g.approveAll(t, res.Request, "m1", "pharm-lead")
	d := g.decisions(t, 1)[0]
	granted := d.DecidedAt.AsTime()
	if got := d.ExpiresAt.AsTime().Sub(granted); got < time.Hour-time.Second || got > time.Hour+time.Second {
		t.Fatalf("expires %s after the grant, want 1h", got)
	}
	if !d.ExpiresAt.AsTime().After(res.Request.CreatedAt.AsTime().Add(time.Hour)) {
		t.Fatalf("expiry %s counts from the request (%s)", d.ExpiresAt.AsTime(), res.Request.CreatedAt.AsTime())
	}
}

// An SoD exception does not travel: after a move the grant held under it needs the
// security exception stage again; the manager alone cannot keep it.
func TestSoDExceptionDoesNotTravelWithAMove(t *testing.T) {
	g := startGov(t)
	w := staff("x1", "BILLING", "m1")
	g.hr(t, "x1", joiner, w, time.Now())
	g.decisions(t, 1)
	g.approveAll(t, g.pending(t, "x1", "billing-clerk"), "m1", "cfo")
	g.decisions(t, 1)
	res, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "x1", Package: "pharmacy-dispense", Justification: "cover",
		DurationSeconds: 3600, SodException: true})
	if err != nil {
		t.Fatal(err)
	}
	g.approveAll(t, res.Request, "m1", "pharm-lead", "sec")
	g.decisions(t, 1)
	w.JobCode = "BILLING-LEAD"
	g.hr(t, "x2", mover, w, time.Now().Add(time.Minute))
	var re *approvalv1.AccessRequest
	eventuallyT(t, "re-approval", func() error {
		rs, err := g.svc.ListRequests(context.Background(), &approvalv1.ListRequestsRequest{WorkerId: "x1", Status: "pending"})
		if err != nil {
			return err
		}
		for _, r := range rs.Requests {
			if r.Kind == kindReapproval && r.Package == "pharmacy-dispense" {
				re = r
				return nil
			}
		}
		return fmt.Errorf("pending %v", rs.Requests)
	})
	if last := re.Stages[len(re.Stages)-1]; last.Stage != StageSoD || re.SodRule != "bill-and-dispense" {
		t.Fatalf("the re-approval after the move does not ask for the exception again: %v", re)
	}
	g.approveAll(t, re, "m1", "pharm-lead")
	if _, err := g.svc.Approve(as("m1"), &approvalv1.ApproveRequest{RequestId: re.RequestId}); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("the manager decided the exception stage: %v", err)
	}
	r, _ := g.svc.GetRequest(context.Background(), &approvalv1.GetRequestRequest{RequestId: re.RequestId})
	if r.Request.Status != "pending" {
		t.Fatalf("re-approval without security: %v", r.Request)
	}
}

// SoD: billing plus dispensing is refused with the rule named, unless security grants a
// recorded exception.
func TestSoDRefusalAndException(t *testing.T) {
	g := startGov(t)
	g.hr(t, "s1", joiner, staff("s1", "BILLING", "m1"), time.Now())
	g.decisions(t, 1)
	g.approveAll(t, g.pending(t, "s1", "billing-clerk"), "m1", "cfo")
	g.decisions(t, 1)
	end := timestamppb.New(time.Now().Add(24 * time.Hour))
	_, err := g.svc.RequestAccess(as("m1"), &approvalv1.RequestAccessRequest{WorkerId: "s1", Package: "pharmacy-dispense", Justification: "short staffed", EndTime: end})
	if codeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "bill-and-dispense") {
		t.Fatalf("SoD refusal: %v", err)
	}
	res, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "s1", Package: "pharmacy-dispense", Justification: "short staffed", EndTime: end, SodException: true})
	if err != nil {
		t.Fatal(err)
	}
	st := res.Request.Stages
	if st[len(st)-1].Stage != StageSoD || res.Request.SodRule != "bill-and-dispense" {
		t.Fatalf("stages %v", st)
	}
	g.approveAll(t, res.Request, "m1", "pharm-lead")
	if _, err := g.svc.Approve(as("m1", authn.RoleApprover), &approvalv1.ApproveRequest{RequestId: res.Request.RequestId}); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("non-security SoD exception: %v", err)
	}
	g.approveAll(t, res.Request, "sec")
	ds := g.decisions(t, 1)
	if ds[0].Package != "pharmacy-dispense" {
		t.Fatalf("grant %v", ds[0])
	}
	gr, _ := g.svc.ListGrants(context.Background(), &approvalv1.ListGrantsRequest{WorkerId: "s1"})
	found := false
	for _, x := range gr.Grants {
		if x.Package == "pharmacy-dispense" && strings.Contains(x.SodException, "bill-and-dispense approved by sec") {
			found = true
		}
	}
	if !found {
		t.Fatalf("exception not recorded: %v", gr.Grants)
	}
}

// Vendor staff: a sponsor is needed, and ePHI only with a BAA on file.
func TestVendorWithoutBAARefused(t *testing.T) {
	g := startGov(t)
	v := &eventsv1.Worker{WorkerId: "v1", JobCode: "CLERK", Status: active, WorkerType: eventsv1.WorkerType_WORKER_TYPE_VENDOR, VendorOrg: "acme-imaging"}
	g.hr(t, "h1", joiner, v, time.Now())
	g.decisions(t, 0) // no sponsor: nothing, not even birthright
	v.SponsorId = "m1"
	g.hr(t, "h2", mover, v, time.Now().Add(time.Minute))
	g.decisions(t, 1)
	_, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "v1", Package: "ehr-clinician", Justification: "support"})
	if codeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "business associate agreement") {
		t.Fatalf("vendor without BAA: %v", err)
	}
	if _, err := g.svc.RecordBAA(as("sec", authn.RoleSecurity), &approvalv1.RecordBAARequest{VendorOrg: "acme-imaging", Reference: "BAA-77"}); err != nil {
		t.Fatal(err)
	}
	// Recording the BAA evaluated the refused request again: it is now pending.
	res := g.pending(t, "v1", "ehr-clinician")
	if res.Stages[0].Approvers[0] != "m1" || res.RequestedBy != "desk" || res.Justification != "support" {
		t.Fatalf("the sponsor approves for a vendor without a manager: %v", res)
	}
}

// A package refused by the BAA gate is a request in state refused with the reason, on the
// ledger's subject; recording the BAA evaluates it again (it becomes pending, for its
// approvers). The same for a role package and for a request someone made.
func TestRefusalsAreVisibleAndReevaluated(t *testing.T) {
	g := startGov(t)
	v := &eventsv1.Worker{WorkerId: "v2", JobCode: "RN", Status: active, WorkerType: eventsv1.WorkerType_WORKER_TYPE_VENDOR, VendorOrg: "night-nurses", SponsorId: "m1"}
	g.hr(t, "h1", joiner, v, time.Now())
	g.decisions(t, 1) // wiki-reader only
	var refused *approvalv1.AccessRequest
	eventuallyT(t, "refused role request", func() error {
		res, err := g.svc.ListRequests(context.Background(), &approvalv1.ListRequestsRequest{WorkerId: "v2", Status: "refused"})
		if err != nil {
			return err
		}
		if len(res.Requests) != 1 || res.Requests[0].Package != "ehr-clinician" || !strings.Contains(res.Requests[0].Reason, "business associate agreement") {
			return fmt.Errorf("refused requests %v", res.Requests)
		}
		refused = res.Requests[0]
		return nil
	})
	var ev eventsv1.RequestEvent
	eventuallyT(t, "refusal on the ledger's subject", func() error { return g.lastOn(t, "tenure.access.request_refused.v2", &ev) })
	if ev.RequestId != refused.RequestId || !strings.Contains(ev.Reason, "business associate agreement") {
		t.Fatalf("refusal event %v", &ev)
	}
	// Another HR event does not pile up refusals.
	g.hr(t, "h2", mover, v, time.Now().Add(time.Minute))
	if res, _ := g.svc.ListRequests(context.Background(), &approvalv1.ListRequestsRequest{WorkerId: "v2", Status: "refused"}); len(res.Requests) != 1 {
		t.Fatalf("refused requests after another event: %v", res.Requests)
	}
	ex, err := g.svc.ExplainAccess(context.Background(), &approvalv1.ExplainAccessRequest{WorkerId: "v2", System: "ehr"})
	if err != nil || ex.HasAccess || !strings.Contains(ex.Summary, "refused ehr-clinician: vendor organisation") {
		t.Fatalf("explain names the BAA refusal: %v %v", ex, err)
	}
	if _, err := g.svc.RecordBAA(as("sec", authn.RoleSecurity), &approvalv1.RecordBAARequest{VendorOrg: "night-nurses", Reference: "BAA-9"}); err != nil {
		t.Fatal(err)
	}
	p := g.pending(t, "v2", "ehr-clinician")
	if p.Kind != "role" || p.Stages[0].Approvers[0] != "m1" {
		t.Fatalf("re-evaluated request %v", p)
	}
	r, err := g.svc.GetRequest(context.Background(), &approvalv1.GetRequestRequest{RequestId: refused.RequestId})
	if err != nil || r.Request.Status != "cancelled" || !strings.Contains(r.Request.Reason, "BAA-9") {
		t.Fatalf("the refused request after the BAA: %v %v", r, err)
	}
}

// A policy change is picked up without a restart and its hash published for the ledger; an
// invalid change is ignored.
func TestPolicyReloadRecordsHash(t *testing.T) {
	g := startGov(t)
	first := g.svc.Policy().Hash
	var pl eventsv1.PolicyLoaded
	eventuallyT(t, "first policy_loaded", func() error { return g.lastOn(t, "tenure.access.policy_loaded", &pl) })
	if pl.PolicyHash != first {
		t.Fatalf("policy_loaded %v", &pl)
	}
	b, _ := os.ReadFile(g.policy)
	os.WriteFile(g.policy, append(b, []byte("surprise: true\n")...), 0o600)
	time.Sleep(400 * time.Millisecond)
	if g.svc.Policy().Hash != first {
		t.Fatal("invalid policy was loaded")
	}
	os.WriteFile(g.policy, append(b, []byte("# a comment changes the hash\n")...), 0o600)
	eventuallyT(t, "reload", func() error {
		if err := g.lastOn(t, "tenure.access.policy_loaded", &pl); err != nil {
			return err
		}
		if pl.PolicyHash == first || pl.PreviousHash != first || g.svc.Policy().Hash != pl.PolicyHash {
			return errors.New("not yet")
		}
		return nil
	})
}

func TestGovernancePolicyErrorsNameLines(t *testing.T) {
	bad := `systems:
  - {name: ehr, holds_ephi: true, connector: c}
packages:
  - {name: a, system: ehr, stages: [cfo]}
sod:
  - {name: r, packages: [a, nope]}
approval:
  elevated: [manager]
break_glass:
  max_duration: soon
`
	_, err := ParsePolicy([]byte(bad))
	if err == nil || !strings.Contains(err.Error(), "line 10") || !strings.Contains(err.Error(), "soon") {
		t.Fatalf("duration error: %v", err)
	}
	bad = strings.Replace(bad, "soon", "1h", 1)
	_, err = ParsePolicy([]byte(bad))
	for _, want := range []string{"line 2: systems[0].owner", "line 4: packages[0].stages[0]: unknown stage \"cfo\"", "line 6: sod[0].packages[1]: unknown package \"nope\"", "line 8: approval.elevated"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// The full example in docs/policy.md is valid.
	doc, err := os.ReadFile("../../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	example, _, _ := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("docs/policy.md has no yaml example")
	}
	if _, err := ParsePolicy([]byte(example)); err != nil {
		t.Fatalf("docs/policy.md example: %v", err)
	}
}

// An access review campaign with one revoke closes only when the real provisioner has read
// the target back and confirmed the revoke.
func TestReviewCampaignClosesOnProvisionerConfirmation(t *testing.T) {
	g := startGov(t)
	ctx := context.Background()
	mem := connectortest.NewMemory("wiki_read")
	ppool, err := pgstore.Connect(ctx, g.url, "provisioner")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ppool.Close)
	prov, err := provisioner.New(ctx, provisioner.Config{Targets: []provisioner.Target{{Name: "mem-wiki", Type: "memory", System: "wiki", Conn: mem}},
		BackOff: []time.Duration{50 * time.Millisecond}}, provisioner.Deps{Pool: ppool, JS: g.js})
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	pdone := make(chan struct{})
	go func() { prov.Run(pctx); close(pdone) }()
	t.Cleanup(func() { cancel(); <-pdone })

	g.hr(t, "h1", joiner, &eventsv1.Worker{WorkerId: "r1", JobCode: "CLERK", Status: active, ManagerId: "m1", Email: "r1@h.example"}, time.Now())
	g.hr(t, "h2", joiner, &eventsv1.Worker{WorkerId: "r2", JobCode: "CLERK", Status: active, ManagerId: "m1", Email: "r2@h.example"}, time.Now())
	g.decisions(t, 2)
	eventuallyT(t, "accounts provisioned", func() error {
		accts, _, err := mem.ListAccounts(ctx, "")
		if err != nil || len(accts) != 2 {
			return fmt.Errorf("accounts %v %v", accts, err)
		}
		return nil
	})
	st, err := g.svc.StartReview(as("ops", authn.RoleOperator), &approvalv1.StartReviewRequest{System: "wiki"})
	if err != nil {
		t.Fatal(err)
	}
	c := st.Campaign
	var keep, drop *approvalv1.ReviewItem
	for _, it := range c.ReviewItems {
		if it.Reviewer != "it-owner" {
			t.Fatalf("reviewer %v", it)
		}
		if it.WorkerId == "r1" {
			keep = it
		} else {
			drop = it
		}
	}
	if _, err := g.svc.DecideReview(as("m1"), &approvalv1.DecideReviewRequest{CampaignId: c.CampaignId, GrantId: keep.GrantId, Decision: "keep"}); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("wrong reviewer: %v", err)
	}
	if _, err := g.svc.DecideReview(as("it-owner"), &approvalv1.DecideReviewRequest{CampaignId: c.CampaignId, GrantId: keep.GrantId, Decision: "keep", Comment: "still on the ward"}); err != nil {
		t.Fatal(err)
	}
	res, err := g.svc.DecideReview(as("it-owner"), &approvalv1.DecideReviewRequest{CampaignId: c.CampaignId, GrantId: drop.GrantId, Decision: "revoke", Comment: "moved away"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Campaign.Status != "open" {
		t.Fatalf("campaign closed before the provisioner confirmed: %v", res.Campaign)
	}
	// Each decision, keep included, reaches the ledger with who decided and why.
	eventuallyT(t, "keep decision published", func() error {
		var d eventsv1.ReviewDecision
		if err := g.lastOn(t, "tenure.access.review_decided."+keep.WorkerId, &d); err != nil {
			return err
		}
		if d.Decision != "keep" || d.Reviewer != "it-owner" || d.Comment != "still on the ward" || d.CampaignId != c.CampaignId || d.GrantId != keep.GrantId {
			return fmt.Errorf("decision %v", &d)
		}
		return nil
	})
	eventuallyT(t, "campaign closed on confirmation", func() error {
		r, err := g.svc.GetReview(ctx, &approvalv1.GetReviewRequest{CampaignId: c.CampaignId})
		if err != nil {
			return err
		}
		if r.Campaign.Status != "closed" || r.Campaign.RevokesConfirmed != 1 {
			return fmt.Errorf("campaign %v", r.Campaign)
		}
		return nil
	})
	accts, _, _ := mem.ListAccounts(ctx, "")
	for _, a := range accts {
		if a.Username == "r2" && a.State.String() != "disabled" {
			t.Fatalf("revoked account %v", a)
		}
	}
	var ev eventsv1.ReviewEvent
	if err := g.lastOn(t, "tenure.access.review_closed.wiki", &ev); err != nil || ev.Revoked != 1 || ev.RevokesConfirmed != 1 {
		t.Fatalf("review_closed %v %v", &ev, err)
	}
}

// A grant held by request outside the new role after a job change must be re-approved
// within the window; unanswered, it is revoked.
func TestMoverReapprovalWindow(t *testing.T) {
	g := startGov(t)
	now := time.Now()
	g.hr(t, "h1", joiner, staff("x1", "CLERK", "m1"), now)
	g.decisions(t, 1)
	res, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "x1", Package: "billing-clerk", Justification: "month end"})
	if err != nil {
		t.Fatal(err)
	}
	g.approveAll(t, res.Request, "m1", "cfo")
	g.decisions(t, 1)
	g.hr(t, "h2", mover, staff("x1", "RN", "m2"), now.Add(time.Hour))
	re := g.pending(t, "x1", "billing-clerk")
	if re.Kind != "reapproval" || re.Stages[0].Approvers[0] != "m2" {
		t.Fatalf("re-approval request %v", re)
	}
	ds := g.decisions(t, 1) // only the revoke after the window; the RN's EHR waits for approval
	if ds[0].Kind != eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE || ds[0].Package != "billing-clerk" || !strings.Contains(ds[0].Reason, "re-approved") {
		t.Fatalf("after the window: %v", ds[0])
	}
	r, _ := g.svc.GetRequest(context.Background(), &approvalv1.GetRequestRequest{RequestId: re.RequestId})
	if r.Request.Status != "cancelled" {
		t.Fatalf("re-approval request %v", r.Request.Status)
	}
}

// Reviewers who do not answer by the deadline are escalated to security and, as the
// policy says for wiki, the access is revoked; review cadence starts campaigns by itself.
func TestReviewEscalationAndCadence(t *testing.T) {
	g := startGov(t)
	g.hr(t, "h1", joiner, staff("e1", "CLERK", "m1"), time.Now())
	g.decisions(t, 1)
	st, err := g.svc.StartReview(as("ops", authn.RoleOperator), &approvalv1.StartReviewRequest{System: "wiki", DeadlineSeconds: 1})
	if err != nil || len(st.Campaign.ReviewItems) != 1 {
		t.Fatalf("start %v %v", st, err)
	}
	ds := g.decisions(t, 1)
	if ds[0].Kind != eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE || !strings.Contains(ds[0].Reason, "unanswered") {
		t.Fatalf("unanswered item: %v", ds[0])
	}
	var ev eventsv1.ReviewEvent
	eventuallyT(t, "escalation alert", func() error { return g.lastOn(t, "tenure.alert.review_escalated.wiki", &ev) })
	if len(ev.UnansweredGrantIds) != 1 {
		t.Fatalf("escalation %v", &ev)
	}
	r, _ := g.svc.GetReview(context.Background(), &approvalv1.GetReviewRequest{CampaignId: st.Campaign.CampaignId})
	if it := r.Campaign.ReviewItems[0]; it.Decision != "revoke" || it.DecidedBy != "policy:unanswered" || it.EscalatedAt == nil || r.Campaign.Status != "open" {
		t.Fatalf("campaign after deadline %v (open until the provisioner confirms)", r.Campaign)
	}
	eventuallyT(t, "cadence campaign", func() error {
		l, err := g.svc.ListReviews(context.Background(), &approvalv1.ListReviewsRequest{System: "billing"})
		if err != nil || len(l.Campaigns) != 1 || l.Campaigns[0].StartedBy != "policy:cadence" {
			return fmt.Errorf("campaigns %v %v", l, err)
		}
		return nil
	})
}

// Every GovernanceService method has an authorization rule (methods without one are denied).
func TestEveryMethodHasARule(t *testing.T) {
	rules := (&Service{}).AuthRules()
	for _, m := range approvalv1.GovernanceService_ServiceDesc.Methods {
		if _, ok := rules["/"+approvalv1.GovernanceService_ServiceDesc.ServiceName+"/"+m.MethodName]; !ok {
			t.Errorf("no rule for %s", m.MethodName)
		}
	}
}

// A grant held outside the role is re-approved after a move, also when a request for its
// package was pending. A clerk holds EHR access for an hour (JIT); a move to RN asks for the
// role's EHR package (pending, the JIT grant still held); back to CLERK, the JIT grant is
// outside the role again and needs its re-approval: the pending role request is cancelled,
// and the re-approval must not be lost to it (a grant waiting for a re-approval nobody can
// give would be revoked at the window's end with no one asked).
func TestReapprovalNotLostToAPendingRoleRequest(t *testing.T) {
	g := startGov(t)
	now := time.Now()
	g.hr(t, "h1", joiner, staff("c1", "CLERK", "m1"), now.Add(-time.Hour))
	g.decisions(t, 1) // wiki-reader
	res, err := g.svc.RequestAccess(as("desk", authn.RoleOperator), &approvalv1.RequestAccessRequest{WorkerId: "c1", Package: "ehr-clinician",
		Justification: "ward cover", DurationSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	g.approveAll(t, res.Request, "m1", "cmio")
	jit := g.decisions(t, 1)[0]
	g.hr(t, "h2", mover, staff("c1", "RN", "m1"), now.Add(-30*time.Minute))
	if r := g.pending(t, "c1", "ehr-clinician"); r.Kind != kindRole {
		t.Fatalf("after the move to RN: %v", r)
	}
	g.hr(t, "h3", mover, staff("c1", "CLERK", "m1"), now.Add(-10*time.Minute))
	eventuallyT(t, "a re-approval of the JIT grant", func() error {
		res, err := g.svc.ListRequests(context.Background(), &approvalv1.ListRequestsRequest{WorkerId: "c1", Status: "pending"})
		if err != nil {
			return err
		}
		for _, r := range res.Requests {
			if r.Package == "ehr-clinician" && r.Kind == kindReapproval && r.GrantId == jit.GrantId {
				return nil
			}
		}
		return fmt.Errorf("pending: %v", res.Requests)
	})
}
