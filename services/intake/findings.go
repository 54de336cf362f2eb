package intake

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// Kinds of HR findings.
const (
	// An event for a worker who has left that changed nothing (a re-sent hire, a job change,
	// a rehire that starts before the termination).
	findingEventForLeaver = "event_for_leaver"
	// An event for a worker tenure has never seen (a termination, a change before any hire).
	findingUnknownWorker = "unknown_worker"
	// The HRIS API answered 404 for the employee a thin webhook named.
	findingHRISNotFound = "hris_not_found"
	// The HRIS API refused tenure's credential (401/403).
	findingHRISCredential = "hris_credential"
)

var findingKinds = []string{findingEventForLeaver, findingUnknownWorker, findingHRISNotFound, findingHRISCredential}

// finding is an operator finding about to be recorded.
type finding struct {
	kind, source, workerID, eventID, hrType, detail string
}

// with fills in the event that raised it.
func (f *finding) with(p pending) finding {
	out := *f
	out.source, out.workerID, out.eventID, out.hrType = p.source, p.c.worker.WorkerId, p.eventID, p.c.hrType
	return out
}

// queueFinding records f: a new open finding, or one more count of the open one of the same
// kind, source and worker.
func queueFinding(b *pgx.Batch, f finding, now time.Time) {
	b.Queue(`INSERT INTO findings (kind, source, worker_id, event_id, hr_event_type, detail, first_seen, last_seen)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
		ON CONFLICT (kind, source, worker_id) WHERE status = 'open' DO UPDATE SET
			count = findings.count + 1, last_seen = EXCLUDED.last_seen, event_id = EXCLUDED.event_id,
			hr_event_type = EXCLUDED.hr_event_type, detail = EXCLUDED.detail`,
		f.kind, f.source, f.workerID, f.eventID, f.hrType, f.detail, now)
}

// raiseFinding records a finding outside an event's transaction (an HRIS API answer).
func (s *Service) raiseFinding(ctx context.Context, f finding) {
	b := &pgx.Batch{}
	queueFinding(b, f, s.now())
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		s.log.ErrorContext(ctx, "recording a finding failed", "kind", f.kind, "source", f.source, "worker_id", f.workerID, "err", err)
	}
}

const findingColumns = `finding_id, kind, source, worker_id, event_id, hr_event_type, detail, status, count,
	first_seen, last_seen, resolved_at, resolved_by, resolution`

func scanFinding(row pgx.Row) (*intakev1.HRFinding, error) {
	f := &intakev1.HRFinding{}
	var first, last time.Time
	var resolved *time.Time
	if err := row.Scan(&f.FindingId, &f.Kind, &f.Source, &f.WorkerId, &f.EventId, &f.HrEventType, &f.Detail, &f.Status,
		&f.Count, &first, &last, &resolved, &f.ResolvedBy, &f.Resolution); err != nil {
		return nil, err
	}
	f.FirstSeen, f.LastSeen = timestamppb.New(first), timestamppb.New(last)
	if resolved != nil {
		f.ResolvedAt = timestamppb.New(*resolved)
	}
	return f, nil
}

// ListFindings returns HR findings, newest first. Errors for a bad request are InputErrors.
func (s *Service) ListFindings(ctx context.Context, req *intakev1.ListFindingsRequest) (*intakev1.ListFindingsResponse, error) {
	where, args := []string{"TRUE"}, []any{}
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	switch st := req.GetStatus(); st {
	case "", "open", "resolved":
		if st == "" {
			st = "open"
		}
		add("status = $%d", st)
	case "all":
	default:
		return nil, Unprocessable("status", "status %q is not open, resolved or all", clip(st))
	}
	if k := req.GetKind(); k != "" {
		if !isFindingKind(k) {
			return nil, Unprocessable("kind", "kind %q is not one of %s", clip(k), strings.Join(findingKinds, ", "))
		}
		add("kind = $%d", k)
	}
	if w := req.GetWorkerId(); w != "" {
		add("worker_id = $%d", w)
	}
	limit := int(req.GetLimit())
	if limit < 0 {
		return nil, Unprocessable("limit", "limit must not be negative")
	}
	if limit == 0 || limit > 5000 {
		limit = 500
	}
	args = append(args, limit)
	rows, err := s.pool.Query(ctx, "SELECT "+findingColumns+" FROM findings WHERE "+strings.Join(where, " AND ")+
		fmt.Sprintf(" ORDER BY last_seen DESC, finding_id DESC LIMIT $%d", len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("intake: list findings: %w", err)
	}
	defer rows.Close()
	resp := &intakev1.ListFindingsResponse{}
	for rows.Next() {
		f, err := scanFinding(rows)
		if err != nil {
			return nil, fmt.Errorf("intake: list findings: %w", err)
		}
		resp.Findings = append(resp.Findings, f)
	}
	return resp, rows.Err()
}

func isFindingKind(k string) bool {
	for _, x := range findingKinds {
		if x == k {
			return true
		}
	}
	return false
}

var errFindingNotOpen = errors.New("intake: no open finding with that id")

// ResolveFinding closes an open finding.
func (s *Service) ResolveFinding(ctx context.Context, id int64, by, reason string) (*intakev1.HRFinding, error) {
	if strings.TrimSpace(reason) == "" {
		return nil, Unprocessable("reason", "reason is required: say what was done or why nothing needs doing")
	}
	if err := checkText("reason", reason, maxReasonLen); err != nil {
		return nil, err
	}
	f, err := scanFinding(s.pool.QueryRow(ctx, `UPDATE findings SET status = 'resolved', resolved_at = $2, resolved_by = $3, resolution = $4
		WHERE finding_id = $1 AND status = 'open' RETURNING `+findingColumns, id, s.now(), by, reason))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", errFindingNotOpen, id)
	}
	if err != nil {
		return nil, fmt.Errorf("intake: resolve finding: %w", err)
	}
	return f, nil
}

func (w *workforceServer) ListFindings(ctx context.Context, req *intakev1.ListFindingsRequest) (*intakev1.ListFindingsResponse, error) {
	resp, err := w.s.ListFindings(ctx, req)
	return resp, w.grpcError(ctx, "ListFindings", err)
}

func (w *workforceServer) ResolveFinding(ctx context.Context, req *intakev1.ResolveFindingRequest) (*intakev1.ResolveFindingResponse, error) {
	by := "operator"
	if p, ok := authn.FromContext(ctx); ok {
		by = "user:" + p.Name
	}
	f, err := w.s.ResolveFinding(ctx, req.GetFindingId(), by, req.GetReason())
	if errors.Is(err, errFindingNotOpen) {
		return nil, status.Errorf(codes.NotFound, "finding %d is not open (or does not exist)", req.GetFindingId())
	}
	if err != nil {
		return nil, w.grpcError(ctx, "ResolveFinding", err)
	}
	return &intakev1.ResolveFindingResponse{Finding: f}, nil
}
