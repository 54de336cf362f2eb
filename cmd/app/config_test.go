package app

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseServePrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tenure.yaml")
	os.WriteFile(file, []byte("target: ledger\nnats_url: nats://file:4222\ngrpc_addr: ':7000'\ncase_deadline: 2m\ndatabase_url: postgres://file/db\n"), 0o600)
	env := map[string]string{
		"TENURE_CONFIG":              file,
		"TENURE_NATS_URL":            "nats://env:4222",
		"TENURE_GRPC_ADDR":           ":8000",
		"TENURE_INTAKE_DATABASE_URL": "postgres://intake-only/db",
		"TENURE_STREAM_REPLICAS":     "3",
		"TENURE_APPROVAL_TICK":       "250ms",
	}
	cfg, err := ParseServe([]string{"--grpc-addr", ":9000", "--target=intake,ledger"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]string{
		"flag beats env and file": {cfg.GRPCAddr, ":9000"},
		"env beats file":          {cfg.NATSURL, "nats://env:4222"},
		"file beats default":      {cfg.CaseDeadline.String(), (2 * time.Minute).String()},
		"default":                 {cfg.HTTPAddr, ":8080"},
		"per-service database":    {cfg.databaseURL("intake"), "postgres://intake-only/db"},
		"shared database":         {cfg.databaseURL("ledger"), "postgres://file/db"},
		"target from flag":        {cfg.Target, "intake,ledger"},
		"approval tick from env":  {cfg.ApprovalTick.String(), "250ms"},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s: got %q, want %q", name, c[0], c[1])
		}
	}
	if cfg.StreamReplicas != 3 {
		t.Errorf("replicas %d", cfg.StreamReplicas)
	}
}

func TestParseServeErrors(t *testing.T) {
	none := func(string) string { return "" }
	bad := map[string][]string{
		"unknown target": {"--target=billing"},
		"no target":      {},
		"bad duration":   {"--target=all", "--case-deadline=soon"},
		"stray argument": {"--target=all", "extra"},
		"unknown flag":   {"--target=all", "--colour=blue"},
	}
	for name, args := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseServe(args, none, io.Discard); err == nil {
				t.Fatal("want an error")
			}
		})
	}
	cfg, err := ParseServe([]string{"--target=all", "--nats-atomic-batch=1001", "--approval-tick=-1s"}, none, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	for _, want := range []string{"--nats-atomic-batch 1001: want 0 (never) up to 1000", "intake needs a database", "--tokens-file is required", "approval needs --policy", "provisioner needs --connectors", "intake needs --webhook-sources",
		"--approval-tick -1s: want a positive duration"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to say %q", err, want)
		}
	}
}
