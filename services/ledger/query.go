package ledger

import (
	"bytes"
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

// Verify walks the whole chain in seq order, in one consistent snapshot, and checks that the
// sequence is gapless from 1, that each entry links to the previous hash (genesis: 32 zero
// bytes), that each hash is SHA-256(prev_hash || canonical(entry)) and that the head row
// names the last entry. It stops at the first problem. An error means the check could not
// run (the database failed), not that the chain is broken.
func (s *Service) Verify(ctx context.Context) (*ledgerv1.VerifyResponse, error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("ledger: verify: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var (
		headSeq  int64
		headHash []byte
	)
	if err := tx.QueryRow(ctx, "SELECT seq, hash FROM head").Scan(&headSeq, &headHash); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return &ledgerv1.VerifyResponse{Problem: "the head row is missing", FirstBrokenSeq: 1}, nil
		}
		return nil, fmt.Errorf("ledger: verify: read head: %w", err)
	}
	res := &ledgerv1.VerifyResponse{HeadHash: headHash}
	broken := func(seq int64, format string, args ...any) (*ledgerv1.VerifyResponse, error) {
		res.Ok = false
		res.FirstBrokenSeq = seq
		res.Problem = fmt.Sprintf(format, args...)
		return res, nil
	}
	prev := genesis
	var last int64
	for {
		rows, err := tx.Query(ctx, entrySelect+" WHERE seq > $1 ORDER BY seq LIMIT $2", last, s.cfg.VerifyPageSize)
		if err != nil {
			return nil, fmt.Errorf("ledger: verify: %w", err)
		}
		n := 0
		for rows.Next() {
			n++
			e, rawHeaders, err := scanEntry(rows)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("ledger: verify: %w", err)
			}
			want := last + 1
			if e.Seq != want {
				rows.Close()
				return broken(want, "entry %d is missing: the entry after %d is %d", want, last, e.Seq)
			}
			if !bytes.Equal(e.PrevHash, prev) {
				rows.Close()
				return broken(e.Seq, "entry %d: prev_hash %s does not match the hash of entry %d (%s)", e.Seq, short(e.PrevHash), last, short(prev))
			}
			if err := json.Unmarshal(rawHeaders, &e.Headers); err != nil {
				rows.Close()
				return broken(e.Seq, "entry %d: headers are not a map of string lists: %v", e.Seq, err)
			}
			if got := chainHash(prev, &e); !bytes.Equal(got, e.Hash) {
				rows.Close()
				return broken(e.Seq, "entry %d: stored hash %s does not match its content (computed %s)", e.Seq, short(e.Hash), short(got))
			}
			prev, last = e.Hash, e.Seq
			res.EntriesChecked++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("ledger: verify: %w", err)
		}
		if n < s.cfg.VerifyPageSize {
			break
		}
	}
	switch {
	case last < headSeq:
		return broken(last+1, "the chain ends at entry %d but the head is at %d: %s missing", last, headSeq, span(last+1, headSeq, "is", "are"))
	case last > headSeq:
		return broken(headSeq+1, "%s beyond the head (seq %d): not appended by the ledger", span(headSeq+1, last, "lies", "lie"), headSeq)
	case !bytes.Equal(headHash, prev):
		return broken(max(headSeq, 1), "the head hash %s does not match the hash of entry %d (%s)", short(headHash), last, short(prev))
	}
	res.Ok = true
	return res, nil
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

func (g *grpcServer) Verify(ctx context.Context, _ *ledgerv1.VerifyRequest) (*ledgerv1.VerifyResponse, error) {
	res, err := g.s.Verify(ctx)
	if err != nil {
		return nil, g.s.internal(ctx, "verify", err)
	}
	return res, nil
}
