package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	"github.com/tenure-dev/tenure/services/ledger"
)

// tenurectl ledger verify and evidence verify against a real ledger (PostgreSQL, embedded
// NATS with the witness stream) behind a real gRPC server: the exit codes a scheduled job
// relies on (0 intact, 3 tampering, 4 could not check), --checkpoint without NATS, and the
// consistency proof checked on the client.
func TestLedgerVerifyExitCodes(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	pool, err := pgstore.Connect(ctx, dbURL, ledger.Schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	_, key, _ := ed25519.GenerateKey(nil)
	svc, err := ledger.New(ctx, ledger.Config{SigningKey: key, CheckpointInterval: time.Hour}, ledger.Deps{Pool: pool, JS: ns.JS, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	n := 0
	record := func(k int) {
		t.Helper()
		for range k {
			n++
			w := fmt.Sprintf("w%d", n)
			m, err := events.Msg(ctx, events.Event{ID: fmt.Sprintf("ev-%d", n), Subject: events.Subject("tenure.hr", "joiner", w), Source: "tenure/test",
				WorkerID: w, Actor: "hr", Time: time.Now(), Payload: &eventsv1.WorkerEvent{EventId: "hr-" + w, Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER, HrEventType: "hire", Worker: &eventsv1.Worker{WorkerId: w}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ns.JS.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		var head int64
		waitFor(t, "recorded", func() error {
			if err := pool.QueryRow(ctx, "SELECT seq FROM head").Scan(&head); err != nil {
				return err
			}
			if head < int64(n) {
				return fmt.Errorf("head %d of %d", head, n)
			}
			return nil
		})
		if _, err := svc.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	record(20)
	addr := serveGRPC(t, svc)
	dir := t.TempDir()
	saved := filepath.Join(dir, "checkpoint.txt")

	out, err := ctl(t, addr, audToken, "ledger", "verify", "--nats-url", ns.URL, "--nats-user", "", "--save-checkpoint", saved)
	if exitCode(err) != 0 || !strings.Contains(out, "ledger intact") || !strings.Contains(out, "consistent with the checkpoint of 20 entries") {
		t.Fatalf("verify against the witness: exit %d %v\n%s", exitCode(err), err, out)
	}
	record(15) // the ledger moves on; the auditor's saved checkpoint of 20 stays
	out, err = ctl(t, addr, audToken, "ledger", "verify", "--checkpoint", saved)
	if exitCode(err) != 0 || !strings.Contains(out, "consistent with the checkpoint of 20 entries") || !strings.Contains(out, "consistency proof checked here") {
		t.Fatalf("verify --checkpoint: exit %d %v\n%s", exitCode(err), err, out)
	}

	// Could not check: 4.
	if out, err := ctl(t, addr, audToken, "ledger", "verify", "--nats-url", "nats://127.0.0.1:1", "--nats-user", ""); exitCode(err) != exitUnreachable {
		t.Errorf("NATS unreachable: exit %d %v\n%s", exitCode(err), err, out)
	}
	if out, err := ctl(t, "127.0.0.1:1", audToken, "ledger", "verify", "--checkpoint", saved); exitCode(err) != exitUnreachable {
		t.Errorf("tenure unreachable: exit %d %v\n%s", exitCode(err), err, out)
	}
	if out, err := ctl(t, addr, "not-a-token-0123456789", "ledger", "verify", "--checkpoint", saved); exitCode(err) != exitUnreachable {
		t.Errorf("not authenticated: exit %d %v\n%s", exitCode(err), err, out)
	}
	// A checkpoint whose signature does not verify: 3.
	forged := filepath.Join(dir, "forged.txt")
	b, _ := os.ReadFile(saved)
	os.WriteFile(forged, []byte(strings.Replace(string(b), "\n20\n", "\n21\n", 1)), 0o644) // the signature no longer matches
	if out, err := ctl(t, addr, audToken, "ledger", "verify", "--checkpoint", forged); exitCode(err) != exitTampered || !strings.Contains(out, "LEDGER TAMPERED (checkpoint)") {
		t.Errorf("forged checkpoint: exit %d %v\n%s", exitCode(err), err, out)
	}

	// An evidence bundle verifies offline with its inclusion proofs; a changed one exits 3.
	bundle := filepath.Join(dir, "bundle")
	if out, err := ctl(t, addr, audToken, "evidence", "export", "--out", bundle); err != nil {
		t.Fatalf("evidence export: %v\n%s", err, out)
	}
	out, err = run2(t, "evidence", "verify", bundle)
	if exitCode(err) != 0 || !strings.Contains(out, "each proven to be in the tree of the signed checkpoint") {
		t.Fatalf("evidence verify: exit %d %v\n%s", exitCode(err), err, out)
	}
	entries := filepath.Join(bundle, "entries.jsonl")
	eb, _ := os.ReadFile(entries)
	os.WriteFile(entries, []byte(strings.Replace(string(eb), `"actor":"hr"`, `"actor":"mallory"`, 1)), 0o644)
	if out, err := run2(t, "evidence", "verify", bundle); exitCode(err) != exitTampered || !strings.Contains(out, "BUNDLE INVALID") {
		t.Errorf("changed bundle: exit %d %v\n%s", exitCode(err), err, out)
	}

	// Tampering as a superuser: 3, with the finding.
	su, err := pgstore.Connect(ctx, dbURL, ledger.Schema)
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close()
	if _, err := su.Exec(ctx, "ALTER TABLE ledger.entries DISABLE TRIGGER ALL; UPDATE ledger.entries SET actor = 'mallory' WHERE seq = 7"); err != nil {
		t.Fatal(err)
	}
	out, err = ctl(t, addr, audToken, "ledger", "verify", "--nats-url", ns.URL, "--nats-user", "")
	if exitCode(err) != exitTampered || !strings.Contains(out, "LEDGER TAMPERED (content) at entry 7") {
		t.Fatalf("tampered: exit %d %v\n%s", exitCode(err), err, out)
	}
}

// run2 runs tenurectl without a server.
func run2(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out strings.Builder
	err := run(context.Background(), append(args, "--config", filepath.Join(t.TempDir(), "none.yaml")), &out, &out)
	return out.String(), err
}
