package provisioner

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// defaultTaskDeadline applies when a connector asks for a task without a deadline.
const defaultTaskDeadline = time.Hour

// taskQueue is the operator queue of one target, bound to connectors that need it (manual).
type taskQueue struct {
	s      *Service
	target *Target
}

var _ connector.TaskQueue = (*taskQueue)(nil)

// linkByRef finds the target's link for ref: by username, or by the account id stored from an
// earlier read-back.
const linkByRef = `connector = $1 AND (username = $2 OR ($3 <> '' AND account_id = $3))`

// OpenTask opens a task that asks for the link's current desired state, or keeps the open one
// if it already asks for that; an open task for an older decision is superseded.
func (q *taskQueue) OpenTask(ctx context.Context, req connector.TaskRequest) (string, error) {
	if req.Deadline <= 0 {
		req.Deadline = defaultTaskDeadline
	}
	var id string
	var out []events.Event
	err := pgstore.InTx(ctx, q.s.pool, func(tx pgx.Tx) error {
		var linkID, worker, username, desired string
		var ents []string
		var gen int64
		err := tx.QueryRow(ctx, `SELECT link_id, worker_id, username, desired_state, desired_entitlements, generation FROM links
			WHERE `+linkByRef+` ORDER BY username = $2 DESC LIMIT 1 FOR UPDATE`, q.target.Name, req.Ref.Username, req.Ref.ID).
			Scan(&linkID, &worker, &username, &desired, &ents, &gen)
		if errors.Is(err, pgx.ErrNoRows) {
			return connector.Permanent(fmt.Errorf("no account link for %q in %s: tenure opens tasks only for accounts it links", req.Ref.Username, q.target.Name))
		}
		if err != nil {
			return err
		}
		if want := opState(req.Op); want != "" && want != desired {
			// The command asking for this task is older than the link's desired state (the
			// decision that changed it also closed the tasks that asked for the old one): no
			// task for an operation tenure no longer wants.
			return fmt.Errorf("%s task for %s in %s, which should now be %s: %w", req.Op, username, q.target.Name, desired, errSuperseded)
		}
		var openID, openOp string
		var openGen int64
		err = tx.QueryRow(ctx, "SELECT task_id, operation, generation FROM tasks WHERE link_id = $1 AND status = 'open'", linkID).Scan(&openID, &openOp, &openGen)
		switch {
		case err == nil && openOp == req.Op && openGen == gen:
			id = openID
			return nil
		case err == nil:
			if _, err := tx.Exec(ctx, "UPDATE tasks SET status = 'superseded', superseded_at = now(), superseded_reason = $2 WHERE task_id = $1",
				openID, fmt.Sprintf("replaced by a %s task for generation %d", req.Op, gen)); err != nil {
				return err
			}
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		var caseID string
		if err := tx.QueryRow(ctx, `SELECT a.case_id FROM case_accounts a JOIN cases c USING (case_id)
			WHERE a.link_id = $1 AND c.status = 'open' LIMIT 1`, linkID).Scan(&caseID); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		id = events.NewID()
		rows, err := tx.Query(ctx, `INSERT INTO tasks (task_id, connector, link_id, worker_id, username, operation, desired_state, desired_entitlements,
			  generation, case_id, instructions, deadline)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now() + $12::interval) RETURNING `+taskColumns,
			id, q.target.Name, linkID, worker, username, req.Op, desired, nonNil(ents), gen, caseID, req.Instructions, req.Deadline.String())
		if err != nil {
			return err
		}
		task, err := pgx.CollectExactlyOneRow(rows, q.s.scanTask)
		if err != nil {
			return err
		}
		out = append(out, taskEvent("task_opened", task))
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if err != nil {
		return "", err
	}
	if len(out) > 0 {
		q.s.relay.Poke()
	}
	return id, nil
}

// opState is the desired state a task operation brings an account to ("" for an operation
// this host does not know).
func opState(op string) string {
	switch op {
	case connector.CapCreate, connector.CapEnable, connector.CapEntitlements:
		return stateEnabled
	case connector.CapDisable:
		return stateDisabled
	case connector.CapDelete:
		return stateAbsent
	}
	return ""
}

// supersedeStaleTasks closes the open tasks of links whose desired state they no longer ask
// for, after a decision changed it: a disable task once the leave ended, a create, enable or
// entitlements task once the account should be disabled, or should have other entitlements
// (a disabled account keeps the entitlements it had, so those do not matter then). The task
// is superseded with the reason, so no overdue alert is raised for it; the command the
// decision issued opens a new task if a person still has something to do.
func supersedeStaleTasks(ctx context.Context, tx pgx.Tx, links []string, why string) error {
	if len(links) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `UPDATE tasks t SET status = 'superseded', superseded_at = now(),
		  superseded_reason = $2 || ': the account should now be ' || l.desired_state ||
		    CASE WHEN l.desired_state = 'enabled' THEN ' with {' || array_to_string(l.desired_entitlements, ', ') || '}' ELSE '' END ||
		    ' (generation ' || l.generation || ')'
		FROM links l
		WHERE t.link_id = l.link_id AND t.link_id = ANY($1) AND t.status = 'open'
		  AND (t.desired_state <> l.desired_state OR (l.desired_state = 'enabled'
		    AND NOT (t.desired_entitlements <@ l.desired_entitlements AND l.desired_entitlements <@ t.desired_entitlements)))`,
		links, why)
	return err
}

// Attested returns the account as the latest completed task left it.
func (q *taskQueue) Attested(ctx context.Context, ref connector.AccountRef) (connector.Account, error) {
	var username, state string
	var ents []string
	err := q.s.pool.QueryRow(ctx, `SELECT t.username, t.desired_state, t.desired_entitlements FROM tasks t
		WHERE t.status = 'completed' AND t.link_id = (SELECT link_id FROM links WHERE `+linkByRef+` ORDER BY username = $2 DESC LIMIT 1)
		ORDER BY t.completed_at DESC LIMIT 1`, q.target.Name, ref.Username, ref.ID).Scan(&username, &state, &ents)
	if errors.Is(err, pgx.ErrNoRows) {
		return connector.Account{}, connector.NotFound(fmt.Errorf("no attestation for %q in %s", ref.Username, q.target.Name))
	}
	if err != nil {
		return connector.Account{}, err
	}
	a := connector.Account{ID: username, Username: username, Entitlements: ents}
	switch state {
	case stateEnabled:
		a.State = connector.StateEnabled
	case stateDisabled:
		a.State = connector.StateDisabled
	case "absent":
		a.State = connector.StateAbsent
	}
	return a, nil
}

const taskColumns = `task_id, connector, worker_id, link_id, username, operation, instructions, case_id, status, created_at, deadline,
	completed_at, completed_by, evidence, evidence_sha256, evidence_file_name, generation`

func (s *Service) scanTask(r pgx.CollectableRow) (*provisionerv1.ManualTask, error) {
	var t provisionerv1.ManualTask
	var created, deadline time.Time
	var completed *time.Time
	var by, evidence, sum, file string
	if err := r.Scan(&t.TaskId, &t.Connector, &t.WorkerId, &t.LinkId, &t.Username, &t.Operation, &t.Instructions, &t.CaseId, &t.Status,
		&created, &deadline, &completed, &by, &evidence, &sum, &file, &t.Generation); err != nil {
		return nil, err
	}
	if tg, ok := s.targets[t.Connector]; ok {
		t.System = tg.System
	}
	t.CreatedAt, t.Deadline = timestamppb.New(created), timestamppb.New(deadline)
	t.Overdue = t.Status == "open" && time.Now().After(deadline)
	if completed != nil {
		t.Attestation = &provisionerv1.Attestation{CompletedBy: by, CompletedAt: timestamppb.New(*completed), Evidence: evidence, EvidenceSha256: sum, EvidenceFileName: file}
	}
	return &t, nil
}

// taskEvent is a task fact on tenure.case.<kind>.<worker>, so the ledger keeps who attested
// what, and when.
func taskEvent(kind string, t *provisionerv1.ManualTask) events.Event {
	actor := "provisioner"
	if t.Attestation != nil && kind == "task_completed" {
		actor = t.Attestation.CompletedBy
	}
	return events.Event{ID: events.NewID(), Subject: events.Subject("tenure.case", kind, t.WorkerId), Source: source, WorkerID: t.WorkerId, Actor: actor, Payload: t}
}

// maxListed bounds list answers.
const maxListed = 500

// ListTasks lists manual tasks, newest first.
func (s *Service) ListTasks(ctx context.Context, req *provisionerv1.ListTasksRequest) (*provisionerv1.ListTasksResponse, error) {
	var cond string
	switch req.GetStatus() {
	case "", "open":
		cond = "status = 'open'"
	case "overdue":
		cond = "status = 'open' AND deadline < now()"
	case "completed":
		cond = "status = 'completed'"
	case "all":
		cond = "true"
	default:
		return nil, status.Errorf(codes.InvalidArgument, "status %q: use open, overdue, completed or all", req.GetStatus())
	}
	if req.GetConnector() != "" {
		if _, ok := s.targets[req.GetConnector()]; !ok {
			return nil, status.Errorf(codes.InvalidArgument, "connector %q is not a target of this provisioner", req.GetConnector())
		}
	}
	limit := int(req.GetLimit())
	if limit <= 0 || limit > maxListed {
		limit = maxListed
	}
	rows, err := s.pool.Query(ctx, `SELECT `+taskColumns+` FROM tasks WHERE `+cond+`
		AND ($1 = '' OR connector = $1) AND ($2 = '' OR worker_id = $2) ORDER BY created_at DESC LIMIT $3`, req.GetConnector(), req.GetWorkerId(), limit)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list tasks: %v", err)
	}
	tasks, err := pgx.CollectRows(rows, s.scanTask)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list tasks: %v", err)
	}
	return &provisionerv1.ListTasksResponse{Tasks: tasks}, nil
}

const maxEvidence = 4000

// validEvidence checks an attestation's evidence; every problem is named.
func validEvidence(req *provisionerv1.CompleteManualTaskRequest) error {
	var probs []string
	ev, sum := strings.TrimSpace(req.GetEvidence()), req.GetEvidenceSha256()
	if ev == "" && sum == "" {
		probs = append(probs, "give evidence (what was done, e.g. a ticket number) and/or evidence_sha256 (of an evidence file)")
	}
	if utf8.RuneCountInString(ev) > maxEvidence {
		probs = append(probs, fmt.Sprintf("evidence: at most %d characters", maxEvidence))
	}
	if sum != "" {
		if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 || strings.ToLower(sum) != sum {
			probs = append(probs, "evidence_sha256: must be 64 lowercase hex digits (a SHA-256)")
		}
	}
	if f := req.GetEvidenceFileName(); f != "" {
		if len(f) > 255 || strings.ContainsFunc(f, unicode.IsControl) {
			probs = append(probs, "evidence_file_name: at most 255 characters, no control characters")
		}
		if sum == "" {
			probs = append(probs, "evidence_file_name: needs evidence_sha256")
		}
	}
	if len(probs) > 0 {
		return status.Error(codes.InvalidArgument, strings.Join(probs, "; "))
	}
	return nil
}

// CompleteManualTask records the caller's attestation and issues a command for the link, so the
// ordinary worker reads the account back (from the attestation) and verifies it, completing
// the leaver case if it was the last account.
func (s *Service) CompleteManualTask(ctx context.Context, req *provisionerv1.CompleteManualTaskRequest) (*provisionerv1.CompleteManualTaskResponse, error) {
	p, ok := authn.FromContext(ctx)
	if !ok || p.Name == "" {
		return nil, status.Error(codes.Unauthenticated, "an attestation needs an authenticated caller")
	}
	if !p.Has(authn.RoleOperator) {
		return nil, status.Errorf(codes.PermissionDenied, "completing a task needs the operator role; %s has %v", p.Name, p.Roles)
	}
	if req.GetTaskId() == "" {
		return nil, status.Error(codes.InvalidArgument, "task_id is required")
	}
	if err := validEvidence(req); err != nil {
		return nil, err
	}
	var task *provisionerv1.ManualTask
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		var st string
		err := tx.QueryRow(ctx, "SELECT status FROM tasks WHERE task_id = $1 FOR UPDATE", req.GetTaskId()).Scan(&st)
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "no task %q", req.GetTaskId())
		}
		if err != nil {
			return err
		}
		if st != "open" {
			return status.Errorf(codes.FailedPrecondition, "task %s is %s, not open", req.GetTaskId(), st)
		}
		rows, err := tx.Query(ctx, `UPDATE tasks SET status = 'completed', completed_at = now(), completed_by = $2, evidence = $3,
			  evidence_sha256 = $4, evidence_file_name = $5 WHERE task_id = $1 RETURNING `+taskColumns,
			req.GetTaskId(), p.Name, strings.TrimSpace(req.GetEvidence()), req.GetEvidenceSha256(), req.GetEvidenceFileName())
		if err != nil {
			return err
		}
		if task, err = pgx.CollectExactlyOneRow(rows, s.scanTask); err != nil {
			return err
		}
		var desired string
		var gen int64
		if err := tx.QueryRow(ctx, "SELECT desired_state, generation FROM links WHERE link_id = $1 FOR UPDATE", task.LinkId).Scan(&desired, &gen); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE links SET attempts = 0, last_error = '' WHERE link_id = $1", task.LinkId); err != nil {
			return err
		}
		if err := resetBudget(ctx, tx, task.LinkId); err != nil {
			return err
		}
		return pgstore.Enqueue(ctx, tx, taskEvent("task_completed", task), command(task.WorkerId, task.Connector, task.LinkId, gen, opFor(desired), task.CaseId))
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.Internal, "complete task: %v", err)
	}
	s.relay.Poke()
	s.log.InfoContext(ctx, "manual task completed", "task", task.TaskId, "connector", task.Connector, "worker", task.WorkerId, "by", p.Name)
	return &provisionerv1.CompleteManualTaskResponse{Task: task}, nil
}

func opFor(desired string) eventsv1.ProvisionOp {
	if desired == stateDisabled {
		return eventsv1.ProvisionOp_PROVISION_OP_DISABLE
	}
	return eventsv1.ProvisionOp_PROVISION_OP_ENSURE
}

// alertOverdueTasks raises tenure.alert.task_overdue once for each open task past its deadline.
func (s *Service) alertOverdueTasks(ctx context.Context) error {
	var n int
	err := pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE tasks SET overdue_alerted_at = now()
			WHERE status = 'open' AND deadline < now() AND overdue_alerted_at IS NULL RETURNING `+taskColumns)
		if err != nil {
			return err
		}
		tasks, err := pgx.CollectRows(rows, s.scanTask)
		if err != nil {
			return err
		}
		var out []events.Event
		for _, t := range tasks {
			ev := taskEvent("", t)
			ev.Subject = events.Subject("tenure.alert", "task_overdue", t.WorkerId)
			out = append(out, ev)
		}
		n = len(out)
		return pgstore.Enqueue(ctx, tx, out...)
	})
	if n > 0 {
		s.relay.Poke()
	}
	return err
}
