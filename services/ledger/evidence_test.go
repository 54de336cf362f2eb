package ledger

import (
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// evidenceScenario publishes, on NATS, what the other services publish for a small
// workforce, and returns a running ledger that recorded it all.
func evidenceScenario(t *testing.T) *Service {
	t.Helper()
	ns := natstest.Start(t)
	pool := newPool(t)
	s := newService(t, Config{CheckpointInterval: time.Hour}, pool, ns.JS)
	run(t, s)
	ctx := context.Background()
	ts := timestamppb.New
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	n := 0
	pub := func(subject, worker, actor string, when time.Time, p proto.Message) {
		t.Helper()
		n++
		m, err := events.Msg(ctx, events.Event{ID: "ev-" + subject + "-" + when.Format(time.RFC3339Nano), Subject: subject, Source: "tenure/test",
			WorkerID: worker, Actor: actor, Time: when, Payload: p})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ns.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	approval := func(stage, who string, d time.Duration) *eventsv1.Approval {
		return &eventsv1.Approval{Stage: stage, Approver: who, DecidedAt: ts(at(d))}
	}
	grant := func(d time.Duration, g *eventsv1.AccessDecision) {
		g.Kind = eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT
		g.DecidedAt = ts(at(d))
		g.DecisionId = "d-" + g.GrantId
		pub(events.Subject("tenure.access", "grant", g.WorkerId), g.WorkerId, "approval", at(d), g)
	}
	revoke := func(d time.Duration, worker, id, system, pkg, reason string) {
		pub(events.Subject("tenure.access", "revoke", worker), worker, "approval", at(d), &eventsv1.AccessDecision{DecisionId: "r-" + id,
			Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE, WorkerId: worker, GrantId: id, System: system, Package: pkg, Reason: reason, DecidedAt: ts(at(d))})
	}
	result := func(d time.Duration, worker, conn string, op eventsv1.ProvisionOp, link, caseID string, granted, revoked []string) {
		pub("tenure.result."+conn+".verified", worker, "provisioner", at(d), &eventsv1.ProvisionResult{CommandId: "c-" + link, Connector: conn, Op: op,
			WorkerId: worker, LinkId: link, Username: conn + "_" + worker, Outcome: eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED, CaseId: caseID,
			CompletedAt: ts(at(d)), GrantIds: granted, RevokedGrantIds: revoked})
	}
	worker := func(d time.Duration, kind, hrType string, w *eventsv1.Worker) {
		k := map[string]eventsv1.WorkerEventKind{"joiner": eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER, "leaver": eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER}[kind]
		pub(events.Subject("tenure.hr", kind, w.WorkerId), w.WorkerId, "workday", at(d), &eventsv1.WorkerEvent{EventId: "hr-" + kind + w.WorkerId, Kind: k,
			HrEventType: hrType, Worker: w, EffectiveTime: ts(at(d))})
	}

	// ada: an RN with birthright wiki, EHR through a request, EHR admin, temporary PACS.
	worker(0, "joiner", "hire", &eventsv1.Worker{WorkerId: "ada", WorkerType: eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE, JobCode: "RN"})
	grant(time.Minute, &eventsv1.AccessDecision{WorkerId: "ada", GrantId: "g-wiki", System: "wiki", Package: "wiki-basic", Role: "RN",
		Approvals: []*eventsv1.Approval{{Stage: "policy", Approver: "policy", Automatic: true}}})
	pub(events.Subject("tenure.access", "request_approved", "ada"), "ada", "approval", at(90*time.Second), &eventsv1.RequestEvent{RequestId: "req-1",
		WorkerId: "ada", Package: "ehr-clinician", System: "ehr", Status: "approved", RequestedBy: "mgr1", Justification: "ward nurse"})
	grant(2*time.Minute, &eventsv1.AccessDecision{WorkerId: "ada", GrantId: "g-ehr", System: "ehr", Package: "ehr-clinician", RequestId: "req-1", HoldsEphi: true,
		Approvals: []*eventsv1.Approval{approval("manager", "mgr1", 80*time.Second), approval("owner", "own1", 85*time.Second)}})
	result(3*time.Minute, "ada", "pg-ehr", eventsv1.ProvisionOp_PROVISION_OP_ENSURE, "l-ada-ehr", "", []string{"g-ehr"}, nil)
	grant(4*time.Minute, &eventsv1.AccessDecision{WorkerId: "ada", GrantId: "g-admin", System: "ehr", Package: "ehr-admin", Role: "RN", Elevated: true, HoldsEphi: true,
		Approvals: []*eventsv1.Approval{approval("manager", "mgr1", 3*time.Minute), approval("owner", "own1", 3*time.Minute), approval("security", "sec1", 4*time.Minute)}})
	grant(5*time.Minute, &eventsv1.AccessDecision{WorkerId: "ada", GrantId: "g-pacs", System: "pacs", Package: "pacs-viewer", RequestId: "req-2",
		ExpiresAt: ts(at(24 * time.Hour)), Approvals: []*eventsv1.Approval{approval("owner", "own2", 5*time.Minute)}})
	revoke(24*time.Hour, "ada", "g-pacs", "pacs", "pacs-viewer", "expired")
	result(24*time.Hour+time.Minute, "ada", "pg-pacs", eventsv1.ProvisionOp_PROVISION_OP_ENSURE, "l-ada-pacs", "", nil, []string{"g-pacs"})
	// Break-glass on the EHR, removed at expiry, reviewed afterwards.
	pub(events.Subject("tenure.alert", "breakglass", "ada"), "ada", "approval", at(48*time.Hour), &eventsv1.BreakGlassAlert{GrantId: "g-bg", WorkerId: "ada",
		System: "ehr", Package: "ehr-clinician", ReasonCode: "patient-emergency", Justification: "code blue", InvokedBy: "ada", GrantedAt: ts(at(48 * time.Hour)),
		ExpiresAt: ts(at(52 * time.Hour)), ReviewId: "bgr-1", ReviewDue: ts(at(96 * time.Hour))})
	grant(48*time.Hour, &eventsv1.AccessDecision{WorkerId: "ada", GrantId: "g-bg", System: "ehr", Package: "ehr-clinician", Reason: "break-glass", ExpiresAt: ts(at(52 * time.Hour))})
	revoke(52*time.Hour, "ada", "g-bg", "ehr", "ehr-clinician", "break-glass expired")
	pub(events.Subject("tenure.access", "breakglass_reviewed", "ada"), "ada", "sec1", at(60*time.Hour), &eventsv1.BreakGlassAlert{GrantId: "g-bg", WorkerId: "ada",
		ReviewId: "bgr-1", Justification: "appropriate"})
	// A second use whose review is overdue.
	pub(events.Subject("tenure.alert", "breakglass", "ada"), "ada", "approval", at(70*time.Hour), &eventsv1.BreakGlassAlert{GrantId: "g-bg2", WorkerId: "ada",
		System: "ehr", ReasonCode: "downtime", ReviewId: "bgr-2", ReviewDue: ts(at(80 * time.Hour))})

	// Review of the wiki: one revoke, confirmed.
	pub(events.Subject("tenure.access", "review_started", "wiki"), "", "sec1", at(100*time.Hour), &eventsv1.ReviewEvent{CampaignId: "rc-1", System: "wiki",
		Status: "started", Items: 3, StartedAt: ts(at(100 * time.Hour)), Deadline: ts(at(400 * time.Hour)), StartedBy: "sec1"})
	pub(events.Subject("tenure.alert", "review_escalated", "wiki"), "", "approval", at(120*time.Hour), &eventsv1.ReviewEvent{CampaignId: "rc-1", System: "wiki",
		Status: "escalated", UnansweredGrantIds: []string{"g-other"}})
	pub(events.Subject("tenure.access", "review_decided", "cy"), "cy", "it-owner", at(110*time.Hour), &eventsv1.ReviewDecision{CampaignId: "rc-1", System: "wiki",
		GrantId: "g-cy-wiki", WorkerId: "cy", Package: "wiki-basic", Reviewer: "it-owner", Decision: "keep", Comment: "still on the ward", DecidedAt: ts(at(110 * time.Hour))})
	pub(events.Subject("tenure.access", "review_decided", "ada"), "ada", "sec1", at(129*time.Hour), &eventsv1.ReviewDecision{CampaignId: "rc-1", System: "wiki",
		GrantId: "g-wiki", WorkerId: "ada", Package: "wiki-basic", Reviewer: "sec1", Decision: "revoke", Comment: "moved away", DecidedAt: ts(at(129 * time.Hour)), Escalated: true})
	revoke(130*time.Hour, "ada", "g-wiki", "wiki", "wiki-basic", "access review rc-1: revoke")
	result(131*time.Hour, "ada", "pg-wiki", eventsv1.ProvisionOp_PROVISION_OP_ENSURE, "l-ada-wiki", "", nil, []string{"g-wiki"})
	pub(events.Subject("tenure.access", "review_closed", "wiki"), "", "approval", at(140*time.Hour), &eventsv1.ReviewEvent{CampaignId: "rc-1", System: "wiki",
		Status: "closed", Items: 3, Kept: 2, Revoked: 1, RevokesConfirmed: 1, StartedAt: ts(at(100 * time.Hour)), ClosedAt: ts(at(140 * time.Hour))})

	// bob leaves: two accounts, one verified disabled, one still open.
	worker(0, "joiner", "hire", &eventsv1.Worker{WorkerId: "bob", WorkerType: eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE})
	worker(200*time.Hour, "leaver", "termination", &eventsv1.Worker{WorkerId: "bob", Status: eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED})
	pub(events.Subject("tenure.case", "opened", "bob"), "bob", "provisioner", at(200*time.Hour+time.Second), &eventsv1.CaseEvent{CaseId: "case-1", WorkerId: "bob",
		Status: eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN, Accounts: 2, OpenedAt: ts(at(200*time.Hour + time.Second))})
	for _, l := range []string{"l-bob-ehr", "l-bob-wiki"} {
		pub(events.Subject("tenure.provision.pg-"+strings.TrimPrefix(l, "l-bob-"), "disable"), "bob", "provisioner", at(200*time.Hour+2*time.Second),
			&eventsv1.ProvisionCommand{CommandId: "cmd-" + l, Connector: "pg-" + strings.TrimPrefix(l, "l-bob-"), Op: eventsv1.ProvisionOp_PROVISION_OP_DISABLE, WorkerId: "bob", LinkId: l, CaseId: "case-1"})
	}
	result(200*time.Hour+30*time.Second, "bob", "pg-ehr", eventsv1.ProvisionOp_PROVISION_OP_DISABLE, "l-bob-ehr", "case-1", nil, nil)
	pub(events.Subject("tenure.revocation", "account_disabled", "bob"), "bob", "provisioner", at(200*time.Hour+30*time.Second), &eventsv1.Revocation{RevocationId: "rv-1",
		Kind: eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, WorkerId: "bob", Connector: "pg-ehr", System: "ehr", LinkId: "l-bob-ehr", Username: "ehr_bob",
		CaseId: "case-1", OccurredAt: ts(at(200*time.Hour + 30*time.Second)), Verified: true})

	// cora: a contractor past her end date, with EHR access and no BAA on file.
	worker(0, "joiner", "hire", &eventsv1.Worker{WorkerId: "cora", WorkerType: eventsv1.WorkerType_WORKER_TYPE_CONTRACTOR, VendorOrg: "Acme Staffing",
		SponsorId: "mgr1", StartDate: "2026-03-01", EndDate: "2026-04-01"})
	grant(time.Hour, &eventsv1.AccessDecision{WorkerId: "cora", GrantId: "g-cora", System: "ehr", Package: "ehr-clinician", Role: "RN", HoldsEphi: true})

	// vic: vendor staff of an organisation with a BAA on file, published as the approval
	// service does (tenure.access.baa_recorded.<vendor org>).
	worker(0, "joiner", "hire", &eventsv1.Worker{WorkerId: "vic", WorkerType: eventsv1.WorkerType_WORKER_TYPE_VENDOR, VendorOrg: "Imaging Co.",
		SponsorId: "own1", EndDate: "2099-01-01"})
	grant(2*time.Hour, &eventsv1.AccessDecision{WorkerId: "vic", GrantId: "g-vic", System: "pacs", Package: "pacs-viewer", HoldsEphi: true})
	pub(events.Subject("tenure.access", "baa_recorded", "Imaging Co."), "", "admin", at(time.Hour), &eventsv1.RequestEvent{Status: "baa_recorded",
		Reason: "vendor Imaging Co.: BAA BAA-7", RequestedBy: "admin", At: ts(at(time.Hour))})

	waitFor(t, "the scenario to be recorded", 20*time.Second, func() bool { return eventCount(t, pool) == int64(n) })
	return s
}

// rowsOf returns an answer's rows as maps, failing on the wrong question or shape.
func rowsOf(t *testing.T, s *Service, q string, req *ledgerv1.EvidenceRequest) []map[string]string {
	t.Helper()
	if req == nil {
		req = &ledgerv1.EvidenceRequest{}
	}
	req.Question = q
	res, err := s.Evidence(context.Background(), req)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	var out []map[string]string
	for _, r := range res.Rows {
		if len(r.Cells) != len(res.Columns) {
			t.Fatalf("%s: row with %d cells, %d columns", q, len(r.Cells), len(res.Columns))
		}
		m := map[string]string{}
		for i, c := range res.Columns {
			m[c] = r.Cells[i]
		}
		out = append(out, m)
	}
	return out
}

func find(rows []map[string]string, key, val string) map[string]string {
	for _, r := range rows {
		if r[key] == val {
			return r
		}
	}
	return nil
}

func expect(t *testing.T, what string, row map[string]string, want map[string]string) {
	t.Helper()
	if row == nil {
		t.Errorf("%s: no row", what)
		return
	}
	for k, v := range want {
		if !strings.Contains(row[k], v) || (v == "" && row[k] != "") {
			t.Errorf("%s: %s = %q, want %q (row %v)", what, k, row[k], v, row)
		}
	}
}

func TestEvidenceAnswers(t *testing.T) {
	s := evidenceScenario(t)
	ft := func(d time.Duration) string { return t0.Add(d).UTC().Format(time.RFC3339) }

	access := rowsOf(t, s, "access", &ledgerv1.EvidenceRequest{WorkerIds: []string{"ada"}})
	expect(t, "access ehr", find(access, "grant_id", "g-ehr"), map[string]string{"worker": "ada", "system": "ehr", "why": "request req-1",
		"requested_by": "mgr1", "justification": "ward nurse", "approvals": "manager:mgr1@" + ft(80*time.Second) + "; owner:own1@" + ft(85*time.Second),
		"granted_at": ft(2 * time.Minute), "provisioned_verified_at": ft(3 * time.Minute), "holds_ephi": "yes", "status": "active"})
	expect(t, "access wiki", find(access, "grant_id", "g-wiki"), map[string]string{"why": "role RN", "approvals": "policy:policy (automatic)",
		"status": "revoked", "revoke_reason": "access review rc-1", "removal_verified_at": ft(131 * time.Hour)})
	if find(access, "worker", "cora") != nil {
		t.Error("access for ada lists cora")
	}
	if got := rowsOf(t, s, "access", &ledgerv1.EvidenceRequest{Sample: 1}); len(got) == 0 {
		t.Error("a sample of one worker has no rows")
	} else {
		for _, r := range got {
			if r["worker"] != got[0]["worker"] {
				t.Errorf("sample of 1 has workers %s and %s", got[0]["worker"], r["worker"])
			}
		}
	}
	// The period: grants revoked before it began are not held in it.
	inLater := rowsOf(t, s, "access", &ledgerv1.EvidenceRequest{From: timestamppb.New(t0.Add(30 * time.Hour))})
	if find(inLater, "grant_id", "g-pacs") != nil || find(inLater, "grant_id", "g-ehr") == nil {
		t.Errorf("access from t0+30h: %v", inLater)
	}

	elevated := rowsOf(t, s, "elevated", nil)
	if len(elevated) != 1 {
		t.Fatalf("elevated: %v", elevated)
	}
	expect(t, "elevated", elevated[0], map[string]string{"grant_id": "g-admin", "approvals": "security:sec1"})

	temp := rowsOf(t, s, "temporary", nil)
	expect(t, "temporary pacs", find(temp, "grant_id", "g-pacs"), map[string]string{"expires_at": ft(24 * time.Hour), "revoked_at": ft(24 * time.Hour),
		"removal_verified_at": ft(24*time.Hour + time.Minute), "status": "revoked"})

	bg := rowsOf(t, s, "breakglass", nil)
	expect(t, "break-glass reviewed", find(bg, "grant_id", "g-bg"), map[string]string{"reason_code": "patient-emergency", "invoked_by": "ada",
		"removed_at": ft(52 * time.Hour), "review_status": "closed", "reviewed_by": "sec1", "reviewed_at": ft(60 * time.Hour), "review_comment": "appropriate"})
	expect(t, "break-glass overdue", find(bg, "grant_id", "g-bg2"), map[string]string{"review_status": "OVERDUE", "reviewed_by": ""})

	reviews := rowsOf(t, s, "reviews", nil)
	expect(t, "review", find(reviews, "campaign_id", "rc-1"), map[string]string{"system": "wiki", "started_by": "sec1", "status": "closed", "kept": "2",
		"revoked": "1", "revokes_confirmed": "1", "escalated_items": "g-other", "remediation_complete": "yes", "revoke_decisions": "ada:wiki-basic revoked by approval, verified " + ft(131*time.Hour),
		"reviewer_decisions": "cy:wiki-basic keep by it-owner at " + ft(110*time.Hour) + ": still on the ward; ada:wiki-basic revoke by sec1 at " + ft(129*time.Hour) + " (escalated): moved away"})

	term := rowsOf(t, s, "terminations", &ledgerv1.EvidenceRequest{From: timestamppb.New(t0.Add(199 * time.Hour)), To: timestamppb.New(t0.Add(201 * time.Hour))})
	expect(t, "bob ehr", find(term, "connector", "pg-ehr"), map[string]string{"worker": "bob", "terminated_at": ft(200 * time.Hour), "case_id": "case-1",
		"system": "ehr", "account": "pg-ehr_bob", "disabled_at": ft(200*time.Hour + 30*time.Second), "verified": "yes", "time_to_disable": "30s", "status": "OPEN"})
	expect(t, "bob wiki", find(term, "connector", "pg-wiki"), map[string]string{"verified": "no", "status": "OPEN: not verified disabled"})
	if got := rowsOf(t, s, "terminations", &ledgerv1.EvidenceRequest{To: timestamppb.New(t0.Add(199 * time.Hour))}); len(got) != 0 {
		t.Errorf("terminations before bob left: %v", got)
	}

	tp := rowsOf(t, s, "thirdparty", nil)
	if len(tp) != 2 {
		t.Fatalf("third party: %v", tp)
	}
	expect(t, "vic", find(tp, "worker", "vic"), map[string]string{"worker_type": "vendor", "vendor_org": "Imaging Co.", "baa_on_file": "BAA-7",
		"ephi_access": "yes", "flags": "", "systems_held": "pacs"})
	expect(t, "cora", find(tp, "worker", "cora"), map[string]string{"worker": "cora", "worker_type": "contractor", "vendor_org": "Acme Staffing", "sponsor": "mgr1",
		"end_date": "2026-04-01", "ephi_access": "yes", "baa_on_file": "no", "flags": "END DATE PASSED, NOT TERMINATED; EPHI ACCESS WITHOUT RECORDED BAA"})

	if _, err := s.Evidence(context.Background(), &ledgerv1.EvidenceRequest{Question: "nope"}); err == nil {
		t.Error("unknown question answered")
	}
}

func TestEvidenceBundle(t *testing.T) {
	s := evidenceScenario(t)
	ctx := context.Background()
	res, err := s.ExportEvidence(ctx, &ledgerv1.ExportEvidenceRequest{To: timestamppb.New(t0.Add(1000 * time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir() + "/bundle"
	if err := WriteBundle(dir, res.Files); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyBundle(dir, s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Manifest.Checkpoint.Seq != res.Checkpoint.Seq || rep.Files != 2*len(Questions)+3 || rep.Proved == 0 || rep.Proved != rep.Entries {
		t.Errorf("report = %+v", rep)
	}
	for _, f := range []string{"access.csv", "access.json", "terminations.csv", "report.html", "manifest.json", "manifest.sig", "public_key.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	html, _ := os.ReadFile(filepath.Join(dir, "report.html"))
	if !strings.Contains(string(html), "patient-emergency") || !strings.Contains(string(html), "Third-party workforce") {
		t.Error("report.html lacks the answers")
	}
	csv, _ := os.ReadFile(filepath.Join(dir, "elevated.csv"))
	if !strings.HasPrefix(string(csv), "worker,system,package") || !strings.Contains(string(csv), "g-admin") {
		t.Errorf("elevated.csv = %s", csv)
	}

	_, other, _ := ed25519.GenerateKey(nil)
	if _, err := VerifyBundle(dir, other.Public().(ed25519.PublicKey)); err == nil || !strings.Contains(err.Error(), "not by the trusted key") {
		t.Errorf("verify with another trusted key: %v", err)
	}
	tamper := []struct {
		name, want string
		do         func(dir string)
	}{
		{"edited CSV", "access.csv", func(dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, "access.csv"))
			os.WriteFile(filepath.Join(dir, "access.csv"), []byte(strings.Replace(string(b), "mgr1", "mgr9", 1)), 0o644)
		}},
		{"edited manifest", "manifest.sig", func(dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
			os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(strings.Replace(string(b), `"format"`, ` "format"`, 1)), 0o644)
		}},
		{"added file", "not in the manifest", func(dir string) { os.WriteFile(filepath.Join(dir, "extra.csv"), []byte("x"), 0o644) }},
		{"removed file", "report.html", func(dir string) { os.Remove(filepath.Join(dir, "report.html")) }},
		{"swapped key", "manifest.sig", func(dir string) {
			os.WriteFile(filepath.Join(dir, "public_key.pem"), []byte(PublicKeyPEM(other.Public().(ed25519.PublicKey))), 0o644)
		}},
	}
	for _, c := range tamper {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir() + "/b"
			if err := WriteBundle(d, res.Files); err != nil {
				t.Fatal(err)
			}
			c.do(d)
			if _, err := VerifyBundle(d, nil); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("VerifyBundle after %s: %v, want an error naming %q", c.name, err, c.want)
			}
		})
	}
}

func TestArchive(t *testing.T) {
	pool := newPool(t)
	s := newService(t, Config{}, pool, nil)
	ctx := context.Background()
	appendAll(t, s, sampleEntries(t, "old", 20), 5)
	cutoff := time.Now()
	time.Sleep(5 * time.Millisecond)
	if _, err := s.Archive(ctx, &ledgerv1.ArchiveRequest{Before: timestamppb.New(cutoff)}); err == nil {
		t.Fatal("archive without a checkpoint past the cutoff")
	}
	appendAll(t, s, sampleEntries(t, "new", 10), 5)
	if _, err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := s.Archive(ctx, &ledgerv1.ArchiveRequest{Before: timestamppb.New(cutoff)})
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstSeq != 1 || res.LastSeq != 30 {
		t.Fatalf("archive %d..%d", res.FirstSeq, res.LastSeq)
	}
	dir := t.TempDir() + "/a"
	if err := WriteBundle(dir, res.Files); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyBundle(dir, s.PublicKey())
	if err != nil || rep.Entries != 30 {
		t.Fatalf("VerifyBundle = %+v, %v", rep, err)
	}
	// Default cutoff: six years back, nothing that old.
	if _, err := s.Archive(ctx, &ledgerv1.ArchiveRequest{}); err == nil || !strings.Contains(err.Error(), "no entries were recorded before") {
		t.Errorf("default retention archive: %v", err)
	}
	// A forged segment (re-signed manifest is impossible without the key, so the forger
	// edits the entries and keeps the manifest): the file hash catches it; and a segment
	// rehashed with a matching manifest would still miss the signed checkpoint.
	if _, err := verifyForged(t, s, res.Files); err == nil {
		t.Error("forged archive verified")
	}
}

// verifyForged rewrites the archive's entries consistently and re-seals it with the
// service's own key (as if the key had leaked to the forger but not the old checkpoint):
// the chain is consistent, the manifest verifies, but the checkpoint's hash does not.
func verifyForged(t *testing.T, s *Service, files []*ledgerv1.BundleFile) (*BundleReport, error) {
	t.Helper()
	var lines []string
	for _, f := range files {
		if f.Name == "entries.jsonl" {
			lines = strings.Split(strings.TrimSpace(string(f.Content)), "\n")
		}
	}
	forged := strings.Join(lines, "\n") + "\n"
	forged = strings.Replace(forged, `"actor":"tester"`, `"actor":"mallory"`, 1)
	var m Manifest
	for _, f := range files {
		if f.Name == "manifest.json" {
			if err := jsonUnmarshal(f.Content, &m); err != nil {
				t.Fatal(err)
			}
		}
	}
	m.Files = nil
	out, err := s.sealBundle(m, []*ledgerv1.BundleFile{{Name: "entries.jsonl", Content: []byte(forged)}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir() + "/f"
	if err := WriteBundle(dir, out); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyBundle(dir, nil)
	if err != nil {
		t.Logf("forged archive: %v", err)
	}
	return rep, err
}
