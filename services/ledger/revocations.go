package ledger

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// RevocationSubjectPrefix is the subject space of the revocation stream.
const RevocationSubjectPrefix = "tenure.revocation."

// watchPage is how many revocations one watch reads per query.
const watchPage = 500

// KindToken is the subject token of a revocation kind: "account_disabled" for
// REVOCATION_KIND_ACCOUNT_DISABLED. It is the <kind> of tenure.revocation.<kind>.<worker>.
func KindToken(k eventsv1.RevocationKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "REVOCATION_KIND_"))
}

// ParseKind is the inverse of KindToken.
func ParseKind(token string) (eventsv1.RevocationKind, bool) {
	v, ok := eventsv1.RevocationKind_value["REVOCATION_KIND_"+strings.ToUpper(token)]
	if !ok || v == 0 {
		return 0, false
	}
	return eventsv1.RevocationKind(v), true
}

// appendSignal wakes watchers when this process appends entries. Watchers also poll every
// WatchPoll, which covers entries appended by other ledger replicas.
type appendSignal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (a *appendSignal) wait() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch == nil {
		a.ch = make(chan struct{})
	}
	return a.ch
}

func (a *appendSignal) fire() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch != nil {
		close(a.ch)
		a.ch = nil
	}
}

// watchQuery is a validated WatchRevocationsRequest as SQL.
type watchQuery struct {
	where []string
	args  []any
}

func newWatchQuery(req *ledgerv1.WatchRevocationsRequest) (*watchQuery, error) {
	q := &watchQuery{}
	arg := func(v any) string {
		q.args = append(q.args, v)
		return "$" + strconv.Itoa(len(q.args))
	}
	arg(int64(0)) // $1: the cursor, set per page
	q.where = append(q.where, "subject LIKE 'tenure.revocation.%'")
	if w := req.GetWorkerId(); w != "" {
		q.where = append(q.where, fmt.Sprintf("left(worker_id, %d) = %s AND worker_id = %s", indexPrefix, arg(leftRunes(w, indexPrefix)), arg(w)))
	}
	if sys := req.GetSystem(); sys != "" {
		q.where = append(q.where, "system = "+arg(sys))
	}
	if len(req.GetKinds()) > 0 {
		var toks []string
		for _, k := range req.GetKinds() {
			if _, ok := eventsv1.RevocationKind_name[int32(k)]; !ok || k == eventsv1.RevocationKind_REVOCATION_KIND_UNSPECIFIED {
				return nil, status.Errorf(codes.InvalidArgument, "kinds: %d is not a revocation kind", int32(k))
			}
			toks = append(toks, KindToken(k))
		}
		q.where = append(q.where, "split_part(subject, '.', 3) = ANY("+arg(toks)+")")
	}
	if req.GetSince() != nil {
		if err := req.GetSince().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "since: %v", err)
		}
		q.where = append(q.where, "event_time >= "+arg(req.GetSince().AsTime()))
	}
	if req.GetAfterSeq() < 0 {
		return nil, status.Error(codes.InvalidArgument, "after_seq must not be negative")
	}
	if req.GetLiveOnly() && (req.GetAfterSeq() > 0 || req.GetSince() != nil) {
		return nil, status.Error(codes.InvalidArgument, "live_only starts at the end: it cannot be combined with after_seq or since")
	}
	return q, nil
}

func (q *watchQuery) sql() string {
	return "SELECT seq, msg_id, subject, stream_seq, recorded_at, payload FROM entries WHERE seq > $1 AND " +
		strings.Join(q.where, " AND ") + " ORDER BY seq LIMIT " + strconv.Itoa(watchPage)
}

// WatchRevocations sends the revocations that match req, in ledger order, from its cursor
// on, then (after one caught_up message) each new one as the ledger records it, until ctx
// ends or send fails. The ledger's seq is gapless and assigned under the head lock, and a
// batch becomes visible only when it commits, in seq order: a reader that has seen seq N
// never later finds an entry below N, so resuming after the last seq received loses and
// repeats nothing.
func (s *Service) WatchRevocations(ctx context.Context, req *ledgerv1.WatchRevocationsRequest, send func(*ledgerv1.WatchRevocationsResponse) error) error {
	q, err := newWatchQuery(req)
	if err != nil {
		return err
	}
	cursor := req.GetAfterSeq()
	if req.GetLiveOnly() {
		if err := s.pool.QueryRow(ctx, "SELECT seq FROM head").Scan(&cursor); err != nil {
			return s.internal(ctx, "watch revocations: read head", err)
		}
	}
	caughtUp := false
	for {
		// Wait from before the query, so an append that lands during it still wakes us.
		woken := s.appended.wait()
		n, last, err := s.watchPage(ctx, q, cursor, send)
		if err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			if _, ok := status.FromError(err); ok {
				return err
			}
			return s.internal(ctx, "watch revocations", err)
		}
		cursor = last
		if n == watchPage {
			continue
		}
		if !caughtUp {
			caughtUp = true
			if err := send(&ledgerv1.WatchRevocationsResponse{CaughtUp: true, Cursor: cursor}); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-woken:
		case <-time.After(s.cfg.WatchPoll):
		}
	}
}

// watchPage sends one page after cursor and returns how many rows it read and the new cursor.
func (s *Service) watchPage(ctx context.Context, q *watchQuery, cursor int64, send func(*ledgerv1.WatchRevocationsResponse) error) (int, int64, error) {
	args := append([]any{cursor}, q.args[1:]...)
	rows, err := s.pool.Query(ctx, q.sql(), args...)
	if err != nil {
		return 0, cursor, err
	}
	defer rows.Close()
	var page []*ledgerv1.RevocationEvent
	for rows.Next() {
		var (
			ev       ledgerv1.RevocationEvent
			recorded time.Time
			payload  []byte
		)
		if err := rows.Scan(&ev.Seq, &ev.EventId, &ev.Subject, &ev.StreamSeq, &recorded, &payload); err != nil {
			return 0, cursor, err
		}
		ev.RecordedAt = timestamppb.New(recorded)
		rev := &eventsv1.Revocation{}
		if err := proto.Unmarshal(payload, rev); err != nil {
			// Recorded as published; a payload nobody can decode is still shown by its subject.
			s.log.WarnContext(ctx, "watch revocations: undecodable payload", "seq", ev.Seq, "err", err)
		}
		ev.Revocation = rev
		page = append(page, &ev)
	}
	if err := rows.Err(); err != nil {
		return 0, cursor, err
	}
	rows.Close()
	for _, ev := range page {
		if err := send(&ledgerv1.WatchRevocationsResponse{Revocation: ev}); err != nil {
			return 0, cursor, err
		}
		cursor = ev.Seq
	}
	return len(page), cursor, nil
}

func (g *grpcServer) WatchRevocations(req *ledgerv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[ledgerv1.WatchRevocationsResponse]) error {
	return g.s.WatchRevocations(stream.Context(), req, stream.Send)
}
