package ledger

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// Query limits.
const (
	DefaultQueryLimit = 100
	MaxQueryLimit     = 1000
)

// indexPrefix is how many characters of worker_id and subject are indexed (see the migration).
const indexPrefix = 512

const entrySelect = `SELECT seq, msg_id, subject, type, source, worker_id, system, actor, event_time,
	recorded_at, stream_seq, headers, payload, prev_hash, hash, trace_id FROM entries`

// Query returns entries in ledger (seq) order: those about worker_id, on subjects starting
// with subject_prefix, with event_time in [from, to), after after_seq; at most limit (default
// 100, at most 1000). Page with after_seq = the last seq returned. Errors are gRPC statuses.
func (s *Service) Query(ctx context.Context, req *ledgerv1.QueryRequest) (*ledgerv1.QueryResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit <= 0:
		limit = DefaultQueryLimit
	case limit > MaxQueryLimit:
		limit = MaxQueryLimit
	}
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if w := req.GetWorkerId(); w != "" {
		where = append(where, fmt.Sprintf("left(worker_id, %d) = %s AND worker_id = %s", indexPrefix, arg(leftRunes(w, indexPrefix)), arg(w)))
	}
	if p := req.GetSubjectPrefix(); p != "" {
		where = append(where, fmt.Sprintf("left(subject, %d) LIKE %s AND subject LIKE %s", indexPrefix, arg(likePrefix(leftRunes(p, indexPrefix))), arg(likePrefix(p))))
	}
	var from, to time.Time
	if req.GetFrom() != nil {
		if err := req.GetFrom().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "from: %v", err)
		}
		from = req.GetFrom().AsTime()
		where = append(where, "event_time >= "+arg(from))
	}
	if req.GetTo() != nil {
		if err := req.GetTo().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "to: %v", err)
		}
		to = req.GetTo().AsTime()
		if !from.IsZero() && to.Before(from) {
			return nil, status.Errorf(codes.InvalidArgument, "to (%s) is before from (%s)", to.Format(time.RFC3339Nano), from.Format(time.RFC3339Nano))
		}
		where = append(where, "event_time < "+arg(to))
	}
	if req.GetAfterSeq() < 0 {
		return nil, status.Error(codes.InvalidArgument, "after_seq must not be negative")
	}
	if req.GetAfterSeq() > 0 {
		where = append(where, "seq > "+arg(req.GetAfterSeq()))
	}
	sql := entrySelect
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY seq LIMIT " + arg(limit)
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, s.internal(ctx, "query", err)
	}
	defer rows.Close()
	resp := &ledgerv1.QueryResponse{}
	for rows.Next() {
		e, rawHeaders, err := scanEntry(rows)
		if err != nil {
			return nil, s.internal(ctx, "query", err)
		}
		var hdr map[string][]string
		_ = json.Unmarshal(rawHeaders, &hdr)
		resp.Entries = append(resp.Entries, &ledgerv1.Entry{
			Seq: e.Seq, MsgId: e.MsgID, Subject: e.Subject, Type: e.Type, Source: e.Source,
			WorkerId: e.WorkerID, System: e.System, Actor: e.Actor,
			EventTime: timestamppb.New(e.EventTime), RecordedAt: timestamppb.New(e.RecordedAt),
			Payload: e.Payload, PayloadJson: payloadJSON(hdr, e.Payload),
			PrevHash: e.PrevHash, Hash: e.Hash, TraceId: e.TraceID,
		})
	}
	if err := rows.Err(); err != nil {
		return nil, s.internal(ctx, "query", err)
	}
	return resp, nil
}

// scanEntry reads one row of entrySelect; the headers come back raw (JSON).
func scanEntry(rows pgx.Rows) (entry, []byte, error) {
	var e entry
	var hdr []byte
	err := rows.Scan(&e.Seq, &e.MsgID, &e.Subject, &e.Type, &e.Source, &e.WorkerID, &e.System, &e.Actor,
		&e.EventTime, &e.RecordedAt, &e.StreamSeq, &hdr, &e.Payload, &e.PrevHash, &e.Hash, &e.TraceID)
	e.EventTime = e.EventTime.UTC()
	e.RecordedAt = e.RecordedAt.UTC()
	return e, hdr, err
}

// span names entries a..b with a verb agreeing with their number.
func span(a, b int64, one, many string) string {
	if a == b {
		return fmt.Sprintf("entry %d %s", a, one)
	}
	return fmt.Sprintf("entries %d..%d %s", a, b, many)
}

func short(b []byte) string {
	if len(b) > 8 {
		return hex.EncodeToString(b[:8]) + "…"
	}
	return hex.EncodeToString(b)
}

// likePrefix returns a LIKE pattern matching strings that start with p.
func likePrefix(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(p) + "%"
}

// leftRunes is PostgreSQL's left(s, n): the first n characters.
func leftRunes(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

func (s *Service) internal(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	s.log.ErrorContext(ctx, what+" failed", "err", err)
	return status.Errorf(codes.Internal, "ledger %s failed", what)
}

// grpcServer adapts the Service to ledgerv1.LedgerServiceServer.
type grpcServer struct {
	ledgerv1.UnimplementedLedgerServiceServer
	s *Service
}

func (g *grpcServer) Query(ctx context.Context, req *ledgerv1.QueryRequest) (*ledgerv1.QueryResponse, error) {
	return g.s.Query(ctx, req)
}

func (g *grpcServer) Verify(ctx context.Context, req *ledgerv1.VerifyRequest) (*ledgerv1.VerifyResponse, error) {
	var witnessed []byte
	if req.GetWitnessedCheckpoint() != "" {
		witnessed = []byte(req.GetWitnessedCheckpoint())
	}
	res, err := g.s.VerifyAgainst(ctx, witnessed)
	if errors.Is(err, ErrWitnessUnavailable) {
		return nil, status.Errorf(codes.Unavailable, "ledger: %v", err)
	}
	if err != nil {
		return nil, g.s.internal(ctx, "verify", err)
	}
	return res, nil
}

func (g *grpcServer) ListCheckpoints(ctx context.Context, req *ledgerv1.ListCheckpointsRequest) (*ledgerv1.ListCheckpointsResponse, error) {
	return g.s.ListCheckpoints(ctx, req)
}

func (g *grpcServer) GetPublicKey(ctx context.Context, req *ledgerv1.GetPublicKeyRequest) (*ledgerv1.GetPublicKeyResponse, error) {
	return g.s.GetPublicKey(ctx, req)
}

func (g *grpcServer) Evidence(ctx context.Context, req *ledgerv1.EvidenceRequest) (*ledgerv1.EvidenceResponse, error) {
	return g.s.Evidence(ctx, req)
}

func (g *grpcServer) ExportEvidence(ctx context.Context, req *ledgerv1.ExportEvidenceRequest) (*ledgerv1.ExportEvidenceResponse, error) {
	return g.s.ExportEvidence(ctx, req)
}

func (g *grpcServer) Archive(ctx context.Context, req *ledgerv1.ArchiveRequest) (*ledgerv1.ArchiveResponse, error) {
	return g.s.Archive(ctx, req)
}
