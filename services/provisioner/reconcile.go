package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// Finding kinds.
const (
	FindingOrphan = "orphan"
	FindingShared = "shared"
	FindingDrift  = "drift"
)

// Reconciliation triggers.
const (
	TriggerManual   = "manual"
	TriggerSchedule = "schedule"
)

// ErrReconcileRunning is returned when a reconciliation of the target is already running.
var ErrReconcileRunning = errors.New("a reconciliation of this connector is already running")

// maxListPages stops a connector whose pagination never ends.
const maxListPages = 100_000

// listAll lists every account of the target, page by page, through the target's runner
// (rate limit, timeout, span, metrics; retryable errors are retried under its policy).
func (s *Service) listAll(ctx context.Context, t *Target) ([]connector.Account, error) {
	l, ok := t.Conn.(connector.Lister)
	if !ok {
		return nil, fmt.Errorf("connector %s (%s) cannot list accounts", t.Name, t.Type)
	}
	var all []connector.Account
	token := ""
	for page := 0; ; page++ {
		if page >= maxListPages {
			return nil, fmt.Errorf("list %s: more than %d pages; likely a connector bug", t.Name, maxListPages)
		}
		var accts []connector.Account
		var next string
		err := t.runner.Do(ctx, "list "+t.Name, func(ctx context.Context, _ int) error {
			return t.runner.Call(ctx, connector.CapList, func(ctx context.Context) (err error) {
				accts, next, err = l.ListAccounts(ctx, token)
				return err
			})
		}, connector.Hooks{})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", t.Name, err)
		}
		all = append(all, accts...)
		if next == "" {
			return all, nil
		}
		if next == token {
			return nil, fmt.Errorf("list %s: next page token %q unchanged; likely a connector bug", t.Name, next)
		}
		token = next
	}
}

// recLink is an account link as reconciliation compares it with the target.
type recLink struct {
	id, worker, username, accountID, desired, origin, workerStatus string
	granted                                                        []string
	// What tenure last saw of the account in the target ("unknown": never seen).
	observed     string
	observedEnts []string
	generation   int64
}

// seen is one finding a run observed.
type seen struct {
	kind, username, accountID, linkID, detail string
	workers, entitlements                     []string
	state                                     connector.AccountState
	disable                                   bool // an orphan the policy disables
	link                                      *recLink
}

// Reconcile lists the connector's target accounts now and records the findings (an
// operator's on-demand run; the schedule runs the same).
func (s *Service) Reconcile(ctx context.Context, req *provisionerv1.ReconcileRequest) (*provisionerv1.ReconcileResponse, error) {
	t, ok := s.targets[req.GetConnector()]
	if req.GetConnector() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "connector is required")
	}
	if !ok {
		return nil, status.Errorf(codes.NotFound, "connector %q is not a target of this provisioner (tenurectl connectors lists them)", req.GetConnector())
	}
	if _, ok := t.Conn.(connector.Lister); !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "connector %s (%s) cannot list accounts, so it cannot be reconciled", t.Name, t.Type)
	}
	run, err := s.ReconcileTarget(ctx, t.Name, TriggerManual)
	if errors.Is(err, ErrReconcileRunning) {
		return nil, status.Errorf(codes.Aborted, "connector %s: %v", t.Name, err)
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reconcile %s: %v", t.Name, err)
	}
	found, err := s.ListFindings(ctx, &provisionerv1.ListFindingsRequest{Connector: t.Name, Status: "open"})
	if err != nil {
		return nil, err
	}
	return &provisionerv1.ReconcileResponse{Run: run, Findings: found.GetFindings()}, nil
}

// ReconcileTarget runs one reconciliation of the named target: it lists the target's
// accounts, compares them with the account links and the active grants, stores what it
// finds (new findings open, findings no longer seen resolve), publishes each new or resolved
// finding on tenure.reconcile.finding.<connector>, and, where the target's policy says
// disable_orphans, disables the enabled orphans through the ordinary command path. A listing
// that fails changes no finding. One run per target at a time.
func (s *Service) ReconcileTarget(ctx context.Context, name, trigger string) (*provisionerv1.ReconcileRun, error) {
	t, ok := s.targets[name]
	if !ok {
		return nil, fmt.Errorf("unknown target %q", name)
	}
	if !t.state.reconciling.TryLock() {
		return nil, ErrReconcileRunning
	}
	defer t.state.reconciling.Unlock()
	runID := events.NewID()
	started := time.Now().UTC()
	if _, err := s.pool.Exec(ctx, "INSERT INTO reconcile_runs (run_id, connector, trigger, started_at) VALUES ($1, $2, $3, $4)", runID, name, trigger, started); err != nil {
		return nil, err
	}
	run := &provisionerv1.ReconcileRun{RunId: runID, Connector: name, StartedAt: timestamppb.New(started), Trigger: trigger}
	accts, err := s.listAll(ctx, t)
	if err != nil {
		run.Error = err.Error()
		_, _ = s.pool.Exec(context.WithoutCancel(ctx), "UPDATE reconcile_runs SET finished_at = now(), error = $2 WHERE run_id = $1", runID, err.Error())
		s.log.WarnContext(ctx, "reconcile", "target", name, "err", err)
		return run, err
	}
	run.Accounts = int32(len(accts))
	var out []events.Event
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		links, err := s.reconcileLinks(ctx, tx, name)
		if err != nil {
			return err
		}
		found := s.compare(t, accts, links)
		seenNow, err := s.observe(ctx, tx, t, accts, links, started)
		if err != nil {
			return err
		}
		out = append(out, seenNow...)
		now := time.Now().UTC()
		for i := range found {
			f := &found[i]
			disabled := false
			if f.disable {
				ev, err := s.disableOrphan(ctx, tx, t, f)
				if err != nil {
					return err
				}
				if ev != nil {
					out = append(out, *ev)
					disabled = true
					run.Disabled++
				}
			}
			var id string
			var inserted bool
			err := tx.QueryRow(ctx, `INSERT INTO findings (finding_id, connector, kind, username, account_id, worker_ids, link_id, detail, entitlements,
				  observed_state, first_seen, last_seen, run_id, disable_issued)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13)
				ON CONFLICT (connector, kind, username) WHERE status = 'open' DO UPDATE SET account_id = excluded.account_id,
				  worker_ids = excluded.worker_ids, link_id = excluded.link_id, detail = excluded.detail, entitlements = excluded.entitlements,
				  observed_state = excluded.observed_state, last_seen = excluded.last_seen, run_id = excluded.run_id,
				  disable_issued = findings.disable_issued OR excluded.disable_issued
				RETURNING finding_id, xmax = 0`, events.NewID(), name, f.kind, f.username, f.accountID, nonNil(f.workers), f.linkID, f.detail,
				nonNil(f.entitlements), f.state.String(), now, runID, disabled).Scan(&id, &inserted)
			if err != nil {
				return err
			}
			run.Findings++
			if inserted || disabled {
				if inserted {
					run.NewFindings++
				}
				ev, err := s.findingEvent(ctx, tx, t, id)
				if err != nil {
					return err
				}
				out = append(out, ev)
			}
		}
		rows, err := tx.Query(ctx, `UPDATE findings SET status = 'resolved', resolved_at = $3, run_id = $2
			WHERE connector = $1 AND status = 'open' AND run_id <> $2 RETURNING finding_id`, name, runID, now)
		if err != nil {
			return err
		}
		resolved, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, id := range resolved {
			ev, err := s.findingEvent(ctx, tx, t, id)
			if err != nil {
				return err
			}
			out = append(out, ev)
		}
		run.Resolved = int32(len(resolved))
		run.FinishedAt = timestamppb.New(now)
		if _, err := tx.Exec(ctx, `UPDATE reconcile_runs SET finished_at = $2, accounts = $3, findings = $4, new_findings = $5, resolved = $6, disabled = $7
			WHERE run_id = $1`, runID, now, run.Accounts, run.Findings, run.NewFindings, run.Resolved, run.Disabled); err != nil {
			return err
		}
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err != nil {
		run.Error = err.Error()
		_, _ = s.pool.Exec(context.WithoutCancel(ctx), "UPDATE reconcile_runs SET finished_at = now(), error = $2 WHERE run_id = $1", runID, err.Error())
		return run, err
	}
	if len(out) > 0 {
		s.relay.Poke()
	}
	s.log.InfoContext(ctx, "reconciled", "target", name, "trigger", trigger, "accounts", run.Accounts, "findings", run.Findings,
		"new", run.NewFindings, "resolved", run.Resolved, "disabled", run.Disabled)
	return run, nil
}

// reconcileLinks loads the target's links (not the deleted ones) with their workers' status
// and the entitlements their active grants explain.
func (s *Service) reconcileLinks(ctx context.Context, tx pgx.Tx, conn string) ([]*recLink, error) {
	rows, err := tx.Query(ctx, `SELECT l.link_id, l.worker_id, l.username, l.account_id, l.desired_state, l.origin, coalesce(w.status, ''),
		  (SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}') FROM link_grants g, unnest(g.entitlements) e WHERE g.link_id = l.link_id AND g.active),
		  l.observed_state, l.observed_entitlements, l.generation
		FROM links l LEFT JOIN workers w USING (worker_id) WHERE l.connector = $1 AND l.desired_state <> 'absent' ORDER BY l.link_id`, conn)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (*recLink, error) {
		var l recLink
		return &l, r.Scan(&l.id, &l.worker, &l.username, &l.accountID, &l.desired, &l.origin, &l.workerStatus, &l.granted, &l.observed, &l.observedEnts, &l.generation)
	})
}

var activeStatus = eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE.String()

// compare finds, for each listed account: an orphan (no link, or every linked worker is not
// active while the account is enabled), a likely shared account (a generic name, or linked to
// several workers) and drift (entitlements of an enabled account that no active grant of its
// links explains). A disabled account of a leaver is what tenure wants, not a finding.
func (s *Service) compare(t *Target, accts []connector.Account, links []*recLink) []seen {
	byName := map[string][]*recLink{}
	byID := map[string][]*recLink{}
	for _, l := range links {
		byName[l.username] = append(byName[l.username], l)
		if l.accountID != "" {
			byID[l.accountID] = append(byID[l.accountID], l)
		}
	}
	var out []seen
	for _, a := range accts {
		name := a.Username
		if name == "" {
			name = a.ID
		}
		var ls []*recLink
		for _, l := range slices.Concat(byName[a.Username], byID[a.ID]) {
			if !slices.Contains(ls, l) {
				ls = append(ls, l)
			}
		}
		var workers []string
		active := false
		for _, l := range ls {
			if l.worker != "" && !slices.Contains(workers, l.worker) {
				workers = append(workers, l.worker)
			}
			if l.worker != "" && l.workerStatus == activeStatus {
				active = true
			}
		}
		sort.Strings(workers)
		enabled := a.State == connector.StateEnabled
		base := seen{username: name, accountID: a.ID, workers: workers, state: a.State}
		if len(ls) > 0 {
			base.linkID, base.link = ls[0].id, ls[0]
		}
		switch {
		case len(workers) == 0:
			f := base
			f.kind, f.detail = FindingOrphan, fmt.Sprintf("no account link to a worker (account is %s)", a.State)
			f.disable = t.Policy.DisableOrphans && enabled
			out = append(out, f)
		case !active && enabled:
			f := base
			var st []string
			for _, l := range ls {
				st = append(st, l.worker+" ("+strings.TrimPrefix(orUnknown(l.workerStatus), "WORKER_STATUS_")+")")
			}
			f.kind, f.detail = FindingOrphan, "enabled, but linked only to workers who are not active: "+strings.Join(st, ", ")
			f.disable = t.Policy.DisableOrphans
			out = append(out, f)
		}
		if enabled {
			if p, ok := t.Policy.SharedName(name); ok {
				f := base
				f.kind, f.detail = FindingShared, "name matches the shared-account pattern "+p
				out = append(out, f)
			} else if len(workers) > 1 {
				f := base
				f.kind, f.detail = FindingShared, fmt.Sprintf("one account linked to %d workers: %s", len(workers), strings.Join(workers, ", "))
				out = append(out, f)
			}
			if len(workers) > 0 {
				var explained []string
				for _, l := range ls {
					explained = append(explained, l.granted...)
				}
				var extra []string
				for _, e := range a.Entitlements {
					if !slices.Contains(explained, e) && !slices.Contains(extra, e) {
						extra = append(extra, e)
					}
				}
				if len(extra) > 0 {
					sort.Strings(extra)
					f := base
					f.kind, f.entitlements = FindingDrift, extra
					f.detail = "entitlements no active grant explains: " + strings.Join(extra, ", ")
					out = append(out, f)
				}
			}
		}
	}
	return out
}

// observe records, for each account tenure has seen in the target, what the listing shows
// when it differs from what tenure last saw (a group removed or added by hand, an account
// disabled, enabled or deleted behind tenure's back): on the link, so `accounts` shows it,
// and as a tenure.result.<connector>.observed result, so the approval service's explain
// compares the grants with it. A command's read-back newer than the listing wins. links
// come in link order, the order in which finish locks them.
func (s *Service) observe(ctx context.Context, tx pgx.Tx, t *Target, accts []connector.Account, links []*recLink, listed time.Time) ([]events.Event, error) {
	byName, byID := map[string]connector.Account{}, map[string]connector.Account{}
	for _, a := range accts {
		byName[a.Username] = a
		if a.ID != "" {
			byID[a.ID] = a
		}
	}
	_, manages := t.Conn.(connector.EntitlementGranter)
	var out []events.Event
	for _, l := range links {
		if l.observed == "unknown" || l.observed == "" {
			continue // never seen: nothing to compare with
		}
		a, ok := byID[l.accountID]
		if !ok || l.accountID == "" {
			a, ok = byName[l.username]
		}
		st, ents := connector.StateAbsent, []string{}
		if ok {
			st, ents = a.State, slices.Sorted(slices.Values(a.Entitlements))
		}
		if !manages {
			ents = slices.Sorted(slices.Values(l.observedEnts)) // only the state is the connector's to report
		}
		ents = nonNil(ents)
		if st.String() == l.observed && slices.Equal(ents, slices.Sorted(slices.Values(l.observedEnts))) {
			continue
		}
		tag, err := tx.Exec(ctx, `UPDATE links SET observed_state = $2, observed_entitlements = $3 WHERE link_id = $1 AND (verified_at IS NULL OR verified_at < $4)`,
			l.id, st.String(), ents, listed)
		if err != nil {
			return nil, err
		}
		if tag.RowsAffected() == 0 {
			continue
		}
		s.log.InfoContext(ctx, "account changed in the target since tenure last saw it", "connector", t.Name, "username", l.username,
			"was", l.observed, "now", st.String(), "entitlements", ents)
		out = append(out, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.result."+t.Name, "observed"), Source: source, WorkerID: l.worker,
			Actor: "provisioner", Payload: &eventsv1.ProvisionResult{Connector: t.Name, WorkerId: l.worker, LinkId: l.id, Username: l.username,
				Outcome: eventsv1.ProvisionOutcome_PROVISION_OUTCOME_OBSERVED, ObservedState: accountState(st), Generation: l.generation,
				CompletedAt: timestamppb.New(listed), Entitlements: ents}})
	}
	return out, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// disableOrphan sets an enabled orphan's desired state to disabled and returns the command,
// so the ordinary worker disables it and reads it back. An account with no link gets one
// (origin reconciled, no worker): that link is also the username's tombstone. Nil when the
// link is a deleted account's tombstone.
func (s *Service) disableOrphan(ctx context.Context, tx pgx.Tx, t *Target, f *seen) (*events.Event, error) {
	var linkID, worker string
	var gen int64
	if f.link == nil {
		linkID = events.NewID()
		err := tx.QueryRow(ctx, `INSERT INTO links (link_id, worker_id, connector, username, account_id, origin, desired_state, observed_state, generation)
			VALUES ($1, '', $2, $3, $4, 'reconciled', 'disabled', 'enabled', 1)
			ON CONFLICT (connector, username) DO NOTHING RETURNING link_id, generation`, linkID, t.Name, f.username, f.accountID).Scan(&linkID, &gen)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil // a deleted link's tombstone holds the name: the next run sees it linked
		}
		if err != nil {
			return nil, err
		}
		f.linkID = linkID
	} else {
		// Also when the link already wants it disabled (a leaver's account someone enabled
		// again at the target): the new generation makes the worker converge it once more.
		err := tx.QueryRow(ctx, `UPDATE links SET desired_state = 'disabled', generation = generation + 1
			WHERE link_id = $1 AND desired_state <> 'absent' RETURNING link_id, worker_id, generation`, f.link.id).Scan(&linkID, &worker, &gen)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	ev := command(worker, t.Name, linkID, gen, eventsv1.ProvisionOp_PROVISION_OP_DISABLE, "")
	return &ev, nil
}

const findingColumns = `finding_id, connector, kind, username, account_id, worker_ids, link_id, detail, entitlements, observed_state, status,
	first_seen, last_seen, resolved_at, run_id, disable_issued`

func (s *Service) scanFinding(r pgx.CollectableRow) (*eventsv1.ReconcileFinding, error) {
	var f eventsv1.ReconcileFinding
	var state string
	var first, last time.Time
	var resolved *time.Time
	if err := r.Scan(&f.FindingId, &f.Connector, &f.Kind, &f.Username, &f.AccountId, &f.WorkerIds, &f.LinkId, &f.Detail, &f.Entitlements, &state,
		&f.Status, &first, &last, &resolved, &f.RunId, &f.DisableIssued); err != nil {
		return nil, err
	}
	f.System = f.Connector
	if t := s.targets[f.Connector]; t != nil {
		f.System = t.System
	}
	f.ObservedState, f.FirstSeen, f.LastSeen, f.ResolvedAt = stateOf(state), timestamppb.New(first), timestamppb.New(last), ts(resolved)
	return &f, nil
}

// findingEvent is a finding's fact on tenure.reconcile.finding.<connector>.
func (s *Service) findingEvent(ctx context.Context, tx pgx.Tx, t *Target, id string) (events.Event, error) {
	rows, err := tx.Query(ctx, "SELECT "+findingColumns+" FROM findings WHERE finding_id = $1", id)
	if err != nil {
		return events.Event{}, err
	}
	f, err := pgx.CollectExactlyOneRow(rows, s.scanFinding)
	if err != nil {
		return events.Event{}, err
	}
	worker := ""
	if len(f.WorkerIds) == 1 {
		worker = f.WorkerIds[0]
	}
	return events.Event{ID: events.NewID(), Subject: events.Subject("tenure.reconcile.finding", t.Name), Source: source, WorkerID: worker, Actor: "provisioner", Payload: f}, nil
}

// reconcileDue starts the scheduled reconciliations that are due: a target is due its
// interval after its last run started (runs are stored, so restarts keep the rhythm), or its
// interval after the service started when it never ran.
func (s *Service) reconcileDue(ctx context.Context, started time.Time) {
	for _, t := range s.targets {
		iv := t.Policy.Interval()
		if iv <= 0 {
			continue
		}
		if _, ok := t.Conn.(connector.Lister); !ok {
			continue
		}
		next, err := s.nextReconcile(ctx, t, started)
		if err != nil {
			s.log.WarnContext(ctx, "reconcile schedule", "target", t.Name, "err", err)
			continue
		}
		if time.Now().Before(next) {
			continue
		}
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			if _, err := s.ReconcileTarget(ctx, t.Name, TriggerSchedule); err != nil && !errors.Is(err, ErrReconcileRunning) && ctx.Err() == nil {
				s.log.WarnContext(ctx, "scheduled reconcile", "target", t.Name, "err", err)
			}
		}()
	}
}

// nextReconcile is when the target's next scheduled run is due (zero time: never).
func (s *Service) nextReconcile(ctx context.Context, t *Target, started time.Time) (time.Time, error) {
	iv := t.Policy.Interval()
	if iv <= 0 {
		return time.Time{}, nil
	}
	if _, ok := t.Conn.(connector.Lister); !ok {
		return time.Time{}, nil
	}
	var last *time.Time
	if err := s.pool.QueryRow(ctx, "SELECT max(started_at) FROM reconcile_runs WHERE connector = $1", t.Name).Scan(&last); err != nil {
		return time.Time{}, err
	}
	if last == nil {
		return started.Add(iv), nil
	}
	return last.Add(iv), nil
}

// schedule issues due deletions and starts due reconciliations until ctx ends.
func (s *Service) schedule(ctx context.Context) error {
	t := time.NewTicker(s.cfg.SchedulerInterval)
	defer t.Stop()
	for {
		if _, err := s.issueDueDeletions(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("due deletions", "err", err)
		}
		s.reconcileDue(ctx, s.started)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
