package approval

import (
	"context"
	"encoding/json"
	"fmt"
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
// system? Each active grant comes with its role, package, request and approval stages.
func (s *Service) ExplainAccess(ctx context.Context, req *approvalv1.ExplainAccessRequest) (*approvalv1.ExplainAccessResponse, error) {
	if req.GetWorkerId() == "" || req.GetSystem() == "" {
		return nil, status.Error(codes.InvalidArgument, "worker_id and system are required")
	}
	out := &approvalv1.ExplainAccessResponse{WorkerId: req.GetWorkerId(), System: req.GetSystem()}
	pol := s.policy.Load()
	if w, err := loadWorker(ctx, s.pool, req.GetWorkerId()); err == nil {
		out.JobCode = w.jobCode
		for _, pk := range pol.PackagesFor(w.jobCode) {
			if pk.System == req.GetSystem() {
				out.RolePackages = append(out.RolePackages, pk.Name)
			}
		}
	}
	grants, err := s.queryGrants(ctx, "worker_id = $1 AND system = $2 AND revoked_at IS NULL", req.GetWorkerId(), req.GetSystem())
	if err != nil {
		return nil, grpcErr(err)
	}
	var lines []string
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
	}
	out.HasAccess = len(grants) > 0
	if out.HasAccess {
		out.Summary = req.GetWorkerId() + " has access to " + req.GetSystem() + ": " + strings.Join(lines, "; ")
	} else {
		out.Summary = "no access: " + req.GetWorkerId() + " holds no active grant on " + req.GetSystem()
	}
	return out, nil
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
		return pgstore.Enqueue(ctx, tx, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.access", "baa_recorded", req.GetVendorOrg()), Source: source, Actor: who,
			Payload: &eventsv1.RequestEvent{Status: "baa_recorded", Reason: "vendor " + req.GetVendorOrg() + ": BAA " + req.GetReference(), RequestedBy: who, At: timestamppb.Now()}})
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
