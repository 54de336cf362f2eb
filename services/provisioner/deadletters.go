package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// dlqDurable names the consumer that copies a durable's dead letters into Postgres. It differs
// from the durable's own name so that, should it ever dead-letter, it cannot feed itself.
func dlqDurable(durable string) string { return "dlq-" + durable }

// deadLetterConsumers copy the dead letters of the provisioner's own durables from TENURE_DLQ
// into the dead_letters table, where operators list and re-drive them. Each reads only its
// durable's dead-letter subject, which is all the provisioner's NATS user may read there.
func (s *Service) deadLetterConsumers(ctx context.Context) ([]*natsx.Consumer, error) {
	sources := map[string]string{durable: ""} // durable → connector
	for name := range s.targets {
		sources[workDurable(name)] = name
	}
	var out []*natsx.Consumer
	for d, conn := range sources {
		c, err := natsx.NewConsumer(ctx, s.js, natsx.ConsumerSpec{
			Durable:        dlqDurable(d),
			Stream:         natsx.DLQStream,
			FilterSubjects: []string{natsx.DLQPrefix + "." + d},
			// Only a database error fails the copy; keep trying rather than lose a dead letter.
			MaxDeliver: math.MaxInt32,
		}, func(ctx context.Context, msg jetstream.Msg) error { return s.recordDeadLetter(ctx, d, conn, msg) }, s.log.With("dead_letters", d))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func (s *Service) recordDeadLetter(ctx context.Context, consumer, conn string, msg jetstream.Msg) error {
	md, err := msg.Metadata()
	if err != nil {
		return err
	}
	h := msg.Headers()
	subject := h.Get(natsx.HeaderDLQSubject)
	if subject == "" {
		// Not written by natsx.Consumer (see deploy/nats/accounts.conf): nothing to re-drive.
		s.log.WarnContext(ctx, "ignoring dead letter without origin", "seq", md.Sequence.Stream)
		return nil
	}
	delivered, _ := strconv.Atoi(h.Get(natsx.HeaderDLQDelivered))
	var cmd eventsv1.ProvisionCommand
	if strings.HasPrefix(subject, "tenure.provision.") {
		// A command that does not decode is still listed; it just names no link.
		_ = proto.Unmarshal(msg.Data(), &cmd)
	}
	worker := h.Get(events.HeaderSubject)
	if worker == "" {
		worker = cmd.GetWorkerId()
	}
	hdr, err := json.Marshal(h)
	if err != nil {
		return err
	}
	errText := h.Get(natsx.HeaderDLQError)
	return pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO dead_letters (id, consumer, connector, subject, headers, data, error, delivered, dead_at, worker_id, link_id, command_id, case_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING`,
			md.Sequence.Stream, consumer, conn, subject, hdr, msg.Data(), errText, delivered, md.Timestamp, worker, cmd.GetLinkId(), cmd.GetCommandId(), cmd.GetCaseId())
		if err != nil || tag.RowsAffected() == 0 || cmd.GetCaseId() == "" {
			return err
		}
		// However the command died (even where the worker could not record it), its case
		// account shows as failed until an operator re-drives it.
		_, err = tx.Exec(ctx, `UPDATE case_accounts SET status = 'failed', last_error = $3 WHERE case_id = $1 AND link_id = $2 AND status <> 'verified'`,
			cmd.GetCaseId(), cmd.GetLinkId(), "dead-lettered: "+errText)
		return err
	})
}

const deadLetterColumns = `id, consumer, connector, subject, error, delivered, dead_at, worker_id, link_id, command_id, case_id, status, retried_by, retried_at`

func scanDeadLetter(r pgx.CollectableRow) (*provisionerv1.DeadLetter, error) {
	var d provisionerv1.DeadLetter
	var id int64
	var dead time.Time
	var retried *time.Time
	if err := r.Scan(&id, &d.Consumer, &d.Connector, &d.Subject, &d.Error, &d.Delivered, &dead, &d.WorkerId, &d.LinkId, &d.CommandId, &d.CaseId,
		&d.Status, &d.RetriedBy, &retried); err != nil {
		return nil, err
	}
	d.Id, d.DeadAt, d.RetriedAt = uint64(id), timestamppb.New(dead), ts(retried)
	return &d, nil
}

// ListDeadLetters lists the provisioner's dead letters, newest first.
func (s *Service) ListDeadLetters(ctx context.Context, req *provisionerv1.ListDeadLettersRequest) (*provisionerv1.ListDeadLettersResponse, error) {
	limit := int(req.GetLimit())
	if limit <= 0 || limit > maxListed {
		limit = maxListed
	}
	rows, err := s.pool.Query(ctx, `SELECT `+deadLetterColumns+` FROM dead_letters WHERE ($1 = '' OR connector = $1) AND ($2 OR status = 'open')
		ORDER BY id DESC LIMIT $3`, req.GetConnector(), req.GetIncludeRetried(), limit)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list dead letters: %v", err)
	}
	dls, err := pgx.CollectRows(rows, scanDeadLetter)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list dead letters: %v", err)
	}
	return &provisionerv1.ListDeadLettersResponse{DeadLetters: dls}, nil
}

func operator(ctx context.Context) (authn.Principal, error) {
	p, ok := authn.FromContext(ctx)
	if !ok || p.Name == "" {
		return p, status.Error(codes.Unauthenticated, "an authenticated caller is required")
	}
	if !p.Has(authn.RoleOperator) {
		return p, status.Errorf(codes.PermissionDenied, "needs the operator role; %s has %v", p.Name, p.Roles)
	}
	return p, nil
}

// RetryDeadLetter re-drives a dead letter. A provisioning command is not replayed as it was:
// a fresh command converges the account to its current desired state (a replay of an old
// generation would only be superseded). A dead event is re-applied from its stored copy; the
// inbox keeps that to one effect.
func (s *Service) RetryDeadLetter(ctx context.Context, req *provisionerv1.RetryDeadLetterRequest) (*provisionerv1.RetryDeadLetterResponse, error) {
	p, err := operator(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetId() == 0 {
		return nil, status.Error(codes.InvalidArgument, "id is required (tenurectl queue dead lists the dead letters)")
	}
	var subject, st, linkID, caseID string
	var hdrJSON, data []byte
	err = s.pool.QueryRow(ctx, "SELECT subject, status, link_id, case_id, headers, data FROM dead_letters WHERE id = $1", int64(req.GetId())).
		Scan(&subject, &st, &linkID, &caseID, &hdrJSON, &data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "no dead letter %d (tenurectl queue dead lists them)", req.GetId())
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "retry dead letter: %v", err)
	}
	if st != "open" {
		return nil, status.Errorf(codes.FailedPrecondition, "dead letter %d is %s already", req.GetId(), st)
	}
	res := &provisionerv1.RetryDeadLetterResponse{}
	if !strings.HasPrefix(subject, "tenure.provision.") {
		var h nats.Header
		if err := json.Unmarshal(hdrJSON, &h); err != nil {
			return nil, status.Errorf(codes.Internal, "dead letter %d headers: %v", req.GetId(), err)
		}
		if err := s.applyEvent(ctx, subject, h, data); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "re-applying %s failed again, it stays a dead letter: %v", subject, err)
		}
	} else if linkID == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "dead letter %d is not a command tenure can decode; nothing to re-drive", req.GetId())
	}
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE dead_letters SET status = 'retried', retried_by = $2, retried_at = now() WHERE id = $1 AND status = 'open'", int64(req.GetId()), p.Name)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return status.Errorf(codes.FailedPrecondition, "dead letter %d was re-driven meanwhile", req.GetId())
		}
		if linkID != "" {
			res.CommandId, _, err = s.retryLink(ctx, tx, linkID, caseID, p.Name)
		}
		return err
	})
	if err != nil {
		return nil, grpcErr("retry dead letter", err)
	}
	s.relay.Poke()
	rows, err := s.pool.Query(ctx, `SELECT `+deadLetterColumns+` FROM dead_letters WHERE id = $1`, int64(req.GetId()))
	if err == nil {
		res.DeadLetter, err = pgx.CollectExactlyOneRow(rows, scanDeadLetter)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "retry dead letter: %v", err)
	}
	return res, nil
}

// RetryAccount issues a fresh command for one link, e.g. a failed account of a leaver case.
func (s *Service) RetryAccount(ctx context.Context, req *provisionerv1.RetryAccountRequest) (*provisionerv1.RetryAccountResponse, error) {
	p, err := operator(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetLinkId() == "" {
		return nil, status.Error(codes.InvalidArgument, "link_id is required (tenurectl case WORKER shows them)")
	}
	res := &provisionerv1.RetryAccountResponse{}
	err = pgstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		res.CommandId, res.Generation, err = s.retryLink(ctx, tx, req.GetLinkId(), "", p.Name)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE dead_letters SET status = 'retried', retried_by = $2, retried_at = now() WHERE link_id = $1 AND status = 'open'", req.GetLinkId(), p.Name)
		return err
	})
	if err != nil {
		return nil, grpcErr("retry account", err)
	}
	s.relay.Poke()
	return res, nil
}

// retryLink resets a link's failure state and emits a command at its current generation. The
// command joins the link's open leaver case (caseID, or the open case the link is in).
func (s *Service) retryLink(ctx context.Context, tx pgx.Tx, linkID, caseID, by string) (string, int64, error) {
	var worker, conn, desired string
	var gen int64
	err := tx.QueryRow(ctx, "SELECT worker_id, connector, desired_state, generation FROM links WHERE link_id = $1 FOR UPDATE", linkID).Scan(&worker, &conn, &desired, &gen)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, status.Errorf(codes.NotFound, "no account link %q", linkID)
	}
	if err != nil {
		return "", 0, err
	}
	if _, ok := s.targets[conn]; !ok {
		return "", 0, status.Errorf(codes.FailedPrecondition, "link %s is in connector %q, which this provisioner does not run", linkID, conn)
	}
	if caseID == "" {
		if err := tx.QueryRow(ctx, `SELECT a.case_id FROM case_accounts a JOIN cases c USING (case_id) WHERE a.link_id = $1 AND c.status = 'open' LIMIT 1`,
			linkID).Scan(&caseID); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return "", 0, err
		}
	}
	if _, err := tx.Exec(ctx, "UPDATE links SET attempts = 0, last_error = '' WHERE link_id = $1", linkID); err != nil {
		return "", 0, err
	}
	if err := resetBudget(ctx, tx, linkID); err != nil {
		return "", 0, err
	}
	if caseID != "" {
		if _, err := tx.Exec(ctx, "UPDATE case_accounts SET status = 'pending', last_error = '' WHERE case_id = $1 AND link_id = $2 AND status <> 'verified'", caseID, linkID); err != nil {
			return "", 0, err
		}
	}
	ev := command(worker, conn, linkID, gen, opFor(desired), caseID)
	ev.Actor = by // the ledger shows who re-drove it
	if err := pgstore.Enqueue(ctx, tx, ev); err != nil {
		return "", 0, err
	}
	s.log.InfoContext(ctx, "account re-driven", "link", linkID, "connector", conn, "by", by)
	return ev.ID, gen, nil
}

func grpcErr(what string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}
