package approval

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// ListGrants lists grants by worker or system.
func (s *Service) ListGrants(ctx context.Context, req *approvalv1.ListGrantsRequest) (*approvalv1.ListGrantsResponse, error) {
	if req.GetWorkerId() == "" && req.GetSystem() == "" {
		return nil, status.Error(codes.InvalidArgument, "give worker_id or system")
	}
	rows, err := s.pool.Query(ctx, `SELECT grant_id, worker_id, system, package, connector, role, approvals, granted_at, revoked_at, coalesce(revoke_reason, '')
		FROM grants WHERE ($1 = '' OR worker_id = $1) AND ($2 = '' OR system = $2) AND ($3 OR revoked_at IS NULL)
		ORDER BY granted_at LIMIT 10000`, req.GetWorkerId(), req.GetSystem(), req.GetIncludeRevoked())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list grants: %v", err)
	}
	grants, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*approvalv1.Grant, error) {
		var g approvalv1.Grant
		var approvals []byte
		var granted time.Time
		var revoked *time.Time
		if err := r.Scan(&g.GrantId, &g.WorkerId, &g.System, &g.Package, &g.Connector, &g.Role, &approvals, &granted, &revoked, &g.RevokeReason); err != nil {
			return nil, err
		}
		g.GrantedAt = timestamppb.New(granted)
		if revoked != nil {
			g.RevokedAt = timestamppb.New(*revoked)
		}
		var as []struct {
			Stage     string    `json:"stage"`
			Approver  string    `json:"approver"`
			DecidedAt time.Time `json:"decided_at"`
			Comment   string    `json:"comment"`
			Automatic bool      `json:"automatic"`
		}
		json.Unmarshal(approvals, &as)
		for _, a := range as {
			g.Approvals = append(g.Approvals, &eventsv1.Approval{Stage: a.Stage, Approver: a.Approver, DecidedAt: timestamppb.New(a.DecidedAt), Comment: a.Comment, Automatic: a.Automatic})
		}
		return &g, nil
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list grants: %v", err)
	}
	return &approvalv1.ListGrantsResponse{Grants: grants}, nil
}
