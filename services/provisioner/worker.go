package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

type link struct {
	id, worker, conn, username, accountID string
	desired                               string
	entitlements                          []string
	generation                            int64
	email, given, family                  string
}

func (s *Service) loadLink(ctx context.Context, id string) (link, error) {
	var l link
	err := s.pool.QueryRow(ctx, `SELECT l.link_id, l.worker_id, l.connector, l.username, l.account_id, l.desired_state, l.desired_entitlements, l.generation,
		  coalesce(w.email, ''), coalesce(w.given_name, ''), coalesce(w.family_name, '')
		FROM links l LEFT JOIN workers w USING (worker_id) WHERE l.link_id = $1`, id).
		Scan(&l.id, &l.worker, &l.conn, &l.username, &l.accountID, &l.desired, &l.entitlements, &l.generation, &l.email, &l.given, &l.family)
	return l, err
}

// errSuperseded stops the retries of a command whose link moved on to a newer generation.
var errSuperseded = connector.Permanent(errors.New("superseded by a newer decision"))

// work runs one provisioning command against its target: converge the account to the link's
// desired state, read it back, and record the outcome. The command only names the link and
// the generation it was issued for; a command older than the link's generation is skipped,
// so a late command never undoes a newer decision. The target's runner owns the retries:
// each failed attempt is recorded where operators see it, and a command that fails for good
// (a permanent error, or every attempt used) is dead-lettered and its case account marked
// failed, never retried for ever.
func (s *Service) work(ctx context.Context, t *Target, msg jetstream.Msg) error {
	var cmd eventsv1.ProvisionCommand
	if err := proto.Unmarshal(msg.Data(), &cmd); err != nil {
		return natsx.Permanent(fmt.Errorf("decode %s: %w", msg.Subject(), err))
	}
	meta := events.MetaOf(msg.Headers())
	l, err := s.loadLink(ctx, cmd.GetLinkId())
	if errors.Is(err, pgx.ErrNoRows) {
		return natsx.Permanent(fmt.Errorf("command %s: unknown link %s", cmd.GetCommandId(), cmd.GetLinkId()))
	}
	if err != nil {
		return err
	}
	if cmd.GetGeneration() < l.generation {
		return s.finish(ctx, meta, msg.Subject(), &cmd, l, nil, eventsv1.ProvisionOutcome_PROVISION_OUTCOME_SUPERSEDED, 1, revocations{})
	}
	// Waits for a slot or a retry end with the service; JetStream then redelivers.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.stop, cancel)()
	var acct connector.Account
	var revoked revocations
	attempts := 0
	opErr := t.runner.Do(ctx, msg.Subject(), func(ctx context.Context, n int) error {
		attempts = n
		if n > 1 {
			cur, err := s.loadLink(ctx, l.id)
			if err != nil {
				return err
			}
			if cur.generation > cmd.GetGeneration() {
				return errSuperseded
			}
			l = cur
		}
		a, rev, err := s.apply(ctx, t, l, cmd.GetCaseId() != "")
		if err == nil {
			err = verify(l, a)
		}
		acct, revoked = a, rev
		return err
	}, connector.Hooks{
		Failed: func(n int, err error, retryIn time.Duration) {
			if retryIn == 0 {
				return // the last failure is recorded below, with its outcome
			}
			if ferr := s.fail(ctx, &cmd, l, n, err, false); ferr != nil {
				s.log.WarnContext(ctx, "record failure", "err", ferr)
			}
		},
		Heartbeat:      func() { msg.InProgress() },
		HeartbeatEvery: ackWait / 3,
	})
	switch {
	case opErr == nil:
		return s.finish(ctx, meta, msg.Subject(), &cmd, l, &acct, eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED, attempts, revoked)
	case errors.Is(opErr, errSuperseded):
		return s.finish(ctx, meta, msg.Subject(), &cmd, l, nil, eventsv1.ProvisionOutcome_PROVISION_OUTCOME_SUPERSEDED, attempts, revocations{})
	case errors.Is(opErr, connector.ErrPending):
		// A person does this one; the attestation issues the command that reads it back.
		return s.waiting(ctx, &cmd, l, opErr)
	case s.stop.Err() != nil:
		return opErr
	}
	if err := s.fail(ctx, &cmd, l, attempts, opErr, true); err != nil {
		// Keep the message until the failure is on record.
		return fmt.Errorf("record failure: %w (command failed: %w)", err, opErr)
	}
	return natsx.Permanent(opErr)
}

// revocations says what a disable revoked besides the login, for the revocation stream.
type revocations struct {
	sessions, credentials bool
}

// apply makes the target match the link's desired state and returns the account as read
// back afterwards. leaver says the command belongs to a leaver case: only then does a
// disable revoke the account's credentials, since a leave of absence or a revoked last grant
// must be undone by enabling alone. Every call to the target goes through the target's
// runner (rate limit, Retry-After pause, timeout, span, metrics).
func (s *Service) apply(ctx context.Context, t *Target, l link, leaver bool) (connector.Account, revocations, error) {
	ref := connector.AccountRef{ID: l.accountID, Username: l.username}
	c := t.Conn
	call := t.runner.Call
	get := func() (connector.Account, error) {
		var a connector.Account
		err := call(ctx, "get", func(ctx context.Context) (err error) {
			a, err = c.GetAccount(ctx, ref)
			return err
		})
		return a, err
	}
	switch l.desired {
	case stateAbsent:
		d, ok := c.(connector.Deleter)
		if !ok {
			return connector.Account{}, revocations{}, connector.Permanent(fmt.Errorf("connector %s (%s) cannot delete accounts", t.Name, t.Type))
		}
		if err := call(ctx, connector.CapDelete, func(ctx context.Context) error { return d.DeleteAccount(ctx, ref) }); err != nil && !errors.Is(err, connector.ErrNotFound) {
			return connector.Account{}, revocations{}, fmt.Errorf("delete: %w", err)
		}
		// The read-back that counts: the target no longer knows the account.
		acct, err := get()
		if errors.Is(err, connector.ErrNotFound) {
			return connector.Account{ID: l.accountID, Username: l.username, State: connector.StateAbsent}, revocations{}, nil
		}
		return acct, revocations{}, err
	case stateDisabled:
		var rev revocations
		if r, ok := c.(connector.SessionRevoker); ok {
			err := call(ctx, connector.CapSessions, func(ctx context.Context) error { return r.RevokeSessions(ctx, ref) })
			switch {
			case err == nil || errors.Is(err, connector.ErrNotFound):
				rev.sessions = true
			case errors.Is(err, errors.ErrUnsupported):
				// The target cannot end sessions (a webhook receiver answering 501): the
				// disable still counts, without a session revocation.
			default:
				return connector.Account{}, revocations{}, fmt.Errorf("revoke sessions: %w", err)
			}
		}
		d, ok := c.(connector.Disabler)
		if !ok {
			return connector.Account{}, revocations{}, connector.Permanent(fmt.Errorf("connector %s (%s) cannot disable accounts", t.Name, t.Type))
		}
		if err := call(ctx, connector.CapDisable, func(ctx context.Context) error { return d.DisableAccount(ctx, ref) }); err != nil && !errors.Is(err, connector.ErrNotFound) {
			return connector.Account{}, revocations{}, fmt.Errorf("disable: %w", err)
		}
		// A leaver's passwords, API tokens and keys outlive a disabled login (a script's
		// connection string, a personal access token), and a re-enabled account would bring
		// them back. Revoked after the disable, so nothing signs in meanwhile with a fresh
		// credential; the read-back below checks that the account is still disabled.
		if r, ok := c.(connector.CredentialRevoker); ok && leaver {
			err := call(ctx, connector.CapCredentials, func(ctx context.Context) error { return r.RevokeCredentials(ctx, ref) })
			switch {
			case err == nil || errors.Is(err, connector.ErrNotFound):
				rev.credentials = true
			case errors.Is(err, errors.ErrUnsupported):
				// The target cannot (a webhook receiver answering 501): the disable counts
				// without a credential revocation.
			default:
				return connector.Account{}, revocations{}, fmt.Errorf("revoke credentials: %w", err)
			}
		}
		acct, err := get()
		if errors.Is(err, connector.ErrNotFound) {
			return connector.Account{Username: l.username, State: connector.StateAbsent}, rev, nil
		}
		return acct, rev, err
	default:
		acct, err := get()
		if errors.Is(err, connector.ErrNotFound) {
			cr, ok := c.(connector.Creator)
			if !ok {
				return connector.Account{}, revocations{}, connector.Permanent(fmt.Errorf("connector %s (%s) cannot create accounts", t.Name, t.Type))
			}
			spec := connector.AccountSpec{WorkerID: l.worker, Username: l.username, Email: l.email,
				GivenName: l.given, FamilyName: l.family, DisplayName: l.given + " " + l.family, Entitlements: l.entitlements}
			err = call(ctx, connector.CapCreate, func(ctx context.Context) (err error) {
				acct, err = cr.CreateAccount(ctx, spec)
				return err
			})
			if err != nil {
				return connector.Account{}, revocations{}, fmt.Errorf("create: %w", err)
			}
			ref.ID = acct.ID
		} else if err != nil {
			return connector.Account{}, revocations{}, fmt.Errorf("read: %w", err)
		}
		if acct.State == connector.StateDisabled {
			e, ok := c.(connector.Enabler)
			if !ok {
				return connector.Account{}, revocations{}, connector.Permanent(fmt.Errorf("connector %s (%s) cannot enable accounts", t.Name, t.Type))
			}
			if err := call(ctx, connector.CapEnable, func(ctx context.Context) error { return e.EnableAccount(ctx, ref) }); err != nil {
				return connector.Account{}, revocations{}, fmt.Errorf("enable: %w", err)
			}
		}
		if g, ok := c.(connector.EntitlementGranter); ok {
			for _, e := range l.entitlements {
				if !slices.Contains(acct.Entitlements, e) {
					if err := call(ctx, "grant", func(ctx context.Context) error { return g.GrantEntitlement(ctx, ref, e) }); err != nil {
						return connector.Account{}, revocations{}, fmt.Errorf("grant %s: %w", e, err)
					}
				}
			}
			for _, e := range acct.Entitlements {
				if !slices.Contains(l.entitlements, e) {
					if err := call(ctx, "revoke", func(ctx context.Context) error { return g.RevokeEntitlement(ctx, ref, e) }); err != nil {
						return connector.Account{}, revocations{}, fmt.Errorf("revoke %s: %w", e, err)
					}
				}
			}
		}
		acct, err = get()
		return acct, revocations{}, err
	}
}

// verify compares what the target showed with what tenure wants. A target that answered
// "ok" but did not change is caught here and retried.
func verify(l link, a connector.Account) error {
	switch l.desired {
	case stateAbsent:
		if a.State != connector.StateAbsent {
			return connector.Retryable(fmt.Errorf("read-back: account %s is still there (%s), want deleted", l.username, a.State))
		}
	case stateDisabled:
		if a.State != connector.StateDisabled && a.State != connector.StateAbsent {
			return connector.Retryable(fmt.Errorf("read-back: account %s is %s, want disabled", l.username, a.State))
		}
	default:
		if a.State != connector.StateEnabled {
			return connector.Retryable(fmt.Errorf("read-back: account %s is %s, want enabled", l.username, a.State))
		}
		for _, e := range l.entitlements {
			if !slices.Contains(a.Entitlements, e) {
				return connector.Retryable(fmt.Errorf("read-back: account %s lacks entitlement %s", l.username, e))
			}
		}
	}
	return nil
}

func accountState(s connector.AccountState) eventsv1.AccountState {
	switch s {
	case connector.StateEnabled:
		return eventsv1.AccountState_ACCOUNT_STATE_ENABLED
	case connector.StateDisabled:
		return eventsv1.AccountState_ACCOUNT_STATE_DISABLED
	case connector.StateAbsent:
		return eventsv1.AccountState_ACCOUNT_STATE_ABSENT
	}
	return eventsv1.AccountState_ACCOUNT_STATE_UNSPECIFIED
}

func outcomeToken(o eventsv1.ProvisionOutcome) string {
	switch o {
	case eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED:
		return "verified"
	case eventsv1.ProvisionOutcome_PROVISION_OUTCOME_SUPERSEDED:
		return "superseded"
	case eventsv1.ProvisionOutcome_PROVISION_OUTCOME_DEAD_LETTERED:
		return "dead_lettered"
	}
	return "failed"
}

func result(cmd *eventsv1.ProvisionCommand, l link, outcome eventsv1.ProvisionOutcome, attempt int, acct *connector.Account, errText string) events.Event {
	r := &eventsv1.ProvisionResult{CommandId: cmd.GetCommandId(), Connector: cmd.GetConnector(), Op: cmd.GetOp(), WorkerId: l.worker, LinkId: l.id,
		Username: l.username, Outcome: outcome, Error: errText, Attempt: int32(attempt), CaseId: cmd.GetCaseId(), Generation: cmd.GetGeneration(),
		CompletedAt: timestamppb.Now()}
	if acct != nil {
		r.ObservedState = accountState(acct.State)
		r.Entitlements = acct.Entitlements
	}
	return events.Event{ID: events.NewID(), Subject: events.Subject("tenure.result."+cmd.GetConnector(), outcomeToken(outcome)), Source: source,
		WorkerID: l.worker, Actor: "provisioner", Payload: r}
}

// fail records a failed attempt where operators see it: the link's and the case account's
// attempts and last error, and a result event. dead says the command is given up (it goes to
// the dead-letter stream): the case account is then marked failed until an operator
// re-drives it.
func (s *Service) fail(ctx context.Context, cmd *eventsv1.ProvisionCommand, l link, attempt int, cause error, dead bool) error {
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE links SET attempts = attempts + 1, last_error = $2 WHERE link_id = $1", l.id, cause.Error()); err != nil {
			return err
		}
		if cmd.GetCaseId() != "" {
			if _, err := tx.Exec(ctx, `UPDATE case_accounts SET attempts = attempts + 1, last_error = $3,
				  status = CASE WHEN $4 THEN 'failed' ELSE 'pending' END
				WHERE case_id = $1 AND link_id = $2 AND status <> 'verified'`,
				cmd.GetCaseId(), l.id, cause.Error(), dead); err != nil {
				return err
			}
		}
		outcome := eventsv1.ProvisionOutcome_PROVISION_OUTCOME_FAILED
		if dead {
			outcome = eventsv1.ProvisionOutcome_PROVISION_OUTCOME_DEAD_LETTERED
		}
		return pgstore.Enqueue(ctx, tx, result(cmd, l, outcome, attempt, nil, cause.Error()))
	})
	if err == nil {
		s.relay.Poke()
	}
	return err
}

// waiting records that a person has the command's work (a manual task); the case account
// shows it until the operator's attestation verifies the account.
func (s *Service) waiting(ctx context.Context, cmd *eventsv1.ProvisionCommand, l link, cause error) error {
	return pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE links SET last_error = $2 WHERE link_id = $1", l.id, cause.Error()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE case_accounts a SET status = 'waiting', last_error = $2
			FROM cases c WHERE a.case_id = c.case_id AND c.status = 'open' AND a.link_id = $1 AND a.status <> 'verified'`, l.id, cause.Error())
		return err
	})
}

func grantIDs(ctx context.Context, tx pgx.Tx, linkID string, r *eventsv1.ProvisionResult) error {
	rows, err := tx.Query(ctx, "SELECT grant_id, active FROM link_grants WHERE link_id = $1 ORDER BY grant_id", linkID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var active bool
		if err := rows.Scan(&id, &active); err != nil {
			return err
		}
		if active {
			r.GrantIds = append(r.GrantIds, id)
		} else {
			r.RevokedGrantIds = append(r.RevokedGrantIds, id)
		}
	}
	return rows.Err()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// watchOverdue raises tenure.alert.deprovision_overdue once for each case past its deadline
// and tenure.alert.task_overdue once for each manual task past its own.
func (s *Service) watchOverdue(ctx context.Context) error {
	t := time.NewTicker(s.cfg.OverdueInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.alertOverdue(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("overdue check", "err", err)
		}
		if err := s.alertOverdueTasks(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("overdue task check", "err", err)
		}
	}
}

func (s *Service) alertOverdue(ctx context.Context) error {
	return pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE cases SET overdue_alerted_at = now()
			WHERE status = 'open' AND deadline < now() AND overdue_alerted_at IS NULL
			RETURNING case_id, worker_id, hr_event_id, opened_at, deadline`)
		if err != nil {
			return err
		}
		var out []events.Event
		for rows.Next() {
			var id, worker, hr string
			var opened, deadline time.Time
			if err := rows.Scan(&id, &worker, &hr, &opened, &deadline); err != nil {
				return err
			}
			out = append(out, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.alert", "deprovision_overdue", worker), Source: source, WorkerID: worker, Actor: "provisioner",
				Payload: &eventsv1.CaseEvent{CaseId: id, WorkerId: worker, Status: eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN, OpenedAt: timestamppb.New(opened), Deadline: timestamppb.New(deadline), HrEventId: hr}})
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(out) > 0 {
			defer s.relay.Poke()
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
}
