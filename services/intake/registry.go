package intake

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// Page sizes of ListWorkers.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func recordResponse(r *record) *intakev1.GetWorkerResponse {
	return &intakev1.GetWorkerResponse{
		Worker:        r.worker,
		EffectiveTime: timestamppb.New(r.effectiveTime),
		UpdatedAt:     timestamppb.New(r.updatedAt),
		LastEventId:   r.lastEventID,
	}
}

// ListWorkers returns registry records matching the request's filters, by worker id.
// Errors for a bad request are InputErrors.
func (s *Service) ListWorkers(ctx context.Context, req *intakev1.ListWorkersRequest) (*intakev1.ListWorkersResponse, error) {
	where := []string{"TRUE"}
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if st := req.GetStatus(); st != eventsv1.WorkerStatus_WORKER_STATUS_UNSPECIFIED {
		if _, ok := eventsv1.WorkerStatus_name[int32(st)]; !ok {
			return nil, Unprocessable("status", "unknown status %d", st)
		}
		add("status = $%d", statusToken(st))
	}
	if wt := req.GetWorkerType(); wt != eventsv1.WorkerType_WORKER_TYPE_UNSPECIFIED {
		tok := workerTypeToken(wt)
		if tok == "unspecified" {
			return nil, Unprocessable("worker_type", "unknown worker type %d", wt)
		}
		add("worker_type = $%d", tok)
	}
	if v := req.GetDepartment(); v != "" {
		add("department = $%d", v)
	}
	if v := req.GetManagerId(); v != "" {
		add("manager_id = $%d", v)
	}
	if v := req.GetEndingBefore(); v != "" {
		if _, err := time.Parse(time.DateOnly, v); err != nil {
			return nil, Unprocessable("ending_before", "ending_before %q is not a date YYYY-MM-DD", clip(v))
		}
		add("end_date <> '' AND end_date < $%d", v)
	}
	if tok := req.GetPageToken(); tok != "" {
		after, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			return nil, Unprocessable("page_token", "page_token is not one this service issued")
		}
		add("worker_id > $%d", string(after))
	}
	size := int(req.GetPageSize())
	if size < 0 {
		return nil, Unprocessable("page_size", "page_size must not be negative")
	}
	if size == 0 {
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	args = append(args, size+1)
	rows, err := s.pool.Query(ctx, "SELECT "+workerColumns+" FROM workers WHERE "+strings.Join(where, " AND ")+
		fmt.Sprintf(" ORDER BY worker_id LIMIT $%d", len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("intake: list workers: %w", err)
	}
	defer rows.Close()
	resp := &intakev1.ListWorkersResponse{}
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("intake: list workers: %w", err)
		}
		resp.Workers = append(resp.Workers, recordResponse(r))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("intake: list workers: %w", err)
	}
	if len(resp.Workers) > size {
		resp.Workers = resp.Workers[:size]
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(resp.Workers[size-1].Worker.WorkerId))
	}
	return resp, nil
}

// GetHistory returns a worker's HR events: applied and stale ones from the history, and held
// ones (scheduled, cancelled, failed) from the schedule, by effective time.
func (s *Service) GetHistory(ctx context.Context, workerID string) (*intakev1.GetHistoryResponse, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT event_id, source, hr_event_type, kind, reason, record::text, effective_time, received_at,
			CASE WHEN applied THEN 'applied' ELSE 'stale' END, seq, effect_reason
		FROM worker_history WHERE worker_id = $1
		UNION ALL
		SELECT event_id, source, hr_event_type, '', COALESCE(event->>'reason', ''), event->>'worker', effective_time, received_at, state, 0, error
		FROM scheduled_events WHERE worker_id = $1 AND state <> 'fired'
		ORDER BY 7, 8, 10`, workerID)
	if err != nil {
		return nil, fmt.Errorf("intake: read history: %w", err)
	}
	defer rows.Close()
	resp := &intakev1.GetHistoryResponse{}
	for rows.Next() {
		var (
			e          intakev1.HistoryEntry
			rec, state string
			eff, recv  time.Time
			seq        int64
			raw        *string
		)
		if err := rows.Scan(&e.EventId, &e.Source, &e.HrEventType, &e.Kind, &e.Reason, &raw, &eff, &recv, &state, &seq, &e.EffectReason); err != nil {
			return nil, fmt.Errorf("intake: read history: %w", err)
		}
		if raw != nil {
			rec = *raw
		}
		e.EffectiveTime, e.ReceivedTime = timestamppb.New(eff), timestamppb.New(recv)
		switch state {
		case "applied":
			e.State = intakev1.HistoryEntryState_HISTORY_ENTRY_STATE_APPLIED
			e.Worker = &eventsv1.Worker{}
			_ = protojson.Unmarshal([]byte(rec), e.Worker)
		case "stale":
			e.State = intakev1.HistoryEntryState_HISTORY_ENTRY_STATE_STALE
			e.Worker = &eventsv1.Worker{}
			_ = protojson.Unmarshal([]byte(rec), e.Worker)
		default:
			if et, ok := eventTypes[e.HrEventType]; ok {
				e.Kind = et.token
			}
			e.State = intakev1.HistoryEntryState_HISTORY_ENTRY_STATE_SCHEDULED
			if state == "cancelled" || state == "failed" {
				e.State = intakev1.HistoryEntryState_HISTORY_ENTRY_STATE_CANCELLED
			}
			var hw HRWorker
			if DecodeStrictJSON([]byte(rec), &hw) == nil {
				if c, err := validate(HREvent{Type: e.HrEventType, Worker: hw}); err == nil {
					e.Worker = c.worker
				}
			}
		}
		resp.Entries = append(resp.Entries, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("intake: read history: %w", err)
	}
	return resp, nil
}

func (w *workforceServer) ListWorkers(ctx context.Context, req *intakev1.ListWorkersRequest) (*intakev1.ListWorkersResponse, error) {
	resp, err := w.s.ListWorkers(ctx, req)
	return resp, w.grpcError(ctx, "ListWorkers", err)
}

func (w *workforceServer) GetHistory(ctx context.Context, req *intakev1.GetHistoryRequest) (*intakev1.GetHistoryResponse, error) {
	if req.GetWorkerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "worker_id is required")
	}
	resp, err := w.s.GetHistory(ctx, req.GetWorkerId())
	if err == nil && len(resp.Entries) == 0 {
		return nil, status.Errorf(codes.NotFound, "worker %q has no HR events", req.GetWorkerId())
	}
	return resp, w.grpcError(ctx, "GetHistory", err)
}

// maxReconcileRoster caps a roster sent over gRPC (the server's message limit applies too).
const maxReconcileRoster = 64 << 20

func (w *workforceServer) Reconcile(ctx context.Context, req *intakev1.ReconcileRequest) (*intakev1.ReconcileResponse, error) {
	if len(req.GetRoster()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "roster is empty")
	}
	if len(req.GetRoster()) > maxReconcileRoster {
		return nil, status.Errorf(codes.InvalidArgument, "roster is larger than %d bytes", maxReconcileRoster)
	}
	// A roster with a source speaks for that source's workers only; without one it is an
	// operator's roster of the whole workforce, recorded under source "snapshot".
	src, all := req.GetSource(), false
	if src == "" {
		src, all = "snapshot", true
	}
	if err := checkSourceName(src); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	// Only an explicit as_of overrides the roster's own (zero: the roster's, else now).
	var asOf time.Time
	if req.GetAsOf() != nil {
		if err := req.GetAsOf().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "as_of: %v", err)
		}
		asOf = req.GetAsOf().AsTime()
	}
	actor := "operator"
	if p, ok := authn.FromContext(ctx); ok {
		actor = "user:" + p.Name
	}
	// The snapshot id derives from the roster and the as_of it is reconciled at.
	resp, err := w.s.reconcile(ctx, snapshotRequest{source: src, body: req.GetRoster(),
		format: req.GetFormat(), asOf: asOf, dryRun: req.GetDryRun(), actor: actor, allSources: all})
	if errors.Is(err, errSnapshotDuplicate) {
		return nil, status.Error(codes.AlreadyExists, "this roster was reconciled before at the same as_of")
	}
	return resp, w.grpcError(ctx, "Reconcile", err)
}

func (w *workforceServer) grpcError(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	var ie *InputError
	if errors.As(err, &ie) {
		return status.Error(codes.InvalidArgument, ie.Error())
	}
	w.s.log.ErrorContext(ctx, method+" failed", "err", err)
	return status.Error(codes.Unavailable, "the worker registry is unavailable")
}
