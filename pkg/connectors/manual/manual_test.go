package manual_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connectors/manual"
)

// queue is the smallest TaskQueue: one attested state per username. The provisioner's real
// queue (PostgreSQL) is tested in services/provisioner.
type queue struct {
	opened   []connector.TaskRequest
	attested map[string]connector.Account
}

func (q *queue) OpenTask(_ context.Context, req connector.TaskRequest) (string, error) {
	q.opened = append(q.opened, req)
	return "task-" + req.Op, nil
}

func (q *queue) Attested(_ context.Context, ref connector.AccountRef) (connector.Account, error) {
	a, ok := q.attested[ref.Username]
	if !ok {
		return connector.Account{}, connector.NotFound(errors.New("no attestation"))
	}
	return a, nil
}

func TestTasksUntilAttested(t *testing.T) {
	c, err := manual.New(manual.Config{Instructions: "console"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ref := connector.AccountRef{Username: "ada"}
	if _, err := c.GetAccount(ctx, ref); connector.KindOf(err) != connector.KindPermanent {
		t.Fatalf("unbound connector: %v", err)
	}
	q := &queue{attested: map[string]connector.Account{}}
	c.UseTaskQueue(q)

	if _, err := c.GetAccount(ctx, ref); !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("never attested: %v", err)
	}
	if _, err := c.CreateAccount(ctx, connector.AccountSpec{Username: "ada"}); !errors.Is(err, connector.ErrPending) || !strings.Contains(err.Error(), "task-create") {
		t.Fatalf("create: %v", err)
	}
	if got := q.opened[0]; got.Op != connector.CapCreate || got.Deadline != manual.DefaultDeadline || got.Instructions != "console" {
		t.Fatalf("task request %+v", got)
	}
	q.attested["ada"] = connector.Account{ID: "ada", Username: "ada", State: connector.StateEnabled}
	if a, err := c.CreateAccount(ctx, connector.AccountSpec{Username: "ada"}); err != nil || a.State != connector.StateEnabled {
		t.Fatalf("create of an attested account = %v, %v", a, err)
	}
	if err := c.EnableAccount(ctx, ref); err != nil {
		t.Fatalf("enable of an attested enabled account: %v", err)
	}
	if err := c.DisableAccount(ctx, ref); !errors.Is(err, connector.ErrPending) {
		t.Fatalf("disable: %v", err)
	}
	q.attested["ada"] = connector.Account{ID: "ada", Username: "ada", State: connector.StateDisabled}
	if err := c.DisableAccount(ctx, ref); err != nil {
		t.Fatalf("disable of an attested disabled account: %v", err)
	}
	if a, err := c.GetAccount(ctx, ref); err != nil || a.State != connector.StateDisabled {
		t.Fatalf("read-back = %v, %v", a, err)
	}
	if err := c.GrantEntitlement(ctx, ref, "lab-read"); !errors.Is(err, connector.ErrPending) {
		t.Fatalf("grant: %v", err)
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		config string
		want   string
	}{
		{"deadline: 10s", "deadline: must be between 1m0s and 720h0m0s"},
		{"deadline: 1h\nassignee: bob", `unknown field "assignee"`},
		{"instructions: " + strings.Repeat("x", 4001), "instructions: at most 4000"},
	} {
		if _, err := connector.Open(context.Background(), manual.TypeName, []byte(tc.config)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.30q: %v, want %q", tc.config, err, tc.want)
		}
	}
	c, err := connector.Open(context.Background(), manual.TypeName, []byte("deadline: 4h"))
	if err != nil {
		t.Fatal(err)
	}
	if d := c.(connector.TaskDeadliner).TaskDeadline(); d != 4*time.Hour {
		t.Fatalf("deadline %s", d)
	}
}
