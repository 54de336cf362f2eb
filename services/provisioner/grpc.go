package provisioner

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func ts(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

func stateOf(s string) eventsv1.AccountState {
	switch s {
	case "enabled":
		return eventsv1.AccountState_ACCOUNT_STATE_ENABLED
	case "disabled":
		return eventsv1.AccountState_ACCOUNT_STATE_DISABLED
	case "absent":
		return eventsv1.AccountState_ACCOUNT_STATE_ABSENT
	}
	return eventsv1.AccountState_ACCOUNT_STATE_UNSPECIFIED
}

// GetLeaverCase returns a case by id, or the newest case of a worker, with per-account status.
func (s *Service) GetLeaverCase(ctx context.Context, req *provisionerv1.GetLeaverCaseRequest) (*provisionerv1.GetLeaverCaseResponse, error) {
	if req.GetCaseId() == "" && req.GetWorkerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "give worker_id or case_id")
	}
	var c provisionerv1.LeaverCase
	var st string
	var opened, deadline time.Time
	var completed, rescinded *time.Time
	err := s.pool.QueryRow(ctx, `SELECT case_id, worker_id, hr_event_id, status, opened_at, deadline, completed_at, rescinded_at FROM cases
		WHERE ($1 = '' OR case_id = $1) AND ($2 = '' OR worker_id = $2) ORDER BY opened_at DESC LIMIT 1`, req.GetCaseId(), req.GetWorkerId()).
		Scan(&c.CaseId, &c.WorkerId, &c.HrEventId, &st, &opened, &deadline, &completed, &rescinded)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "no leaver case for worker %q case %q", req.GetWorkerId(), req.GetCaseId())
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "get case: %v", err)
	}
	c.Status = eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN
	if st == "completed" || st == "rescinded" {
		c.Status = eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED
	}
	if st == "rescinded" && completed == nil {
		completed = rescinded
	}
	c.OpenedAt, c.Deadline, c.CompletedAt, c.RescindedAt = timestamppb.New(opened), timestamppb.New(deadline), ts(completed), ts(rescinded)
	drows, err := s.pool.Query(ctx, `SELECT d.deletion_id, d.link_id, d.connector, l.username, d.status, d.due_at, d.completed_at, d.reason
		FROM deletions d JOIN links l USING (link_id) WHERE d.case_id = $1 ORDER BY d.connector, l.username, d.scheduled_at`, c.CaseId)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "get case deletions: %v", err)
	}
	c.Deletions, err = pgx.CollectRows(drows, func(r pgx.CollectableRow) (*provisionerv1.Deletion, error) {
		var d provisionerv1.Deletion
		var due time.Time
		var done *time.Time
		err := r.Scan(&d.DeletionId, &d.LinkId, &d.Connector, &d.Username, &d.Status, &due, &done, &d.Reason)
		d.DueAt, d.CompletedAt = timestamppb.New(due), ts(done)
		return &d, err
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "get case deletions: %v", err)
	}
	// A verified account's last error is history: the read-back since then is the truth.
	rows, err := s.pool.Query(ctx, `SELECT a.link_id, l.connector, l.username, a.status, a.attempts,
		  CASE WHEN a.status = 'verified' THEN '' ELSE a.last_error END, a.verified_at, a.observed_state
		FROM case_accounts a JOIN links l USING (link_id) WHERE a.case_id = $1 ORDER BY l.connector, l.username`, c.CaseId)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "get case accounts: %v", err)
	}
	c.Accounts, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*provisionerv1.CaseAccount, error) {
		var a provisionerv1.CaseAccount
		var verified *time.Time
		var observed string
		err := r.Scan(&a.LinkId, &a.Connector, &a.Username, &a.Status, &a.Attempts, &a.LastError, &verified, &observed)
		a.VerifiedAt, a.ObservedState = ts(verified), stateOf(observed)
		return &a, err
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "get case accounts: %v", err)
	}
	return &provisionerv1.GetLeaverCaseResponse{LeaverCase: &c}, nil
}

// ListQueues reports each connector's work queue from its JetStream consumer and the
// dead-letter stream.
func (s *Service) ListQueues(ctx context.Context, _ *provisionerv1.ListQueuesRequest) (*provisionerv1.ListQueuesResponse, error) {
	// Dead letters an operator has not re-driven yet (copied from the dead-letter stream).
	dead := map[string]uint64{}
	rows, err := s.pool.Query(ctx, "SELECT connector, count(*) FROM dead_letters WHERE status = 'open' GROUP BY connector")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "count dead letters: %v", err)
	}
	for rows.Next() {
		var conn string
		var n int64
		if err := rows.Scan(&conn, &n); err != nil {
			rows.Close()
			return nil, status.Errorf(codes.Internal, "count dead letters: %v", err)
		}
		dead[conn] = uint64(n)
	}
	rows.Close()
	// Accounts whose last attempt failed and that have not verified since.
	failed := map[string]uint64{}
	rows, err = s.pool.Query(ctx, "SELECT connector, count(*) FROM links WHERE last_error <> '' AND attempts > 0 GROUP BY connector")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "count failed accounts: %v", err)
	}
	for rows.Next() {
		var conn string
		var n int64
		if err := rows.Scan(&conn, &n); err != nil {
			rows.Close()
			return nil, status.Errorf(codes.Internal, "count failed accounts: %v", err)
		}
		failed[conn] = uint64(n)
	}
	rows.Close()
	var out []*provisionerv1.Queue
	for _, t := range s.targets {
		q := &provisionerv1.Queue{Connector: t.Name, ConnectorType: t.Type, DeadLetters: dead[t.Name], Failed: failed[t.Name]}
		if err := s.queueStats(ctx, t, q); err != nil {
			// One unreadable queue must not blank the operator's view of the others.
			s.log.WarnContext(ctx, "list queues: read consumer", "connector", t.Name, "err", err)
			q.Error = err.Error()
		}
		out = append(out, q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Connector < out[j].Connector })
	return &provisionerv1.ListQueuesResponse{Queues: out}, nil
}

// ListAccounts returns a worker's account links with desired and observed state.
func (s *Service) ListAccounts(ctx context.Context, req *provisionerv1.ListAccountsRequest) (*provisionerv1.ListAccountsResponse, error) {
	if req.GetWorkerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "worker_id is required")
	}
	rows, err := s.pool.Query(ctx, `SELECT `+accountColumns+` FROM links WHERE worker_id = $1 ORDER BY connector, username`, req.GetWorkerId())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list accounts: %v", err)
	}
	accts, err := pgx.CollectRows(rows, scanAccount)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list accounts: %v", err)
	}
	return &provisionerv1.ListAccountsResponse{Accounts: accts}, nil
}

const accountColumns = `link_id, worker_id, connector, username, desired_state, observed_state, generation, observed_generation,
	observed_entitlements, verified_at, desired_entitlements, last_error`

func scanAccount(r pgx.CollectableRow) (*provisionerv1.Account, error) {
	var a provisionerv1.Account
	var desired, observed string
	var verified *time.Time
	err := r.Scan(&a.LinkId, &a.WorkerId, &a.Connector, &a.Username, &desired, &observed, &a.Generation, &a.ObservedGeneration, &a.Entitlements, &verified,
		&a.DesiredEntitlements, &a.LastError)
	a.DesiredState, a.ObservedState, a.VerifiedAt = stateOf(desired), stateOf(observed), ts(verified)
	return &a, err
}

// LinkAccount links an account found in a target to a worker, for an operator: the account
// is read from the target first (it must exist there; a manual target's is taken on the
// operator's word), the worker must be known, and an account linked to another worker is
// refused. The link, with who and why, goes to the ledger.
func (s *Service) LinkAccount(ctx context.Context, req *provisionerv1.LinkAccountRequest) (*provisionerv1.LinkAccountResponse, error) {
	p, err := operator(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case req.GetConnector() == "":
		return nil, status.Error(codes.InvalidArgument, "connector is required")
	case req.GetWorkerId() == "":
		return nil, status.Error(codes.InvalidArgument, "worker_id is required")
	case req.GetUsername() == "":
		return nil, status.Error(codes.InvalidArgument, "username is required (tenurectl findings lists the accounts reconciliation found)")
	case strings.TrimSpace(req.GetReason()) == "":
		return nil, status.Error(codes.InvalidArgument, "reason is required: why the account is the worker's (a ticket, what was checked); it goes to the ledger")
	}
	t, ok := s.targets[req.GetConnector()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "connector %q is not a target of this provisioner (tenurectl connectors lists them)", req.GetConnector())
	}
	var known bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM workers WHERE worker_id = $1)", req.GetWorkerId()).Scan(&known); err != nil {
		return nil, status.Errorf(codes.Internal, "link account: %v", err)
	}
	if !known {
		return nil, status.Errorf(codes.NotFound, "worker %q is not known to tenure (tenurectl worker get checks the HR registry)", req.GetWorkerId())
	}
	var acct connector.Account
	if attested(t) {
		// A manual target's accounts are only what people attest: tenure cannot read the
		// legacy system, so the operator's word (and reason) is the evidence.
		acct.Username = req.GetUsername()
	} else {
		acct, err = t.getAccount(ctx, connector.AccountRef{Username: req.GetUsername()})
	}
	switch {
	case errors.Is(err, connector.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "%s has no account %q", req.GetConnector(), req.GetUsername())
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "read account %q from %s: %v", req.GetUsername(), req.GetConnector(), err)
	}
	username := acct.Username
	if username == "" {
		username = req.GetUsername()
	}
	id, caseID, err := s.linkAccount(ctx, req.GetWorkerId(), req.GetConnector(), username, acct.ID, p.Name, req.GetReason())
	if errors.Is(err, errLinkedElsewhere) {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "link account: %v", err)
	}
	if err := s.resolveOrphanFinding(ctx, req.GetConnector(), username, id); err != nil {
		return nil, status.Errorf(codes.Internal, "account linked (link %s), but its orphan finding is still open: %v", id, err)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+accountColumns+` FROM links WHERE link_id = $1`, id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "link account: %v", err)
	}
	a, err := pgx.CollectExactlyOneRow(rows, scanAccount)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "link account: %v", err)
	}
	return &provisionerv1.LinkAccountResponse{Account: a, CaseId: caseID}, nil
}
