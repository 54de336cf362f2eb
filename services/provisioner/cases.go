package provisioner

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// ListCases lists leaver cases for operators: the open ones first, by deadline (so the
// overdue come first), then the others, newest first; each with how far its accounts are.
func (s *Service) ListCases(ctx context.Context, req *provisionerv1.ListCasesRequest) (*provisionerv1.ListCasesResponse, error) {
	var where string
	switch req.GetStatus() {
	case "", "open":
		where = "c.status = 'open'"
	case "overdue":
		where = "c.status = 'open' AND c.deadline < now()"
	case "completed":
		where = "c.status <> 'open'"
	case "all":
		where = "TRUE"
	default:
		return nil, status.Errorf(codes.InvalidArgument, "status %q is not open, overdue, completed or all", req.GetStatus())
	}
	limit := int(req.GetLimit())
	if limit < 0 {
		return nil, status.Error(codes.InvalidArgument, "limit must not be negative")
	}
	if limit == 0 || limit > 5000 {
		limit = 500
	}
	rows, err := s.pool.Query(ctx, fmt.Sprintf(`SELECT c.case_id, c.worker_id, c.status, c.opened_at, c.deadline, c.completed_at, c.rescinded_at,
		  count(a.link_id), count(a.link_id) FILTER (WHERE a.status = 'verified'),
		  count(a.link_id) FILTER (WHERE a.status <> 'verified' AND a.last_error <> '')
		FROM cases c LEFT JOIN case_accounts a USING (case_id)
		WHERE %s GROUP BY c.case_id
		ORDER BY c.status <> 'open', CASE WHEN c.status = 'open' THEN c.deadline END, c.opened_at DESC LIMIT $1`, where), limit)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list cases: %v", err)
	}
	cases, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*provisionerv1.CaseSummary, error) {
		var c provisionerv1.CaseSummary
		var st string
		var opened, deadline time.Time
		var completed, rescinded *time.Time
		if err := r.Scan(&c.CaseId, &c.WorkerId, &st, &opened, &deadline, &completed, &rescinded, &c.Accounts, &c.Verified, &c.Failing); err != nil {
			return nil, err
		}
		c.Status = eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN
		if st != "open" {
			c.Status = eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED
			if completed == nil {
				completed = rescinded
			}
		}
		c.OpenedAt, c.Deadline, c.CompletedAt, c.RescindedAt = timestamppb.New(opened), timestamppb.New(deadline), ts(completed), ts(rescinded)
		return &c, nil
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list cases: %v", err)
	}
	return &provisionerv1.ListCasesResponse{Cases: cases}, nil
}
