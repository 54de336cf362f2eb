package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/manual"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
	"github.com/tenure-dev/tenure/services/provisioner"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The bearer tokens of serveGRPC's operator (op-ann) and auditor (aud-bo).
const opToken, audToken = "operator-token-0123456789", "auditor-token-0123456789"

// serveGRPC serves a tenure service's gRPC API on a loopback port behind bearer tokens, with
// its own authorization rules, until the test ends, and returns the address.
func serveGRPC(t *testing.T, svc interface {
	AuthRules() authn.Rules
	RegisterGRPC(*grpc.Server)
}) string {
	t.Helper()
	auth, err := authn.New([]authn.TokenEntry{
		{Name: "op-ann", Roles: []authn.Role{authn.RoleOperator}, Token: opToken},
		{Name: "aud-bo", Roles: []authn.Role{authn.RoleAuditor}, Token: audToken},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(auth.UnaryInterceptor(svc.AuthRules())))
	svc.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// ctl runs tenurectl against addr with token and returns its output.
func ctl(t *testing.T, addr, token string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append(args, "--addr", addr, "--token", token, "--plaintext", "--config", filepath.Join(t.TempDir(), "none.yaml"))
	err := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// The operator's view of manual tasks and dead letters, through tenurectl, against a real
// provisioner (PostgreSQL, embedded NATS) behind a real gRPC server with bearer tokens.
func TestTaskAndQueueCommands(t *testing.T) {
	ctx := context.Background()
	pool, err := pgstore.Connect(ctx, pgtest.NewDatabase(t), "provisioner")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	legacy, err := manual.New(manual.Config{Instructions: "LabSys console"})
	if err != nil {
		t.Fatal(err)
	}
	var broken atomic.Bool
	saas := connectortest.NewMemory("readers")
	saas.Inject = func(op string, _ connector.AccountRef) error {
		if op == connector.CapDisable && broken.Load() {
			return connector.Permanent(errors.New("403 Forbidden: scope users:write missing"))
		}
		return nil
	}
	svc, err := provisioner.New(ctx, provisioner.Config{Targets: []provisioner.Target{
		{Name: "legacy", Type: manual.TypeName, System: "lab", Conn: legacy},
		{Name: "saas", Type: "memory", Conn: saas, Policy: connector.Policy{BackoffInitial: 10 * time.Millisecond}},
	}}, provisioner.Deps{Pool: pool, JS: ns.JS})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { svc.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	addr := serveGRPC(t, svc)
	const op, aud = opToken, audToken

	publish := func(subject, worker string, payload proto.Message) {
		msg, err := events.Msg(ctx, events.Event{ID: events.NewID(), Subject: subject, Source: "test", WorkerID: worker, Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ns.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	publish("tenure.hr.joiner.w-1", "w-1", &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER,
		Worker: &eventsv1.Worker{WorkerId: "w-1", Email: "ada@clinic.example", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, EffectiveTime: timestamppb.New(time.Now().Add(-time.Hour))})
	for _, c := range []string{"legacy", "saas"} {
		publish("tenure.access.grant.w-1", "w-1", &eventsv1.AccessDecision{Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT,
			WorkerId: "w-1", GrantId: "g-" + c, Connector: c, System: c, Entitlements: []string{"readers"}})
	}

	openTask := func(operation string) string {
		var id string
		waitFor(t, "open "+operation+" task", func() error {
			out, err := ctl(t, addr, aud, "task", "list", "--worker", "w-1", "-o", "json")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			var res struct {
				Tasks []struct{ TaskId, Operation, Username, Status string }
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if len(res.Tasks) != 1 || res.Tasks[0].Operation != operation || res.Tasks[0].Status != "open" {
				return fmt.Errorf("tasks %+v", res.Tasks)
			}
			id = res.Tasks[0].TaskId
			return nil
		})
		return id
	}
	create := openTask("create")
	if out, err := ctl(t, addr, op, "task", "list"); err != nil || !strings.Contains(out, create) || !strings.Contains(out, "ada") {
		t.Fatalf("task list table: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "task", "complete", create); err == nil || !strings.Contains(out+err.Error(), "--evidence") {
		t.Fatalf("complete without evidence: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, aud, "task", "complete", create, "--evidence", "done"); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("an auditor completed a task: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "task", "complete", create, "--evidence", "created, CHG-1"); err != nil || !strings.Contains(out, "completed by op-ann") {
		t.Fatalf("task complete: %v\n%s", err, out)
	}
	waitFor(t, "both accounts verified", func() error {
		res, err := svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "w-1"})
		if err != nil {
			return err
		}
		for _, a := range res.Accounts {
			if a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
				return fmt.Errorf("account %v", a)
			}
		}
		if len(res.Accounts) != 2 {
			return fmt.Errorf("%d accounts", len(res.Accounts))
		}
		return nil
	})

	broken.Store(true)
	publish("tenure.hr.leaver.w-1", "w-1", &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER,
		Worker: &eventsv1.Worker{WorkerId: "w-1", Status: eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED}, EffectiveTime: timestamppb.Now()})
	disable := openTask("disable")
	shot := filepath.Join(t.TempDir(), "labsys-disabled.png")
	if err := os.WriteFile(shot, []byte("not really a png"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("not really a png"))
	out, err := ctl(t, addr, op, "task", "complete", disable, "--evidence", "disabled in LabSys", "--file", shot, "-o", "json")
	var completed struct {
		Task struct {
			Attestation struct{ CompletedBy, EvidenceSha256, EvidenceFileName string }
		}
	}
	if err != nil || json.Unmarshal([]byte(out), &completed) != nil {
		t.Fatalf("task complete --file: %v\n%s", err, out)
	}
	if a := completed.Task.Attestation; a.CompletedBy != "op-ann" || a.EvidenceSha256 != hex.EncodeToString(sum[:]) || a.EvidenceFileName != "labsys-disabled.png" {
		t.Fatalf("attestation %+v", a)
	}

	var deadID string
	waitFor(t, "dead letter listed", func() error {
		out, err := ctl(t, addr, op, "queue", "dead", "-o", "json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var res struct {
			DeadLetters []struct{ Id, Connector, Error, WorkerId string }
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if len(res.DeadLetters) != 1 || res.DeadLetters[0].Connector != "saas" || !strings.Contains(res.DeadLetters[0].Error, "403 Forbidden") {
			return fmt.Errorf("dead letters %+v", res.DeadLetters)
		}
		deadID = res.DeadLetters[0].Id
		return nil
	})
	if out, err := ctl(t, addr, op, "queue", "dead"); err != nil || !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "tenure.provision.saas.disable") {
		t.Fatalf("queue dead table: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "queue", "retry", "x1"); err == nil || !strings.Contains(err.Error(), "not a dead-letter id") {
		t.Fatalf("queue retry x1: %v\n%s", err, out)
	}
	if res, err := svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w-1"}); err != nil || res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN {
		t.Fatalf("case with a dead-lettered account: %v, %v", res, err)
	}
	broken.Store(false)
	if out, err := ctl(t, addr, op, "queue", "retry", deadID); err != nil || !strings.Contains(out, "re-driven") {
		t.Fatalf("queue retry: %v\n%s", err, out)
	}
	waitFor(t, "case completed", func() error {
		res, err := svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w-1"})
		if err != nil {
			return err
		}
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", res.LeaverCase)
		}
		return nil
	})
	if out, err := ctl(t, addr, op, "task", "list", "--status", "completed"); err != nil || strings.Count(out, "op-ann") != 2 {
		t.Fatalf("completed tasks: %v\n%s", err, out)
	}
}
