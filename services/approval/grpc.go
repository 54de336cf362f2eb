package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

func (s *Service) queryGrants(ctx context.Context, where string, args ...any) ([]*approvalv1.Grant, error) {
	rows, err := s.pool.Query(ctx, `SELECT grant_id, worker_id, system, package, connector, role, approvals, granted_at, revoked_at, coalesce(revoke_reason, ''),
		  kind, request_id, expires_at, policy_hash, entitlements, revoke_confirmed_at, reapprove_by, sod_exception
		FROM grants WHERE `+where+` ORDER BY granted_at LIMIT 10000`, args...)
	if err != nil {
		return nil, err
	}
	pol := s.policy.Load()
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (*approvalv1.Grant, error) {
		var g approvalv1.Grant
		var approvals []byte
		var granted time.Time
		var revoked, expires, confirmed, reapprove *time.Time
		if err := r.Scan(&g.GrantId, &g.WorkerId, &g.System, &g.Package, &g.Connector, &g.Role, &approvals, &granted, &revoked, &g.RevokeReason,
			&g.Kind, &g.RequestId, &expires, &g.PolicyHash, &g.Entitlements, &confirmed, &reapprove, &g.SodException); err != nil {
			return nil, err
		}
		g.GrantedAt, g.RevokedAt, g.ExpiresAt, g.RevokeConfirmedAt, g.ReapproveBy = timestamppb.New(granted), ts(revoked), ts(expires), ts(confirmed), ts(reapprove)
		if sys, ok := pol.System(g.System); ok {
			g.PackageSystemOwner = sys.Owner
		}
		var as []approvalJSON
		if err := json.Unmarshal(approvals, &as); err != nil {
			return nil, fmt.Errorf("grant %s approvals: %w", g.GrantId, err)
		}
		for _, a := range as {
			g.Approvals = append(g.Approvals, &eventsv1.Approval{Stage: a.Stage, Approver: a.Approver, DecidedAt: timestamppb.New(a.DecidedAt), Comment: a.Comment, Automatic: a.Automatic})
		}
		return &g, nil
	})
}

// ListGrants lists grants by worker or system.
func (s *Service) ListGrants(ctx context.Context, req *approvalv1.ListGrantsRequest) (*approvalv1.ListGrantsResponse, error) {
	if req.GetWorkerId() == "" && req.GetSystem() == "" {
		return nil, status.Error(codes.InvalidArgument, "give worker_id or system")
	}
	grants, err := s.queryGrants(ctx, "($1 = '' OR worker_id = $1) AND ($2 = '' OR system = $2) AND ($3 OR revoked_at IS NULL)",
		req.GetWorkerId(), req.GetSystem(), req.GetIncludeRevoked())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list grants: %v", err)
	}
	return &approvalv1.ListGrantsResponse{Grants: grants}, nil
}

// ExplainAccess answers an auditor's question: why does this worker have access to this
// system, and does the target agree? Each active grant comes with its role, package,
// request and approval stages; the accounts on the system's connector come as the
// provisioner last read them back, compared with what the grants explain. Refused requests
// (BAA, SoD, end date), a passed end date and SoD exceptions are named. An unknown worker
// is NotFound, not "no access".
func (s *Service) ExplainAccess(ctx context.Context, req *approvalv1.ExplainAccessRequest) (*approvalv1.ExplainAccessResponse, error) {
	if req.GetWorkerId() == "" || req.GetSystem() == "" {
		return nil, status.Error(codes.InvalidArgument, "worker_id and system are required")
	}
	pol := s.policy.Load()
	sys, ok := pol.System(req.GetSystem())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no system %q in policy %s", req.GetSystem(), pol.Hash[:12])
	}
	w, err := loadWorker(ctx, s.pool, req.GetWorkerId())
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "worker %s is unknown to the approval service (no HR event yet)", req.GetWorkerId())
	}
	if err != nil {
		return nil, grpcErr(err)
	}
	out := &approvalv1.ExplainAccessResponse{WorkerId: req.GetWorkerId(), System: req.GetSystem(), JobCode: w.jobCode}
	for _, pk := range pol.PackagesFor(w.jobCode) {
		if pk.System == req.GetSystem() {
			out.RolePackages = append(out.RolePackages, pk.Name)
		}
	}
	grants, err := s.queryGrants(ctx, "worker_id = $1 AND system = $2 AND revoked_at IS NULL", req.GetWorkerId(), req.GetSystem())
	if err != nil {
		return nil, grpcErr(err)
	}
	var lines []string
	explained := map[string][]string{} // connector -> entitlements the grants explain
	for _, g := range grants {
		j := &approvalv1.Justification{Grant: g}
		if g.RequestId != "" {
			if r, err := loadRequest(ctx, s.pool, g.RequestId, false); err == nil {
				j.Request = r.proto()
			}
		}
		var by []string
		for _, a := range g.Approvals {
			by = append(by, fmt.Sprintf("%s by %s at %s", a.Stage, a.Approver, a.DecidedAt.AsTime().Format(time.RFC3339)))
		}
		line := fmt.Sprintf("%s (%s grant", g.Package, g.Kind)
		if g.Role != "" {
			line += ", role " + g.Role
		}
		line += fmt.Sprintf(", granted %s", g.GrantedAt.AsTime().Format(time.RFC3339))
		if g.ExpiresAt != nil {
			line += ", expires " + g.ExpiresAt.AsTime().Format(time.RFC3339)
		}
		line += "; approved: " + strings.Join(by, ", ") + ")"
		lines = append(lines, line)
		out.Justifications = append(out.Justifications, j)
		explained[g.Connector] = append(explained[g.Connector], g.Entitlements...)
		if _, ok := explained[g.Connector]; !ok {
			explained[g.Connector] = []string{}
		}
		if g.SodException != "" {
			out.Notes = append(out.Notes, fmt.Sprintf("%s is held under an SoD exception: %s", g.Package, g.SodException))
		}
	}
	if w.end != nil && !w.end.After(time.Now()) {
		out.Notes = append(out.Notes, fmt.Sprintf("end date passed: %s's access ended %s", w.id, w.end.Format(time.DateOnly)))
	}
	rows, err := s.pool.Query(ctx, `SELECT package, reason FROM requests WHERE worker_id = $1 AND system = $2 AND status = 'refused' ORDER BY created_at`,
		req.GetWorkerId(), req.GetSystem())
	if err != nil {
		return nil, grpcErr(err)
	}
	refused, err := collectPairs(rows)
	if err != nil {
		return nil, grpcErr(err)
	}
	for _, r := range refused {
		out.Notes = append(out.Notes, fmt.Sprintf("refused %s: %s", r[0], r[1]))
	}
	// The target, as last read back, on the system's connector (and any other a grant names).
	conns := []string{sys.Connector}
	for c := range explained {
		if !slices.Contains(conns, c) {
			conns = append(conns, c)
		}
	}
	rows, err = s.pool.Query(ctx, `SELECT connector, username, state, entitlements, observed_at, outcome, error FROM observed_accounts
		WHERE worker_id = $1 AND connector = ANY($2) ORDER BY connector, username`, req.GetWorkerId(), conns)
	if err != nil {
		return nil, grpcErr(err)
	}
	accts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*approvalv1.TargetAccount, error) {
		var a approvalv1.TargetAccount
		var state string
		var at time.Time
		if err := r.Scan(&a.Connector, &a.Username, &state, &a.Entitlements, &at, &a.Outcome, &a.Error); err != nil {
			return nil, err
		}
		a.State, a.ObservedAt = eventsv1.AccountState(eventsv1.AccountState_value[state]), timestamppb.New(at)
		return &a, nil
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	out.TargetAccounts = accts
	out.TargetMatches = true
	enabled := map[string]bool{}
	for _, a := range accts {
		want, granted := explained[a.Connector]
		on := a.State == eventsv1.AccountState_ACCOUNT_STATE_ENABLED
		enabled[a.Connector] = enabled[a.Connector] || on
		desc := fmt.Sprintf("target %s account %s is %s with [%s] (read back %s, %s)", a.Connector, a.Username, strings.ToLower(strings.TrimPrefix(a.State.String(), "ACCOUNT_STATE_")),
			strings.Join(a.Entitlements, ", "), a.ObservedAt.AsTime().Format(time.RFC3339), a.Outcome)
		var extra []string
		for _, e := range a.Entitlements {
			if !slices.Contains(want, e) {
				extra = append(extra, e)
			}
		}
		switch {
		case on && !granted:
			out.TargetMatches = false
			out.Notes = append(out.Notes, desc+": no active grant explains a login")
		case on:
			var missing []string
			for _, e := range want {
				if !slices.Contains(a.Entitlements, e) && !slices.Contains(missing, e) {
					missing = append(missing, e)
				}
			}
			if len(extra) > 0 {
				out.TargetMatches = false
				out.Notes = append(out.Notes, desc+": holds "+strings.Join(extra, ", ")+", which no grant explains")
			}
			if len(missing) > 0 {
				out.TargetMatches = false
				out.Notes = append(out.Notes, desc+": lacks "+strings.Join(missing, ", ")+", which the grants give")
			}
		case granted:
			out.TargetMatches = false
			msg := desc + ": the grants give a login the target does not"
			if a.Error != "" {
				msg += " (" + a.Error + ")"
			}
			out.Notes = append(out.Notes, msg)
		}
		if !on && len(extra) > 0 {
			// Disabled, yet a member of what nobody grants: enabled again, it would have it.
			out.TargetMatches = false
			out.Notes = append(out.Notes, desc+": holds "+strings.Join(extra, ", ")+", which no grant explains")
		}
	}
	for c := range explained {
		if !slices.ContainsFunc(accts, func(a *approvalv1.TargetAccount) bool { return a.Connector == c }) {
			out.TargetMatches = false
			out.Notes = append(out.Notes, fmt.Sprintf("target %s: no read-back of the account yet", c))
		}
	}
	// Access is what the target lets the worker do, justified by a grant.
	for c := range explained {
		out.HasAccess = out.HasAccess || enabled[c]
	}
	switch {
	case out.HasAccess && out.TargetMatches:
		out.Summary = req.GetWorkerId() + " has access to " + req.GetSystem() + ": " + strings.Join(lines, "; ")
	case out.HasAccess:
		out.Summary = req.GetWorkerId() + " has access to " + req.GetSystem() + ", but the target differs from the grants: " + strings.Join(lines, "; ")
	case len(grants) > 0:
		out.Summary = "granted but not in effect: " + req.GetWorkerId() + " holds " + strings.Join(lines, "; ") + ", and the target shows no enabled account"
	case slices.ContainsFunc(accts, func(a *approvalv1.TargetAccount) bool { return a.State == eventsv1.AccountState_ACCOUNT_STATE_ENABLED }):
		out.Summary = "no grant, but the target has an enabled account: " + req.GetWorkerId() + " holds no active grant on " + req.GetSystem()
	default:
		out.Summary = "no access: " + req.GetWorkerId() + " holds no active grant on " + req.GetSystem()
	}
	if len(out.Notes) > 0 {
		out.Summary += "\n  " + strings.Join(out.Notes, "\n  ")
	}
	return out, nil
}

func collectPairs(rows pgx.Rows) ([][2]string, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var x [2]string
		return x, r.Scan(&x[0], &x[1])
	})
}

// RecordBAA records a vendor organisation's business associate agreement.
func (s *Service) RecordBAA(ctx context.Context, req *approvalv1.RecordBAARequest) (*approvalv1.RecordBAAResponse, error) {
	_, who, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetVendorOrg() == "" || req.GetReference() == "" {
		return nil, status.Error(codes.InvalidArgument, "vendor_org and reference are required")
	}
	var expires *time.Time
	if req.GetExpiresAt() != nil {
		e := req.GetExpiresAt().AsTime()
		expires = &e
	}
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO vendor_baas (vendor_org, reference, expires_at, recorded_by) VALUES ($1, $2, $3, $4)
			ON CONFLICT (vendor_org) DO UPDATE SET reference = $2, expires_at = $3, recorded_by = $4, recorded_at = now()`,
			req.GetVendorOrg(), req.GetReference(), expires, who); err != nil {
			return err
		}
		out := []events.Event{{ID: events.NewID(), Subject: events.Subject("tenure.access", "baa_recorded", req.GetVendorOrg()), Source: source, Actor: who,
			Payload: &eventsv1.RequestEvent{Status: "baa_recorded", Reason: "vendor " + req.GetVendorOrg() + ": BAA " + req.GetReference(), RequestedBy: who, At: timestamppb.Now()}}}
		// The vendor's staff whose requests the missing BAA refused are evaluated again.
		rows, err := tx.Query(ctx, `SELECT w.worker_id FROM workers w WHERE w.vendor_org = $1
			AND EXISTS (SELECT 1 FROM requests r WHERE r.worker_id = w.worker_id AND r.status = 'refused' AND r.refused_rule = $2)
			ORDER BY 1 FOR UPDATE`, req.GetVendorOrg(), ruleBAA)
		if err != nil {
			return err
		}
		workers, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, w := range workers {
			evs, err := s.reevaluateRefused(ctx, tx, w, "BAA "+req.GetReference()+" recorded for "+req.GetVendorOrg(), ruleBAA)
			if err != nil {
				return err
			}
			out = append(out, evs...)
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err != nil {
		return nil, grpcErr(err)
	}
	s.relay.Poke()
	return &approvalv1.RecordBAAResponse{}, nil
}

// GetPolicy returns the policy in force.
func (s *Service) GetPolicy(ctx context.Context, _ *approvalv1.GetPolicyRequest) (*approvalv1.GetPolicyResponse, error) {
	p := s.policy.Load()
	out := &approvalv1.GetPolicyResponse{PolicyHash: p.Hash, Path: p.Path, Yaml: string(p.raw)}
	var at time.Time
	if err := s.pool.QueryRow(ctx, "SELECT loaded_at FROM policy_versions WHERE policy_hash = $1 ORDER BY seq DESC LIMIT 1", p.Hash).Scan(&at); err == nil {
		out.LoadedAt = timestamppb.New(at)
	}
	return out, nil
}
