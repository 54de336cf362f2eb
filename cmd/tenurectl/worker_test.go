package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	"github.com/tenure-dev/tenure/pkg/webhook"
	"github.com/tenure-dev/tenure/services/intake"
)

// The worker registry and HR reconciliation, through tenurectl, against a real intake
// (PostgreSQL, embedded NATS) behind a real gRPC server with bearer tokens.
func TestWorkerAndHRCommands(t *testing.T) {
	ctx := context.Background()
	pool, err := pgstore.Connect(ctx, pgtest.NewDatabase(t), intake.Schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	if err := natsx.EnsureStreams(ctx, ns.JS, natsx.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	secret := webhook.NewSecret()
	svc, err := intake.New(ctx, intake.Config{Sources: map[string]intake.SourceConfig{"hr": {Secrets: []string{secret}}}},
		intake.Deps{Pool: pool, JS: ns.JS, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hooks := httptest.NewServer(svc.Handler())
	t.Cleanup(hooks.Close)
	key, _ := webhook.ParseSecret(secret)
	post := func(id, body string) {
		t.Helper()
		now := time.Now()
		req, _ := http.NewRequest(http.MethodPost, hooks.URL+"/webhooks/hr", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(webhook.HeaderID, id)
		req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
		req.Header.Set(webhook.HeaderSignature, webhook.Sign(key, id, now, []byte(body)))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: %d %s", id, res.StatusCode, b)
		}
	}
	post("h1", `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","given_name":"Ada","family_name":"Nurse","email":"ada@clinic.example","job_code":"RN","department":"ICU","location":"Boston"}}`)
	post("h2", `{"type":"hire","worker":{"worker_id":"C2","worker_type":"contractor","given_name":"Cy","family_name":"Temp","sponsor_id":"E1","vendor_org":"Staffing Co","end_date":"2030-01-31"}}`)
	post("j1", `{"type":"job_change","worker":{"worker_id":"E1","job_code":"CHARGE-RN"}}`)

	addr := serveGRPC(t, svc)
	const op, aud = opToken, audToken

	out, err := ctl(t, addr, aud, "worker", "get", "C2")
	for _, want := range []string{"contractor", "Cy Temp", "sponsor", "E1", "vendor org", "Staffing Co", "2030-01-31"} {
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("worker get C2 lacks %q: %v\n%s", want, err, out)
		}
	}
	if out, err := ctl(t, addr, aud, "worker", "get", "E1"); err != nil || !strings.Contains(out, "CHARGE-RN") || !strings.Contains(out, "Boston") {
		t.Fatalf("worker get E1: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, aud, "worker", "get", "nobody"); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("worker get of an unknown worker: %v\n%s", err, out)
	}
	out, err = ctl(t, addr, aud, "worker", "list", "--type", "contractor")
	if err != nil || !strings.Contains(out, "C2") || strings.Contains(out, "E1 ") {
		t.Fatalf("worker list --type contractor: %v\n%s", err, out)
	}
	out, err = ctl(t, addr, aud, "worker", "history", "E1")
	if err != nil || !strings.Contains(out, "hire") || !strings.Contains(out, "job_change") {
		t.Fatalf("worker history E1: %v\n%s", err, out)
	}

	// A roster without E1 and with a new worker: the dry run shows a leaver and a joiner and
	// changes nothing; an auditor may not reconcile; the operator's run applies it.
	roster := filepath.Join(t.TempDir(), "roster.csv")
	if err := os.WriteFile(roster, []byte("worker_id,worker_type,given_name,family_name,sponsor_id,vendor_org,end_date,status\n"+
		"C2,contractor,Cy,Temp,E1,Staffing Co,2030-01-31,active\nN3,employee,Nia,New,,,,active\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = ctl(t, addr, op, "hr", "reconcile", roster, "--dry-run", "--source", "hr")
	if err != nil || !strings.Contains(out, "E1") || !strings.Contains(out, "termination") || !strings.Contains(out, "N3") || !strings.Contains(out, "hire") {
		t.Fatalf("hr reconcile --dry-run: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, aud, "worker", "get", "E1"); err != nil || !strings.Contains(out, "active") {
		t.Fatalf("E1 after the dry run: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, aud, "hr", "reconcile", roster, "--source", "hr"); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("an auditor reconciled: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "hr", "reconcile", roster, "--source", "hr"); err != nil {
		t.Fatalf("hr reconcile: %v\n%s", err, out)
	}
	for id, want := range map[string]string{"E1": "terminated", "N3": "active"} {
		if out, err := ctl(t, addr, aud, "worker", "get", id); err != nil || !strings.Contains(out, want) {
			t.Fatalf("%s after the reconcile: want %s: %v\n%s", id, want, err, out)
		}
	}

	// A hire for E1, who has left, changes nothing and is an HR finding the operator sees and
	// closes.
	post("h1-again", `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","job_code":"RN"}}`)
	out, err = ctl(t, addr, aud, "findings", "--kind", "event_for_leaver")
	if err != nil || !strings.Contains(out, "event_for_leaver") || !strings.Contains(out, "E1") || !strings.Contains(out, "only a rehire") {
		t.Fatalf("findings: %v\n%s", err, out)
	}
	id := strings.Fields(strings.Split(out, "\n")[1])[0]
	if out, err := ctl(t, addr, aud, "findings", "resolve", id, "--reason", "HR relay re-sent it"); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("an auditor resolved a finding: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, op, "findings", "resolve", id, "--reason", "HR relay re-sent it"); err != nil || !strings.Contains(out, "resolved") {
		t.Fatalf("findings resolve: %v\n%s", err, out)
	}
	if out, err := ctl(t, addr, aud, "worker", "get", "E1"); err != nil || !strings.Contains(out, "terminated") {
		t.Fatalf("E1 after a hire for a leaver: %v\n%s", err, out)
	}
}
