package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/services/provisioner"
)

// Reconciliation, findings, connectors and the live queue view, through tenurectl against a
// real provisioner behind a real gRPC server with bearer tokens.
func TestReconcileFindingsConnectorsAndQueueWatch(t *testing.T) {
	ctx := context.Background()
	pool, err := pgstore.Connect(ctx, pgtest.NewDatabase(t), "provisioner")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	saas := connectortest.NewMemory("readers")
	for _, u := range []string{"frontdesk", "jdoe"} {
		if _, err := saas.CreateAccount(ctx, connector.AccountSpec{Username: u}); err != nil {
			t.Fatal(err)
		}
	}
	never := time.Duration(0)
	svc, err := provisioner.New(ctx, provisioner.Config{Targets: []provisioner.Target{
		{Name: "saas", Type: "memory", System: "chat", Conn: saas, Policy: connector.Policy{Lifecycle: connector.Lifecycle{ReconcileInterval: &never, DeleteAfter: 720 * time.Hour}}},
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

	out, err := ctl(t, addr, aud, "connectors")
	if err != nil || !strings.Contains(out, "saas") || !strings.Contains(out, "memory") || !strings.Contains(out, " ok ") || !strings.Contains(out, "720h0m0s") ||
		!strings.Contains(out, "off") {
		t.Fatalf("connectors: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, aud, "reconcile", "saas"); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("an auditor started a reconciliation: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "reconcile"); err == nil || !strings.Contains(err.Error(), "usage: tenurectl reconcile CONNECTOR") {
		t.Fatalf("reconcile without a connector: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "reconcile", "nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("reconcile nope: %v\n%s", err, out)
	}
	out, err = ctl(t, addr, op, "reconcile", "saas")
	if err != nil || !strings.Contains(out, "reconciled saas: 2 accounts, 3 findings open (3 new)") || !strings.Contains(out, "name matches the shared-account pattern frontdesk*") {
		t.Fatalf("reconcile saas: %v\n%s", err, out)
	}
	out, err = ctl(t, addr, aud, "findings", "--kind", "shared", "-o", "json")
	var res struct {
		Findings []struct{ Kind, Username, Connector, Status string }
	}
	if err != nil || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("findings -o json: %v\n%s", err, out)
	}
	if len(res.Findings) != 1 || res.Findings[0].Username != "frontdesk" || res.Findings[0].Status != "open" || res.Findings[0].Connector != "saas" {
		t.Fatalf("shared findings %+v", res.Findings)
	}
	if out, err := ctl(t, addr, aud, "findings", "--kind", "bogus"); err == nil || !strings.Contains(err.Error(), `kind "bogus"`) {
		t.Fatalf("findings --kind bogus: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, aud, "findings", "--status", "resolved"); err != nil || strings.Contains(out, "frontdesk") {
		t.Fatalf("findings --status resolved: %v\n%s", err, out)
	}

	if out, err := ctl(t, addr, op, "queue"); err != nil || !strings.Contains(out, "OLDEST") || !strings.Contains(out, "saas") {
		t.Fatalf("queue: %v\n%s", err, out)
	}
	// "accounts WORKER" and "accounts link ..." live side by side.
	if out, err := ctl(t, addr, op, "accounts", "w-none"); err != nil || !strings.Contains(out, "CONNECTOR") {
		t.Fatalf("accounts WORKER: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "accounts", "link", "saas", "frontdesk", "--worker", "w-none"); err == nil || !strings.Contains(err.Error(), "usage: tenurectl accounts link") {
		t.Fatalf("accounts link without a reason: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "accounts", "link", "saas", "frontdesk", "--worker", "w-none", "--reason", "CHG-1"); err == nil || !strings.Contains(err.Error(), "not known to tenure") {
		t.Fatalf("accounts link to an unknown worker: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "queue", "--watch", "--interval", "1ms"); err == nil || !strings.Contains(err.Error(), "below") {
		t.Fatalf("queue --watch --interval 1ms: %v\n%s", err, out)
	}
	// The live view redraws until its context ends (Ctrl-C), then exits cleanly.
	wctx, stop := context.WithTimeout(ctx, 1100*time.Millisecond)
	defer stop()
	var w bytes.Buffer
	err = run(wctx, []string{"queue", "--watch", "--interval", "200ms", "--addr", addr, "--token", op, "--plaintext", "--config", filepath.Join(t.TempDir(), "none.yaml")}, &w, &w)
	if err != nil {
		t.Fatalf("queue --watch ended with %v\n%s", err, w.String())
	}
	if n := strings.Count(w.String(), "\x1b[H\x1b[2J"); n < 3 || strings.Count(w.String(), "saas") != n {
		t.Fatalf("queue --watch drew %d screens:\n%q", n, w.String())
	}

	if out, err := ctl(t, addr, op, "task", "retry"); err == nil || !strings.Contains(err.Error(), "usage: tenurectl task retry") {
		t.Fatalf("task retry without a target: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "task", "retry", "--case", "nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("task retry --case nope: %v\n%s", err, out)
	}
}
