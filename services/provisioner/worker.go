package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	// owned says the account the target has under the link's username is the link's own:
	// tenure created it (the link has its account id or a read-back), or the link records an
	// account found in the target (reconciled). An unowned link's username may be held in
	// the target by someone else's account, which is never adopted.
	owned bool
}

func (s *Service) loadLink(ctx context.Context, id string) (link, error) {
	var l link
	err := s.pool.QueryRow(ctx, `SELECT l.link_id, l.worker_id, l.connector, l.username, l.account_id, l.desired_state, l.desired_entitlements, l.generation,
		  coalesce(w.email, ''), coalesce(w.given_name, ''), coalesce(w.family_name, ''),
		  l.account_id <> '' OR l.observed_generation > 0 OR l.origin = 'reconciled'
		FROM links l LEFT JOIN workers w USING (worker_id) WHERE l.link_id = $1`, id).
		Scan(&l.id, &l.worker, &l.conn, &l.username, &l.accountID, &l.desired, &l.entitlements, &l.generation, &l.email, &l.given, &l.family, &l.owned)
	return l, err
}

// errSuperseded stops the retries of a command whose link moved on to a newer generation.
var errSuperseded = connector.Permanent(errors.New("superseded by a newer decision"))

// linkLanes runs the commands of one link one at a time in this process: a command waits for
// the link's lane before it reads the link's generation, so two commands of a link never
// interleave their calls to the target here. A waiting command newer than the one running
// asks it to stop at its next attempt (preempt), so a leaver's disable does not wait out the
// back-off of an ensure it overrides.
//
// The lane is per process. With several provisioner replicas, commands of one link may
// still run at once on different replicas; what keeps that correct is the re-converge when a
// command finishes superseded (see reconvergeStale in finish.go), not the lane.
type linkLanes struct {
	mu sync.Mutex
	m  map[string]*linkLane
	// off runs commands without lanes, as if each ran on a replica of its own (tests).
	off bool
}

type linkLane struct {
	turn    chan struct{} // holds a token while a command of the link runs
	users   int           // the holder and the waiters; the lane is dropped at 0
	gen     int64         // the holder's generation
	preempt func()        // asks the holder to stop at its next attempt
	waiting map[int64]int // the waiters' generations
}

// laneTurn is a command's turn in its link's lane (nil when lanes are off).
type laneTurn struct {
	ls  *linkLanes
	id  string
	l   *linkLane
	gen int64
}

// wait waits for the link's lane, heartbeating the command meanwhile, until ctx ends.
func (ls *linkLanes) wait(ctx context.Context, id string, gen int64, heartbeat func()) (*laneTurn, error) {
	if ls.off {
		return nil, nil
	}
	ls.mu.Lock()
	if ls.m == nil {
		ls.m = map[string]*linkLane{}
	}
	l := ls.m[id]
	if l == nil {
		l = &linkLane{turn: make(chan struct{}, 1), waiting: map[int64]int{}}
		ls.m[id] = l
	}
	l.users++
	l.waiting[gen]++
	if l.preempt != nil && gen > l.gen {
		l.preempt()
	}
	ls.mu.Unlock()
	take := func() *laneTurn {
		ls.mu.Lock()
		ls.unwaitLocked(l, gen)
		l.gen, l.preempt = gen, nil
		ls.mu.Unlock()
		return &laneTurn{ls: ls, id: id, l: l, gen: gen}
	}
	// The lane is free nearly always: take it without starting a heartbeat ticker.
	select {
	case l.turn <- struct{}{}:
		return take(), nil
	default:
	}
	tick := time.NewTicker(ackWait / 3)
	defer tick.Stop()
	for {
		select {
		case l.turn <- struct{}{}:
			return take(), nil
		case <-tick.C:
			heartbeat()
		case <-ctx.Done():
			ls.mu.Lock()
			ls.unwaitLocked(l, gen)
			ls.leaveLocked(id, l)
			ls.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

func (ls *linkLanes) unwaitLocked(l *linkLane, gen int64) {
	if l.waiting[gen]--; l.waiting[gen] <= 0 {
		delete(l.waiting, gen)
	}
}

func (ls *linkLanes) leaveLocked(id string, l *linkLane) {
	if l.users--; l.users == 0 {
		delete(ls.m, id)
	}
}

// waiting reports whether a command of the link at generation gen waits for the lane in this
// process, behind the one that holds it: it runs after the holder is done.
func (ls *linkLanes) waiting(id string, gen int64) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.m[id]
	return l != nil && l.waiting[gen] > 0
}

// onPreempt sets what a newer command of the link calls to preempt the holder; a newer one
// already waiting calls it at once.
func (t *laneTurn) onPreempt(f func()) {
	if t == nil {
		return
	}
	t.ls.mu.Lock()
	defer t.ls.mu.Unlock()
	t.l.preempt = f
	for g := range t.l.waiting {
		if g > t.gen {
			f()
			return
		}
	}
}

func (t *laneTurn) release() {
	if t == nil {
		return
	}
	t.ls.mu.Lock()
	defer t.ls.mu.Unlock()
	t.l.preempt = nil
	<-t.l.turn
	t.ls.leaveLocked(t.id, t.l)
}

// work runs one provisioning command against its target: converge the account to the link's
// desired state, read it back, and record the outcome. The command only names the link and
// the generation it was issued for; a command older than the link's generation is skipped,
// so a late command never undoes a newer decision. Commands of one link take turns (the
// link's lane), and one that finds its link moved on after it changed the target reads the
// target back and re-converges it (finish). The target's runner owns the retries: each
// failed attempt is recorded where operators see it, and a command that fails for good (a
// permanent error, or every attempt used) is dead-lettered and its case account marked
// failed, never retried for ever.
func (s *Service) work(ctx context.Context, t *Target, msg jetstream.Msg) error {
	var cmd eventsv1.ProvisionCommand
	if err := proto.Unmarshal(msg.Data(), &cmd); err != nil {
		return natsx.Permanent(fmt.Errorf("decode %s: %w", msg.Subject(), err))
	}
	meta := events.MetaOf(msg.Headers())
	gen := cmd.GetGeneration()
	// Waits for the lane, a slot or a retry end with the service; JetStream then redelivers.
	// runCtx also ends when a newer command of the link preempts this one.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.stop, cancel)()
	turn, err := s.lanes.wait(runCtx, cmd.GetLinkId(), gen, func() { msg.InProgress() })
	if err != nil {
		return err
	}
	defer turn.release()
	l, err := s.loadLink(ctx, cmd.GetLinkId())
	if errors.Is(err, pgx.ErrNoRows) {
		return natsx.Permanent(fmt.Errorf("command %s: unknown link %s", cmd.GetCommandId(), cmd.GetLinkId()))
	}
	if err != nil {
		return err
	}
	// A redelivered command may have changed the target before its last delivery stopped
	// (a crash, a shutdown): it counts as having touched the target.
	touched := false
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 1 {
		touched = true
	}
	if gen < l.generation {
		return s.supersede(ctx, t, meta, msg.Subject(), &cmd, l, 1, touched)
	}
	// Once per generation: after a crash both a redelivery and the start-up re-drive may
	// carry it (startup.go), and the budget goes on from the attempts already failed.
	if done, err := s.doneAlready(ctx, &cmd, msg); done || err != nil {
		return err
	}
	used, err := s.attemptsUsed(ctx, &cmd, msg)
	if err != nil {
		return err
	}
	var pmu sync.Mutex
	inAttempt, preempted := false, false
	turn.onPreempt(func() {
		pmu.Lock()
		defer pmu.Unlock()
		preempted = true
		if !inAttempt {
			cancel() // between attempts: stop waiting out the back-off
		}
	})
	var acct connector.Account
	var revoked revocations
	attempts := 0
	opErr := t.runner.Do(runCtx, msg.Subject(), func(actx context.Context, n int) error {
		pmu.Lock()
		if preempted {
			pmu.Unlock()
			return errSuperseded
		}
		inAttempt = true
		pmu.Unlock()
		defer func() {
			pmu.Lock()
			inAttempt = false
			if preempted {
				cancel()
			}
			pmu.Unlock()
		}()
		attempts = n
		if n > 1 {
			cur, err := s.loadLink(actx, l.id)
			if err != nil {
				return err
			}
			if cur.generation > gen {
				return errSuperseded
			}
			cur.owned = cur.owned || l.owned // created by an earlier attempt
			l = cur
		}
		touched = true
		a, rev, err := s.apply(actx, t, &l, cmd.GetCaseId() != "")
		if err == nil {
			if err = verify(l, a); err != nil {
				s.noteReadBack(actx, &cmd, l.id, a)
			}
		}
		acct, revoked = a, rev
		return err
	}, connector.Hooks{
		Failed: func(n int, err error, retryIn time.Duration) {
			if cerr := s.countFailure(ctx, &cmd); cerr != nil {
				s.log.WarnContext(ctx, "count failed attempt", "err", cerr)
			}
			if retryIn == 0 {
				return // the last failure is recorded below, with its outcome
			}
			if ferr := s.fail(ctx, &cmd, l, n, err, false, nil); ferr != nil {
				s.log.WarnContext(ctx, "record failure", "err", ferr)
			}
		},
		Heartbeat:      func() { msg.InProgress() },
		HeartbeatEvery: ackWait / 3,
		Used:           used,
	})
	pmu.Lock()
	wasPreempted := preempted
	pmu.Unlock()
	switch {
	case opErr == nil:
		if err := s.finish(ctx, meta, msg.Subject(), &cmd, l, &acct, eventsv1.ProvisionOutcome_PROVISION_OUTCOME_VERIFIED, attempts, revoked, true); err != nil {
			return err
		}
		if l.desired == stateDisabled {
			if err := s.narrowDisabled(ctx, t, &cmd, acct); err != nil {
				s.log.WarnContext(ctx, "narrow a disabled account after its command", "link", l.id, "err", err)
			}
		}
		return nil
	case errors.Is(opErr, connector.ErrPending):
		// A person does this one; the attestation issues the command that reads it back.
		return s.waiting(ctx, &cmd, l, opErr)
	case s.stop.Err() != nil:
		return opErr
	case errors.Is(opErr, errSuperseded), wasPreempted:
		return s.supersede(ctx, t, meta, msg.Subject(), &cmd, l, attempts, touched)
	}
	// Failed for good. A command whose decision was overridden meanwhile is not the
	// operators' to re-drive: it is superseded, and the target re-converged if it touched it.
	if cur, err := s.loadLink(ctx, l.id); err == nil && cur.generation > gen {
		return s.supersede(ctx, t, meta, msg.Subject(), &cmd, l, attempts, touched)
	}
	// An ensure that failed for good leaves the account disabled, and what the target holds
	// on record (reconciled against the target now, not at the next scheduled run).
	var seen *connector.Account
	if l.desired == stateEnabled && cmd.GetOp() == eventsv1.ProvisionOp_PROVISION_OP_ENSURE && touched {
		seen = s.quarantine(ctx, t, l)
	}
	if err := s.fail(ctx, &cmd, l, attempts, opErr, true, seen); err != nil {
		// Keep the message until the failure is on record.
		return fmt.Errorf("record failure: %w (command failed: %w)", err, opErr)
	}
	return natsx.Permanent(opErr)
}

// supersede records a command whose link moved on to a newer generation. One that never
// touched the target just says so. One that did (an attempt ran before the link moved on,
// or an earlier delivery may have) reads the account back first, so finish records what
// the target shows and re-converges it if that is not the link's current desired state: its
// calls may have landed after the newer command's read-back.
func (s *Service) supersede(ctx context.Context, t *Target, meta events.Meta, subject string, cmd *eventsv1.ProvisionCommand, l link, attempts int, touched bool) error {
	superseded := eventsv1.ProvisionOutcome_PROVISION_OUTCOME_SUPERSEDED
	if !touched {
		return s.finish(ctx, meta, subject, cmd, l, nil, superseded, attempts, revocations{}, false)
	}
	cur, err := s.loadLink(ctx, l.id)
	if err != nil {
		return err
	}
	return s.finish(ctx, meta, subject, cmd, cur, s.readBack(ctx, t, cur), superseded, attempts, revocations{}, true)
}

// getAccount reads one account from the target through the runner, which owns retries,
// rate limits and tracing for reads as for writes.
func (t *Target) getAccount(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	var a connector.Account
	err := t.runner.Call(ctx, "get", func(ctx context.Context) (err error) {
		a, err = t.Conn.GetAccount(ctx, ref)
		return err
	})
	return a, err
}

// readBack reads the link's account from the target; nil when the target did not answer.
func (s *Service) readBack(ctx context.Context, t *Target, l link) *connector.Account {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.stop, cancel)()
	a, err := t.getAccount(ctx, connector.AccountRef{ID: l.accountID, Username: l.username})
	switch {
	case errors.Is(err, connector.ErrNotFound):
		return &connector.Account{ID: l.accountID, Username: l.username, State: connector.StateAbsent}
	case err != nil:
		s.log.WarnContext(ctx, "read-back of a superseded command", "link", l.id, "username", l.username, "err", err)
		return nil
	}
	return &a
}

// converged says the account as read back is the link's desired state. Unlike verify, an
// enabled account must hold no entitlement beyond the desired ones where the connector
// manages them (exact), as apply leaves it. (A disabled one narrowed late is narrowed by
// narrowDisabled, not re-disabled.)
func converged(l link, a *connector.Account, exact bool) bool {
	if a == nil || verify(l, *a) != nil {
		return false
	}
	if l.desired == stateEnabled && exact {
		for _, e := range a.Entitlements {
			if !slices.Contains(l.entitlements, e) {
				return false
			}
		}
	}
	return true
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
func (s *Service) apply(ctx context.Context, t *Target, l *link, leaver bool) (connector.Account, revocations, error) {
	ref := connector.AccountRef{ID: l.accountID, Username: l.username}
	c := t.Conn
	call := t.runner.Call
	get := func() (connector.Account, error) { return t.getAccount(ctx, ref) } // ref may move to a recreated account
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
		d, ok := c.(connector.Disabler)
		if !ok {
			return connector.Account{}, revocations{}, connector.Permanent(fmt.Errorf("connector %s (%s) cannot disable accounts", t.Name, t.Type))
		}
		rev, err := disableAndRevoke(ctx, t, d, ref, leaver)
		if err != nil {
			return connector.Account{}, revocations{}, err
		}
		acct, err := get()
		if err == nil {
			// Disabled first, then narrowed: a disabled account keeps only the entitlements
			// its grants explain (a leave of absence keeps them all), so no revoked grant
			// lingers in the target, nor comes back with an enable.
			changed, nerr := narrow(ctx, t, ref, acct, l.entitlements)
			if nerr != nil {
				return connector.Account{}, revocations{}, nerr
			}
			if changed {
				acct, err = get()
			}
		}
		if errors.Is(err, connector.ErrNotFound) && ref.ID != "" {
			// Gone under its id, but the target may have the name again under a new one (a
			// restore or re-import recreated it): a leaver's name must not stay enabled there.
			again, gerr := t.getAccount(ctx, connector.AccountRef{Username: l.username})
			if gerr != nil && !errors.Is(gerr, connector.ErrNotFound) {
				// Not knowing whether the name is back is not "gone": try again.
				return connector.Account{}, revocations{}, fmt.Errorf("read %s by name: %w", l.username, gerr)
			}
			if gerr == nil && again.ID != "" && again.ID != ref.ID {
				s.log.WarnContext(ctx, "account recreated in the target under a new id: disabling it too", "connector", t.Name,
					"username", l.username, "old_id", ref.ID, "new_id", again.ID)
				ref = connector.AccountRef{ID: again.ID, Username: l.username}
				l.accountID = again.ID
				if rev, err = disableAndRevoke(ctx, t, d, ref, leaver); err != nil {
					return connector.Account{}, revocations{}, err
				}
				acct, err = get()
			}
		}
		if errors.Is(err, connector.ErrNotFound) {
			return connector.Account{Username: l.username, State: connector.StateAbsent}, rev, nil
		}
		return acct, rev, err
	default:
		acct, err := get()
		if err == nil && !l.owned && !attested(t) {
			// The target has an account with the link's username that is not the link's: a
			// former employee's, or one made by hand. It is never adopted (enabled and
			// granted to): the link takes the next username free in tenure and the target.
			if err := s.freshUsername(ctx, t, l, acct); err != nil {
				return connector.Account{}, revocations{}, err
			}
			ref = connector.AccountRef{Username: l.username}
			err = connector.ErrNotFound
		}
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
			s.createdAccount(ctx, l, acct.ID)
		} else if err != nil {
			return connector.Account{}, revocations{}, fmt.Errorf("read: %w", err)
		}
		// Narrow first, widen last: entitlements nobody grants any more are revoked before the
		// new ones are granted, and the login is enabled only once the account holds exactly
		// what its grants explain. A failure part-way leaves a disabled account disabled; one
		// that leaves an enabled account holding an entitlement nobody grants disables it
		// (narrowForFailure), and a command that fails for good disables it (quarantine).
		if _, err := narrow(ctx, t, ref, acct, l.entitlements); err != nil {
			return connector.Account{}, revocations{}, s.narrowForFailure(ctx, t, ref, acct, err)
		}
		if g, ok := c.(connector.EntitlementGranter); ok {
			for _, e := range l.entitlements {
				if !slices.Contains(acct.Entitlements, e) {
					if err := call(ctx, "grant", func(ctx context.Context) error { return g.GrantEntitlement(ctx, ref, e) }); err != nil {
						return connector.Account{}, revocations{}, fmt.Errorf("grant %s: %w", e, err)
					}
				}
			}
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
		acct, err = get()
		return acct, revocations{}, err
	}
}

// narrow revokes the entitlements acct holds beyond want, where the connector manages
// entitlements, and says whether it revoked any.
func narrow(ctx context.Context, t *Target, ref connector.AccountRef, acct connector.Account, want []string) (bool, error) {
	g, ok := t.Conn.(connector.EntitlementGranter)
	if !ok {
		return false, nil
	}
	changed := false
	for _, e := range acct.Entitlements {
		if !slices.Contains(want, e) {
			if err := t.runner.Call(ctx, "revoke", func(ctx context.Context) error { return g.RevokeEntitlement(ctx, ref, e) }); err != nil {
				return changed, fmt.Errorf("revoke %s: %w", e, err)
			}
			changed = true
		}
	}
	return changed, nil
}

// narrowDisabled follows a verified command that left a disabled account: if a revoke
// shrank the link's desired entitlements while the command ran (a leaver's grants revoked
// while the case's disable was under way) and the read-back still holds what no grant
// explains, it issues an ensure (no new disable, no revocation events) that narrows it. It
// runs after the command's finish committed, so a revoke either committed before (and is
// seen here) or sees the read-back current and issues that ensure itself (reconverge).
func (s *Service) narrowDisabled(ctx context.Context, t *Target, cmd *eventsv1.ProvisionCommand, acct connector.Account) error {
	if _, ok := t.Conn.(connector.EntitlementGranter); !ok || acct.State != connector.StateDisabled {
		return nil
	}
	var ev *events.Event
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		var desired string
		var want []string
		var gen, observedGen int64
		if err := tx.QueryRow(ctx, "SELECT desired_state, desired_entitlements, generation, observed_generation FROM links WHERE link_id = $1 FOR UPDATE",
			cmd.GetLinkId()).Scan(&desired, &want, &gen, &observedGen); err != nil {
			return err
		}
		if desired != stateDisabled || gen != cmd.GetGeneration() || observedGen != gen ||
			!slices.ContainsFunc(acct.Entitlements, func(e string) bool { return !slices.Contains(want, e) }) {
			return nil
		}
		if err := tx.QueryRow(ctx, "UPDATE links SET generation = generation + 1 WHERE link_id = $1 RETURNING generation", cmd.GetLinkId()).Scan(&gen); err != nil {
			return err
		}
		e := command(cmd.GetWorkerId(), cmd.GetConnector(), cmd.GetLinkId(), gen, eventsv1.ProvisionOp_PROVISION_OP_ENSURE, "")
		ev = &e
		return pgstore.Enqueue(ctx, tx, e)
	})
	if err == nil && ev != nil {
		s.relay.Poke()
	}
	return err
}

// narrowForFailure disables an enabled account whose stale entitlement could not be
// revoked: until the revoke succeeds the account holds access nobody grants, and a login on
// it would use it. The ensure's error is returned either way (the disable's, if that failed
// too, joined to it); the next attempt revokes, grants and enables again.
func (s *Service) narrowForFailure(ctx context.Context, t *Target, ref connector.AccountRef, acct connector.Account, cause error) error {
	d, ok := t.Conn.(connector.Disabler)
	if acct.State != connector.StateEnabled || !ok {
		return cause
	}
	if err := t.runner.Call(ctx, connector.CapDisable, func(ctx context.Context) error { return d.DisableAccount(ctx, ref) }); err != nil && !errors.Is(err, connector.ErrNotFound) {
		return errors.Join(cause, fmt.Errorf("disable after the failed revoke: %w", err))
	}
	s.log.WarnContext(ctx, "stale entitlement could not be revoked: account disabled until it is", "connector", t.Name, "username", ref.Username, "err", cause)
	return cause
}

// quarantine is what a command that ensured an account and failed for good leaves behind:
// the account disabled (an ensure that could not finish may have left it holding less, or
// other, than its grants explain), read back, and that read-back recorded on the link so
// operators see what the target holds (tenurectl accounts) beside the error. It returns the
// read-back (nil when the target did not answer). Retrying the dead letter ensures again.
func (s *Service) quarantine(ctx context.Context, t *Target, l link) *connector.Account {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	ref := connector.AccountRef{ID: l.accountID, Username: l.username}
	a, err := t.getAccount(ctx, ref)
	if errors.Is(err, connector.ErrNotFound) {
		return &connector.Account{ID: l.accountID, Username: l.username, State: connector.StateAbsent}
	}
	if err != nil {
		s.log.WarnContext(ctx, "failed ensure: the account could not be read back", "connector", t.Name, "username", l.username, "err", err)
		return nil
	}
	if a.State == connector.StateEnabled {
		if d, ok := t.Conn.(connector.Disabler); ok {
			if err := t.runner.Call(ctx, connector.CapDisable, func(ctx context.Context) error { return d.DisableAccount(ctx, ref) }); err != nil {
				s.log.ErrorContext(ctx, "failed ensure: the account could not be disabled", "connector", t.Name, "username", l.username, "err", err)
			} else {
				s.log.WarnContext(ctx, "failed ensure: account disabled until the ensure succeeds", "connector", t.Name, "username", l.username)
			}
			if again, err := t.getAccount(ctx, ref); err == nil {
				a = again
			}
		}
	}
	return &a
}

// disableAndRevoke disables the account, then ends its sessions and, for a leaver, revokes
// its credentials, where the connector can. Disable first: the other way round, a sign-in
// between the two would leave a live session on a disabled account. A revocation counts only
// when the target did it; an account it does not know has nothing to revoke.
func disableAndRevoke(ctx context.Context, t *Target, d connector.Disabler, ref connector.AccountRef, leaver bool) (revocations, error) {
	var rev revocations
	call, c := t.runner.Call, t.Conn
	if err := call(ctx, connector.CapDisable, func(ctx context.Context) error { return d.DisableAccount(ctx, ref) }); err != nil && !errors.Is(err, connector.ErrNotFound) {
		return rev, fmt.Errorf("disable: %w", err)
	}
	if r, ok := c.(connector.SessionRevoker); ok {
		err := call(ctx, connector.CapSessions, func(ctx context.Context) error { return r.RevokeSessions(ctx, ref) })
		switch {
		case err == nil:
			rev.sessions = true
		case errors.Is(err, connector.ErrNotFound), errors.Is(err, errors.ErrUnsupported):
			// No such account, or a target that cannot end sessions (a webhook receiver
			// answering 501): the disable still counts, without a session revocation.
		default:
			return rev, fmt.Errorf("revoke sessions: %w", err)
		}
	}
	// A leaver's passwords, API tokens and keys outlive a disabled login (a script's
	// connection string, a personal access token), and a re-enabled account would bring them
	// back. Revoked after the disable, so nothing signs in meanwhile with a fresh credential;
	// the read-back checks that the account is still disabled.
	if r, ok := c.(connector.CredentialRevoker); ok && leaver {
		err := call(ctx, connector.CapCredentials, func(ctx context.Context) error { return r.RevokeCredentials(ctx, ref) })
		switch {
		case err == nil:
			rev.credentials = true
		case errors.Is(err, connector.ErrNotFound), errors.Is(err, errors.ErrUnsupported):
		default:
			return rev, fmt.Errorf("revoke credentials: %w", err)
		}
	}
	return rev, nil
}

// attested says the target's accounts are tenure's own records (attested tasks): none can be
// someone else's.
func attested(t *Target) bool {
	_, ok := t.Conn.(connector.TaskQueueUser)
	return ok
}

// createdAccount marks the link's account as its own once this command created it: later
// attempts, and (once the id is stored) later commands, know the account under the username
// is the link's. Without a stored id (a crash right after the create, or a target that
// gives no ids) a later command would take the account for someone else's and move the link
// to a fresh username; the account left behind shows up as an orphan in reconciliation.
func (s *Service) createdAccount(ctx context.Context, l *link, id string) {
	l.owned = true
	if id == "" || l.accountID != "" {
		return
	}
	l.accountID = id
	if _, err := s.pool.Exec(ctx, "UPDATE links SET account_id = $2 WHERE link_id = $1 AND account_id = ''", l.id, id); err != nil {
		s.log.WarnContext(ctx, "record account id", "link", l.id, "err", err)
	}
}

// freshUsername moves a link whose username the target already uses for an account that is
// not the link's to the next username free both in tenure's links (the tombstones) and in
// the target, the way linkFor picks one, and returns once the target confirmed it free.
func (s *Service) freshUsername(ctx context.Context, t *Target, l *link, found connector.Account) error {
	base, taken := usernameBase(l.worker, l.email, l.given, l.family), l.username
	for n := 1; n <= maxUsernames; n++ {
		name := usernameCandidate(base, n)
		if name == l.username {
			continue
		}
		tag, err := s.pool.Exec(ctx, `UPDATE links SET username = $3 WHERE link_id = $1 AND username = $2 AND account_id = '' AND observed_generation = 0
			AND NOT EXISTS (SELECT 1 FROM links WHERE connector = $4 AND username = $3)`, l.id, l.username, name, l.conn)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			continue // taken meanwhile
		}
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			var cur link
			if err := s.pool.QueryRow(ctx, "SELECT username, account_id <> '' OR observed_generation > 0 FROM links WHERE link_id = $1", l.id).
				Scan(&cur.username, &cur.owned); err != nil {
				return err
			}
			if cur.username != l.username || cur.owned {
				return connector.Retryable(fmt.Errorf("link %s changed meanwhile (username %s)", l.id, cur.username))
			}
			continue // a tombstone or another worker's link
		}
		l.username = name
		_, err = t.getAccount(ctx, connector.AccountRef{Username: name})
		if errors.Is(err, connector.ErrNotFound) {
			s.log.WarnContext(ctx, "username taken in the target by an account tenure does not link; not adopting it",
				"connector", t.Name, "username", taken, "account_id", found.ID, "account_state", found.State, "worker", l.worker, "new_username", name)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
	}
	return connector.Permanent(fmt.Errorf("no free username for %s in %s: %s and the next %d are taken", l.worker, t.Name, base, maxUsernames))
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
	case eventsv1.ProvisionOutcome_PROVISION_OUTCOME_OBSERVED:
		return "observed"
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
// re-drives it. seen, when given, is the account as read back after the failure: it is
// recorded on the link (observed state and entitlements, not as verified) and in the result.
func (s *Service) fail(ctx context.Context, cmd *eventsv1.ProvisionCommand, l link, attempt int, cause error, dead bool, seen *connector.Account) error {
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE links SET attempts = attempts + 1, last_error = $2 WHERE link_id = $1", l.id, cause.Error()); err != nil {
			return err
		}
		if seen != nil {
			if _, err := tx.Exec(ctx, `UPDATE links SET observed_state = $2, observed_entitlements = $3 WHERE link_id = $1`,
				l.id, seen.State.String(), nonNil(seen.Entitlements)); err != nil {
				return err
			}
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
		return pgstore.Enqueue(ctx, tx, result(cmd, l, outcome, attempt, seen, cause.Error()))
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

// alertOverdue raises tenure.alert.deprovision_overdue for the accounts of open cases past
// their own deadline and not verified, once per account: an automatic disable that keeps
// failing is alerted at its 5 minutes even when the case also waits an hour for a manual
// task. One alert per case and check names the accounts that became overdue.
func (s *Service) alertOverdue(ctx context.Context) error {
	return pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `WITH due AS (
			  UPDATE case_accounts a SET overdue_alerted_at = now() FROM cases c
			  WHERE c.case_id = a.case_id AND c.status = 'open' AND a.status <> 'verified'
			    AND a.deadline < now() AND a.overdue_alerted_at IS NULL
			  RETURNING a.case_id, a.link_id, a.deadline
			), marked AS (
			  UPDATE cases c SET overdue_alerted_at = coalesce(c.overdue_alerted_at, now())
			  WHERE c.case_id IN (SELECT case_id FROM due)
			  RETURNING c.case_id, c.worker_id, c.hr_event_id, c.opened_at
			)
			SELECT m.case_id, m.worker_id, m.hr_event_id, m.opened_at, max(d.deadline),
			  array_agg(l.connector || '/' || l.username ORDER BY l.connector, l.username)
			FROM due d JOIN marked m USING (case_id) JOIN links l ON l.link_id = d.link_id
			GROUP BY m.case_id, m.worker_id, m.hr_event_id, m.opened_at`)
		if err != nil {
			return err
		}
		var out []events.Event
		for rows.Next() {
			var id, worker, hr string
			var opened, deadline time.Time
			var accounts []string
			if err := rows.Scan(&id, &worker, &hr, &opened, &deadline, &accounts); err != nil {
				return err
			}
			out = append(out, events.Event{ID: events.NewID(), Subject: events.Subject("tenure.alert", "deprovision_overdue", worker), Source: source, WorkerID: worker, Actor: "provisioner",
				Payload: &eventsv1.CaseEvent{CaseId: id, WorkerId: worker, Status: eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN, OpenedAt: timestamppb.New(opened),
					Deadline: timestamppb.New(deadline), HrEventId: hr, OverdueAccounts: accounts}})
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
