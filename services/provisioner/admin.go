package provisioner

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// probeUsername names an account no target has: reading it is the cheapest call that proves
// the target answers (not found is healthy).
const probeUsername = "tenure-health-probe-0"

// probeTimeout bounds one health probe.
const probeTimeout = 5 * time.Second

// probe reads a non-existent account from the target and records the outcome. Probes do not
// go through the runner's retries (a probe reports, it does not insist), but they do respect
// its rate limit and call timeout.
func (s *Service) probe(ctx context.Context, t *Target) *provisionerv1.ConnectorHealth {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	began := time.Now()
	err := t.runner.Call(ctx, "probe", func(ctx context.Context) error {
		_, err := t.Conn.GetAccount(ctx, connector.AccountRef{Username: probeUsername})
		return err
	})
	took := time.Since(began)
	if errors.Is(err, connector.ErrNotFound) {
		err = nil
	}
	st := t.state
	st.mu.Lock()
	defer st.mu.Unlock()
	st.health.Healthy = err == nil
	st.health.CheckedAt = timestamppb.New(began)
	st.health.Latency = durationpb.New(took)
	if err != nil {
		st.health.LastError = err.Error()
		st.health.LastErrorAt = timestamppb.New(began)
	}
	return &provisionerv1.ConnectorHealth{Healthy: st.health.Healthy, CheckedAt: st.health.CheckedAt, Latency: st.health.Latency,
		LastError: st.health.LastError, LastErrorAt: st.health.LastErrorAt}
}

// ListConnectors returns every target with its type, system, capabilities, policy and a
// fresh health probe (the probes run in parallel).
func (s *Service) ListConnectors(ctx context.Context, _ *provisionerv1.ListConnectorsRequest) (*provisionerv1.ListConnectorsResponse, error) {
	last := map[string]time.Time{}
	rows, err := s.pool.Query(ctx, "SELECT connector, max(started_at) FROM reconcile_runs WHERE finished_at IS NOT NULL AND error = '' GROUP BY connector")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list reconcile runs: %v", err)
	}
	for rows.Next() {
		var c string
		var at time.Time
		if err := rows.Scan(&c, &at); err != nil {
			rows.Close()
			return nil, status.Errorf(codes.Internal, "list reconcile runs: %v", err)
		}
		last[c] = at
	}
	rows.Close()
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out []*provisionerv1.ConnectorInfo
	)
	for _, t := range s.targets {
		p := t.Policy
		info := &provisionerv1.ConnectorInfo{Name: t.Name, Type: t.Type, System: t.System, Capabilities: connector.Capabilities(t.Conn),
			Policy: &provisionerv1.ConnectorPolicy{Rate: p.Rate, Burst: int32(p.Burst), Concurrency: int32(p.Concurrency), MaxAttempts: int32(p.MaxAttempts),
				Timeout: durationpb.New(p.Timeout), DeleteAfter: durationpb.New(p.DeleteAfter), DisableOrphans: p.DisableOrphans, SharedPatterns: p.Patterns()}}
		if _, ok := t.Conn.(connector.Lister); ok {
			info.Policy.ReconcileInterval = durationpb.New(p.Interval())
			if next, err := s.nextReconcile(ctx, t, s.started); err == nil && !next.IsZero() {
				info.NextReconcileAt = timestamppb.New(next)
			}
		} else {
			info.Policy.ReconcileInterval = durationpb.New(0)
		}
		if at, ok := last[t.Name]; ok {
			info.LastReconciledAt = timestamppb.New(at)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := s.probe(ctx, t)
			mu.Lock()
			defer mu.Unlock()
			info.Health = h
			out = append(out, info)
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return &provisionerv1.ListConnectorsResponse{Connectors: out}, nil
}

// ListFindings lists reconciliation findings, newest first.
func (s *Service) ListFindings(ctx context.Context, req *provisionerv1.ListFindingsRequest) (*provisionerv1.ListFindingsResponse, error) {
	var cond string
	switch req.GetStatus() {
	case "", "open":
		cond = "status = 'open'"
	case "resolved":
		cond = "status = 'resolved'"
	case "all":
		cond = "true"
	default:
		return nil, status.Errorf(codes.InvalidArgument, "status %q: use open, resolved or all", req.GetStatus())
	}
	switch req.GetKind() {
	case "", FindingOrphan, FindingShared, FindingDrift:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "kind %q: use orphan, shared or drift", req.GetKind())
	}
	if c := req.GetConnector(); c != "" {
		if _, ok := s.targets[c]; !ok {
			return nil, status.Errorf(codes.InvalidArgument, "connector %q is not a target of this provisioner", c)
		}
	}
	limit := int(req.GetLimit())
	if limit <= 0 || limit > maxListed {
		limit = maxListed
	}
	rows, err := s.pool.Query(ctx, `SELECT `+findingColumns+` FROM findings WHERE `+cond+`
		AND ($1 = '' OR connector = $1) AND ($2 = '' OR kind = $2) ORDER BY last_seen DESC, connector, username, kind LIMIT $3`,
		req.GetConnector(), req.GetKind(), limit)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list findings: %v", err)
	}
	fs, err := pgx.CollectRows(rows, s.scanFinding)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list findings: %v", err)
	}
	return &provisionerv1.ListFindingsResponse{Findings: fs}, nil
}

// RetryTask re-drives failed provisioning work: one account link, or every account of a
// leaver case that is not verified yet.
func (s *Service) RetryTask(ctx context.Context, req *provisionerv1.RetryTaskRequest) (*provisionerv1.RetryTaskResponse, error) {
	p, err := operator(ctx)
	if err != nil {
		return nil, err
	}
	if (req.GetLinkId() == "") == (req.GetCaseId() == "") {
		return nil, status.Error(codes.InvalidArgument, "give exactly one of link_id and case_id (tenurectl case WORKER shows them)")
	}
	res := &provisionerv1.RetryTaskResponse{}
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		links := []string{req.GetLinkId()}
		if req.GetCaseId() != "" {
			var st string
			err := tx.QueryRow(ctx, "SELECT status FROM cases WHERE case_id = $1 FOR UPDATE", req.GetCaseId()).Scan(&st)
			if errors.Is(err, pgx.ErrNoRows) {
				return status.Errorf(codes.NotFound, "no leaver case %q", req.GetCaseId())
			}
			if err != nil {
				return err
			}
			if st != "open" {
				return status.Errorf(codes.FailedPrecondition, "leaver case %s is %s: nothing to retry", req.GetCaseId(), st)
			}
			rows, err := tx.Query(ctx, "SELECT link_id FROM case_accounts WHERE case_id = $1 AND status <> 'verified' ORDER BY link_id", req.GetCaseId())
			if err != nil {
				return err
			}
			if links, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				return err
			}
		}
		for _, l := range links {
			id, _, err := s.retryLink(ctx, tx, l, req.GetCaseId(), p.Name)
			if err != nil {
				return err
			}
			res.CommandIds = append(res.CommandIds, id)
			if _, err := tx.Exec(ctx, "UPDATE dead_letters SET status = 'retried', retried_by = $2, retried_at = now() WHERE link_id = $1 AND status = 'open'", l, p.Name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, grpcErr("retry task", err)
	}
	s.relay.Poke()
	return res, nil
}

// queueStats reads one work queue: its consumer's counters and the age of the oldest command
// not yet acknowledged.
func (s *Service) queueStats(ctx context.Context, t *Target, q *provisionerv1.Queue) error {
	c, err := s.js.Consumer(ctx, natsx.EventsStream, workDurable(t.Name))
	if err != nil {
		return err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	q.Pending, q.InFlight, q.Redelivered = info.NumPending, uint64(info.NumAckPending), uint64(info.NumRedelivered)
	q.OldestAge = durationpb.New(0)
	if info.NumPending == 0 && info.NumAckPending == 0 {
		return nil
	}
	q.OldestAge = s.queueAge(ctx, t, info.AckFloor.Stream+1)
	return nil
}

// queueAge is the age of the oldest unacknowledged command: exact from the stream (the first
// message after the ack floor on the queue's subjects) where the NATS user may read raw
// messages. The least-privilege user in deploy/nats may not (that would bypass the consumer
// fences), and its read is not refused but left unanswered until it times out; so after one
// failed read the provisioner stops asking and answers from the commands it holds itself
// (natsx.Consumer.OldestHeld): the queue's oldest when one provisioner consumes it (commands
// are held from delivery to acknowledgement, retries included), the oldest of its own share
// when several do. Unset when neither knows.
func (s *Service) queueAge(ctx context.Context, t *Target, from uint64) *durationpb.Duration {
	if !s.rawReadDenied.Load() {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		age, err := s.oldestAge(rctx, t, from)
		cancel()
		switch {
		case err == nil:
			return durationpb.New(age)
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return durationpb.New(0) // acknowledged since the consumer's counters were read
		case ctx.Err() != nil:
			return nil
		case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrPermissionViolation):
			s.log.DebugContext(ctx, "queue oldest age unavailable", "target", t.Name, "err", err)
			return nil
		}
		if !s.rawReadDenied.Swap(true) {
			s.log.InfoContext(ctx, "queue ages come from the commands this provisioner holds: reading the stream failed (a NATS user without raw message reads?)", "err", err)
		}
	}
	if t.work == nil {
		return nil
	}
	if oldest, n := t.work.OldestHeld(); n > 0 {
		return durationpb.New(time.Since(oldest).Round(time.Millisecond))
	}
	return nil
}

func (s *Service) oldestAge(ctx context.Context, t *Target, from uint64) (time.Duration, error) {
	st, err := s.js.Stream(ctx, natsx.EventsStream)
	if err != nil {
		return 0, err
	}
	m, err := st.GetMsg(ctx, from, jetstream.WithGetMsgSubject("tenure.provision."+t.Name+".>"))
	if err != nil {
		return 0, err
	}
	return time.Since(m.Time).Round(time.Millisecond), nil
}
